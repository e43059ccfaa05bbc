"""Cost of constrained permutation decoding: jump-forward vs token-by-token, and the constraint's share.

    python eval/bench_decoding.py --collection ../shared/data/msmarco-dl19 --top-n 20 --queries 10 \
        --output eval/results/decoding_cpu.json

For each query the two modes run back to back on the same prompt (machine load hits both alike),
after one warm-up query. Also runs an unconstrained greedy decode of the same number of tokens, so
the constraint's overhead per step is measured against plain decoding.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from rerank import Reranker
from rerank.data import default_run_path, load_collection, read_run
from rerank.engine import DenseSession, rank_prompts
from rerank.prompts import encode_prompt


def plain_greedy_seconds(reranker: Reranker, ids: list[int], steps: int) -> float:
    """Unconstrained greedy decoding of ``steps`` tokens (the reference per-step cost)."""
    session = DenseSession(reranker.model, reranker.tokenizer.pad_token_id)
    logits = session.prefill([ids])
    start = time.perf_counter()
    for _ in range(steps - 1):
        logits = session.step(logits.argmax(-1))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", default="../shared/data/msmarco-dl19")
    parser.add_argument("--top-n", type=int, default=20)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--max-passage-tokens", type=int, default=100)
    parser.add_argument("--model", default=None)
    parser.add_argument("--output", default="eval/results/decoding_cpu.json")
    args = parser.parse_args(argv)

    collection = load_collection(args.collection)
    run = read_run(default_run_path(collection))
    qids = sorted(q for q in run if q in collection.qrels)
    rr = Reranker.from_pretrained(args.model)
    rows = []
    for i, qid in enumerate([qids[0]] + qids[: args.queries]):
        docs = [collection.corpus[d] for d in run[qid][: args.top_n]]
        enc = encode_prompt(rr.tokenizer, collection.queries[qid], docs, args.max_passage_tokens)
        row = {"qid": qid}
        for mode, jump in (("jump", True), ("token_by_token", False)):
            out = rank_prompts(DenseSession(rr.model, rr.tokenizer.pad_token_id), [enc.input_ids],
                               [enc.num_passages], rr.table, jump_forward=jump)
            row[mode] = {"decode_seconds": out.decode_seconds, "forward_passes": out.forward_passes,
                         "generated_tokens": out.generated_tokens[0], "constraint_seconds": out.constraint_seconds,
                         "order": out.identifiers[0]}
        row["plain_greedy_seconds"] = plain_greedy_seconds(rr, enc.input_ids, row["token_by_token"]["generated_tokens"])
        if i > 0:  # the first is a warm-up
            rows.append(row)
        print(f"{qid:>8} jump {row['jump']['decode_seconds']:.2f}s ({row['jump']['forward_passes']} passes)  "
              f"token-by-token {row['token_by_token']['decode_seconds']:.2f}s  plain {row['plain_greedy_seconds']:.2f}s",
              flush=True)

    def med(f):
        return statistics.median(f(r) for r in rows)

    summary = {
        "queries": len(rows), "top_n": args.top_n, "torch_threads": torch.get_num_threads(),
        "same_ranking_all_queries": all(r["jump"]["order"] == r["token_by_token"]["order"] for r in rows),
        "generated_tokens": med(lambda r: r["jump"]["generated_tokens"]),
        "forward_passes_jump": med(lambda r: r["jump"]["forward_passes"]),
        "forward_passes_token_by_token": med(lambda r: r["token_by_token"]["forward_passes"]),
        "decode_seconds_jump": med(lambda r: r["jump"]["decode_seconds"]),
        "decode_seconds_token_by_token": med(lambda r: r["token_by_token"]["decode_seconds"]),
        "decode_seconds_plain_greedy_same_tokens": med(lambda r: r["plain_greedy_seconds"]),
        "decode_speedup_jump": med(lambda r: r["token_by_token"]["decode_seconds"] / r["jump"]["decode_seconds"]),
        "constraint_share_token_by_token": med(lambda r: r["token_by_token"]["constraint_seconds"] / r["token_by_token"]["decode_seconds"]),
        "constrained_vs_plain_greedy": med(lambda r: r["token_by_token"]["decode_seconds"] / r["plain_greedy_seconds"]),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"summary": summary, "per_query": rows}, indent=2))
    for k, v in summary.items():
        print(f"{k:<42} {v:.4f}" if isinstance(v, float) else f"{k:<42} {v}")
    return summary


if __name__ == "__main__":
    main()
