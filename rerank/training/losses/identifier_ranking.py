"""Ranking losses on single-pass identifier scores (the training side of ``scoring="single_pass"``).

Inputs are ``scores[b, k]`` = log P(the answer starts with identifier k+1 | prompt) for every
passage of a window (as :func:`rerank.engine.single_pass.score_identifiers` computes them), and
``ranks[b, k]`` = the 1-based rank the label gives passage k (0 = padding, ignored).

* ``ranknet`` (weighted, as in FIRST):
  ``L = sum_{r_i < r_j} w_ij * log(1 + exp(s_j - s_i)) / sum w_ij`` with ``w_ij = 1 / (r_i + r_j)``
  (``weighted=False``: ``w_ij = 1``), so mistakes near the top cost most.
* ``listnet`` (top-one): ``L = - sum_k p_k log softmax(s)_k`` with target ``p = softmax(g / T)``,
  ``g_k = 1 / log2(r_k + 1)`` (the importance-aware gain), temperature ``T``.
* ``listmle``: ``L = - sum_{i=1..N} [ s_{pi(i)} - log sum_{j >= i} exp(s_{pi(j)}) ] / N`` over the
  label order ``pi``.
Each returns the mean over the batch.
"""

from __future__ import annotations

import torch
from torch import nn

RANKING_LOSSES = ("ranknet", "listnet", "listmle")


class IdentifierRankingLoss(nn.Module):
    """Listwise/pairwise loss on identifier scores; see the module docstring for the formulas.

    Example:
        >>> loss = IdentifierRankingLoss("ranknet")
        >>> round(float(loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[1, 2]]))), 4)  # log(2): tied scores
        0.6931
    """

    def __init__(self, kind: str = "ranknet", weighted: bool = True, temperature: float = 0.1):
        super().__init__()
        if kind not in RANKING_LOSSES:
            raise ValueError(f"kind must be one of {RANKING_LOSSES}, got {kind!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.kind, self.weighted, self.temperature = kind, weighted, temperature

    def forward(self, scores: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
        if scores.shape != ranks.shape or scores.dim() != 2:
            raise ValueError(
                f"scores and ranks must both be [batch, passages], got {tuple(scores.shape)} and {tuple(ranks.shape)}"
            )
        scores = scores.double() if scores.dtype == torch.float64 else scores.float()
        valid = ranks > 0
        if self.kind == "ranknet":
            return self._ranknet(scores, ranks, valid)
        if self.kind == "listnet":
            return self._listnet(scores, ranks, valid)
        return self._listmle(scores, ranks, valid)

    def _ranknet(self, s, r, valid):
        rf = r.to(s.dtype)
        above = (r[:, :, None] < r[:, None, :]) & valid[:, :, None] & valid[:, None, :]  # i ranked above j
        # Padding has rank 0: 1/(0+0) = inf, and inf * False = nan, so the mask must select, not multiply.
        pair_sum = (rf[:, :, None] + rf[:, None, :]).clamp(min=1.0)
        weight = 1.0 / pair_sum if self.weighted else torch.ones_like(pair_sum)
        weight = torch.where(above, weight, torch.zeros_like(weight))
        pair = torch.nn.functional.softplus(s[:, None, :] - s[:, :, None])  # log(1 + e^{s_j - s_i})
        per_example = (weight * pair).sum((1, 2)) / weight.sum((1, 2)).clamp(min=1e-12)
        return per_example.mean()

    def _listnet(self, s, r, valid):
        gain = torch.where(valid, 1.0 / torch.log2(r.to(s.dtype).clamp(min=1) + 1.0), torch.zeros_like(s))
        neg = torch.finfo(s.dtype).min
        target = torch.softmax((gain / self.temperature).masked_fill(~valid, neg), dim=-1)
        logp = torch.log_softmax(s.masked_fill(~valid, neg), dim=-1)
        return -(target * logp.masked_fill(~valid, 0.0)).sum(-1).mean()

    def _listmle(self, s, r, valid):
        # Sort by label rank (padding last), then the Plackett-Luce likelihood via reverse cumulative logsumexp.
        key = torch.where(valid, r, torch.full_like(r, r.max() + 1))
        order = key.argsort(dim=-1)
        s_sorted = s.gather(-1, order)
        v_sorted = valid.gather(-1, order)
        neg = torch.finfo(s.dtype).min
        masked = s_sorted.masked_fill(~v_sorted, neg)
        tail = torch.logcumsumexp(masked.flip(-1), dim=-1).flip(-1)
        terms = (s_sorted - tail).masked_fill(~v_sorted, 0.0)
        return (-terms.sum(-1) / v_sorted.sum(-1).clamp(min=1)).mean()
