"""How much the shipped head's scores lean on a passage's position in the prompt.

    .venv/bin/python eval/order_sensitivity.py --collection vaswani --limit_queries 40
    .venv/bin/python eval/order_sensitivity.py --collection dl19
    .venv/bin/python eval/order_sensitivity.py --model runs/shuffle/model --label shuffled --limit_queries 40

Each query's BM25 top-``--depth`` is scored twice by the shipped default (model alone, raw head
readout): in the first stage's order and reversed. A scorer that read only relevance would rank both
the same; the gap between the two nDCG@10 values (and the Kendall tau between the two score lists)
measures the position prior the weights learned from BM25-ordered training lists, the prior that makes
the first passages of a weak deep chunk outscore better ones elsewhere. Writes one JSON cell per
collection to ``--out`` (``vaswani`` for the shipped weights, ``vaswani (LABEL)`` for ``--model``).
"""

from __future__ import annotations

import argparse
import statistics

from tqdm import tqdm

from rerank import Reranker
from rerank.data.bm25 import first_stage_run
from rerank.data.collection import load_collection
from rerank.data.script_support import (
    EVAL_COLLECTIONS,
    VASWANI_RUN_CACHE,
    resolve_collection,
    shared_data_dir,
    update_json,
)
from rerank.evaluation import compute_metrics, kendall_tau, scored_by_rank

DATA = shared_data_dir(__file__)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--collection",
        default="vaswani",
        help=f"One of {sorted(EVAL_COLLECTIONS)} or a collection folder of one's own.",
    )
    ap.add_argument("--depth", type=int, default=20, help="BM25 candidates per query (one prompt).")
    ap.add_argument("--limit_queries", type=int, default=0, help="Only the first N judged queries (0 = all).")
    ap.add_argument(
        "--run_cache",
        default=None,
        help="Where BM25's run is cached for a folder without a run of its own (default: "
        f"{VASWANI_RUN_CACHE} for vaswani, else runs/order/NAME/bm25.trec).",
    )
    ap.add_argument("--model", default=None, help="Model or adapter folder (default: the shipped weights).")
    ap.add_argument("--label", default=None, help="Name of --model's cells in the JSON (default: its folder).")
    ap.add_argument("--out", default="eval/results/order_sensitivity_cpu.json", help="JSON to update.")
    args = ap.parse_args(argv)
    folder, collection, run_cache = resolve_collection(args.collection, DATA, "runs/order")
    key = collection if args.model is None else f"{collection} ({args.label or args.model})"

    coll = load_collection(folder)
    run = first_stage_run(coll, args.depth, cache=args.run_cache or run_cache)
    qids = sorted(q for q in run if q in coll.qrels and q in coll.queries)
    if args.limit_queries:
        qids = qids[: args.limit_queries]
    reranker = Reranker.from_pretrained(args.model, calibration=False)
    given, reversed_, mean, taus = {}, {}, {}, []
    for qid in tqdm(qids, desc=f"{collection} given + reversed"):
        docs = run[qid][: args.depth]
        texts = [coll.corpus[d] for d in docs]
        given_result = reranker.rerank(coll.queries[qid], texts)
        reversed_result = reranker.rerank(coll.queries[qid], texts[::-1])
        forward, backward = given_result.scores, reversed_result.scores[::-1]
        given[qid] = list(zip(docs, forward))
        reversed_[qid] = list(zip(docs, backward))
        mean[qid] = [(d, (a + b) / 2) for d, a, b in zip(docs, forward, backward)]
        n = len(texts)
        taus.append(kendall_tau(given_result.order, [n - 1 - j for j in reversed_result.order]))
    bm25 = {q: scored_by_rank(run[q][: args.depth]) for q in qids}
    cell = {
        "queries": len(qids),
        "depth": args.depth,
        "ndcg@10": {
            name: round(compute_metrics(coll.qrels, r, coll.graded)["ndcg@10"], 4)
            for name, r in (("given_order", given), ("reversed", reversed_), ("mean_of_both", mean))
        },
        "bm25": round(compute_metrics(coll.qrels, bm25, coll.graded)["ndcg@10"], 4),
        "median_kendall_tau_given_vs_reversed": round(statistics.median(taus), 3),
    }
    update_json(args.out, [key], cell)
    print(key, cell)
    return cell


if __name__ == "__main__":
    main()
