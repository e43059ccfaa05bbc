"""TREC DL19 in PyTerrier: BM25, the shipped default reranker and a second configuration in one pt.Experiment.

    OMP_NUM_THREADS=2 .venv/bin/python eval/pyterrier_dl19.py --depth 20 --out eval/results/pyterrier_dl19_cpu.json
    .venv/bin/python eval/pyterrier_dl19.py --queries 5 --out eval/results/pyterrier_dl19_q5_cpu.json  # quick

The first stage is the folder's BM25 run (``run.bm25.trec``, all 100 per query) read through
``pt.Transformer.from_df``; passage text is joined from ``corpus.jsonl``. Each reranker reranks the top
``--depth`` (20 by default, where the shipped default is meant to run; 100 costs about five times as
much) and keeps the rest of the run below it, as ``rerank eval`` does:
``(first_stage % depth >> text >> LazyRankReranker(...)) ^ first_stage``. The second configuration is
the shipped default with ``--second`` overrides (default ``first_stage_weight=0``: the model without
fusion), sharing its loaded model. ``pt.Experiment`` reports ``rerank.evaluation``'s measures (nDCG@10,
RR(rel=2)@10, R(rel=2)@100) with ``baseline=0`` (BM25), paired t-tests and ``correction="holm"``, and
per query. Each system runs once; both tables come from its results. Runs are scored as ``rerank eval``
scores them (``n - r`` per query), so ``--queries N`` gives ``rerank eval --limit_queries N``'s numbers
(tests/test_pyterrier.py checks it). No Java is started.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import pandas as pd
import pyterrier as pt
import yaml

from rerank import Reranker
from rerank.data.collection import Collection, default_run_path, load_collection, read_run
from rerank.evaluation import compute_metrics, standard_measures
from rerank.integrations.pyterrier import LazyRankReranker

__all__ = ["main", "run"]
logger = logging.getLogger(__name__)


def first_stage_frame(collection: Collection, run_path: str | os.PathLike, qids: list[str]) -> pd.DataFrame:
    """The run as a results frame, scored ``n - r`` per query like ``rerank eval``'s runs (tied BM25
    scores would otherwise be reordered by docno in evaluation)."""
    run = read_run(run_path)
    rows = []
    for qid in qids:
        docs = run[qid]
        rows += [{"qid": qid, "docno": d, "score": float(len(docs) - r), "rank": r} for r, d in enumerate(docs)]
    return pd.DataFrame(rows)


def join_text(corpus: dict[str, str]) -> pt.Transformer:
    """Adds each passage's ``text`` (what ``pt.text.get_text`` does for an index or a dataset). Candidates
    missing from the corpus are left out of the reranking, as ``rerank eval`` does (``^`` puts them back below)."""
    return pt.apply.generic(
        lambda df: df[df["docno"].isin(corpus.keys())].assign(text=lambda d: d["docno"].map(corpus)),
        transform_outputs=lambda cols: [*cols, *(["text"] if "text" not in cols else [])],
    )


def second_config(base: Reranker, overrides: str) -> Reranker:
    """``base`` with RerankerConfig fields changed (``"first_stage_weight=0,scoring=single_pass"``),
    sharing its model and tokenizer."""
    changes = {}
    for item in filter(None, overrides.split(",")):
        key, _, value = item.partition("=")
        changes[key.strip()] = yaml.safe_load(value)
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(base.config)})
    if unknown:
        raise ValueError(f"--second: unknown RerankerConfig field(s) {unknown}")
    for key, value in changes.items():
        if isinstance(getattr(base.config, key), float) and isinstance(value, int):
            changes[key] = float(value)
    return Reranker(base.model, base.tokenizer, dataclasses.replace(base.config, **changes))


def _records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))  # NaN -> null, numpy scalars -> JSON


def run(
    collection: Collection,
    run_path: str | os.PathLike,
    rerankers: dict[str, Reranker | None],
    *,
    queries: int | None = None,
    depth: int = 20,
) -> dict:
    """pt.Experiment over ``rerankers`` (name -> Reranker, or None for the first stage alone; the first is
    the baseline) on the judged queries of ``run_path`` (sorted by qid, the first ``queries``)."""
    first = read_run(run_path)
    qids = sorted(q for q in first if q in collection.qrels and q in collection.queries)[:queries]
    topics = pd.DataFrame({"qid": qids, "query": [collection.queries[q] for q in qids]})
    qrels = pd.DataFrame(
        [{"qid": q, "docno": d, "label": label} for q in qids for d, label in collection.qrels[q].items()]
    )
    first_stage = pt.Transformer.from_df(first_stage_frame(collection, run_path, qids))
    text = join_text(collection.corpus)
    stages = {name: None if r is None else LazyRankReranker(r) for name, r in rerankers.items()}
    # `^` appends the first stage's other candidates below the reranked head (scores shifted under it).
    systems = {
        name: first_stage if s is None else (first_stage % depth >> text >> s) ^ first_stage
        for name, s in stages.items()
    }
    results, seconds = {}, {}
    for name, system in systems.items():
        start = time.perf_counter()
        results[name] = system(topics)
        seconds[name] = (time.perf_counter() - start) / len(qids)
        logger.info("%s: %.2f s/query", name, seconds[name])
    standard = standard_measures(collection.graded)
    measures = list(standard.values())
    # Each system ran once above: both tables come from its results frame (pt.Experiment refuses
    # perquery together with baseline).
    frames, names = list(results.values()), list(results)
    table = pt.Experiment(frames, topics, qrels, measures, names=names, baseline=0, correction="holm")
    perquery = pt.Experiment(frames, topics, qrels, measures, names=names, perquery=True)
    as_runs = {
        name: {q: list(zip(g["docno"], g["score"])) for q, g in frame.sort_values("rank").groupby("qid")}
        for name, frame in results.items()
    }
    return {
        "queries": len(qids),
        "depth": depth,
        "measures": {str(m): key for key, m in standard.items()},  # pt.Experiment column -> rerank eval key
        "systems": {name: "first stage" if s is None else repr(s) for name, s in stages.items()},
        "table": _records(table),
        "perquery": _records(perquery),
        "seconds_per_query": {name: round(s, 3) for name, s in seconds.items()},
        # The same runs through rerank.evaluation.compute_metrics (what `rerank eval` reports).
        "rerank_eval_metrics": {
            name: compute_metrics(collection.qrels, r, collection.graded) for name, r in as_runs.items()
        },
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collection", default="../shared/data/msmarco-dl19")
    ap.add_argument("--run", default=None, help="first-stage TREC run; default: the folder's run.bm25.trec")
    ap.add_argument("--depth", type=int, default=20, help="BM25 candidates reranked per query")
    ap.add_argument("--queries", type=int, default=None, help="only the first N judged queries (by qid)")
    ap.add_argument("--model", default=None, help="model path or hub id; default: the shipped default reranker")
    ap.add_argument(
        "--second",
        default="first_stage_weight=0",
        help="RerankerConfig overrides of the second configuration, e.g. scoring=single_pass",
    )
    ap.add_argument("--out", default="eval/results/pyterrier_dl19_cpu.json")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    collection = load_collection(args.collection)
    run_path = args.run or default_run_path(collection)
    default = Reranker.from_pretrained(args.model)
    second = second_config(default, args.second)
    report = run(
        collection,
        run_path,
        {"BM25": None, "default": default, "second": second},
        queries=args.queries,
        depth=args.depth,
    )
    report = {
        "command": " ".join(["python", "eval/pyterrier_dl19.py", *(argv or sys.argv[1:])]),
        "collection": args.collection,
        "run": str(run_path),
        "pyterrier": pt.__version__,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        **report,
    }
    ndcg = next(iter(report["measures"]))
    columns = ["name", *report["measures"], f"{ndcg} p-value", f"{ndcg} p-value corrected"]
    print(pd.DataFrame(report["table"])[columns].to_string(index=False))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
