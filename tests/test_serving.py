"""Async API, dynamic batching and the rerank server (real clients on loopback, tiny random model)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from _serving_support import BEE_DOCS, Flaky, LiveServer, assert_matches, request_set

from rerank import RankingResult, RankingStats, Reranker, RerankerConfig
from rerank.serving import BatcherConfig, DynamicBatcher, QueueFullError, ServerConfig, create_app
from rerank.serving.protocol import ApiError, parse_request
from rerank.serving.scores import model_top_k, relevance_scores


@pytest.fixture(scope="module")
def sp(tiny_model, tokenizer):
    """Single-pass reranker over the tiny random model (one prefill per request: fast)."""
    return Reranker(tiny_model, tokenizer, RerankerConfig(scoring="single_pass", batch_size=8))


@pytest.fixture(scope="module")
def live(sp):
    app = create_app(sp, ServerConfig(model_name="tiny", max_wait_ms=10, max_batch_size=16))
    with LiveServer(app) as server:
        yield server


def ref(rr, query, docs, top_n=None):
    """The in-process ranking a server answer must equal (same top_k rule as the server)."""
    n = min(top_n, len(docs)) if top_n else None
    return rr.rerank(query, docs, top_k=model_top_k(rr.config.scoring, n))


# ---------------------------------------------------------------------------------------- scores
def _result(order, scores, ranked=None, kind="log_prob"):
    return RankingResult(
        order=order,
        scores=scores,
        ranked_by_model=len(order) if ranked is None else ranked,
        stats=RankingStats(),
        score_kind=kind,
    )


def test_relevance_rank_derived_is_one_minus_r_over_n():
    res = RankingResult.from_order([2, 0, 3, 1], 4, RankingStats())
    assert relevance_scores(res) == [0.75, 0.25, 1.0, 0.5]
    cut = RankingResult.from_order([2, 0, 3, 1], 2, RankingStats())  # top_k=2: tail scores <= 0
    assert relevance_scores(cut) == [0.75, 0.25, 1.0, 0.5]


def test_relevance_of_log_probs_is_a_softmax_monotone_with_ties():
    logp = [-3.0, -1.0, -1.0, -40.0, -2.0]
    order = sorted(range(5), key=lambda i: (-logp[i], i))
    rel = relevance_scores(_result(order, logp))
    z = sum(math.exp(x) for x in logp)
    assert rel == pytest.approx([math.exp(x) / z for x in logp])
    assert rel[1] == rel[2]  # tied scores, tied relevance
    along = [rel[i] for i in order]
    assert along == sorted(along, reverse=True) and all(0 <= r <= 1 for r in rel)


def test_relevance_is_monotone_even_when_order_disagrees_with_scores():
    # e.g. sliding windows with model scores: the order wins, relevance never rises with rank
    rel = relevance_scores(_result([0, 1, 2], [-5.0, -1.0, -9.0]))
    assert rel[0] >= rel[1] >= rel[2] and rel[0] == rel[1]
    rel = relevance_scores(_result([1, 0], [float("-inf"), float("-inf")]))
    assert rel == [0.5, 0.5]
    assert relevance_scores(_result([], [])) == []


def test_model_top_k_passes_top_n_only_where_it_saves_decoding():
    assert model_top_k("generate", 3) == 3 and model_top_k("generate", None) is None
    assert model_top_k("single_pass", 3) is None


# ---------------------------------------------------------------------------------------- batcher
def test_batcher_batches_concurrent_requests_and_each_equals_rerank_alone(sp):
    reqs = request_set(12)
    spy = Flaky(sp)
    batcher = DynamicBatcher(spy, BatcherConfig(max_batch_size=6, max_wait_ms=200))
    try:
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            got = list(pool.map(lambda r: batcher.rerank(r[0], r[1]), reqs))
    finally:
        batcher.close()
    assert max(spy.calls) > 1 and sum(spy.calls) == 12 and max(spy.calls) <= 6
    for (query, docs, _), result in zip(reqs, got):
        alone = sp.rerank(query, docs)
        assert result.order == alone.order
        assert result.scores == pytest.approx(alone.scores, abs=1e-4)


def test_batcher_keeps_each_requests_top_k(tiny_reranker):
    """Generate scoring: top_k changes what is decoded, so requests keep their own (grouped calls)."""
    spy = Flaky(tiny_reranker)
    batcher = DynamicBatcher(spy, BatcherConfig(max_batch_size=8, max_wait_ms=300))
    docs = BEE_DOCS[:5]
    cases = [("bees in winter", None), ("paris", 2), ("bread", 2), ("penguins", 1)]
    try:
        futures = [batcher.submit(q, docs, k) for q, k in cases]
        got = [f.result(60) for f in futures]
    finally:
        batcher.close()
    assert sorted(spy.calls) == [1, 1, 2]  # one call per distinct top_k, all in one batch
    for (query, top_k), result in zip(cases, got):
        alone = tiny_reranker.rerank(query, docs, top_k=top_k)
        assert result.order == alone.order and result.ranked_by_model == alone.ranked_by_model


def test_batcher_isolates_a_failing_request_and_keeps_serving(sp):
    batcher = DynamicBatcher(Flaky(sp, fail_on="boom"), BatcherConfig(max_batch_size=4, max_wait_ms=200))
    try:
        futures = [batcher.submit(q, BEE_DOCS) for q in ("bees", "boom", "winter")]
        assert futures[0].result(30).order == sp.rerank("bees", BEE_DOCS).order
        with pytest.raises(RuntimeError, match="injected"):
            futures[1].result(30)
        assert futures[2].result(30).order == sp.rerank("winter", BEE_DOCS).order
        assert batcher.rerank("after", BEE_DOCS).order == sp.rerank("after", BEE_DOCS).order
    finally:
        batcher.close()


def test_batcher_queue_limit_and_close_finishes_queued_work(sp):
    batcher = DynamicBatcher(Flaky(sp, delay=0.3), BatcherConfig(max_batch_size=1, max_wait_ms=0, max_pending=2))
    first = batcher.submit("a", BEE_DOCS)
    second = batcher.submit("b", BEE_DOCS)
    with pytest.raises(QueueFullError):
        batcher.submit("c", BEE_DOCS)
    batcher.close()  # waits: both outstanding requests still get their answer
    assert first.done() and second.done() and second.result().order == sp.rerank("b", BEE_DOCS).order
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.submit("d", BEE_DOCS)


def test_batcher_config_validation():
    for bad in ({"max_batch_size": 0}, {"max_wait_ms": -1}, {"max_pending": 0}, {"idle_timeout_s": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            BatcherConfig(**bad)
    with pytest.raises(ValueError, match="max_documents"):
        ServerConfig(max_documents=0)


# ---------------------------------------------------------------------------------------- async API
def test_async_api_equals_sync_and_batches_concurrent_callers(sp):
    reqs = request_set(10)

    async def main():
        results = await asyncio.gather(*(sp.arerank(q, d) for q, d, _ in reqs))
        ranked = await sp.arank(reqs[0][0], reqs[0][1], top_k=2, return_documents=True)
        batch = await sp.arank_batch([q for q, _, _ in reqs[:3]], [d for _, d, _ in reqs[:3]], top_k=2)
        return results, ranked, batch

    results, ranked, batch = asyncio.run(main())
    for (q, d, _), r in zip(reqs, results):
        alone = sp.rerank(q, d)
        assert r.order == alone.order and r.scores == pytest.approx(alone.scores, abs=1e-4)
    want = sp.rank(reqs[0][0], reqs[0][1], top_k=2, return_documents=True)
    assert [x["corpus_id"] for x in ranked] == [x["corpus_id"] for x in want] and ranked[0]["text"] == want[0]["text"]
    assert [[x["corpus_id"] for x in b] for b in batch] == [
        [x["corpus_id"] for x in sp.rank(q, d, top_k=2)] for q, d, _ in reqs[:3]
    ]


def test_async_api_never_blocks_the_event_loop(sp):
    docs = [f"passage number {i} about topic {i % 7} with some extra words" for i in range(60)]

    async def main():
        stamps: list[float] = []
        stop = asyncio.Event()

        async def ticker():
            while not stop.is_set():
                stamps.append(time.perf_counter())
                await asyncio.sleep(0.002)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        start = time.perf_counter()
        await asyncio.gather(*(sp.arerank(f"q{i}", docs) for i in range(3)))
        elapsed = time.perf_counter() - start
        stop.set()
        await task
        gaps = [b - a for a, b in zip(stamps, stamps[1:]) if b > start]
        return gaps, elapsed

    gaps, elapsed = asyncio.run(main())
    # Had the model run on the loop, one gap would span the whole ranking; here the loop kept ticking.
    assert len(gaps) >= 5 and max(gaps) < 0.5 * elapsed, (len(gaps), max(gaps), elapsed)


def test_async_api_checks_arguments_in_the_caller(sp):
    with pytest.raises(TypeError, match=r"documents\[1\] must be a str"):
        asyncio.run(sp.arerank("q", ["a", 3]))
    with pytest.raises(ValueError, match="top_k"):
        asyncio.run(sp.arank("q", ["a"], top_k=0))
    with pytest.raises(ValueError, match="same length"):
        asyncio.run(sp.arank_batch(["q"], [["a"], ["b"]]))


# ---------------------------------------------------------------------------------------- real clients
def test_cohere_v2_client(live, sp):
    cohere = pytest.importorskip("cohere")
    co = cohere.ClientV2(api_key="anything", base_url=live.url, max_retries=0)
    for top_n in (None, 3):
        resp = co.rerank(model="tiny", query="how do bees keep warm", documents=BEE_DOCS, top_n=top_n)
        assert_matches([r.dict() for r in resp.results], ref(sp, "how do bees keep warm", BEE_DOCS, top_n), top_n)
        assert resp.id and resp.meta.api_version.version == "2" and resp.meta.billed_units.search_units == 1


def test_cohere_v1_client_with_object_documents(live, sp):
    cohere = pytest.importorskip("cohere")
    co = cohere.Client(api_key="anything", base_url=live.url, max_retries=0)
    docs = [{"text": t, "source": f"s{i}"} for i, t in enumerate(BEE_DOCS)]
    resp = co.rerank(query="bees", documents=docs, top_n=4, return_documents=True)
    results = [{"index": r.index, "relevance_score": r.relevance_score} for r in resp.results]
    assert_matches(results, ref(sp, "bees", BEE_DOCS, 4), 4)
    for r in resp.results:  # object documents echoed with their extra fields
        assert r.document.text == BEE_DOCS[r.index] and r.document.dict()["source"] == f"s{r.index}"
    assert resp.meta.api_version.version == "1"


def test_cohere_async_client(live, sp):
    cohere = pytest.importorskip("cohere")

    async def main():
        co = cohere.AsyncClientV2(api_key="x", base_url=live.url, max_retries=0)
        return await asyncio.gather(*(co.rerank(model="tiny", query=f"q{i}", documents=BEE_DOCS) for i in range(4)))

    for i, resp in enumerate(asyncio.run(main())):
        assert_matches([r.dict() for r in resp.results], ref(sp, f"q{i}", BEE_DOCS), None)


def test_llamaindex_jina_rerank_client(live, sp):
    jina = pytest.importorskip("llama_index.postprocessor.jinaai_rerank")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    post = jina.JinaRerank(top_n=3, base_url=live.url, api_key="x", model="tiny")
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in BEE_DOCS]
    out = post.postprocess_nodes(nodes, QueryBundle("bees"))
    want = ref(sp, "bees", BEE_DOCS, 3)
    assert [o.node.get_content() for o in out] == [BEE_DOCS[i] for i in want.order[:3]]
    rel = relevance_scores(want)
    assert [o.score for o in out] == pytest.approx([rel[i] for i in want.order[:3]], abs=1e-4)


def test_raw_http_common_shape_top_n_variants(live, sp):
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        for top_n in ("missing", None, 0, 2, 99):
            body = {"query": "winter", "documents": BEE_DOCS, "return_documents": True}
            if top_n != "missing":
                body["top_n"] = top_n
            resp = httpx.post(live.url + path, json=body)
            assert resp.status_code == 200, resp.text
            data = resp.json()
            cut = top_n if isinstance(top_n, int) and top_n else None
            assert_matches(data["results"], ref(sp, "winter", BEE_DOCS, cut), cut)
            assert all(r["document"] == {"text": BEE_DOCS[r["index"]]} for r in data["results"])
            assert data["usage"]["total_tokens"] > 0 and data["model"] == "tiny" and data["id"]
    no_docs = httpx.post(live.url + "/v1/rerank", json={"query": "winter", "documents": BEE_DOCS}).json()
    assert all("document" not in r for r in no_docs["results"])


def test_tei_dialect(live, sp):
    resp = httpx.post(live.url + "/rerank", json={"query": "bees", "texts": BEE_DOCS, "return_text": True})
    assert resp.status_code == 200
    data = resp.json()
    assert isinstance(data, list) and set(data[0]) == {"index", "score", "text"}
    want = ref(sp, "bees", BEE_DOCS)
    assert_matches(data, want, None, score_key="score")
    assert all(d["text"] == BEE_DOCS[d["index"]] for d in data)
    raw = httpx.post(live.url + "/rerank", json={"query": "bees", "texts": BEE_DOCS, "raw_scores": True}).json()
    assert [d["index"] for d in raw] == want.order
    assert [d["score"] for d in raw] == pytest.approx([want.scores[i] for i in want.order], abs=1e-4)
    assert "text" not in raw[0]


def test_relevance_score_in_unit_interval_for_generate_scoring(tiny_reranker):
    app = create_app(tiny_reranker, ServerConfig(max_wait_ms=1))
    with LiveServer(app) as server:
        data = httpx.post(
            server.url + "/v1/rerank", json={"query": "bees", "documents": BEE_DOCS[:4], "top_n": 2}
        ).json()
    want = tiny_reranker.rerank("bees", BEE_DOCS[:4], top_k=2)  # top_n is passed on: only 2 decoded
    assert_matches(data["results"], want, 2)
    assert [r["relevance_score"] for r in data["results"]] == [1.0, 0.75]


def test_health_info_metrics(live):
    assert httpx.get(live.url + "/health").json() == {"status": "ok"}
    info = httpx.get(live.url + "/info").json()
    assert info["model"] == "tiny" and info["scoring"] == "single_pass" and info["pruning"] is None
    assert info["limits"] == {
        "max_documents": 1000,
        "max_request_bytes": 2_000_000,
        "max_concurrent": 512,
        "max_batch_size": 16,
        "max_wait_ms": 10,
        "max_query_tokens": 512,
        "body_timeout": 30.0,
    }
    httpx.post(live.url + "/v1/rerank", json={"query": "q", "documents": ["a", "b"]})
    httpx.post(live.url + "/v1/rerank", json={"query": 3, "documents": ["a"]})
    resp = httpx.get(live.url + "/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    for name in (
        "lazyrank_requests_total",
        'lazyrank_errors_total{kind="validation"}',
        "lazyrank_queue_depth",
        "lazyrank_batch_size_bucket",
        "lazyrank_request_latency_seconds_bucket",
        "lazyrank_prompt_tokens_total",
        "lazyrank_requests_in_flight",
    ):
        assert name in text, name
    assert 'lazyrank_requests_total{route="/v1/rerank",status="200"}' in text


# ---------------------------------------------------------------------------------------- limits and errors
def _post(url, body=None, **kw):
    return httpx.post(url, json=body, **kw) if body is not None else httpx.post(url, **kw)


def _assert_error(resp, status, kind, field=None):
    assert resp.status_code == status, resp.text
    data = resp.json()
    assert data["error_type"] == kind and isinstance(data["error"], str)
    if field:
        assert field in data["error"], data


def _still_serving(url, headers=None):
    docs = BEE_DOCS[:5]
    resp = httpx.post(url + "/v1/rerank", json={"query": "bees", "documents": docs}, headers=headers)
    assert resp.status_code == 200 and len(resp.json()["results"]) == len(docs)


def test_validation_errors_name_the_field(live):
    url = live.url + "/v1/rerank"
    cases = [
        ({"documents": ["a"]}, "query"),
        ({"query": 5, "documents": ["a"]}, "query"),
        ({"query": "q"}, "documents"),
        ({"query": "q", "documents": "abc"}, "documents"),
        ({"query": "q", "documents": ["a", "b", 7]}, "documents[2]"),
        ({"query": "q", "documents": ["a", {"title": "no text"}]}, "documents[1]"),
        ({"query": "q", "documents": ["a"], "top_n": -1}, "top_n"),
        ({"query": "q", "documents": ["a"], "top_n": "3"}, "top_n"),
        ({"query": "q", "documents": ["a"], "top_n": True}, "top_n"),
        ({"query": "q", "documents": ["a"], "return_documents": "yes"}, "return_documents"),
        ({"query": "q", "documents": ["a"], "model": 1}, "model"),
        ({"query": "q", "documents": ["a"], "rank_fields": "text"}, "rank_fields"),
        ([1, 2], "JSON object"),
    ]
    for body, field in cases:
        _assert_error(_post(url, body), 422, "validation", field)
    _assert_error(_post(live.url + "/rerank", {"query": "q", "texts": ["a", 1]}), 422, "validation", "texts[1]")
    _assert_error(
        _post(url, {"query": "q", "documents": [f"d{i}" for i in range(1001)]}), 422, "validation", "documents"
    )
    _assert_error(_post(url, {"query": "q", "documents": []}), 400, "empty", "documents")
    _assert_error(_post(live.url + "/rerank", {"query": "q", "texts": []}), 400, "empty", "texts")
    _assert_error(_post(url, content=b"{not json", headers={"content-type": "application/json"}), 400, "invalid_json")
    _assert_error(httpx.get(url), 405, "method_not_allowed")
    _assert_error(httpx.get(live.url + "/nope"), 404, "not_found")
    _still_serving(live.url)


def _metric(url: str, line_start: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_client_mistakes_are_4xx_naming_the_field(live, tokenizer):
    url = live.url + "/v1/rerank"
    counted = 'lazyrank_requests_total{route="/v1/rerank",status="4'
    before = sum(_metric(live.url, counted + d) for d in ("0", "2"))
    raw = {"content-type": "application/json"}
    _assert_error(_post(url, {"query": "tides " * 10_000, "documents": ["a"]}), 422, "validation", "max_query_tokens")
    _assert_error(_post(url, {"query": "", "documents": ["a"]}), 422, "validation", "query must not be empty")
    _assert_error(_post(url, {"query": " \n ", "documents": ["a"]}), 422, "validation", "query must not be empty")
    _assert_error(
        _post(url, content=b'{"query": "a\\ud800", "documents": ["a"]}', headers=raw),
        422,
        "validation",
        "query holds a lone surrogate",
    )
    _assert_error(
        _post(url, content=b'{"query": "q", "documents": ["a", {"text": "\\udfff b"}]}', headers=raw),
        422,
        "validation",
        "documents[1] holds a lone surrogate",
    )
    _assert_error(
        _post(live.url + "/rerank", content=b'{"query": "q", "texts": ["\\ud800"]}', headers=raw),
        422,
        "validation",
        "texts[0]",
    )
    _assert_error(_post(url, content=b"[" * 200_000 + b"]" * 200_000, headers=raw), 400, "invalid_json", "nested")
    _assert_error(
        _post(url, content=b'{"query": "q", "documents": ["a"], "top_n": ' + b"9" * 5000 + b"}", headers=raw),
        400,
        "invalid_json",
    )
    after = sum(_metric(live.url, counted + d) for d in ("0", "2"))
    assert after - before == 7  # every /v1/rerank answer above counted (the TEI one is on /rerank), no 500
    _still_serving(live.url)
    # the budget is exact: 512 tokens are served, 513 are not
    at_budget = "tides" + " tides" * 510
    assert len(tokenizer(at_budget, add_special_tokens=False)["input_ids"]) == 512
    assert _post(url, {"query": at_budget, "documents": ["a", "b"]}).status_code == 200
    _assert_error(_post(url, {"query": at_budget + " tides", "documents": ["a"]}), 422, "validation", "513 tokens")


def _stall(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_stalled_bodies_get_408_and_the_server_stays_healthy(sp):
    with LiveServer(create_app(sp, ServerConfig(body_timeout=0.5))) as server:
        head = (
            b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"query": '
        )
        start = time.monotonic()
        socks = [_stall(server.port, head) for _ in range(20)]
        answers = [_read_until_closed(s) for s in socks]  # the server answers, then closes each
        elapsed = time.monotonic() - start
        for s in socks:
            s.close()
        assert elapsed < 5, elapsed
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
            assert b'"error_type":"timeout"' in answer and b"within 0.5 s" in answer
        _still_serving(server.url)


def test_stalled_headers_are_closed_and_connections_are_capped(sp):
    from rerank.serving.connections import header_timeout_protocol

    app = create_app(sp, ServerConfig())
    with LiveServer(app, http=header_timeout_protocol(1.0), limit_concurrency=4) as server:
        socks = [_stall(server.port, b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\n") for _ in range(3)]
        time.sleep(0.2)
        # 3 stalled + this one = the limit of 4 open connections: refused, not queued forever
        assert httpx.post(server.url + "/v1/rerank", json={"query": "q", "documents": ["a"]}).status_code == 503
        start = time.monotonic()
        assert [_read_until_closed(s) for s in socks] == [b"", b"", b""]  # closed by the server
        assert time.monotonic() - start < 5
        for s in socks:
            s.close()
        _still_serving(server.url)


def test_parse_request_rank_fields_and_ignored_fields():
    req = parse_request(
        {
            "query": "q",
            "documents": [{"title": "T", "body": "B", "x": 1}],
            "rank_fields": ["title", "body"],
            "max_chunks_per_doc": 10,
            "priority": 3,
        },
        path="/v1/rerank",
        max_documents=10,
    )
    assert req.texts == ["title: T\nbody: B"] and req.echo[0]["x"] == 1
    with pytest.raises(ApiError):
        parse_request({"query": "q", "texts": ["a"]}, path="/v1/rerank", max_documents=10)  # TEI only on /rerank


def test_api_key_request_size_and_document_limits(sp):
    config = ServerConfig(api_key="sekret", max_request_bytes=4000, max_documents=5, max_wait_ms=1)
    with LiveServer(create_app(sp, config)) as server:
        url = server.url + "/v1/rerank"
        good = {"Authorization": "Bearer sekret"}
        body = {"query": "bees", "documents": BEE_DOCS[:5]}
        resp = _post(url, body)
        _assert_error(resp, 401, "unauthorized")
        assert resp.headers["www-authenticate"] == "Bearer"
        _assert_error(_post(url, body, headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        _assert_error(_post(url, body, headers={"Authorization": "Basic sekret"}), 401, "unauthorized")
        _assert_error(httpx.get(server.url + "/info"), 401, "unauthorized")
        assert httpx.get(server.url + "/health").status_code == 200  # public
        assert httpx.get(server.url + "/metrics").status_code == 200  # public, like TEI's
        assert _post(url, body, headers=good).status_code == 200
        big = {"query": "q", "documents": ["x" * 1000] * 5}
        _assert_error(_post(url, big, headers=good), 413, "payload_too_large")

        def chunks():  # no Content-Length: counted as the body streams in
            for _ in range(10):
                yield b" " * 1000

        _assert_error(httpx.post(url, content=chunks(), headers=good), 413, "payload_too_large")
        _assert_error(
            _post(url, {"query": "q", "documents": ["a"] * 6}, headers=good),
            422,
            "validation",
            "maximum allowed batch size 5",
        )
        _still_serving(server.url, headers=good)
        cohere = pytest.importorskip("cohere")
        with pytest.raises(cohere.UnauthorizedError):
            cohere.ClientV2(api_key="wrong", base_url=server.url, max_retries=0).rerank(
                model="m", query="q", documents=["a", "b"]
            )


def test_overload_answers_429_and_recovers(sp):
    slow = Flaky(sp, delay=0.4)
    with LiveServer(create_app(slow, ServerConfig(max_concurrent=2, max_batch_size=1, max_wait_ms=0))) as server:

        async def main():
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(
                    *(
                        client.post(server.url + "/v1/rerank", json={"query": f"q{i}", "documents": BEE_DOCS})
                        for i in range(8)
                    )
                )

        statuses = sorted(r.status_code for r in asyncio.run(main()))
        assert statuses.count(200) >= 2 and statuses.count(429) >= 1 and set(statuses) <= {200, 429}, statuses
        for r in asyncio.run(main()):
            if r.status_code == 429:
                _assert_error(r, 429, "overloaded")
        _still_serving(server.url)
        assert 'lazyrank_errors_total{kind="overloaded"}' in httpx.get(server.url + "/metrics").text


def test_failing_batch_answers_500_only_for_its_requests(sp):
    flaky = Flaky(sp, fail_on="boom")
    with LiveServer(create_app(flaky, ServerConfig(max_batch_size=8, max_wait_ms=150))) as server:

        async def main():
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(
                    *(
                        client.post(server.url + "/v2/rerank", json={"model": "m", "query": q, "documents": BEE_DOCS})
                        for q in ("bees", "boom", "winter", "boom too")
                    )
                )

        responses = asyncio.run(main())
        assert [r.status_code for r in responses] == [200, 500, 200, 500]
        _assert_error(responses[1], 500, "backend", "injected failure")
        assert_matches(responses[0].json()["results"], ref(sp, "bees", BEE_DOCS), None)
        assert max(flaky.calls) > 1  # they really shared a batch before the failure was isolated
        _still_serving(server.url)


def test_load_100_clients_x_5_requests(live, sp):
    reqs = request_set(20)
    refs = [ref(sp, q, d, n) for q, d, n in reqs]
    batches_before = live.app.state.batcher.batches

    async def client(c: int, http: httpx.AsyncClient):
        out = []
        for j in range(5):
            k = (c * 5 + j) % len(reqs)
            q, d, n = reqs[k]
            body = {"query": q, "documents": d, "return_documents": True}
            if n is not None:
                body["top_n"] = n
            resp = await http.post(live.url + ["/v1/rerank", "/v2/rerank", "/rerank"][j % 3], json=body)
            out.append((k, resp))
        return out

    async def main():
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            return await asyncio.wait_for(asyncio.gather(*(client(c, http) for c in range(100))), timeout=150)

    start = time.perf_counter()
    answers = [a for per_client in asyncio.run(main()) for a in per_client]
    elapsed = time.perf_counter() - start
    assert len(answers) == 500
    for k, resp in answers:
        assert resp.status_code == 200, resp.text
        results = resp.json()["results"]
        assert_matches(results, refs[k], reqs[k][2])  # its own ranking: nothing lost or mixed up
        assert all(r["document"]["text"] == reqs[k][1][r["index"]] for r in results)
    batches = live.app.state.batcher.batches - batches_before
    assert batches < 500  # requests really were batched
    print(f"500 requests in {elapsed:.1f}s over {batches} batches")


# ---------------------------------------------------------------------------------------- shutdown
def test_graceful_shutdown_finishes_in_flight_requests(sp):
    slow = Flaky(sp, delay=0.8)
    server = LiveServer(create_app(slow, ServerConfig(max_batch_size=1, max_wait_ms=0)), graceful_timeout=30)
    server.__enter__()
    results: list = []

    def call(i):
        results.append(
            httpx.post(server.url + "/v1/rerank", json={"query": f"q{i}", "documents": BEE_DOCS}, timeout=60)
        )

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while server.app.state.batcher.pending < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.stop()  # while all three are still queued or being ranked
    for t in threads:
        t.join(30)
    assert [r.status_code for r in results] == [200, 200, 200]
    assert server.app.state.batcher.closed
    with pytest.raises(httpx.ConnectError):
        httpx.post(server.url + "/v1/rerank", json={"query": "q", "documents": ["a"]}, timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rerank_serve_command_end_to_end(tiny_model, tokenizer, tmp_path):
    """`rerank serve` in its own process: loads a model folder, answers, drains on SIGTERM."""
    model_dir = tmp_path / "tiny"
    tiny_model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rerank.cli",
            "serve",
            "--model",
            str(model_dir),
            "--port",
            str(port),
            "--model_name",
            "tiny-cli",
            "--max_wait_ms",
            "1500",
            "--log_level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "rerank serve did not come up"
            time.sleep(0.3)
        info = httpx.get(url + "/info").json()
        assert info["model"] == "tiny-cli" and info["scoring"] == "single_pass"
        # This request waits 1.5 s for batch mates; SIGTERM arrives meanwhile and it must still be answered.
        holder: list = []
        t = threading.Thread(
            target=lambda: holder.append(
                httpx.post(url + "/v1/rerank", json={"query": "bees", "documents": BEE_DOCS, "top_n": 2}, timeout=60)
            )
        )
        t.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert holder and holder[0].status_code == 200, holder and holder[0].text
        assert len(holder[0].json()["results"]) == 2
        # uvicorn re-raises the captured SIGTERM after its graceful shutdown: the conventional exit status
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_parser_defaults_bind_loopback():
    from rerank.serving.server import build_parser

    args = build_parser().parse_args([])
    assert args.host == "127.0.0.1" and args.max_request_bytes == 2_000_000 and args.max_documents == 1000
    assert (args.max_query_tokens, args.body_timeout, args.header_timeout, args.max_connections) == (512, 30, 10, 1024)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--body_timeout", "0"])
    with pytest.raises(ValueError, match="body_timeout"):
        ServerConfig(body_timeout=float("inf"))
    from rerank.serving.server import serve_scoring

    assert args.scoring is None and serve_scoring(args) == "head"  # the shipped default's recommendation
    assert serve_scoring(build_parser().parse_args(["--model", "base"])) == "single_pass"
