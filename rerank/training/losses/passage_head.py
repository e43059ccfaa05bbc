"""Training loss for ``scoring="head"``: relevance read at every passage's end in one forward pass.

Inputs per list: ``scores[b, k]`` (the model's ``logit(yes) - logit(no)`` at passage k's end),
``ranks[b, k]`` (the label's 1-based rank of passage k; 0 = padding) and optionally
``teacher[b, k]`` (a teacher's relevance score, e.g. all-MiniLM-L6-v2 cosine; NaN = none) and
``relevance[b, k]`` (1 = judged relevant, 0 = not; NaN = the list carries no judgments)::

    L = L_rank(s, r) + lambda * KL( softmax(t / T) || softmax(s) ) + mu * mean_k (s_k - t_k)^2
        + nu * mean_k BCE(sigmoid(s_k), y_k)

``L_rank`` is one of the identifier ranking losses (weighted RankNet by default:
``sum_{r_i < r_j} w_ij log(1 + exp(s_j - s_i)) / sum w_ij`` with ``w_ij = 1/(r_i + r_j)``), so the
complete label's order (judged-relevant passages first) is learned pairwise; the KL term distils the
teacher's graded scores, which say HOW much better one passage is than another, information a
permutation throws away. The squared error (``mu``, off by default) is for a teacher on the head's
own scale, the same model's dense readouts when training with pruning in the loop: it keeps each
score's level, which the calibration reads, where the KL keeps only differences. Every other term
is unchanged when a constant is added to all scores of a prompt, so nothing ties one prompt's
scores to another's; the pointwise binary cross-entropy (``nu``, off by default) does: it reads
``sigmoid(s_k)`` as P(relevant) on its own, so a prompt of weak passages learns low scores and chunks
of a long list can be merged by score. Lists without teacher scores (or judgments) skip those
terms. Padding is masked everywhere; each term is a mean over the lists it applies to.
"""

from __future__ import annotations

import torch
from torch import nn

from rerank.training.losses.identifier_ranking import IdentifierRankingLoss


class PassageHeadLoss(nn.Module):
    """Rank loss on per-passage scores plus an optional teacher-distribution KL (see module docstring).

    Example:
        >>> loss = PassageHeadLoss("ranknet", teacher_weight=0.0)
        >>> round(float(loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[1, 2]]))), 4)  # tied scores: log 2
        0.6931
    """

    def __init__(
        self,
        rank_loss: str = "ranknet",
        teacher_weight: float = 1.0,
        teacher_temperature: float = 0.05,
        teacher_mse: float = 0.0,
        pointwise_weight: float = 0.0,
    ):
        super().__init__()
        if teacher_weight < 0:
            raise ValueError(f"teacher_weight must be >= 0, got {teacher_weight}")
        if teacher_mse < 0:
            raise ValueError(f"teacher_mse must be >= 0, got {teacher_mse}")
        if pointwise_weight < 0:
            raise ValueError(f"pointwise_weight must be >= 0, got {pointwise_weight}")
        if teacher_temperature <= 0:
            raise ValueError(f"teacher_temperature must be > 0, got {teacher_temperature}")
        self.rank = IdentifierRankingLoss(rank_loss)
        self.teacher_weight, self.teacher_temperature = teacher_weight, teacher_temperature
        self.teacher_mse, self.pointwise_weight = teacher_mse, pointwise_weight
        self.last_terms: dict[str, float] = {}

    def teacher_kl(self, scores: torch.Tensor, ranks: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Mean KL(teacher || model) over lists with teacher scores (0 when there are none)."""
        scores = scores.float()
        valid = (ranks > 0) & ~torch.isnan(teacher)
        rows = valid.any(-1)
        if not bool(rows.any()):
            return scores.sum() * 0.0
        neg = torch.finfo(scores.dtype).min
        target = torch.log_softmax((teacher.float() / self.teacher_temperature).masked_fill(~valid, neg), -1)
        model = torch.log_softmax(scores.masked_fill(~valid, neg), -1)
        kl = (target.exp() * (target - model)).masked_fill(~valid, 0.0).sum(-1)
        return kl[rows].mean()

    def forward(
        self,
        scores: torch.Tensor,
        ranks: torch.Tensor,
        teacher: torch.Tensor | None = None,
        relevance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        loss = self.rank(scores, ranks)
        self.last_terms = {"rank_loss": float(loss.detach())}
        if teacher is not None and self.teacher_weight > 0:
            if teacher.shape != scores.shape:
                raise ValueError(f"teacher must be [batch, passages] like scores, got {tuple(teacher.shape)}")
            kl = self.teacher_kl(scores, ranks, teacher)
            self.last_terms["teacher_kl"] = float(kl.detach())
            loss = loss + self.teacher_weight * kl
        if teacher is not None and self.teacher_mse > 0:
            squared = self.teacher_squared_error(scores, ranks, teacher)
            self.last_terms["teacher_mse"] = float(squared.detach())
            loss = loss + self.teacher_mse * squared
        if relevance is not None and self.pointwise_weight > 0:
            bce = self.pointwise_bce(scores, ranks, relevance)
            self.last_terms["pointwise_bce"] = float(bce.detach())
            loss = loss + self.pointwise_weight * bce
        return loss

    def pointwise_bce(self, scores: torch.Tensor, ranks: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        """Mean over lists with judgments of ``mean_k BCE(sigmoid(s_k), y_k)`` (0 when there are none)."""
        if relevance.shape != scores.shape:
            raise ValueError(f"relevance must be [batch, passages] like scores, got {tuple(relevance.shape)}")
        valid = (ranks > 0) & ~torch.isnan(relevance)
        target = torch.nan_to_num(relevance.float())
        bce = nn.functional.binary_cross_entropy_with_logits(scores.float(), target, reduction="none")
        return mean_over_lists(bce, valid)

    def teacher_squared_error(self, scores: torch.Tensor, ranks: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Mean over lists with teacher scores of ``mean_k (s_k - t_k)^2`` (0 when there are none)."""
        if teacher.shape != scores.shape:
            raise ValueError(f"teacher must be [batch, passages] like scores, got {tuple(teacher.shape)}")
        valid = (ranks > 0) & ~torch.isnan(teacher)
        diff = scores.float() - torch.nan_to_num(teacher.float())
        return mean_over_lists(diff.pow(2), valid)


def mean_over_lists(per_passage: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the lists with any ``valid`` passage of each list's mean over its valid passages
    (0, still attached to the graph, when no list has one)."""
    rows = valid.any(-1)
    if not bool(rows.any()):
        return per_passage.sum() * 0.0
    per_list = per_passage.masked_fill(~valid, 0.0).sum(-1) / valid.sum(-1).clamp(min=1)
    return per_list[rows].mean()
