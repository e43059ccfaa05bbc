"""Dynamic batching: concurrent rerank requests ranked together on one worker thread.

Callers (threads or asyncio tasks) submit ``(query, documents, top_k)``; one worker thread takes
the first waiting request, keeps collecting requests for up to ``max_wait_ms`` (counted from that
first request's arrival) or until ``max_batch_size`` are collected, and ranks them with
:meth:`Reranker.rerank_batch` (one call per distinct ``top_k`` in the batch, since ``top_k`` changes
what is decoded). Each request gets exactly the :class:`~rerank.RankingResult` that
``reranker.rerank(query, documents, top_k)`` gives for it alone: ``rerank_batch`` ranks every query
independently and only shares the forward passes.

The model therefore never runs on an event loop, and it runs on one thread only. If a batch fails,
its requests are re-run one by one so that only the request(s) that fail get the exception; the
worker keeps serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rerank.results import RankingResult

logger = logging.getLogger(__name__)

__all__ = ["BatcherConfig", "BatcherClosedError", "DynamicBatcher", "QueueFullError", "batcher_for"]


class QueueFullError(RuntimeError):
    """More requests are outstanding than ``max_pending`` allows (HTTP 429)."""


class BatcherClosedError(RuntimeError):
    """The batcher is shutting down and takes no new requests (HTTP 503)."""


@dataclass
class BatcherConfig:
    """How requests are grouped into batched model calls."""

    max_batch_size: int | None = field(
        default=None,
        metadata={
            "help": (
                "Most requests (prompts) ranked in one rerank_batch call; None = the reranker's batch_size. 1 turns "
                "dynamic batching off."
            )
        },
    )
    max_wait_ms: float = field(
        default=5.0,
        metadata={
            "help": (
                "How long the first request of a batch waits for others to join (ms); 0 = take only what is already "
                "queued."
            )
        },
    )
    max_pending: int = field(
        default=512,
        metadata={"help": "Most requests outstanding (queued or being ranked) before submit raises QueueFullError."},
    )
    idle_timeout_s: float | None = field(
        default=None,
        metadata={
            "help": (
                "The worker thread exits after this many idle seconds and restarts on the next request; None = it "
                "lives until close()."
            )
        },
    )

    def __post_init__(self):
        if self.max_batch_size is not None and (
            not isinstance(self.max_batch_size, int) or isinstance(self.max_batch_size, bool) or self.max_batch_size < 1
        ):
            raise ValueError(f"max_batch_size must be a positive integer or None, got {self.max_batch_size!r}")
        if not isinstance(self.max_wait_ms, (int, float)) or isinstance(self.max_wait_ms, bool) or self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be a number >= 0, got {self.max_wait_ms!r}")
        if not isinstance(self.max_pending, int) or isinstance(self.max_pending, bool) or self.max_pending < 1:
            raise ValueError(f"max_pending must be a positive integer, got {self.max_pending!r}")
        if self.idle_timeout_s is not None and self.idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be > 0 or None, got {self.idle_timeout_s!r}")


@dataclass
class _Item:
    query: str
    documents: list[str]
    top_k: int | None
    future: concurrent.futures.Future
    arrived: float


class DynamicBatcher:
    """Ranks submitted requests in batches on one worker thread (see the module docstring).

    Example:
        >>> batcher = DynamicBatcher(rr, BatcherConfig(max_wait_ms=5))     # doctest: +SKIP
        >>> result = await batcher.arerank("query", ["doc a", "doc b"])      # doctest: +SKIP
        >>> batcher.close()                                                 # doctest: +SKIP
    """

    def __init__(
        self,
        reranker: Any,
        config: BatcherConfig | None = None,
        *,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        self.reranker = reranker
        self.config = config or BatcherConfig()
        self.max_batch_size = self.config.max_batch_size or int(getattr(reranker.config, "batch_size", 1))
        self._on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._pending = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self.batches = 0  # batches run so far (tests and metrics read it)

    # ------------------------------------------------------------------ state
    @property
    def pending(self) -> int:
        """Requests submitted and not yet answered (queued or being ranked)."""
        return self._pending

    @property
    def queued(self) -> int:
        """Requests waiting for the worker (not yet in a batch)."""
        return len(self._queue)

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ submitting
    def submit(self, query: str, documents: Sequence[str], top_k: int | None = None) -> concurrent.futures.Future:
        """Queue one request; the future resolves to its :class:`RankingResult` (or its exception).

        Raises:
            QueueFullError: ``max_pending`` requests are already outstanding.
            BatcherClosedError: :meth:`close` was called.
        """
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the reranker is shutting down")
            if self._pending >= self.config.max_pending:
                raise QueueFullError(f"{self._pending} requests outstanding, the limit is {self.config.max_pending}")
            self._pending += 1
            self._queue.append(_Item(query, list(documents), top_k, future, time.monotonic()))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lazyrank-batcher", daemon=True)
                self._thread.start()
            self._cond.notify()
        return future

    def rerank(
        self, query: str, documents: Sequence[str], top_k: int | None = None, timeout: float | None = None
    ) -> RankingResult:
        """Blocking :meth:`submit` (from a thread that is not the worker)."""
        return self.submit(query, documents, top_k).result(timeout)

    async def arerank(self, query: str, documents: Sequence[str], top_k: int | None = None) -> RankingResult:
        """Await one request without blocking the event loop.

        Cancelling the awaiting task cancels the request if the worker has not started it yet.
        """
        return await asyncio.wrap_future(self.submit(query, documents, top_k))

    # ------------------------------------------------------------------ worker
    def _take_batch(self) -> list[_Item] | None:
        """Block for the next batch; None when the worker should exit."""
        idle = self.config.idle_timeout_s
        with self._cond:
            while not self._queue:
                if self._closed:
                    self._thread = None
                    return None
                if not self._cond.wait(timeout=idle) and not self._queue and idle is not None:
                    # Idle for idle_timeout_s: let the thread (and its references) go; submit restarts one.
                    self._thread = None
                    return None
            batch = [self._queue.popleft()]
            deadline = batch[0].arrived + self.config.max_wait_ms / 1000.0
            while len(batch) < self.max_batch_size:
                if self._queue:
                    batch.append(self._queue.popleft())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(timeout=remaining)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            # Requests whose caller gave up before the batch started are dropped here.
            live = [item for item in batch if item.future.set_running_or_notify_cancel()]
            with self._cond:
                self._pending -= len(batch) - len(live)
                self.batches += 1
            start = time.perf_counter()
            try:
                if live:
                    self._rank(live)
            finally:
                for item in live:  # never leave a caller waiting, whatever went wrong above
                    if not item.future.done():
                        self._finish(item, exc=RuntimeError("the reranker returned no result for this request"))
                if live and self._on_batch is not None:
                    try:
                        self._on_batch(len(live), time.perf_counter() - start)
                    except Exception:  # metrics must never take the worker down
                        logger.exception("on_batch callback failed")

    def _finish(self, item: _Item, result: RankingResult | None = None, exc: BaseException | None = None) -> None:
        # Counted out before the caller can see the answer, so a caller that sends its next request
        # at once never finds its own finished request still holding a slot.
        with self._cond:
            self._pending -= 1
        if exc is not None:
            item.future.set_exception(exc)
        else:
            item.future.set_result(result)

    def _rank(self, items: list[_Item]) -> None:
        groups: dict[int | None, list[_Item]] = {}
        for item in items:
            groups.setdefault(item.top_k, []).append(item)
        for top_k, group in groups.items():
            try:
                results = self.reranker.rerank_batch(
                    [i.query for i in group], [i.documents for i in group], top_k=top_k
                )
            except BaseException as exc:  # noqa: BLE001 - isolated below, the worker must survive
                if len(group) == 1:
                    self._finish(group[0], exc=exc)
                    continue
                logger.warning(
                    "a batch of %d requests failed (%s: %s); ranking them one by one",
                    len(group),
                    type(exc).__name__,
                    exc,
                )
                for item in group:
                    try:
                        one = self.reranker.rerank_batch([item.query], [item.documents], top_k=top_k)[0]
                    except BaseException as one_exc:  # noqa: BLE001
                        self._finish(item, exc=one_exc)
                    else:
                        self._finish(item, one)
                continue
            for item, result in zip(group, results):
                self._finish(item, result)

    # ------------------------------------------------------------------ shutdown
    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Refuse new requests; the worker finishes every queued one, then exits.

        With ``wait`` this blocks until the worker has exited (or ``timeout`` seconds passed).
        """
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify_all()
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


_ATTACH_LOCK = threading.Lock()
_ATTR = "_lazyrank_async_batcher"


def batcher_for(reranker: Any) -> DynamicBatcher:
    """The batcher behind ``reranker.arank``/``arerank``/``arank_batch`` (one per reranker, created once).

    Its worker thread exits after 30 idle seconds, so an idle reranker holds no thread and can be
    garbage collected; batching is on (requests within 2 ms share a call).
    """
    batcher = getattr(reranker, _ATTR, None)
    if batcher is None:
        with _ATTACH_LOCK:
            batcher = getattr(reranker, _ATTR, None)
            if batcher is None:
                batcher = DynamicBatcher(
                    reranker, BatcherConfig(max_wait_ms=2.0, max_pending=1_000_000, idle_timeout_s=30.0)
                )
                setattr(reranker, _ATTR, batcher)
    return batcher
