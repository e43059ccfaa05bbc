"""LangChain adapter: :class:`LazyRankCompressor`, a document compressor that reranks.

    from rerank import Reranker
    from rerank.integrations.langchain import LazyRankCompressor

    compressor = LazyRankCompressor(Reranker.from_pretrained(scoring="single_pass"), top_n=3)
    compressor = LazyRankCompressor("http://127.0.0.1:8000", top_n=3)      # or a rerank server
    docs = compressor.compress_documents(retrieved, "how do bees keep warm")
    docs = await compressor.acompress_documents(retrieved, "how do bees keep warm")

Needs ``langchain-core``: ``pip install 'lazyrank[langchain]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the LangChain adapter needs langchain-core: pip install 'lazyrank[langchain]'") from exc

from pydantic import AfterValidator, ConfigDict, PrivateAttr

from rerank.integrations._backend import AdapterInit, RankingBackend, check_top_n

__all__ = ["LazyRankCompressor"]


class LazyRankCompressor(AdapterInit, BaseDocumentCompressor):
    """Rerank retrieved LangChain documents with LazyRank, in process or through a rerank server.

    Returns copies of the best ``top_n`` documents, best first, each with
    ``metadata["relevance_score"]`` (in [0, 1], monotone in rank; see ``docs/serving.md``). The
    input documents are not modified. ``acompress_documents`` is natively async: in process it
    awaits the reranker's batching worker, with a URL an ``httpx.AsyncClient``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    reranker: Any
    """A :class:`rerank.Reranker`, or the URL of a rerank server (``rerank serve``)."""
    top_n: Annotated[int | None, AfterValidator(check_top_n)] = 3
    """How many documents to return; None = all of them, reranked."""
    api_key: str | None = None
    """Bearer token for a server started with ``--api_key``."""
    model: str | None = None
    """``model`` field sent to a server (informational)."""
    timeout: float = 120.0
    """Seconds per server request."""

    _backend: RankingBackend = PrivateAttr()

    @staticmethod
    def _copies(documents: Sequence[Document], ranked: list[tuple[int, float]]) -> list[Document]:
        out = []
        for index, score in ranked:
            doc = documents[index]
            out.append(
                Document(
                    page_content=doc.page_content,
                    metadata={**doc.metadata, "relevance_score": score},
                    id=getattr(doc, "id", None),
                )
            )
        return out

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """The best ``top_n`` documents for ``query``, best first, with ``metadata["relevance_score"]``."""
        documents = list(documents)
        ranked = self._backend.rank(query, [d.page_content for d in documents], self.top_n)
        return self._copies(documents, ranked)

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents` that never blocks the event loop."""
        documents = list(documents)
        ranked = await self._backend.arank(query, [d.page_content for d in documents], self.top_n)
        return self._copies(documents, ranked)
