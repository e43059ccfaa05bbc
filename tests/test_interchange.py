"""rank_llm Request / Result JSON: read, rerank, write, read back; compatible with rank_llm's own reader."""

from __future__ import annotations

import json

import pytest

from rerank.data.rank_llm_files import (
    Candidate,
    RankLLMRequest,
    document_text,
    read_rank_llm_requests,
    rerank_rank_llm_file,
    reranked,
    write_rank_llm_results,
)
from rerank.prompting.identifiers import is_permutation

RECORDS = [
    {
        "query": {"text": "how do bees keep warm", "qid": "q1"},
        "candidates": [
            {"docid": "d1", "score": 12.5, "doc": {"contents": "Bees shiver to make heat."}},
            {"docid": "d2", "score": 11.0, "doc": {"title": "Rope", "text": "Rope is twisted fibre."}},
            {"docid": "d3", "score": 9.25, "doc": {"segment": "Cold “air” ＆ bees", "title": ""}},
        ],
    },
    {"query": {"text": "ロープ", "qid": 7}, "candidates": [{"docid": 4, "score": 1.0, "doc": {"body": "x"}}]},
]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_read_write_round_trip(tmp_path, suffix):
    src = tmp_path / f"requests{suffix}"
    if suffix == ".json":
        src.write_text(json.dumps(RECORDS), encoding="utf-8")
    else:
        src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in RECORDS) + "\n\n", encoding="utf-8")
    requests = read_rank_llm_requests(src)
    assert [r.qid for r in requests] == ["q1", 7]
    assert requests[0].texts() == [
        "Bees shiver to make heat.",
        "Title: Rope Content: Rope is twisted fibre.",
        "Cold “air” ＆ bees",
    ]
    out = tmp_path / f"results{suffix}"
    write_rank_llm_results(out, requests, [[2, 0, 1], [0]])
    back = read_rank_llm_requests(out)
    assert [c.docid for c in back[0].candidates] == ["d3", "d1", "d2"]
    # rank_llm convention: scores stay descending in the new order.
    assert [c.score for c in back[0].candidates] == [12.5, 11.0, 9.25]
    assert back[0].candidates[0].doc == RECORDS[0]["candidates"][2]["doc"]  # doc fields kept verbatim
    assert back[1].query == "ロープ" and back[1].candidates[0].docid == 4
    raw = out.read_text(encoding="utf-8")
    assert raw.lstrip().startswith("[") == (suffix == ".json")
    # Writing the results unchanged gives the same records back (file -> objects -> file).
    again = tmp_path / f"again{suffix}"
    write_rank_llm_results(again, back)
    assert read_rank_llm_requests(again) == back


def test_explicit_scores_and_bad_orders():
    req = RankLLMRequest(
        qid="q", query="q", candidates=[Candidate("a", 2.0, {"text": "A"}), Candidate("b", 1.0, {"text": "B"})]
    )
    out = reranked(req, [1, 0], scores=[-3.0, -1.0])
    assert [(c.docid, c.score) for c in out.candidates] == [("b", -1.0), ("a", -3.0)]
    with pytest.raises(ValueError, match="permutation"):
        reranked(req, [1, 1])
    with pytest.raises(ValueError, match="scores"):
        reranked(req, [0, 1], scores=[1.0])


def test_document_text_and_errors(tmp_path):
    assert document_text({"contents": "c", "title": "t"}) == "Title: t Content: c"
    assert document_text({"text": "first", "contents": "second"}) == "first"  # rank_llm's key order
    with pytest.raises(ValueError, match="no text field"):
        document_text({"title": "only"})
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(RECORDS[0])
        + "\n"
        + json.dumps({"query": {"text": "q", "qid": 1}, "candidates": [{"docid": 1, "doc": {}}]})
        + "\n"
    )
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*no text field"):
        read_rank_llm_requests(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(ValueError, match="invalid JSON"):
        read_rank_llm_requests(broken)


def test_rank_llm_reads_our_results(tmp_path):
    """rank_llm's own reader (dacite into its dataclasses) accepts what we write."""
    data = pytest.importorskip(
        "rank_llm.data", reason="rank_llm not installed (scripts/setup.sh installs it --no-deps)"
    )
    src = tmp_path / "in.json"
    src.write_text(json.dumps(RECORDS), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    write_rank_llm_results(out, read_rank_llm_requests(src), [[1, 2, 0], [0]])
    theirs = data.read_requests_from_file(str(out))
    assert [c.docid for c in theirs[0].candidates] == ["d2", "d3", "d1"]
    assert theirs[1].query.qid == 7


def test_rerank_file_with_a_reranker(tmp_path, tiny_reranker):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in RECORDS), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    got = rerank_rank_llm_file(tiny_reranker, src, out)
    back = read_rank_llm_requests(out)
    assert back == got
    ids = [c.docid for c in back[0].candidates]
    assert is_permutation([["d1", "d2", "d3"].index(d) for d in ids], 3)
