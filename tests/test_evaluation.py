"""Collection readers, TREC runs, metrics and the resumable evaluation loop."""

import json

import pytest
import torch
from support import shared_data

from rerank.data.collection import load_collection, read_qrels, read_run, write_run
from rerank.evaluation import EvalConfig, compute_metrics, evaluate


def test_bm25_run_reproduces_published_figures(tmp_path):
    cfg = EvalConfig(collection=shared_data("msmarco-dl19"), strategy="none", output_dir=str(tmp_path))
    metrics = evaluate(cfg, progress=False)
    assert metrics["queries"] == 43
    assert metrics["ndcg@10"] == pytest.approx(0.5058, abs=5e-5)
    assert metrics["rr@10"] == pytest.approx(0.7024, abs=5e-5)
    assert metrics["recall@100"] == pytest.approx(0.4910, abs=5e-5)
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert len(lines) == 43 * 100


def test_metrics_hand_computed():
    qrels = {"q": {"a": 3, "b": 1}}
    run = {"q": [("b", 2.0), ("a", 1.0)]}
    m = compute_metrics(qrels, run, graded=True)
    # trec_eval's nDCG uses linear gains: DCG = 1/log2(2) + 3/log2(3); ideal = 3/1 + 1/log2(3)
    import math

    assert m["ndcg@10"] == pytest.approx((1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3)))
    assert m["rr@10"] == pytest.approx(0.5)  # rel>=2 only "a", at rank 2
    assert m["recall@100"] == pytest.approx(1.0)


def write_collection(root, beir=False):
    root.mkdir()
    (root / "corpus.jsonl").write_text("\n".join(json.dumps({"_id": f"d{i}", "text": f"doc {i}"}) for i in range(4)))
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "doc 2"}) + "\n")
    if beir:
        (root / "qrels").mkdir()
        (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t1\n")
    else:
        (root / "qrels.txt").write_text("q1 0 d2 1\n")
    (root / "run.bm25.trec").write_text("".join(f"q1 Q0 d{i} {i + 1} {10 - i} bm25\n" for i in range(4)))


@pytest.mark.parametrize("beir", [False, True])
def test_both_layouts_load(tmp_path, beir):
    write_collection(tmp_path / "c", beir=beir)
    c = load_collection(tmp_path / "c")
    assert c.qrels == {"q1": {"d2": 1}} and not c.graded
    assert c.corpus["d3"] == "doc 3"


def test_evaluation_resumes_and_tolerates_torn_line(tmp_path, tiny_reranker):
    write_collection(tmp_path / "c")
    (tmp_path / "c" / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "doc 2"}) + "\n" + json.dumps({"_id": "q2", "text": "doc 1"}) + "\n"
    )
    (tmp_path / "c" / "qrels.txt").write_text("q1 0 d2 1\nq2 0 d1 1\n")
    (tmp_path / "c" / "run.bm25.trec").write_text(
        "".join(f"{q} Q0 d{i} {i + 1} {10 - i} bm25\n" for q in ("q1", "q2") for i in range(4))
    )
    out = tmp_path / "out"
    cfg = EvalConfig(collection=str(tmp_path / "c"), strategy="full", output_dir=str(out), depth=3)
    m1 = evaluate(cfg, reranker=tiny_reranker, progress=False)
    records = (out / "rankings.jsonl").read_text().splitlines()
    assert len(records) == 2
    # simulate an interrupted run: keep q1, leave half a line for q2
    (out / "rankings.jsonl").write_text(records[0] + "\n" + records[1][:20])
    m2 = evaluate(cfg, reranker=tiny_reranker, progress=False)
    again = (out / "rankings.jsonl").read_text().splitlines()
    assert len(again) == 2 and again[0] == records[0]
    assert m2["ndcg@10"] == pytest.approx(m1["ndcg@10"])
    # the 4th candidate (beyond depth=3) stays below the reranked head
    run = read_run(out / "run.trec")
    assert run["q1"][-1] == "d3"
    # resuming under another ranking setup would mix two systems' rankings: refused, by name
    with pytest.raises(ValueError, match="scoring: 'generate' -> 'single_pass'"):
        evaluate(
            EvalConfig(
                collection=str(tmp_path / "c"), strategy="full", output_dir=str(out), depth=3, scoring="single_pass"
            ),
            reranker=tiny_reranker,
            progress=False,
        )
    evaluate(
        EvalConfig(collection=str(tmp_path / "c"), strategy="full", output_dir=str(out), depth=3, batch_size=2),
        reranker=tiny_reranker,
        progress=False,
    )  # batching changes no ranking


def test_readers_name_file_and_line(tmp_path):
    bad = tmp_path / "run.trec"
    bad.write_text("q1 Q0 d1 1 2.0 x\nq1 Q0 d2\n")
    with pytest.raises(ValueError, match=r"run.trec:2"):
        read_run(bad)
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 d1 x\nq1 0 d2 1\nq1 0 d3 y\n")
    with pytest.raises(ValueError, match=r"qrels.txt:3"):
        read_qrels(qrels)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_collection(tmp_path / "nope")


