"""LlamaIndex adapter: :class:`LazyRankPostprocessor`, a node postprocessor that reranks.

    from rerank import Reranker
    from rerank.integrations.llamaindex import LazyRankPostprocessor

    post = LazyRankPostprocessor(Reranker.from_pretrained(scoring="single_pass"), top_n=3)
    post = LazyRankPostprocessor("http://127.0.0.1:8000", top_n=3)       # or a rerank server
    nodes = post.postprocess_nodes(retrieved, query_str="how do bees keep warm")
    nodes = await post.apostprocess_nodes(retrieved, query_str="how do bees keep warm")
    query_engine = index.as_query_engine(node_postprocessors=[post])

Needs ``llama-index-core``: ``pip install 'lazyrank[llamaindex]'``.
"""

from __future__ import annotations

from typing import Annotated, Any

try:
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CBEventType, EventPayload
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
    from pydantic import AfterValidator
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the LlamaIndex adapter needs llama-index-core: pip install 'lazyrank[llamaindex]'") from exc

from rerank.integrations._backend import AdapterInit, RankingBackend, check_top_n

__all__ = ["LazyRankPostprocessor"]


class LazyRankPostprocessor(AdapterInit, BaseNodePostprocessor):
    """Rerank retrieved LlamaIndex nodes with LazyRank, in process or through a rerank server.

    Follows the built-in rerankers' conventions: ``ValueError`` without a query, ``[]`` for no nodes,
    node text from ``get_content(metadata_mode=MetadataMode.EMBED)``, ``NodeWithScore(score=...)``
    best first cut to ``top_n``, with the relevance score in [0, 1] (monotone in rank). With
    ``keep_retrieval_score`` the previous score is kept in ``metadata["retrieval_score"]``.
    ``apostprocess_nodes`` is natively async (no thread of its own).
    """

    reranker: Any = Field(exclude=True, description="A rerank.Reranker, or the URL of a rerank server.")
    top_n: Annotated[int | None, AfterValidator(check_top_n)] = Field(
        default=3, description="Nodes to return; None = all, reranked."
    )
    keep_retrieval_score: bool = Field(
        default=False, description="Keep the incoming score in metadata['retrieval_score']."
    )
    api_key: str | None = Field(default=None, exclude=True, description="Bearer token for a server with --api_key.")
    model: str | None = Field(default=None, description="'model' field sent to a server (informational).")
    timeout: float = Field(default=120.0, description="Seconds per server request.")

    _backend: RankingBackend = PrivateAttr()

    @classmethod
    def class_name(cls) -> str:
        return "LazyRankPostprocessor"

    @staticmethod
    def _texts(nodes: list[NodeWithScore]) -> list[str]:
        return [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]

    def _wrap(self, nodes: list[NodeWithScore], ranked: list[tuple[int, float]]) -> list[NodeWithScore]:
        out = []
        for index, score in ranked:
            node = nodes[index]
            if self.keep_retrieval_score:
                node.node.metadata["retrieval_score"] = node.score  # as LlamaIndex's own rerankers do
            out.append(NodeWithScore(node=node.node, score=score))
        return out

    @staticmethod
    def _check(query_bundle: QueryBundle | None) -> QueryBundle:
        if query_bundle is None:
            raise ValueError("LazyRankPostprocessor needs a query: pass query_str or query_bundle")
        return query_bundle

    def _event(self, nodes: list[NodeWithScore], query: QueryBundle):
        return self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: nodes,
                EventPayload.MODEL_NAME: self.model or "lazyrank",
                EventPayload.QUERY_STR: query.query_str,
                EventPayload.TOP_K: self.top_n,
            },
        )

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query = self._check(query_bundle)
        if not nodes:
            return []
        with self._event(nodes, query) as event:
            out = self._wrap(nodes, self._backend.rank(query.query_str, self._texts(nodes), self.top_n))
            event.on_end(payload={EventPayload.NODES: out})
        return out

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query = self._check(query_bundle)
        if not nodes:
            return []
        with self._event(nodes, query) as event:
            out = self._wrap(nodes, await self._backend.arank(query.query_str, self._texts(nodes), self.top_n))
            event.on_end(payload={EventPayload.NODES: out})
        return out
