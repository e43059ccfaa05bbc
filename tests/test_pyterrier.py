"""The PyTerrier transformer against the real pyterrier (no Java), in process and through a live server, and
the DL19 recipe in eval/ against `rerank eval`."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import pytest

pd = pytest.importorskip("pandas")
pt = pytest.importorskip("pyterrier")

from _serving_support import BEE_DOCS, LiveServer  # noqa: E402
from support import load_script, shared_data  # noqa: E402

from rerank import Reranker, RerankerConfig  # noqa: E402
from rerank.integrations.pyterrier import LazyRankReranker  # noqa: E402

RIVER_DOCS = [
    "The Nile flows north into the Mediterranean.",
    "Bread rises because yeast makes gas.",
    "The Amazon carries more water than any other river.",
    "Rivers carve valleys over millennia.",
]
TOPICS = {"q1": ("how do bees keep warm", BEE_DOCS), "q2": ("which river is the largest", RIVER_DOCS)}


@pytest.fixture(scope="module")
def sp(tiny_model, tokenizer):
    return Reranker(tiny_model, tokenizer, RerankerConfig(scoring="single_pass"))


def results_frame() -> pd.DataFrame:
    """A first-stage results frame; rows shuffled so only `rank` tells the first-stage order."""
    rows = [
        {
            "qid": qid,
            "query": query,
            "docno": f"{qid}-d{i}",
            "text": text,
            "rank": i,
            "score": 10.0 - i,
            "source": f"s{i}",
        }
        for qid, (query, docs) in TOPICS.items()
        for i, text in enumerate(docs)
    ]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)


def expected_docnos(reranker: Reranker) -> dict[str, list[str]]:
    """Each query's docnos in the order Reranker.rank gives, the documents read in first-stage order."""
    return {
        qid: [f"{qid}-d{r['corpus_id']}" for r in reranker.rank(query, docs)] for qid, (query, docs) in TOPICS.items()
    }


def test_reranks_each_query_like_reranker_rank(sp):
    out = LazyRankReranker(sp)(results_frame())
    assert list(dict.fromkeys(out["qid"])) == ["q1", "q2"]
    for qid, docnos in expected_docnos(sp).items():
        got = out[out["qid"] == qid]
        assert got["docno"].tolist() == docnos
        n = len(docnos)
        assert got["score"].tolist() == [float(n - r) for r in range(n)]  # strictly decreasing: no tie reorders
        assert got["rank"].tolist() == list(range(n))  # pt.model.add_ranks, FIRST_RANK = 0
        by_docno = got.set_index("docno")
        assert all(by_docno.loc[f"{qid}-d{i}", "source"] == f"s{i}" for i in range(n))  # other columns kept
    assert set(out.columns) == {"qid", "query", "docno", "text", "rank", "score", "source"}


def test_first_stage_order_from_score_when_no_rank(sp):
    frame = results_frame().drop(columns=["rank"])
    out = LazyRankReranker(sp)(frame)
    assert out[out["qid"] == "q1"]["docno"].tolist() == expected_docnos(sp)["q1"]


def test_through_a_live_server(sp):
    from rerank.serving import ServerConfig, create_app

    with LiveServer(create_app(sp, ServerConfig(api_key="k", max_wait_ms=2))) as live:
        reranker = LazyRankReranker(live.url, api_key="k")
        out = reranker(results_frame())
        assert repr(reranker) == f"LazyRank({live.url!r})"
    for qid, docnos in expected_docnos(sp).items():
        assert out[out["qid"] == qid]["docno"].tolist() == docnos


def test_experiment_with_baseline_and_holm(sp):
    """pt.Experiment over a first stage read with from_df: the reranked nDCG@10 is the hand-computed one."""
    import ir_measures
    from ir_measures import nDCG

    frame = results_frame()
    topics = pd.DataFrame([{"qid": q, "query": query} for q, (query, _) in TOPICS.items()])
    qrels = pd.DataFrame(
        [
            {"qid": "q1", "docno": "q1-d2", "label": 2},
            {"qid": "q1", "docno": "q1-d0", "label": 1},
            {"qid": "q2", "docno": "q2-d2", "label": 1},
        ]
    )
    first_stage = pt.Transformer.from_df(frame.drop(columns=["query"]))
    lazyrank = LazyRankReranker(sp)
    table = pt.Experiment(
        [first_stage, first_stage >> lazyrank],
        topics,
        qrels,
        [nDCG @ 10],
        names=["first stage", repr(lazyrank)],
        baseline=0,
        correction="holm",
        validate="error",
    )
    # By hand: each query's docnos in Reranker.rank's order, scored n - r.
    run = {qid: {d: float(len(docs) - r) for r, d in enumerate(docs)} for qid, docs in expected_docnos(sp).items()}
    qrels_dict = {"q1": {"q1-d2": 2, "q1-d0": 1}, "q2": {"q2-d2": 1}}
    want = ir_measures.calc_aggregate([nDCG @ 10], qrels_dict, run)[nDCG @ 10]
    assert table.loc[1, "nDCG@10"] == pytest.approx(want, abs=1e-9)
    assert {"nDCG@10 p-value", "nDCG@10 reject", "nDCG@10 p-value corrected"} <= set(table.columns)
    assert table.loc[1, "name"] == "LazyRank(default, scoring='single_pass')"
    assert not pt.java.started()  # no JVM, no Terrier jars: pure Python