def test_write_run_round_trip(tmp_path):
    write_run(tmp_path / "r.trec", {"q": [("b", 3.0), ("a", 1.0)]})
    assert read_run(tmp_path / "r.trec") == {"q": ["b", "a"]}


def test_eval_config_validation():
    with pytest.raises(ValueError, match="pruning spec"):
        EvalConfig(collection="x", pruning="quick")
    assert EvalConfig(collection="x", pruning="0.1:0.5").pruning == "0.1:0.5"
    with pytest.raises(ValueError, match="strategy"):
        EvalConfig(collection="x", strategy="bm25")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["eval", "--collection", "x", "--pruning", "quick"], "pruning spec"),
        (["eval", "--collection", "x", "--strategy", "bm25"], "strategy"),
        (["labels", "--input", "x", "--output", "y", "--teacher", "qrels", "--stride", "0"], "stride"),
    ],
)
def test_cli_config_errors_are_usage_errors(argv, needle, capsys):
    from rerank.cli.commands import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_recover_records_drops_torn_tail_so_appends_stay_whole(tmp_path):
    from rerank.data.collection import recover_records

    log = tmp_path / "log.jsonl"
    assert recover_records(log) == []
    log.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "tor')
    assert recover_records(log) == [{"a": 1}, {"a": 2}]
    with open(log, "a", encoding="utf-8") as fh:  # what a resumed run does next
        fh.write(json.dumps({"a": 3}) + "\n")
    assert recover_records(log) == [{"a": 1}, {"a": 2}, {"a": 3}]


def _one_query_collection_and_tiny_model(tmp_path, tokenizer):
    from support import make_tiny_llama

    write_collection(tmp_path / "c")
    (tmp_path / "c" / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "doc 2"}) + "\n")
    (tmp_path / "c" / "qrels.txt").write_text("q1 0 d2 1\n")
    (tmp_path / "c" / "run.bm25.trec").write_text("".join(f"q1 Q0 d{i} {i + 1} {10 - i} bm25\n" for i in range(4)))
    model = tmp_path / "tiny"
    make_tiny_llama(len(tokenizer), layers=2).save_pretrained(model)
    tokenizer.save_pretrained(model)
    return model


def test_first_stage_weight_one_returns_the_first_stage_and_is_recorded(tmp_path, tokenizer):
    model = _one_query_collection_and_tiny_model(tmp_path, tokenizer)
    out = tmp_path / "out"
    evaluate(
        EvalConfig(
            collection=str(tmp_path / "c"),
            model=str(model),
            scoring="single_pass",
            depth=4,
            first_stage_weight=1.0,
            output_dir=str(out),
        ),
        progress=False,
    )
    assert read_run(out / "run.trec")["q1"] == ["d0", "d1", "d2", "d3"]
    assert json.loads((out / "eval_config.json").read_text())["first_stage_weight"] == 1.0
    with pytest.raises(ValueError, match="first_stage_weight"):
        EvalConfig(collection=str(tmp_path / "c"), first_stage_weight=2.0)
    with pytest.raises(ValueError, match="prompt"):
        EvalConfig(collection=str(tmp_path / "c"), prompt="rank_nonsense")


def test_ranking_agreement_hand_computed():
    from rerank.evaluation import kendall_tau, top_k_overlap

    assert kendall_tau(["a", "b", "c"], ["a", "b", "c"]) == 1.0
    assert kendall_tau(["a", "b", "c"], ["c", "b", "a"]) == -1.0
    assert kendall_tau(["a", "b", "c"], ["b", "a", "c"]) == pytest.approx(1 / 3)  # 2 concordant pairs, 1 discordant
    assert kendall_tau(["a"], ["a"]) == 1.0
    assert top_k_overlap([1, 2, 3, 4], [2, 9, 1, 4], k=2) == 0.5
    assert top_k_overlap([1, 2], [2, 1], k=10) == 1.0  # shorter than k: shares of what is there


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU precision: a GPU runs the model in its dtype instead")
def test_eval_records_the_precision_auto_ran_and_refuses_to_resume_in_another(tmp_path, tokenizer):
    from rerank.precision import resolve_precision

    model = _one_query_collection_and_tiny_model(tmp_path, tokenizer)
    out = tmp_path / "out"
    cfg = dict(collection=str(tmp_path / "c"), model=str(model), scoring="head", depth=4, output_dir=str(out))
    evaluate(EvalConfig(**cfg), progress=False)
    auto = resolve_precision(None)
    assert json.loads((out / "eval_config.json").read_text())["precision"] == auto
    other = "fp32" if auto != "fp32" else "int8"
    with pytest.raises(ValueError, match=f"precision: '{auto}' -> '{other}'"):
        evaluate(EvalConfig(**cfg, precision=other), progress=False)
