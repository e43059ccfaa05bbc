"""LangChain and LlamaIndex adapters against the real langchain-core and llama-index-core, in process and
through a live loopback server."""

from __future__ import annotations

import asyncio
import importlib
import sys

import pytest
from _serving_support import BEE_DOCS, LiveServer

from rerank import Reranker, RerankerConfig
from rerank.serving import ServerConfig, create_app
from rerank.serving.scores import relevance_scores

QUERY = "how do bees keep warm"


@pytest.fixture(scope="module")
def sp(tiny_model, tokenizer):
    return Reranker(tiny_model, tokenizer, RerankerConfig(scoring="single_pass"))


@pytest.fixture(scope="module")
def server(sp):
    with LiveServer(create_app(sp, ServerConfig(api_key="k", max_wait_ms=2))) as live:
        yield live


@pytest.fixture(scope="module")
def expected(sp):
    """(indices best first, relevance per input document) of the in-process ranking."""
    res = sp.rerank(QUERY, BEE_DOCS)
    return res.order, relevance_scores(res)


def targets(sp, server):
    return {"in-process": (sp, {}), "server": (server.url, {"api_key": "k"})}


# ---------------------------------------------------------------------------------------- LangChain
@pytest.mark.parametrize("where", ["in-process", "server"])
def test_langchain_compressor_sync_and_async(sp, server, expected, where):
    from langchain_core.documents import Document

    from rerank.integrations.langchain import LazyRankCompressor

    target, kw = targets(sp, server)[where]
    order, rel = expected
    docs = [Document(page_content=t, metadata={"source": i}, id=f"d{i}") for i, t in enumerate(BEE_DOCS)]
    compressor = LazyRankCompressor(target, top_n=3, **kw)
    for out in (compressor.compress_documents(docs, QUERY), asyncio.run(compressor.acompress_documents(docs, QUERY))):
        assert [d.metadata["source"] for d in out] == order[:3]
        assert [d.metadata["relevance_score"] for d in out] == pytest.approx([rel[i] for i in order[:3]], abs=1e-4)
        assert [d.page_content for d in out] == [BEE_DOCS[i] for i in order[:3]]
        assert [d.id for d in out] == [f"d{i}" for i in order[:3]]
        scores = [d.metadata["relevance_score"] for d in out]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert all("relevance_score" not in d.metadata for d in docs)  # copies: the input is untouched
    everything = LazyRankCompressor(target, top_n=None, **kw).compress_documents(docs, QUERY)
    assert [d.metadata["source"] for d in everything] == order
    assert LazyRankCompressor(target, **kw).compress_documents([], QUERY) == []


def test_langchain_compressor_overrides_async_natively():
    from langchain_core.documents import BaseDocumentCompressor

    from rerank.integrations.langchain import LazyRankCompressor

    assert LazyRankCompressor.acompress_documents is not BaseDocumentCompressor.acompress_documents


def test_langchain_compressor_validation(sp):
    from rerank.integrations.langchain import LazyRankCompressor

    with pytest.raises(ValueError, match="top_n"):
        LazyRankCompressor(sp, top_n=0)
    with pytest.raises(TypeError, match="Reranker or a server URL"):
        LazyRankCompressor(42)
    with pytest.raises(ValueError, match="http"):
        LazyRankCompressor("not a url")


def test_langchain_in_a_retrieval_pipeline(sp):
    """Used the LangChain way: a runnable chain that retrieves, then compresses."""
    from langchain_core.documents import Document
    from langchain_core.runnables import RunnableLambda

    from rerank.integrations.langchain import LazyRankCompressor

    compressor = LazyRankCompressor(sp, top_n=2)
    retrieve = RunnableLambda(lambda q: [Document(page_content=t) for t in BEE_DOCS])
    chain = RunnableLambda(lambda q: compressor.compress_documents(retrieve.invoke(q), q))
    out = chain.invoke(QUERY)
    assert len(out) == 2 and out[0].metadata["relevance_score"] >= out[1].metadata["relevance_score"]


# ---------------------------------------------------------------------------------------- LlamaIndex
def _nodes():
    from llama_index.core.schema import NodeWithScore, TextNode

    return [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=0.5 - 0.05 * i) for i, t in enumerate(BEE_DOCS)]


