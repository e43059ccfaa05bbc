"""The window-ranking primitive and the strategies built on it.

Everything that ranks passages (the LLM reranker, labelling teachers, oracles) implements one
method, :meth:`WindowRanker.rank_windows`, which ranks a batch of independent windows. Full
ranking is one window holding every passage; sliding windows call the same primitive back to front;
complete labels (``rerank.labels``) repeat sliding passes, freezing the top after each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from .decoding import complete_order


@dataclass
class Window:
    """One ranking request: a query and passages in first-stage order.

    ``top_k`` asks for only the best ``top_k`` to be decided; ``cache`` lets a ranker keep work
    (e.g. the tokenised prompt) between a fit check and the actual call.
    """

    query: str
    passages: list[str]
    top_k: int | None = None
    qid: str | None = None
    docids: list[str] | None = None
    cache: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class WindowRanking:
    """A ranker's answer for one window: a full 0-based permutation, the first ``ranked`` decided.

    ``scores`` (per passage, indexed like the window) is set by rankers that score passages, such
    as single-pass identifier scoring; generative rankers leave it None.
    """

    order: list[int]
    ranked: int
    scores: list[float] | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    constraint_seconds: float = 0.0
    kept_tokens: int | None = None
    computed_fraction: float = 1.0
    truncated_passages: int = 0


class WindowRanker(Protocol):
    """Anything that ranks windows: an LLM, an API teacher, an embedding model, a qrels oracle."""

    def rank_windows(self, windows: Sequence[Window]) -> list[WindowRanking]: ...


def window_starts(num: int, window_size: int, stride: int) -> list[int]:
    """Start offsets of back-to-front sliding windows over ``num`` passages.

    >>> window_starts(100, 20, 10)
    [80, 70, 60, 50, 40, 30, 20, 10, 0]
    >>> window_starts(15, 20, 10)
    [0]
    """
    if num <= window_size:
        return [0]
    starts = []
    start = num - window_size
    while True:
        starts.append(max(start, 0))
        if start <= 0:
            return starts
        start -= stride


@dataclass
class _SlidingJob:
    window: Window
    order: list[int]
    schedule: list[int]
    step: int = 0


def sliding_orders(ranker: WindowRanker, windows: Sequence[Window], window_size: int, stride: int,
                   num_passes: int = 1, on_call=None, top_k: int | None = None) -> list[list[int]]:
    """Back-to-front sliding-window ranking of several independent lists at once.

    The k-th window of every list is ranked in one batched call, so a batch of queries costs as
    many rounds as its longest schedule. Returns a full 0-based permutation per list. ``on_call(i,
    ranking)`` is told about each window ranking made for list ``i`` (for cost accounting).
    With ``top_k``, the very last window (the top of the list) decides only its best ``top_k``;
    the rest of it keeps the order earlier windows gave.
    """
    jobs = []
    for w in windows:
        sched = window_starts(len(w.passages), window_size, stride) * num_passes
        jobs.append(_SlidingJob(window=w, order=list(range(len(w.passages))), schedule=sched))
    while True:
        live = [(i, j) for i, j in enumerate(jobs) if j.step < len(j.schedule) and len(j.order) > 1]
        if not live:
            break
        requests = []
        for _, job in live:
            start = job.schedule[job.step]
            ids = job.order[start:start + window_size]
            last = job.step == len(job.schedule) - 1
            docids = None if job.window.docids is None else [job.window.docids[k] for k in ids]
            requests.append(Window(query=job.window.query, passages=[job.window.passages[k] for k in ids],
                                   qid=job.window.qid, docids=docids, top_k=top_k if last else None))
        results = ranker.rank_windows(requests)
        for (i, job), ranking in zip(live, results):
            start = job.schedule[job.step]
            ids = job.order[start:start + window_size]
            job.order[start:start + window_size] = [ids[k] for k in complete_order(ranking.order, len(ids))]
            job.step += 1
            if on_call is not None:
                on_call(i, ranking)
    return [job.order for job in jobs]
