"""Helpers shared by test_serving.py and test_integrations.py: a live loopback server and test doubles."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

BEE_DOCS = [
    "Honey bees cluster together in winter and shiver their flight muscles to make heat.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "Bumblebees can warm up by vibrating their wing muscles without flapping.",
    "A recipe for banana bread with walnuts and cinnamon.",
    "Penguins huddle to keep warm during the Antarctic winter.",
    "Stock markets fell sharply on Tuesday after the announcement.",
]


def request_set(count: int = 20) -> list[tuple[str, list[str], int | None]]:
    """Distinct (query, documents, top_n) requests: different lengths, orders and cuts."""
    words = [
        "bees",
        "honey",
        "winter",
        "paris",
        "bread",
        "stocks",
        "penguins",
        "tower",
        "muscles",
        "heat",
        "rivers",
        "mountains",
        "violins",
        "tomatoes",
        "satellites",
        "glaciers",
    ]
    out = []
    for i in range(count):
        n = 3 + i % 6
        docs = [
            f"Passage {j} of set {i}: a note on {words[(i * 3 + j * 5) % len(words)]} and "
            f"{words[(i + j * 7) % len(words)]}."
            for j in range(n)
        ]
        top_n = [None, 2, 0, 3, 1][i % 5]
        out.append((f"query {i} about {words[i % len(words)]}", docs, top_n))
    return out


class Flaky:
    """Wraps a Reranker: optional delay per batched call, and failure for queries containing ``fail_on``."""

    def __init__(self, inner: Any, delay: float = 0.0, fail_on: str | None = None):
        self.inner = inner
        self.config = inner.config
        self.delay = delay
        self.fail_on = fail_on
        self.calls: list[int] = []

    def rerank_batch(self, queries, documents, top_k=None):
        self.calls.append(len(queries))
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and any(self.fail_on in q for q in queries):
            raise RuntimeError("injected failure")
        return self.inner.rerank_batch(queries, documents, top_k=top_k)

    def rerank(self, query, documents, top_k=None):
        return self.rerank_batch([query], [documents], top_k=top_k)[0]


class LiveServer:
    """A uvicorn server on 127.0.0.1 (a free port) in a background thread of the test process."""

    def __init__(self, app: Any, graceful_timeout: float = 30.0, **uvicorn_options: Any):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level="warning",
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=graceful_timeout,
                **uvicorn_options,
            )
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "server did not stop"

    def __exit__(self, *exc) -> None:
        if self.thread.is_alive():
            self.stop()


def assert_matches(results: list[dict], reference, top_n: int | None, *, score_key: str = "relevance_score") -> None:
    """An HTTP answer equals the in-process ranking: same indices best first, same relevance scores."""
    from rerank.serving.scores import relevance_scores

    n = len(reference.order) if not top_n else min(top_n, len(reference.order))
    assert [r["index"] for r in results] == reference.order[:n]
    want = relevance_scores(reference)
    assert [r[score_key] for r in results] == pytest.approx([want[i] for i in reference.order[:n]], abs=1e-4)
    got = [r[score_key] for r in results]
    assert all(0.0 <= s <= 1.0 for s in got) and got == sorted(got, reverse=True)
