"""BM25 first stage (bm25s): ranking, save/load, the CLI, and the shipped SciFact run."""

from __future__ import annotations

import json

import pytest
from support import shared_data

from rerank.data.bm25 import BM25Config, BM25Index, main

CORPUS = {
    "d1": "Bees shiver to keep the hive warm in winter.",
    "d2": "Paris is the capital of France.",
    "d3": "Honey bees cluster around the queen.",
    "d4": "Ropes are made of twisted fibres.",
}


def test_ranks_by_term_overlap_and_drops_zero_scores():
    index = BM25Index.build(CORPUS, show_progress=False)
    (hits,) = index.search(["bees keep warm"], depth=4, show_progress=False)
    assert [d for d, _ in hits][:2] == ["d1", "d3"]  # d1 matches bee, keep, warm; d3 only bee
    assert all(s > 0 for _, s in hits) and {d for d, _ in hits} == {"d1", "d3"}
    assert hits[0][1] > hits[1][1]


def test_save_load_roundtrip(tmp_path):
    index = BM25Index.build(CORPUS, BM25Config(k1=1.2, b=0.75), show_progress=False)
    index.save(tmp_path / "idx")
    again = BM25Index.load(tmp_path / "idx")
    assert again.config.k1 == 1.2 and again.docids == index.docids
    q = ["capital of france", "twisted rope"]
    assert again.search(q, 2, show_progress=False) == index.search(q, 2, show_progress=False)
    with pytest.raises(FileNotFoundError, match="not a LazyRank BM25 index"):
        BM25Index.load(tmp_path)


def test_score_given_docids_matches_search_and_refuses_unknown_ones():
    index = BM25Index.build(CORPUS, show_progress=False)
    (hits,) = index.search(["bees keep warm"], depth=4, show_progress=False)
    scores = index.score("bees keep warm", ["d4", "d3", "d1", "d2"])
    assert scores[0] == 0.0 and scores[3] == 0.0  # no shared term
    assert scores[2] == pytest.approx(dict(hits)["d1"]) and scores[1] == pytest.approx(dict(hits)["d3"])
    assert index.score("zebra quantum", ["d1", "d2"]) == [0.0, 0.0]  # no indexed term at all
    with pytest.raises(KeyError, match="not in this BM25 index.*'d9'"):
        index.score("bees", ["d1", "d9"])


def test_bad_input():
    with pytest.raises(ValueError, match="empty corpus"):
        BM25Index.build({}, show_progress=False)
    with pytest.raises(ValueError, match="k1"):
        BM25Config(b=2.0)
    with pytest.raises(ValueError, match="depth"):
        BM25Index.build(CORPUS, show_progress=False).search(["x"], 0)


def test_cli_writes_a_run(tmp_path):
    coll = tmp_path / "coll"
    coll.mkdir()
    (coll / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in CORPUS.items()))
    (coll / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "bees warm"}) + "\n")
    out = tmp_path / "run.trec"
    assert (
        main(["--collection", str(coll), "--depth", "2", "--output", str(out), "--index_dir", str(tmp_path / "i")]) == 0
    )
    lines = out.read_text().split("\n")
    assert lines[0].split()[:4] == ["q1", "Q0", "d1", "1"]
    assert (tmp_path / "i" / "lazyrank_index.json").is_file()


def test_first_stage_is_the_folders_run_else_bm25_kept_in_a_cache(tmp_path):
    from rerank.data.bm25 import first_stage_run
    from rerank.data.collection import load_collection

    coll = tmp_path / "coll"
    coll.mkdir()
    (coll / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in CORPUS.items()))
    (coll / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "bees warm"}) + "\n")
    cache = tmp_path / "cache" / "run.trec"
    assert first_stage_run(load_collection(coll), 1, cache=cache) == {"q1": ["d1"]}
    assert len(cache.read_text().splitlines()) == 2  # the cache keeps every hit, not only the first
    assert first_stage_run(load_collection(coll), 3, cache=cache) == {"q1": ["d1", "d3"]}
    assert cache.read_text().split()[:4] == ["q1", "Q0", "d1", "1"]
    # the cache is read back, not rebuilt: every script then ranks the same candidates
    cache.write_text("q1 Q0 d4 1 2.0 x\nq1 Q0 d2 2 1.0 x\n")
    assert first_stage_run(load_collection(coll), 3, cache=cache) == {"q1": ["d4", "d2"]}
    # a folder's own run comes first, cut to the depth
    (coll / "run.bm25.trec").write_text("q1 Q0 d2 1 3.0 bm25\nq1 Q0 d3 2 2.0 bm25\nq1 Q0 d1 3 1.0 bm25\n")
    assert first_stage_run(load_collection(coll), 2, cache=cache) == {"q1": ["d2", "d3"]}


def test_reproduces_the_shipped_scifact_run():
    from rerank.data.bm25 import retrieve_collection
    from rerank.data.collection import load_collection, read_run
    from rerank.evaluation import compute_metrics

    folder = shared_data("beir-scifact")
    coll = load_collection(folder)
    run = retrieve_collection(folder, depth=100, queries={q: coll.queries[q] for q in coll.qrels})
    ours = compute_metrics(coll.qrels, run, coll.graded)["ndcg@10"]
    shipped = read_run(f"{folder}/run.bm25.trec")
    theirs = compute_metrics(
        coll.qrels, {q: [(d, -i) for i, d in enumerate(v)] for q, v in shipped.items()}, coll.graded
    )["ndcg@10"]
    assert theirs == pytest.approx(0.6762, abs=1e-4)
    assert ours == pytest.approx(theirs, abs=0.005)


def test_cli_rank_llm_round_trip(tmp_path, tokenizer):
    """retrieve --rank_llm_output writes rank_llm requests that `rerank rank-llm` reranks into results
    holding the same candidates (a permutation), scores and texts kept."""
    from support import make_tiny_llama

    from rerank.cli.commands import main as cli_main
    from rerank.data.rank_llm_files import read_rank_llm_requests

    coll = tmp_path / "coll"
    coll.mkdir()
    (coll / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in CORPUS.items()))
    (coll / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "bees warm"}) + "\n")
    requests = tmp_path / "requests.jsonl"
    assert (
        main(
            [
                "--collection",
                str(coll),
                "--depth",
                "3",
                "--output",
                str(tmp_path / "run.trec"),
                "--rank_llm_output",
                str(requests),
            ]
        )
        == 0
    )
    (req,) = read_rank_llm_requests(requests)
    assert req.query == "bees warm" and req.candidates[0].docid == "d1"
    assert [c.doc["contents"] for c in req.candidates] == [CORPUS[c.docid] for c in req.candidates]
    model = tmp_path / "tiny"
    make_tiny_llama(len(tokenizer), layers=2).save_pretrained(model)
    tokenizer.save_pretrained(model)
    results = tmp_path / "results.json"
    assert (
        cli_main(
            [
                "rank-llm",
                "--input",
                str(requests),
                "--output",
                str(results),
                "--model",
                str(model),
                "--prompt",
                "rank_zephyr",
                "--scoring",
                "single_pass",
            ]
        )
        == 0
    )
    (res,) = read_rank_llm_requests(results)
    assert sorted(c.docid for c in res.candidates) == sorted(c.docid for c in req.candidates)
    assert {c.docid: c.score for c in res.candidates} == {c.docid: c.score for c in req.candidates}
