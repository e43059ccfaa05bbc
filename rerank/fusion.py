"""Weighted reciprocal-rank fusion of the model's ranking with the first-stage order.

A small reranker is a noisy judge; the first stage (BM25) is a different, independent one. Fusing
their RANKS needs no score calibration and no first-stage scores (the documents arrive in
first-stage order, so document i has first-stage rank i):

    fused(d) = (1 - w) / (k + r_model(d)) + w / (k + r_first(d))        (ranks from 1)

``w = 0`` is the model alone, ``w = 1`` the input order. ``k = 60`` is the usual RRF constant
(Cormack et al. 2009); with k much larger than the list, the fusion is close to a weighted sum of
ranks. Ties (possible only for symmetric placements) keep the model's order.
"""

from __future__ import annotations

from collections.abc import Sequence

RRF_K = 60.0


def check_weight(weight: float) -> float:
    """Validate a fusion weight (a float in [0, 1])."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"first_stage_weight must be a number in [0, 1], got {weight!r}")
    return float(weight)


def fuse_with_first_stage(model_order: Sequence[int], weight: float, k: float = RRF_K) -> tuple[list[int], list[float]]:
    """Fuse a model ranking (0-based document indices, best first) with the input order.

    Returns the fused order (best first) and, per document index, its fused score.

    Example:
        >>> fuse_with_first_stage([2, 0, 1], weight=0.0)[0]
        [2, 0, 1]
        >>> fuse_with_first_stage([2, 0, 1], weight=1.0)[0]
        [0, 1, 2]
        >>> fuse_with_first_stage([3, 0, 1, 2], weight=0.5)[0]  # 0: 2nd and 1st; 3: 1st and 4th
        [0, 3, 1, 2]
    """
    weight = check_weight(weight)
    n = len(model_order)
    if sorted(model_order) != list(range(n)):
        raise ValueError(f"model_order must be a permutation of 0..{n - 1}, got {list(model_order)}")
    model_rank = {doc: r for r, doc in enumerate(model_order, start=1)}
    scores = [(1.0 - weight) / (k + model_rank[d]) + weight / (k + d + 1) for d in range(n)]
    order = sorted(range(n), key=lambda d: (-scores[d], model_rank[d]))
    return order, scores
