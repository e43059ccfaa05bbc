"""Relevance scores in [0, 1] for HTTP clients and RAG adapters.

Cohere, Jina and the frameworks built on them expect ``relevance_score`` in ``[0, 1]``, higher is
better, results best first. A :class:`~rerank.RankingResult` carries either rank-derived scores
(``1 - r/N`` and ``<= 0`` after a ``top_k`` cut) or the model's own scores (single-pass scoring:
log P(the answer starts with ``[k]``)). :func:`relevance_scores` maps both to ``[0, 1]``:

* rank-derived scores, and fused rankings (``first_stage_weight > 0``) -> ``1 - r/N`` for every
  0-based rank ``r`` of ``N`` (in ``(0, 1]``);
* calibrated relevance probabilities (``score_kind="probability"``, the shipped head with its
  calibration, :mod:`rerank.calibration`) -> themselves, so a threshold means the same in every request;
* other model scores (log-probabilities, logits, any real number) -> a softmax over the request's
  documents. For single-pass scoring this is P(first identifier = ``[k]``) renormalised over the N
  identifiers, so the values sum to 1 over the request.

Either way a running minimum along the order is taken last, so the values never increase with
rank even where floating point rounding or an order that is not sorted by score (sliding windows)
would say otherwise; tied scores give tied relevance.

Which of the two applies is read from ``result.score_kind``, set by the scorer that produced it,
so a new scoring kind needs no change here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rerank.results import RankingResult
from rerank.scorers import scorer_class

__all__ = ["relevance_scores", "model_top_k"]


def _softmax(values: Sequence[float]) -> list[float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:  # every score -inf (or nan): nothing to tell apart
        return [1.0 / len(values)] * len(values)
    top = max(finite)
    # -inf -> 0 probability; nan is treated the same (it cannot be ranked above anything).
    weights = [math.exp(v - top) if math.isfinite(v) else 0.0 for v in values]
    total = math.fsum(weights)
    return [w / total for w in weights]


def relevance_scores(result: RankingResult) -> list[float]:
    """One relevance score in ``[0, 1]`` per INPUT document, non-increasing along ``result.order``.

    See the module docstring for how they are derived.
    """
    n = len(result.order)
    if n == 0:
        return []
    along = [float(result.scores[i]) for i in result.order]
    if result.score_kind in ("rank", "fused"):
        # Fused reciprocal-rank values differ by ~1e-4: a softmax over them would be flat, so a
        # fused ranking is reported by rank like a decoded one.
        raw = [1.0 - r / n for r in range(n)]
    elif result.score_kind == "probability":
        raw = along  # calibrated P(relevant): already in [0, 1] and comparable across requests
    else:
        raw = _softmax(along)
    out = [0.0] * n
    running = 1.0
    for rank, index in enumerate(result.order):
        running = min(running, max(0.0, raw[rank]))
        out[index] = running
    return out


def model_top_k(scoring: str, top_n: int | None) -> int | None:
    """The ``top_k`` to hand the model for a request that returns ``top_n`` results.

    Scorers whose cost depends on ``top_k`` (decoding stops after ``top_n`` identifiers, most of the
    saving a RAG caller can get) get ``top_n``. Scorers that score every passage anyway (their
    order does not depend on ``top_k``) get ``None``: requests with different ``top_n`` then share
    one batched model call.
    """
    return top_n if scorer_class(scoring).needs_top_k else None
