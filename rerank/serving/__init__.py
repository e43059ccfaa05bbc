"""Serving LazyRank: dynamic batching, an async worker, and a Cohere/Jina/TEI-compatible HTTP server.

* :class:`DynamicBatcher` (no extra dependencies) groups concurrent requests into batched model
  calls on one worker thread; it is what ``Reranker.arank``/``arerank``/``arank_batch`` use.
* :func:`create_app` / ``rerank serve`` need the ``serve`` extra: ``pip install 'lazyrank[serve]'``.
"""

from rerank.batching import BatcherClosedError, BatcherConfig, DynamicBatcher, QueueFullError, batcher_for
from rerank.serving.scores import model_top_k, relevance_scores

__all__ = [
    "BatcherClosedError",
    "BatcherConfig",
    "DynamicBatcher",
    "QueueFullError",
    "ServerConfig",
    "batcher_for",
    "create_app",
    "model_top_k",
    "relevance_scores",
]


def __getattr__(name: str):
    # The app pulls in starlette and prometheus-client only when asked for.
    if name in ("ServerConfig", "create_app"):
        from rerank.serving import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
