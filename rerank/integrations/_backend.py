"""What the framework adapters rank with: an in-process Reranker or a rerank server URL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rerank.serving.scores import model_top_k, relevance_scores

__all__ = ["RankingBackend", "adapter_kwargs", "check_top_n"]


def adapter_kwargs(reranker: Any, kwargs: dict) -> dict:
    """Both adapters take the reranker (or server URL) positionally as well as by keyword."""
    if reranker is not None:
        kwargs["reranker"] = reranker
    return kwargs


class AdapterInit:
    """Construction shared by the LangChain and LlamaIndex adapters (pydantic models): the reranker or
    server URL may come positionally, and the ranking backend is built once from the validated fields.

    Listed before the framework's base class, so its ``__init__`` wraps the model's own.
    """

    def __init__(self, reranker: Any = None, /, **kwargs: Any):
        super().__init__(**adapter_kwargs(reranker, kwargs))
        self._backend = RankingBackend.for_adapter(self)


def check_top_n(value: int | None) -> int | None:
    """The adapters' ``top_n``: a positive integer, or None for all documents."""
    if value is not None and value < 1:
        raise ValueError(f"top_n must be a positive integer or None, got {value}")
    return value


class RankingBackend:
    """Ranks ``texts`` for a query as ``[(index, relevance_score)]`` best first, cut to ``top_n``.

    ``target`` is a :class:`~rerank.Reranker` (ranked in this process; async calls go through its
    batching worker thread) or the URL of a rerank server (``rerank serve`` or any Cohere-compatible
    one). Either way ``relevance_score`` is the server's: in [0, 1], monotone in rank.
    """

    def __init__(self, target: Any, *, api_key: str | None = None, model: str | None = None, timeout: float = 120.0):
        if isinstance(target, str):
            from rerank.integrations.http_client import RerankHTTPClient

            self.client: Any = RerankHTTPClient(target, api_key=api_key, model=model, timeout=timeout)
            self.reranker = None
        elif hasattr(target, "rerank") and hasattr(target, "arerank") and hasattr(target, "config"):
            self.client = None
            self.reranker = target
        else:
            raise TypeError(f"expected a rerank.Reranker or a server URL, got {type(target).__name__}")

    @classmethod
    def for_adapter(cls, adapter: Any) -> RankingBackend:
        """The backend of a LangChain / LlamaIndex adapter, from its validated fields."""
        return cls(adapter.reranker, api_key=adapter.api_key, model=adapter.model, timeout=adapter.timeout)

    def _cut(self, result: Any, top_n: int | None) -> list[tuple[int, float]]:
        relevance = relevance_scores(result)
        order = result.order if top_n is None else result.order[:top_n]
        return [(i, relevance[i]) for i in order]

    def _top_k(self, top_n: int | None, n: int) -> int | None:
        top_n = None if top_n is None else min(top_n, n)
        return model_top_k(getattr(self.reranker.config, "scoring", "generate"), top_n)

    def rank(self, query: str, texts: Sequence[str], top_n: int | None) -> list[tuple[int, float]]:
        if not texts:
            return []
        if self.client is not None:
            return self.client.rerank(query, texts, top_n)
        return self._cut(self.reranker.rerank(query, list(texts), top_k=self._top_k(top_n, len(texts))), top_n)

    def rank_many(self, queries: Sequence[str], texts: Sequence[Sequence[str]]) -> list[list[tuple[int, float]]]:
        """:meth:`rank` of every document for several queries: in process one ``rerank_batch`` call, so
        the reranker batches its LLM calls across queries; with a server one request per query."""
        if self.client is not None:
            return [self.client.rerank(q, t, None) if t else [] for q, t in zip(queries, texts)]
        results = self.reranker.rerank_batch(list(queries), [list(t) for t in texts])
        return [self._cut(r, None) for r in results]

    async def arank(self, query: str, texts: Sequence[str], top_n: int | None) -> list[tuple[int, float]]:
        if not texts:
            return []
        if self.client is not None:
            return await self.client.arerank(query, texts, top_n)
        return self._cut(await self.reranker.arerank(query, list(texts), top_k=self._top_k(top_n, len(texts))), top_n)
