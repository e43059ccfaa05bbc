"""The window-ranking primitive and the strategies built on it.

Everything that ranks passages (the LLM reranker, labelling teachers, oracles) implements one
method, :meth:`WindowRanker.rank_windows`, which ranks a batch of independent windows. Full
ranking is one window holding every passage; sliding windows call the same primitive back to front;
complete labels (``rerank.labels``) repeat sliding passes, freezing the top after each. Both run
on one scheduler, :func:`iter_sliding`; a :class:`SlidingPlan` says which.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rerank.prompting.identifiers import complete_order


@dataclass
class Window:
    """One ranking request: a query and passages in first-stage order.

    ``top_k`` asks for only the best ``top_k`` to be decided; ``passage_tokens`` cuts each passage of
    this window to that many tokens instead of the ranker's own budget; ``cache`` lets a ranker keep
    work (e.g. the tokenised prompt) between a fit check and the actual call.
    """

    query: str
    passages: list[str]
    top_k: int | None = None
    qid: str | None = None
    docids: list[str] | None = None
    passage_tokens: int | None = None
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
    retries: int = 0  # times the window was asked again before this answer (labelling retries failures)


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


@dataclass(frozen=True)
class SlidingPlan:
    """Where the windows of one list go: back-to-front passes of ``window_size`` every ``stride``.

    Without ``freeze`` every pass covers the whole list (RankGPT-style repeated passes). With it,
    the top ``stride`` ranks are final after each pass and the next pass covers only the rest, until
    the remainder fits one window: the complete labels of ``rerank.labels``.

    >>> SlidingPlan(window_size=4, stride=2, passes=None, freeze=True)
    SlidingPlan(window_size=4, stride=2, passes=None, freeze=True)
    """

    window_size: int = 20
    stride: int = 10
    passes: int | None = 1
    freeze: bool = False

    def __post_init__(self):
        if self.window_size < 1 or self.stride < 1:
            raise ValueError(f"window_size and stride must be >= 1, got {self.window_size} and {self.stride}")
        if self.passes is not None and self.passes < 1:
            raise ValueError(f"passes must be >= 1 or None, got {self.passes}")
        if self.passes is None and not self.freeze:
            raise ValueError("passes=None (until complete) needs freeze=True, or it would never end")
        if self.freeze and 2 * self.stride > self.window_size:
            # The top s of a pass are exact only if a window carries its best s into the next one.
            raise ValueError(
                f"stride ({self.stride}) must be at most half of window_size ({self.window_size}) "
                "when the top of each pass is frozen"
            )


@dataclass
class SlidingState:
    """One list under a :class:`SlidingPlan`: its order so far and where the next window goes.

    ``order`` is a 0-based permutation of the list; ``error`` is set (and ``done``) when a ranker
    answered a window of this list with an exception.
    """

    order: list[int]
    frozen: int = 0
    passes: int = 0
    starts: list[int] = field(default_factory=list)
    step: int = 0
    done: bool = False
    error: str | None = None

    def start_pass(self, plan: SlidingPlan) -> None:
        """Plan the next pass over the unfrozen remainder, or mark the list done."""
        remaining = len(self.order) - self.frozen
        if remaining <= 1 or (plan.passes is not None and self.passes >= plan.passes):
            self.done = True
            return
        self.starts = [self.frozen + s for s in window_starts(remaining, plan.window_size, plan.stride)]
        self.step = 0
        self.passes += 1

    def window_ids(self, plan: SlidingPlan) -> list[int]:
        """List positions (0-based) of the passages in the next window, in current order."""
        start = self.starts[self.step]
        return self.order[start : start + plan.window_size]

    def is_last_window(self, plan: SlidingPlan) -> bool:
        """Whether the next window is the last one of the whole schedule (the top of the list)."""
        if self.step != len(self.starts) - 1:
            return False
        if plan.freeze and len(self.order) - self.frozen <= plan.window_size:
            return True
        return plan.passes is not None and self.passes >= plan.passes

    def apply(self, ranked: Sequence[int], plan: SlidingPlan) -> None:
        """Reorder the next window by ``ranked`` (0-based within it; a partial order keeps the rest
        in their previous order) and move on to the following window or pass."""
        start = self.starts[self.step]
        ids = self.order[start : start + plan.window_size]
        self.order[start : start + len(ids)] = [ids[k] for k in complete_order(list(ranked), len(ids))]
        self.step += 1
        if self.step < len(self.starts):
            return
        if plan.freeze:
            if len(self.order) - self.frozen <= plan.window_size:
                self.done = True  # the remainder was ranked in one window
                return
            self.frozen += plan.stride
        self.start_pass(plan)


RankRound = Callable[[list[Window]], Sequence["WindowRanking | Exception"]]


def iter_sliding(
    lists: Sequence[Window],
    plan: SlidingPlan,
    rank_round: RankRound,
    *,
    top_k: int | None = None,
    on_result: Callable[[int, WindowRanking | Exception, float], None] | None = None,
) -> Iterator[tuple[int, SlidingState]]:
    """The one window scheduler: run ``plan`` over several lists at once, yielding ``(index, state)``
    as each list finishes.

    Each round sends the next window of every unfinished list to ``rank_round`` in one call, so a
    batch costs as many rounds as its longest schedule. ``rank_round`` answers each window with a
    :class:`WindowRanking` or an exception; an exception ends that list with ``state.error`` set
    (retrying is the caller's hook: wrap ``rank_round``). With ``top_k`` the last window of a list
    decides only its best ``top_k``. ``on_result(index, answer, seconds)`` sees every answer with
    the list's share of the round's wall time (cost accounting).
    """
    states = []
    for window in lists:
        state = SlidingState(order=list(range(len(window.passages))))
        state.start_pass(plan)
        states.append(state)
    pending = list(range(len(states)))
    while pending:
        for i in [i for i in pending if states[i].done]:
            pending.remove(i)
            yield i, states[i]
        if not pending:
            return
        requests = []
        for i in pending:
            window, ids = lists[i], states[i].window_ids(plan)
            requests.append(
                Window(
                    query=window.query,
                    passages=[window.passages[k] for k in ids],
                    qid=window.qid,
                    docids=None if window.docids is None else [window.docids[k] for k in ids],
                    top_k=top_k if states[i].is_last_window(plan) else None,
                )
            )
        tick = time.perf_counter()
        answers = list(rank_round(requests))
        if len(answers) != len(requests):
            raise ValueError(f"ranker returned {len(answers)} rankings for {len(requests)} windows")
        share = (time.perf_counter() - tick) / len(requests)
        for i, answer in zip(list(pending), answers):
            if on_result is not None:
                on_result(i, answer, share)
            if isinstance(answer, Exception):
                states[i].error = f"{type(answer).__name__}: {answer}"
                states[i].done = True
            else:
                states[i].apply(answer.order, plan)


def sliding_orders(
    ranker: WindowRanker,
    windows: Sequence[Window],
    window_size: int,
    stride: int,
    num_passes: int = 1,
    on_call=None,
    top_k: int | None = None,
) -> list[list[int]]:
    """Back-to-front sliding-window ranking of several independent lists at once.

    Returns a full 0-based permutation per list. ``on_call(i, ranking)`` is told about each window
    ranking made for list ``i`` (for cost accounting). With ``top_k``, the very last window (the top
    of the list) decides only its best ``top_k``; the rest of it keeps the order earlier windows gave.
    A ranker that raises stops the whole call (inference has no retries; labelling wraps the ranker).
    """
    plan = SlidingPlan(window_size=window_size, stride=stride, passes=num_passes)
    orders: list[list[int]] = [[] for _ in windows]
    report = None if on_call is None else (lambda i, ranking, _seconds: on_call(i, ranking))
    for i, state in iter_sliding(windows, plan, ranker.rank_windows, top_k=top_k, on_result=report):
        orders[i] = state.order
    return orders
