"""The Haystack ranker against the real haystack-ai: a BM25 retrieval Pipeline over a corpus the test writes,
YAML round trips, a live server, and its refusals."""

from __future__ import annotations

import asyncio
import importlib
import sys

import pytest

pytest.importorskip("haystack")

from _serving_support import BEE_DOCS, LiveServer  # noqa: E402
from haystack import Document, Pipeline  # noqa: E402
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever  # noqa: E402
from haystack.document_stores.in_memory import InMemoryDocumentStore  # noqa: E402

from rerank import Reranker, RerankerConfig  # noqa: E402
from rerank.integrations.haystack import LazyRankRanker  # noqa: E402

QUERY = "how do bees keep warm in winter"
CORPUS = [
    Document(content=text, meta={"title": f"note {i}", "n": i}, id=f"doc{i}")
    for i, text in enumerate(
        BEE_DOCS
        + [
            "Bees fan their wings to cool the hive in summer.",
            "Winter coats keep people warm.",
            "Wasps do not store honey for the winter.",
        ]
    )
]


@pytest.fixture(scope="module")
def model_dir(tiny_model, tokenizer, tmp_path_factory):
    """The tiny random model saved as a model folder, so LazyRankRanker(model=...) loads it for real."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def reference(model_dir):
    """What the component should rank like: the same folder through Reranker.from_pretrained."""
    return Reranker.from_pretrained(model_dir, scoring="single_pass")


@pytest.fixture(scope="module")
def store():
    store = InMemoryDocumentStore(index="lazyrank-test-corpus")  # shared by index: survives a YAML round trip
    store.write_documents(CORPUS)
    return store


def bm25_pipeline(store, ranker: LazyRankRanker) -> Pipeline:
    pipe = Pipeline()
    pipe.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=6))
    pipe.add_component("ranker", ranker)
    pipe.connect("retriever.documents", "ranker.documents")
    return pipe


def expected_ids(reranker: Reranker, docs: list[Document], top_k: int | None, texts=None) -> list[str]:
    ranked = reranker.rank(QUERY, texts or [d.content for d in docs])
    return [docs[r["corpus_id"]].id for r in ranked][:top_k]


def test_bm25_pipeline_ranks_like_reranker_rank_and_round_trips_yaml(store, model_dir, reference):
    retrieved = InMemoryBM25Retriever(document_store=store, top_k=6).run(query=QUERY)["documents"]
    bm25_scores = {d.id: d.score for d in retrieved}
    want = expected_ids(reference, retrieved, 3)
    assert want != [d.id for d in retrieved][:3]  # the reranker does change the order here
    pipe = bm25_pipeline(store, LazyRankRanker(model_dir, reranker_kwargs={"scoring": "single_pass"}, top_k=3))
    # Haystack deserialises only allowlisted modules: a pipeline YAML names ours explicitly.
    loaded = Pipeline.loads(pipe.dumps(), allowed_modules=["rerank.integrations.haystack"])
    assert loaded.get_component("ranker").to_dict() == pipe.get_component("ranker").to_dict()
    for run_pipe in (pipe, loaded):
        out = run_pipe.run({"retriever": {"query": QUERY}, "ranker": {"query": QUERY}})["ranker"]["documents"]
        assert [d.id for d in out] == want
        scores = [d.score for d in out]
        assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
        assert all(d.content == CORPUS[int(d.id[3:])].content and d.meta == CORPUS[int(d.id[3:])].meta for d in out)
    assert all(d.score == bm25_scores[d.id] for d in retrieved)  # copies: the retriever's documents keep theirs
    ranker = pipe.get_component("ranker")
    assert ranker.to_dict()["init_parameters"]["model"] == model_dir
    assert "ranker" in pipe.dumps() and "LazyRankRanker" in pipe.dumps()


def test_warm_up_loads_once_and_run_overrides(model_dir, reference):
    ranker = LazyRankRanker(model_dir, reranker_kwargs={"scoring": "single_pass"}, top_k=2)
    ranker.warm_up()
    backend = ranker._backend
    ranker.warm_up()
    assert ranker._backend is backend  # Pipeline.run calls warm_up every time: the model loads once
    docs = CORPUS[:6]
    assert [d.id for d in ranker.run(QUERY, docs)["documents"]] == expected_ids(reference, docs, 2)
    everything = ranker.run(QUERY, docs, top_k=6)["documents"]
    assert [d.id for d in everything] == expected_ids(reference, docs, None)
    threshold = everything[2].score
    kept = ranker.run(QUERY, docs, top_k=6, score_threshold=threshold)["documents"]
    assert [d.id for d in kept] == [d.id for d in everything if d.score >= threshold]
    assert asyncio.run(ranker.run_async(QUERY, docs, top_k=6))["documents"] == everything
    assert ranker.run(QUERY, [])["documents"] == []


def test_meta_fields_are_ranked_with_the_content(sp_reranker):
    docs = CORPUS[:6]
    ranker = LazyRankRanker(
        reranker=sp_reranker, top_k=None, meta_fields_to_embed=["title", "missing"], embedding_separator=" | "
    )
    texts = [f"{d.meta['title']} | {d.content}" for d in docs]
    assert [d.id for d in ranker.run(QUERY, docs)["documents"]] == expected_ids(sp_reranker, docs, None, texts)


@pytest.fixture(scope="module")
def sp_reranker(tiny_model, tokenizer):
    return Reranker(tiny_model, tokenizer, RerankerConfig(scoring="single_pass"))


def test_through_a_live_server_with_the_env_api_key(sp_reranker, monkeypatch):
    from rerank.serving import ServerConfig, create_app

    monkeypatch.setenv("LAZYRANK_API_KEY", "k")
    docs = CORPUS[:6]
    with LiveServer(create_app(sp_reranker, ServerConfig(api_key="k", max_wait_ms=2))) as live:
        ranker = LazyRankRanker(url=live.url, top_k=4)
        again = LazyRankRanker.from_dict(ranker.to_dict())  # the key is serialised as its env var, not its value
        assert ranker.to_dict()["init_parameters"]["api_key"]["env_vars"] == ["LAZYRANK_API_KEY"]
        for r in (ranker, again):
            assert [d.id for d in r.run(QUERY, docs)["documents"]] == expected_ids(sp_reranker, docs, 4)


def test_bad_input_names_the_argument(sp_reranker):
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="top_k"):
            LazyRankRanker(reranker=sp_reranker, top_k=bad)
    ranker = LazyRankRanker(reranker=sp_reranker)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        ranker.run(QUERY, CORPUS[:3], top_k=0)
    with pytest.raises(ValueError, match=r"documents\[1\] \(id 'empty'\) has no content"):
        ranker.run(QUERY, [CORPUS[0], Document(id="empty", meta={"title": "x"})])
    with pytest.raises(TypeError, match=r"documents\[0\] must be a haystack Document"):
        ranker.run(QUERY, ["plain text"])
    with pytest.raises(TypeError, match="cannot be serialised"):
        ranker.to_dict()
    with pytest.raises(ValueError, match="not both"):
        LazyRankRanker(url="http://127.0.0.1:1", reranker=sp_reranker)
    with pytest.raises(ValueError, match="leave them out"):
        LazyRankRanker("some/model", url="http://127.0.0.1:1")
    with pytest.raises(TypeError, match="Reranker or a server URL"):
        LazyRankRanker(reranker=42).warm_up()


def test_package_level_lazy_export():
    import rerank.integrations as integrations

    assert integrations.LazyRankRanker is LazyRankRanker


def test_missing_haystack_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "haystack", None)
    monkeypatch.delitem(sys.modules, "rerank.integrations.haystack", raising=False)
    with pytest.raises(ImportError, match=r"lazyrank\[haystack\]"):
        importlib.import_module("rerank.integrations.haystack")
