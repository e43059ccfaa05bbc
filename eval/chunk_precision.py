"""Can chunk scores be merged? Precision of the passage a model puts at rank k of each chunk of a long list.

    .venv/bin/python eval/chunk_precision.py --collection dl19 --records runs/depth/dl19/100-chunks.jsonl \\
        --label shipped --out eval/results/chunk_precision_cpu.json

``--records`` are the raw per-passage readouts ``eval/depth_methods.py`` writes for the ``chunks``
method: per query the first-stage docids and one score each, read in consecutive prompts of
``--window``. For every chunk (BM25 ranks 1-20, 21-40, ...) and every rank k the model gives inside
it, the share of queries whose passage there is relevant (grade >= 2 on TREC DL, >= 1 elsewhere).
Merging chunks can only help when a deep chunk's best passages are relevant more often than the
first chunk's passages they would displace (its ranks 6-10 at nDCG@10). The same table reports, per
chunk, the mean score of the passage at rank 1 and the precision of passages scoring above each
quantile of the first chunk's rank-10 scores: with scores on one scale, a deep passage that beats
the first chunk's rank 10 should be relevant at least as often as that rank-10 passage.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from rerank.data.collection import load_collection
from rerank.data.resume import recover_records
from rerank.data.script_support import EVAL_COLLECTIONS, shared_data_dir, update_json
from rerank.evaluation import binary_labels

DATA = shared_data_dir(__file__)


def chunk_precision(records: list[dict], qrels: dict, graded: bool, window: int, ranks: int = 10) -> dict:
    """Per chunk: precision at each in-chunk model rank (1..``ranks``), the mean score at rank 1, and
    how often a passage scoring above the query's own first-chunk rank-``ranks`` score is relevant.

    >>> recs = [{"qid": "q", "docids": ["a", "b", "c", "d"], "scores": [0.1, 0.9, 0.8, 0.2]}]
    >>> out = chunk_precision(recs, {"q": {"b": 1, "d": 1}}, graded=False, window=2, ranks=2)
    >>> out["1-2"]["precision_at_rank"], out["3-4"]["precision_at_rank"], out["3-4"]["precision_above_first_chunk_cut"]
    ([1.0, 0.0], [0.0, 1.0], 0.5)
    """
    by_chunk: dict[int, dict] = {}
    for rec in records:
        labels = binary_labels(qrels.get(rec["qid"], {}), rec["docids"], graded)
        scores = rec["scores"]
        first = sorted(scores[:window], reverse=True)
        cut = first[min(ranks, len(first)) - 1]
        for c, start in enumerate(range(0, len(scores), window)):
            part = list(range(start, min(start + window, len(scores))))
            order = sorted(part, key=lambda i: (-scores[i], i))
            cell = by_chunk.setdefault(c, {"hits": [[] for _ in range(ranks)], "top": [], "above": []})
            for k, i in enumerate(order[:ranks]):
                cell["hits"][k].append(labels[i])
            cell["top"].append(scores[order[0]])
            cell["above"] += [labels[i] for i in part if scores[i] > cut]

    def share(hits: list[int]) -> float | None:
        return round(sum(hits) / len(hits), 3) if hits else None

    out = {}
    for c, cell in sorted(by_chunk.items()):
        name = f"{c * window + 1}-{(c + 1) * window}"
        out[name] = {
            "precision_at_rank": [share(h) for h in cell["hits"]],
            "mean_top_score": round(statistics.mean(cell["top"]), 3),
            "precision_above_first_chunk_cut": share(cell["above"]),
            "passages_above_first_chunk_cut": len(cell["above"]),
            "queries": len(cell["top"]),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collection", required=True, choices=sorted(EVAL_COLLECTIONS))
    ap.add_argument("--records", required=True, help="Raw chunk readouts (eval/depth_methods.py, method chunks).")
    ap.add_argument("--label", required=True, help="Name of the weights in the JSON (e.g. shipped).")
    ap.add_argument("--window", type=int, default=20, help="Passages per prompt the readouts were made with.")
    ap.add_argument("--ranks", type=int, default=10, help="In-chunk ranks to report.")
    ap.add_argument("--out", default="eval/results/chunk_precision_cpu.json", help="JSON to update.")
    args = ap.parse_args(argv)
    coll = load_collection(DATA / EVAL_COLLECTIONS[args.collection])
    records = recover_records(Path(args.records))
    if not records:
        raise SystemExit(f"{args.records}: no records")
    table = chunk_precision(records, coll.qrels, coll.graded, args.window, args.ranks)
    cell = {"records": args.records, "queries": len(records), **table}
    update_json(args.out, [args.collection, args.label], cell)
    for name, row in table.items():
        print(args.collection, args.label, name, row["precision_at_rank"][:5], row["precision_above_first_chunk_cut"])
    return table


if __name__ == "__main__":
    main()
