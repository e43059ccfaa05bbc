"""RAG framework adapters, each imported only when used.

* ``LazyRankCompressor`` (LangChain ``BaseDocumentCompressor``): ``pip install 'lazyrank[langchain]'``.
* ``LazyRankPostprocessor`` (LlamaIndex ``BaseNodePostprocessor``): ``pip install 'lazyrank[llamaindex]'``.
* ``RerankHTTPClient``: the tiny client both use when given a server URL.
"""

__all__ = ["LazyRankCompressor", "LazyRankPostprocessor", "RerankHTTPClient"]


def __getattr__(name: str):
    if name == "LazyRankCompressor":
        from .langchain import LazyRankCompressor

        return LazyRankCompressor
    if name == "LazyRankPostprocessor":
        from .llamaindex import LazyRankPostprocessor

        return LazyRankPostprocessor
    if name == "RerankHTTPClient":
        from .http_client import RerankHTTPClient

        return RerankHTTPClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