def test_missing_columns_name_the_column(sp):
    reranker = LazyRankReranker(sp)
    with pytest.raises(pt.validate.InputValidationError, match=r"\['text'\].*pt\.text\.get_text"):
        reranker(results_frame().drop(columns=["text"]))
    with pytest.raises(pt.validate.InputValidationError, match=r"\['query'\]"):
        reranker(results_frame().drop(columns=["query"]))
    with pytest.raises(pt.validate.InputValidationError, match=r"\['body'\].*get_text"):
        LazyRankReranker(sp, text_field="body")(results_frame())
    # pt.Experiment's inspection sees the same refusal without running the model.
    with pytest.raises(pt.validate.InputValidationError):
        pt.inspect.transformer_outputs(reranker, ["qid", "query", "docno"])
    assert pt.inspect.transformer_outputs(reranker, ["qid", "query", "docno", "text"])[-2:] == ["score", "rank"]
    frame = results_frame()
    frame.loc[frame["docno"] == "q2-d1", "text"] = None
    with pytest.raises(ValueError, match=r"column 'text' must hold str; qid 'q2' docno 'q2-d1'"):
        reranker(frame)


def test_empty_frame_and_text_field(sp):
    reranker = LazyRankReranker(sp)
    empty = reranker(results_frame().iloc[:0])
    assert len(empty) == 0 and {"score", "rank"} <= set(empty.columns)
    renamed = LazyRankReranker(sp, text_field="body")(results_frame().rename(columns={"text": "body"}))
    assert renamed[renamed["qid"] == "q2"]["docno"].tolist() == expected_docnos(sp)["q2"]
    with pytest.raises(TypeError, match="Reranker or a server URL"):
        LazyRankReranker(42)


def test_package_level_lazy_export():
    import rerank.integrations as integrations

    assert integrations.LazyRankReranker is LazyRankReranker


def test_missing_pyterrier_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyterrier", None)
    monkeypatch.delitem(sys.modules, "rerank.integrations.pyterrier", raising=False)
    with pytest.raises(ImportError, match=r"lazyrank\[pyterrier\]"):
        importlib.import_module("rerank.integrations.pyterrier")


# ---------------------------------------------------------------------------------- the DL19 recipe
def _recipe():
    return load_script("eval/pyterrier_dl19.py")


def _recipe_matches_rerank_eval(reranker, tmp_path, queries: int, depth: int) -> None:
    from rerank.data.collection import default_run_path, load_collection
    from rerank.evaluation import EvalConfig, evaluate

    folder = shared_data("msmarco-dl19")
    recipe = _recipe()
    collection = load_collection(folder)
    report = recipe.run(
        collection, default_run_path(collection), {"BM25": None, "reranked": reranker}, queries=queries, depth=depth
    )
    metrics = evaluate(
        EvalConfig(collection=folder, depth=depth, limit_queries=queries, output_dir=str(tmp_path / "eval")),
        reranker=reranker,
        collection=collection,
        progress=False,
    )
    bm25 = evaluate(
        EvalConfig(
            collection=folder, depth=depth, limit_queries=queries, strategy="none", output_dir=str(tmp_path / "bm25")
        ),
        collection=collection,
        progress=False,
    )
    table = {row["name"]: row for row in report["table"]}
    assert report["measures"] == {"nDCG@10": "ndcg@10", "RR(rel=2)@10": "rr@10", "R(rel=2)@100": "recall@100"}
    for column, key in report["measures"].items():  # every reported measure, the BM25 tail included
        assert round(table["reranked"][column], 4) == round(metrics[key], 4)
        assert round(table["BM25"][column], 4) == round(bm25[key], 4)
        assert report["rerank_eval_metrics"]["reranked"][key] == pytest.approx(metrics[key], abs=1e-12)
    assert table["reranked"]["nDCG@10"] != table["BM25"]["nDCG@10"]
    assert len(report["perquery"]) == 2 * queries * len(report["measures"])
    assert {"nDCG@10 p-value corrected"} <= set(table["reranked"])


def test_dl19_recipe_equals_rerank_eval(tiny_reranker, tmp_path):
    _recipe_matches_rerank_eval(tiny_reranker, tmp_path, queries=3, depth=20)


@pytest.mark.model
def test_dl19_recipe_equals_rerank_eval_shipped_default(real_reranker, tmp_path):
    _recipe_matches_rerank_eval(real_reranker, tmp_path, queries=2, depth=20)


def test_recipe_second_configuration_shares_the_model(tiny_reranker):
    second = _recipe().second_config(tiny_reranker, "first_stage_weight=0, scoring=single_pass")
    assert second.model is tiny_reranker.model and second.tokenizer is tiny_reranker.tokenizer
    assert second.config.first_stage_weight == 0.0 and second.config.scoring == "single_pass"
    assert tiny_reranker.config.scoring == "generate"  # the base is left as it was
    with pytest.raises(ValueError, match=r"--second: unknown RerankerConfig field\(s\) \['temperature'\]"):
        _recipe().second_config(tiny_reranker, "temperature=0")
