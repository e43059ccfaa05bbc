"""RAG framework adapters, each imported only when used.

* ``LazyRankCompressor`` (LangChain ``BaseDocumentCompressor``): ``pip install 'lazyrank[langchain]'``.
* ``LazyRankPostprocessor`` (LlamaIndex ``BaseNodePostprocessor``): ``pip install 'lazyrank[llamaindex]'``.
* ``LazyRankRanker`` (Haystack ``@component`` ranker): ``pip install 'lazyrank[haystack]'``.
* ``LazyRankReranker`` (PyTerrier ``pt.Transformer``): ``pip install 'lazyrank[pyterrier]'``.
* ``RerankHTTPClient``: the tiny client they all use when given a server URL.
"""

__all__ = ["LazyRankCompressor", "LazyRankPostprocessor", "LazyRankRanker", "LazyRankReranker", "RerankHTTPClient"]


def __getattr__(name: str):
    if name == "LazyRankCompressor":
        from rerank.integrations.langchain import LazyRankCompressor

        return LazyRankCompressor
    if name == "LazyRankPostprocessor":
        from rerank.integrations.llamaindex import LazyRankPostprocessor

        return LazyRankPostprocessor
    if name == "LazyRankRanker":
        from rerank.integrations.haystack import LazyRankRanker

        return LazyRankRanker
    if name == "LazyRankReranker":
        from rerank.integrations.pyterrier import LazyRankReranker

        return LazyRankReranker
    if name == "RerankHTTPClient":
        from rerank.integrations.http_client import RerankHTTPClient

        return RerankHTTPClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
