"""Where a tournament loses the relevant passages the first stage retrieved: leaders or final order.

    .venv/bin/python eval/leader_recall.py --collection scifact \\
        --records runs/ilcal/scifact/100-tournament-interleaved+cal.jsonl --label "shipped, top-100"

Reads ``eval/depth_methods.py`` records of a tournament (a ranking begins with its final prompt's
leaders, ordered by the final prompt) and reports, of the judged-relevant passages among each query's
candidates (pooled over the queries), the share among the first ``--leaders`` of the ranking (the
final prompt's passages) and among its first 10 (what nDCG@10 reads), beside the first stage's top
``--leaders`` and top 10. Relevant = grade >= 2 on graded collections (TREC DL), >= 1 elsewhere.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rerank.data.collection import load_collection
from rerank.data.resume import recover_records
from rerank.data.script_support import EVAL_COLLECTIONS, resolve_collection, shared_data_dir, update_json
from rerank.evaluation import binary_labels

DATA = shared_data_dir(__file__)


def recall_shares(records: list[dict], qrels: dict[str, dict[str, int]], graded: bool, leaders: int) -> dict:
    """Pooled shares of the relevant candidates that each cut keeps (see the module docstring).

    >>> recs = [{"qid": "q", "docids": ["a", "b", "c"], "order": [2, 0, 1]}]
    >>> recall_shares(recs, {"q": {"b": 1, "c": 1}}, False, 1)["reranked_top_leaders"]
    0.5
    """
    relevant = kept = top10 = first_stage = first_stage10 = 0
    for rec in records:
        labels = binary_labels(qrels.get(rec["qid"], {}), rec["docids"], graded)
        wanted = {d for d, label in zip(rec["docids"], labels) if label}
        ranking = [rec["docids"][k] for k in rec["order"]]
        relevant += len(wanted)
        kept += len(wanted & set(ranking[:leaders]))
        top10 += len(wanted & set(ranking[:10]))
        first_stage += len(wanted & set(rec["docids"][:leaders]))
        first_stage10 += len(wanted & set(rec["docids"][:10]))
    share = (lambda n: round(n / relevant, 4)) if relevant else (lambda n: None)
    return {
        "queries": len(records),
        "relevant_candidates": relevant,
        "reranked_top_leaders": share(kept),
        "reranked_top10": share(top10),
        "first_stage_top_leaders": share(first_stage),
        "first_stage_top10": share(first_stage10),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--collection", required=True, help=f"One of {sorted(EVAL_COLLECTIONS)} or a collection folder of one's own."
    )
    ap.add_argument("--records", required=True, help="eval/depth_methods.py records of a tournament.")
    ap.add_argument("--leaders", type=int, default=20, help="Passages in the final prompt (window_size).")
    ap.add_argument("--label", required=True, help="Name of this cell in the JSON.")
    ap.add_argument("--out", default="eval/results/leader_recall_cpu.json", help="JSON to update.")
    args = ap.parse_args(argv)
    coll = load_collection(resolve_collection(args.collection, DATA, ".")[0])
    records = list(recover_records(Path(args.records)))
    if not records:
        raise SystemExit(f"{args.records}: no records")
    cell = {
        "collection": args.collection,
        "records": args.records,
        **recall_shares(records, coll.qrels, coll.graded, args.leaders),
    }
    update_json(args.out, [args.label], cell)
    print(args.label, cell)
    return cell


if __name__ == "__main__":
    main()
