"""Per-query comparison of two rankings of the same queries: mean nDCG@10 difference, how many queries
each wins, and a paired randomization test.

    .venv/bin/python eval/paired_records.py --collection dl19 \\
        runs/il/dl19/100-tournament-interleaved.jsonl runs/long/depth/dl19/100-tournament-d0.jsonl \\
        --label "interleaved tournament vs first window, top-100"

Reads two ``eval/depth_methods.py`` record files (``{qid, docids, order}`` per line; several
comma-separated files per side are merged) and compares them on the queries both hold. Writes one
JSON cell per ``--label`` to ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from rerank.data.collection import load_collection
from rerank.data.resume import recover_records
from rerank.data.script_support import EVAL_COLLECTIONS, resolve_collection, shared_data_dir, update_json
from rerank.evaluation import paired_randomization, per_query_ndcg, scored_by_rank

DATA = shared_data_dir(__file__)


def ranked(paths: str | Path) -> dict[str, list[tuple[str, float]]]:
    """Each record's ranking as (docid, score) pairs, best first with decreasing scores; ``paths`` may
    name several files, comma-separated (e.g. the same method run on two slices of the queries)."""
    out = {}
    for path in str(paths).split(","):
        out.update(_ranked_file(Path(path)))
    return out


def _ranked_file(path: Path) -> dict[str, list[tuple[str, float]]]:
    return {rec["qid"]: scored_by_rank([rec["docids"][k] for k in rec["order"]]) for rec in recover_records(path)}


def compare(qrels: dict, a: dict, b: dict) -> dict:
    """Mean nDCG@10 of both on their common judged queries, wins, losses and the paired p-value."""
    common = sorted(set(a) & set(b) & set(qrels))
    if not common:
        raise ValueError("the two record files share no judged query")
    na = per_query_ndcg(qrels, {q: a[q] for q in common})
    nb = per_query_ndcg(qrels, {q: b[q] for q in common})
    xs, ys = [na.get(q, 0.0) for q in common], [nb.get(q, 0.0) for q in common]
    return {
        "queries": len(common),
        "ndcg@10_a": round(statistics.mean(xs), 4),
        "ndcg@10_b": round(statistics.mean(ys), 4),
        "a_better": sum(x > y + 1e-9 for x, y in zip(xs, ys)),
        "b_better": sum(y > x + 1e-9 for x, y in zip(xs, ys)),
        "p_two_sided": round(paired_randomization(xs, ys), 3),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--collection", required=True, help=f"One of {sorted(EVAL_COLLECTIONS)} or a collection folder of one's own."
    )
    ap.add_argument("records_a")
    ap.add_argument("records_b")
    ap.add_argument("--label", required=True, help="Name of this comparison in the JSON.")
    ap.add_argument("--out", default="eval/results/paired_cpu.json", help="JSON to update.")
    args = ap.parse_args(argv)
    coll = load_collection(resolve_collection(args.collection, DATA, ".")[0])
    cell = {
        "collection": args.collection,
        "a": args.records_a,
        "b": args.records_b,
        **compare(coll.qrels, ranked(args.records_a), ranked(args.records_b)),
    }
    update_json(args.out, [args.label], cell)
    print(args.label, cell)
    return cell


if __name__ == "__main__":
    main()
