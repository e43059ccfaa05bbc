"""Complete listwise labels on the one window scheduler (docs/design.md section 3).

Pass 1 runs back-to-front sliding windows (``window_size`` w, ``stride`` s) over all N candidates
and freezes ranks 1..s; pass 2 runs over the remaining N - s and freezes s+1..2s; ... until the
remainder fits one window. That is :func:`rerank.ranking.iter_sliding` with a freezing
:class:`~rerank.ranking.SlidingPlan`; this module adds what labelling needs on top: the teacher's
answers must be whole permutations, failed windows are retried, and every query's cost is counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from rerank.labels.candidates import Candidates
from rerank.labels.config import LabelConfig
from rerank.prompting.identifiers import is_permutation
from rerank.ranking import SlidingPlan, Window, WindowRanker, WindowRanking, iter_sliding


@dataclass
class LabelStats:
    """Teacher cost of one query's complete label."""

    calls: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    passes: int = 0
    retries: int = 0
    seconds: float = 0.0


@dataclass
class LabelOutcome:
    """A finished query: ``order`` (0-based into the candidates) or ``error``."""

    item: Candidates
    order: list[int] | None
    stats: LabelStats
    error: str | None = None


class WindowFailed(Exception):
    """A window the teacher could not rank after ``retries`` more attempts."""

    def __init__(self, cause: Exception, retries: int):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.retries = retries


class RetryingTeacher:
    """The labelling hook on the scheduler: one round of windows, each failure retried on its own.

    A window's answer counts as a failure unless it is a permutation of the whole window (a label
    is never completed from a partial answer). Each answer carries ``retries``: how many times the
    window was asked again before it.
    """

    def __init__(self, teacher: WindowRanker, max_retries: int, retry_wait: float):
        self.teacher, self.max_retries, self.retry_wait = teacher, max_retries, retry_wait

    @staticmethod
    def _check(ranking: WindowRanking, window: Window) -> WindowRanking:
        if not is_permutation(ranking.order, len(window.passages)):
            raise ValueError(f"teacher returned {ranking.order!r}, not a permutation of {len(window.passages)}")
        return ranking

    def rank_round(self, windows: list[Window]) -> list[WindowRanking | Exception]:
        """Per window: its ranking (``retries`` set) or a :class:`WindowFailed`."""
        budget = self.max_retries
        try:
            got = self.teacher.rank_windows(list(windows))
            if len(got) != len(windows):
                raise ValueError(f"teacher returned {len(got)} rankings for {len(windows)} windows")
            results: list[WindowRanking | Exception] = []
            for ranking, window in zip(got, windows):
                try:
                    results.append(self._check(ranking, window))
                except ValueError as exc:
                    results.append(exc)
        except Exception as exc:  # noqa: BLE001 - any teacher failure is retried, then recorded
            results = [exc] * len(windows)
            if len(windows) > 1:  # the batch failed as a whole: each window gets one solo try for free
                budget += 1
        answers: list[WindowRanking | Exception] = []
        for window, result in zip(windows, results):
            wait, retries = self.retry_wait, 0
            while isinstance(result, Exception) and retries < budget:
                if wait > 0:
                    time.sleep(wait)
                    wait *= 2
                retries += 1
                try:
                    result = self._check(self.teacher.rank_windows([window])[0], window)
                except Exception as exc:  # noqa: BLE001
                    result = exc
            if isinstance(result, Exception):
                answers.append(WindowFailed(result, retries))
            else:
                result.retries = retries
                answers.append(result)
        return answers


def iter_complete_labels(
    teacher: WindowRanker,
    items: Iterable[Candidates],
    window_size: int = 20,
    stride: int = 10,
    max_passes: int | None = None,
    batch_size: int = 8,
    max_retries: int = 2,
    retry_wait: float = 1.0,
) -> Iterator[LabelOutcome]:
    """Complete labels for ``items``, ``batch_size`` queries at a time, yielded as each finishes.

    Example:
        >>> teacher = QrelsTeacher({"q": {"b": 2}})                       # doctest: +SKIP
        >>> [o.order for o in iter_complete_labels(teacher, [Candidates("q", "x", ["a", "b"], ["A", "B"])])]
        [[1, 0]]
    """
    plan = SlidingPlan(window_size=window_size, stride=stride, passes=max_passes, freeze=True)
    settled = RetryingTeacher(teacher, max_retries, retry_wait)
    items = list(items)
    for chunk_start in range(0, len(items), batch_size):
        chunk = items[chunk_start : chunk_start + batch_size]
        stats = [LabelStats() for _ in chunk]
        failures: dict[int, str] = {}

        # Called only within this chunk's iteration, so the chunk's own stats and failures are the right ones.
        def account(i: int, answer: WindowRanking | Exception, seconds: float) -> None:
            st = stats[i]  # noqa: B023
            st.seconds += seconds
            st.retries += answer.retries  # type: ignore[union-attr]
            st.calls += 1 + answer.retries  # type: ignore[union-attr]
            if isinstance(answer, WindowRanking):
                st.prompt_tokens += answer.prompt_tokens
                st.generated_tokens += answer.generated_tokens
            else:
                failures[i] = str(answer)  # noqa: B023

        windows = [Window(query=it.query, passages=list(it.texts), qid=it.qid, docids=list(it.docids)) for it in chunk]
        for i, state in iter_sliding(windows, plan, settled.rank_round, on_result=account):
            stats[i].passes = state.passes
            error = failures.get(i)
            yield LabelOutcome(chunk[i], None if error else state.order, stats[i], error)


class _KeepOrderTeacher:
    """Answers every window with its own order: cheap stand-in to replay a run's window schedule."""

    def rank_windows(self, windows: Sequence[Window]) -> list[WindowRanking]:
        return [WindowRanking(order=list(range(len(w.passages))), ranked=len(w.passages)) for w in windows]


def label_order(items: Sequence[Candidates], config: LabelConfig) -> list[str]:
    """Qids in the order one process appends their labels when it labels all ``items``.

    Queries of a batch finish (and are written) after different numbers of teacher rounds, so the
    file is not in input order. That order depends only on list lengths and the window schedule,
    never on the teacher's answers, so replaying the schedule with a stand-in teacher gives it; a
    data-parallel merge uses it to write the file one process would.
    """
    outcomes = iter_complete_labels(
        _KeepOrderTeacher(),
        items,
        config.window_size,
        config.stride,
        config.max_passes,
        config.batch_size,
        max_retries=0,
        retry_wait=0.0,
    )
    return [outcome.item.qid for outcome in outcomes]
