"""Choose the first-stage fusion weight on a development collection, then report it elsewhere.

    .venv/bin/python scripts/fusion_dev.py --model runs/head/model \\
        --apply dl19-20=runs/quality/trained/dl19-20 --apply scifact-20=runs/quality/trained/scifact-20 \\
        --out eval/results/fusion_cpu.json

The weight ``w`` of ``rerank.fusion.fuse_with_first_stage`` (model rank fused with BM25 rank) is
picked on Vaswani (93 physics-abstract queries, BM25 top-``--depth`` from ``rerank retrieve``):
neither a training source nor an evaluation set of the quality table. The model's rankings there
come from an ``rerank.evaluation.evaluate`` run (resumable). ``--apply NAME=DIR`` then applies the
CHOSEN weight, through the same library function ``Reranker(first_stage_weight=w)`` uses, to the
rankings an earlier evaluation wrote in ``DIR`` (``rankings.jsonl`` + ``eval_config.json``), and
reports nDCG@10 of the model alone, BM25 alone and the fusion on those queries. The whole weight
curve is written for every collection too, marked as not used for the choice.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rerank.data.script_support import shared_data_dir

DATA = shared_data_dir(__file__)
WEIGHTS = [round(0.1 * i, 1) for i in range(11)]


def load_cell(cell_dir: Path) -> tuple[dict, dict[str, list[str]], dict[str, list[str]]]:
    """(qrels, first-stage candidates per qid, model ranking per qid) of an evaluation folder."""
    from rerank.data.collection import default_run_path, load_collection, read_run
    from rerank.data.resume import load_settings, recover_records

    cfg = load_settings(cell_dir / "eval_config.json")
    if cfg is None:
        raise FileNotFoundError(f"{cell_dir} holds no eval_config.json: not an evaluation folder")
    collection = load_collection(cfg["collection"])
    run_path = cfg.get("run") or default_run_path(collection)
    candidates = read_run(run_path, cfg.get("depth", cfg.get("top_k")))  # top_k: metrics.json before the rename
    rankings = dict(recover_records(cell_dir / "rankings.jsonl", lambda r: (r["qid"], r["ranking"])))
    return collection.qrels, candidates, rankings


def fused_ndcg(qrels: dict, candidates: dict, rankings: dict, weight: float) -> float:
    from rerank.evaluation import compute_metrics
    from rerank.fusion import fuse_with_first_stage

    run = {}
    for qid, ranking in rankings.items():
        cands = candidates[qid]
        index = {doc: i for i, doc in enumerate(cands)}
        order, scores = fuse_with_first_stage([index[d] for d in ranking], weight)
        run[qid] = [(cands[i], scores[i]) for i in order]
    return compute_metrics(qrels, run, graded=any(g > 1 for j in qrels.values() for g in j.values()))["ndcg@10"]


def curve(cell_dir: Path) -> dict:
    qrels, candidates, rankings = load_cell(cell_dir)
    return {
        "queries": len(rankings),
        "ndcg@10": {str(w): round(fused_ndcg(qrels, candidates, rankings, w), 4) for w in WEIGHTS},
    }


def main(argv: list[str] | None = None) -> dict:
    from rerank.data.bm25 import first_stage_run
    from rerank.data.collection import load_collection
    from rerank.evaluation import EvalConfig, evaluate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/head/model", help="Model to fuse (path; 'default' = the shipped one).")
    ap.add_argument("--scoring", default="head")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--dev_collection", default=str(DATA / "vaswani"))
    ap.add_argument("--work_dir", default="runs/fusion")
    ap.add_argument("--apply", action="append", default=[], help="NAME=EVAL_DIR: report the chosen weight there.")
    ap.add_argument("--out", default="eval/results/fusion_cpu.json")
    args = ap.parse_args(argv)

    work = Path(args.work_dir)
    run_path = work / "dev.bm25.trec"  # written when the folder has no run of its own
    first_stage_run(load_collection(args.dev_collection), 100, cache=run_path)
    dev_dir = work / f"dev-{args.depth}"
    model = None if args.model == "default" else args.model
    evaluate(
        EvalConfig(
            collection=args.dev_collection,
            run=str(run_path) if run_path.is_file() else None,
            depth=args.depth,
            model=model,
            scoring=args.scoring,
            output_dir=str(dev_dir),
        )
    )
    dev = curve(dev_dir)
    best = max(WEIGHTS, key=lambda w: (dev["ndcg@10"][str(w)], -w))  # ties: the smaller weight
    report = {
        "model": args.model,
        "scoring": args.scoring,
        "depth": args.depth,
        "dev": {"collection": args.dev_collection, **dev},
        "chosen_weight": best,
        "applied": {},
    }
    for spec in args.apply:
        name, _, cell = spec.partition("=")
        c = curve(Path(cell))
        report["applied"][name] = {
            "queries": c["queries"],
            "model_alone": c["ndcg@10"]["0.0"],
            "first_stage_alone": c["ndcg@10"]["1.0"],
            "fused_at_chosen_weight": c["ndcg@10"][str(best)],
            "curve_not_used_for_choice": c["ndcg@10"],
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"dev ({dev['queries']} queries) nDCG@10 by weight: {dev['ndcg@10']}\nchosen weight: {best}")
    for name, row in report["applied"].items():
        print(
            f"{name}: model {row['model_alone']}  first stage {row['first_stage_alone']}  "
            f"fused {row['fused_at_chosen_weight']}  ({row['queries']} queries)"
        )
    return report


if __name__ == "__main__":
    main()
