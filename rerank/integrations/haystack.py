"""Haystack adapter: :class:`LazyRankRanker`, a ranker component for Haystack pipelines.

    from haystack import Pipeline
    from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
    from rerank.integrations.haystack import LazyRankRanker

    pipe = Pipeline()
    pipe.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=20))
    pipe.add_component("ranker", LazyRankRanker(top_k=5))          # the shipped default, loaded by warm_up()
    pipe.connect("retriever.documents", "ranker.documents")
    pipe.run({"retriever": {"query": q}, "ranker": {"query": q}})["ranker"]["documents"]

``LazyRankRanker(url="http://127.0.0.1:8000")`` ranks through a rerank server instead. Needs
``haystack-ai``: ``pip install 'lazyrank[haystack]'``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

try:
    from haystack import Document, component, default_from_dict, default_to_dict
    from haystack.utils import Secret, deserialize_secrets_inplace
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the Haystack adapter needs haystack-ai: pip install 'lazyrank[haystack]'") from exc

from rerank.integrations._backend import RankingBackend

__all__ = ["LazyRankRanker"]


def _check_top_k(top_k: int | None) -> int | None:
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k <= 0):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    return top_k


@component
class LazyRankRanker:
    """Rerank documents for a query with LazyRank: in process (a model loaded by :meth:`warm_up`, or a
    given :class:`~rerank.Reranker`) or through a rerank server (``url``).

    Returns copies of the best ``top_k`` documents, best first, with ``Document.score`` the relevance in
    [0, 1] (monotone in rank; see ``docs/serving.md``); the input documents are not modified. The text
    ranked is ``content``, after the ``meta_fields_to_embed`` values joined by ``embedding_separator``,
    as in Haystack's own rankers and embedders.

    Example:
        >>> ranker = LazyRankRanker(top_k=3)                                   # doctest: +SKIP
        >>> ranker.run(query="how do bees keep warm", documents=docs)["documents"]   # doctest: +SKIP
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        url: str | None = None,
        reranker: Any = None,
        reranker_kwargs: dict[str, Any] | None = None,
        top_k: int | None = 10,
        score_threshold: float | None = None,
        meta_fields_to_embed: list[str] | None = None,
        embedding_separator: str = "\n",
        # Haystack components declare env-backed secrets as defaults; a Secret is immutable.
        api_key: Secret | None = Secret.from_env_var("LAZYRANK_API_KEY", strict=False),  # noqa: B008
        timeout: float = 120.0,
    ):
        """
        :param model: What ``Reranker.from_pretrained`` loads in :meth:`warm_up`: None = the shipped default
            reranker, ``"base"``, a local folder or a hub id.
        :param url: A rerank server (``rerank serve`` or any Cohere-compatible one) to rank through instead.
        :param reranker: An already loaded :class:`~rerank.Reranker` to rank with (not serialisable).
        :param reranker_kwargs: ``Reranker.from_pretrained`` keyword arguments (``scoring``, ``first_stage_weight``...).
        :param top_k: Documents to return; None = all of them, reranked.
        :param score_threshold: Drop documents whose relevance is below it.
        :param meta_fields_to_embed: Meta fields whose values are ranked along with the content.
        :param embedding_separator: What joins those values and the content.
        :param api_key: Bearer token for a server started with ``--api_key`` (default: ``LAZYRANK_API_KEY``).
        :param timeout: Seconds per server request.
        """
        if url is not None and reranker is not None:
            raise ValueError("pass url= or reranker=, not both")
        if (url is not None or reranker is not None) and (model is not None or reranker_kwargs):
            raise ValueError(
                "model= and reranker_kwargs= choose the model warm_up() loads: leave them out with url= or reranker="
            )
        self.model = model
        self.url = url
        self.reranker = reranker
        self.reranker_kwargs = dict(reranker_kwargs or {})
        self.top_k = _check_top_k(top_k)
        self.score_threshold = score_threshold
        self.meta_fields_to_embed = list(meta_fields_to_embed or [])
        self.embedding_separator = embedding_separator
        self.api_key = api_key
        self.timeout = timeout
        self._backend: RankingBackend | None = None

    def warm_up(self) -> None:
        """Load the model (or connect the server client) once; later calls do nothing."""
        if self._backend is not None:
            return
        target = self.url or self.reranker
        if target is None:
            from rerank.reranker import Reranker

            target = Reranker.from_pretrained(self.model, **self.reranker_kwargs)
        api_key = self.api_key.resolve_value() if self.api_key is not None else None
        self._backend = RankingBackend(target, api_key=api_key, timeout=self.timeout)

    def to_dict(self) -> dict[str, Any]:
        """Serialise the settings (a pipeline's YAML); a given Reranker object cannot be."""
        if self.reranker is not None:
            raise TypeError(
                "a LazyRankRanker built around a Reranker object cannot be serialised: build it with "
                "model= (and reranker_kwargs=) or url="
            )
        return default_to_dict(
            self,
            model=self.model,
            url=self.url,
            reranker_kwargs=self.reranker_kwargs,
            top_k=self.top_k,
            score_threshold=self.score_threshold,
            meta_fields_to_embed=self.meta_fields_to_embed,
            embedding_separator=self.embedding_separator,
            api_key=self.api_key.to_dict() if self.api_key is not None else None,
            timeout=self.timeout,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LazyRankRanker:
        """The component :meth:`to_dict` describes."""
        deserialize_secrets_inplace(data["init_parameters"], keys=["api_key"])
        return default_from_dict(cls, data)

    def _texts(self, documents: list[Document]) -> list[str]:
        texts = []
        for i, doc in enumerate(documents):
            if not isinstance(doc, Document):
                raise TypeError(f"documents[{i}] must be a haystack Document, got {type(doc).__name__}")
            if doc.content is None:
                raise ValueError(
                    f"documents[{i}] (id {doc.id!r}) has no content: LazyRankRanker ranks "
                    "Document.content (with meta_fields_to_embed)"
                )
            meta = [str(doc.meta[key]) for key in self.meta_fields_to_embed if doc.meta.get(key) is not None]
            texts.append(self.embedding_separator.join([*meta, doc.content]))
        return texts

    def _prepare(self, query: str, documents: list[Document], top_k: int | None) -> tuple[list[str], int | None]:
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        top_k = self.top_k if top_k is None else _check_top_k(top_k)
        self.warm_up()
        return self._texts(documents), top_k

    def _output(
        self, documents: list[Document], ranked: list[tuple[int, float]], score_threshold: float | None
    ) -> dict[str, list[Document]]:
        threshold = self.score_threshold if score_threshold is None else score_threshold
        out = [replace(documents[i], score=score) for i, score in ranked]  # copies: the inputs keep their scores
        if threshold is not None:
            out = [d for d in out if d.score >= threshold]
        return {"documents": out}

    @component.output_types(documents=list[Document])
    def run(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, list[Document]]:
        """The best ``top_k`` documents for ``query``, best first, with ``score`` the relevance in [0, 1].

        :param top_k: Overrides the component's ``top_k`` (a positive integer).
        :param score_threshold: Overrides the component's ``score_threshold``.
        """
        texts, top_k = self._prepare(query, documents, top_k)
        return self._output(documents, self._backend.rank(query, texts, top_k), score_threshold)

    @component.output_types(documents=list[Document])
    async def run_async(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, list[Document]]:
        """Async :meth:`run` (in process it awaits the reranker's batching worker; with a URL an httpx.AsyncClient)."""
        texts, top_k = self._prepare(query, documents, top_k)
        return self._output(documents, await self._backend.arank(query, texts, top_k), score_threshold)
