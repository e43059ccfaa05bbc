"""Training losses for listwise rerankers.

``build_loss("importance", alpha=1.0)`` -> :class:`ImportanceAwareLoss`; ``build_loss("lm")`` ->
:class:`LMLoss` (plain response-token NLL, for the ablation).
"""

from rerank.training.losses.importance import IGNORE_INDEX, ImportanceAwareLoss, LMLoss, rank_weights, target_with_ranks

LOSSES = ("importance", "lm")


def build_loss(name: str, alpha: float = 1.0, normalize: str = "tokens") -> ImportanceAwareLoss:
    """The loss module named ``name`` (one of :data:`LOSSES`)."""
    if name == "importance":
        return ImportanceAwareLoss(alpha=alpha, normalize=normalize)
    if name == "lm":
        return LMLoss()
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")


__all__ = ["IGNORE_INDEX", "LOSSES", "ImportanceAwareLoss", "LMLoss", "build_loss", "rank_weights", "target_with_ranks"]
