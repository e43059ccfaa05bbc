"""BM25 (bm25s) first stage: does ``rerank retrieve`` reproduce the shipped runs?

    .venv/bin/python eval/bench_retrieval.py --out eval/results/retrieval_cpu.json

beir-scifact test claims (the shipped ``run.bm25.trec`` scores nDCG@10 0.6762) and vaswani (no run
shipped; 93 queries). Writes nDCG@10, RR@10, R@20, R@100 and index/search seconds per collection.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rerank.data.bm25 import BM25Index
from rerank.data.collection import load_collection
from rerank.data.script_support import shared_data_dir
from rerank.evaluation import compute_metrics

DATA = shared_data_dir(__file__)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="eval/results/retrieval_cpu.json")
    ap.add_argument("--collections", default="beir-scifact,vaswani")
    args = ap.parse_args(argv)
    results = {}
    for name in args.collections.split(","):
        coll = load_collection(str(DATA / name))
        start = time.perf_counter()
        index = BM25Index.build(coll.corpus, show_progress=False)
        built = time.perf_counter() - start
        qids = sorted(q for q in coll.queries if q in coll.qrels)
        start = time.perf_counter()
        hits = index.search([coll.queries[q] for q in qids], 100, show_progress=False)
        searched = time.perf_counter() - start
        metrics = compute_metrics(coll.qrels, dict(zip(qids, hits)), coll.graded)
        # R@100 of the top-20 run is R@20: how much a depth-20 reranker can ever see.
        top20 = compute_metrics(coll.qrels, {q: h[:20] for q, h in zip(qids, hits)}, coll.graded)["recall@100"]
        results[name] = {
            **{k: round(v, 4) for k, v in metrics.items()},
            "recall@20": round(top20, 4),
            "queries": len(qids),
            "documents": len(coll.corpus),
            "index_seconds": round(built, 2),
            "search_seconds": round(searched, 2),
        }
        print(name, results[name])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