@pytest.mark.parametrize("where", ["in-process", "server"])
def test_llamaindex_postprocessor_sync_and_async(sp, server, expected, where):
    from llama_index.core.schema import QueryBundle

    from rerank.integrations.llamaindex import LazyRankPostprocessor

    target, kw = targets(sp, server)[where]
    order, rel = expected
    post = LazyRankPostprocessor(target, top_n=3, **kw)
    outs = [
        post.postprocess_nodes(_nodes(), query_str=QUERY),
        post.postprocess_nodes(_nodes(), QueryBundle(QUERY)),
        asyncio.run(post.apostprocess_nodes(_nodes(), query_str=QUERY)),
    ]
    for out in outs:
        assert [n.node.node_id for n in out] == [f"n{i}" for i in order[:3]]
        assert [n.score for n in out] == pytest.approx([rel[i] for i in order[:3]], abs=1e-4)
        assert all("retrieval_score" not in n.node.metadata for n in out)
    with pytest.raises(ValueError, match="query"):
        post.postprocess_nodes(_nodes())
    with pytest.raises(ValueError, match="query"):
        asyncio.run(post.apostprocess_nodes(_nodes()))
    assert post.postprocess_nodes([], query_str=QUERY) == []
    assert asyncio.run(post.apostprocess_nodes([], query_str=QUERY)) == []


def test_llamaindex_keep_retrieval_score_and_all_nodes(sp, expected):
    from rerank.integrations.llamaindex import LazyRankPostprocessor

    order, _ = expected
    nodes = _nodes()
    out = LazyRankPostprocessor(sp, top_n=None, keep_retrieval_score=True).postprocess_nodes(nodes, query_str=QUERY)
    assert [n.node.node_id for n in out] == [f"n{i}" for i in order]
    assert [n.node.metadata["retrieval_score"] for n in out] == pytest.approx([0.5 - 0.05 * i for i in order])


def test_llamaindex_postprocessor_overrides_async_and_serialises(sp):
    from llama_index.core.postprocessor.types import BaseNodePostprocessor

    from rerank.integrations.llamaindex import LazyRankPostprocessor

    assert LazyRankPostprocessor._apostprocess_nodes is not BaseNodePostprocessor._apostprocess_nodes
    post = LazyRankPostprocessor(sp, top_n=2)
    assert post.class_name() == "LazyRankPostprocessor"
    data = post.to_dict()  # the reranker object is excluded from serialisation
    assert data["top_n"] == 2 and "reranker" not in data
    with pytest.raises(ValueError, match="top_n"):
        LazyRankPostprocessor(sp, top_n=0)


# ---------------------------------------------------------------------------------------- shared pieces
def test_http_client_errors_carry_status(server):
    from rerank.integrations.http_client import RerankHTTPClient, RerankHTTPError, endpoint_url

    assert endpoint_url("http://h:1") == "http://h:1/v1/rerank"
    assert endpoint_url("http://h:1/v2/") == "http://h:1/v2/rerank"
    assert endpoint_url("http://h:1/rerank") == "http://h:1/rerank"
    with pytest.raises(RerankHTTPError) as err:
        RerankHTTPClient(server.url, api_key="wrong").rerank("q", ["a"])
    assert err.value.status == 401 and err.value.error_type == "unauthorized"
    with pytest.raises(RerankHTTPError) as err:
        asyncio.run(RerankHTTPClient(server.url + "/v2", api_key="k").arerank("q", ["a"] * 1001))
    assert err.value.status == 422


@pytest.mark.parametrize(
    "module, blocked, extra",
    [
        ("rerank.integrations.langchain", "langchain_core.documents", "lazyrank[langchain]"),
        ("rerank.integrations.llamaindex", "llama_index.core.postprocessor.types", "lazyrank[llamaindex]"),
    ],
)
def test_missing_framework_names_the_extra(monkeypatch, module, blocked, extra):
    monkeypatch.setitem(sys.modules, blocked, None)  # makes `import` of it fail
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match=extra.replace("[", r"\[").replace("]", r"\]")):
        importlib.import_module(module)


def test_missing_server_dependency_names_the_extra(monkeypatch, sp):
    from rerank.serving import app

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"lazyrank\[serve\]"):
        app.create_app(sp)


def test_package_level_lazy_exports():
    import rerank.integrations as integrations

    assert integrations.LazyRankCompressor.__name__ == "LazyRankCompressor"
    assert integrations.LazyRankPostprocessor.__name__ == "LazyRankPostprocessor"
    assert integrations.RerankHTTPClient.__name__ == "RerankHTTPClient"
