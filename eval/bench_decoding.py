"""Cost of constrained permutation decoding: jump-forward vs token-by-token, and the constraint's share.

    python eval/bench_decoding.py --collection ../shared/data/msmarco-dl19 --depth 20 --queries 10 \
        --batch_size 4 --batch_groups 5 --output eval/results/decoding_cpu.json

For each query the two modes run back to back on the same prompt (machine load hits both alike),
after one warm-up query. Also runs an unconstrained greedy decode of the same number of tokens, so
the constraint's overhead per step is measured against plain decoding.

The batched case (``--batch_size``, default 4 as in ``RerankerConfig``) does the same for groups of
consecutive queries decoded together: jump-forward with ragged per-row steps vs token by token,
same prompts, one warm-up group, medians over ``--batch_groups`` groups (0 skips it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from rerank import Reranker
from rerank.data.collection import default_run_path, load_collection, read_run
from rerank.engine import DenseSession, rank_prompts
from rerank.prompting.prompts import encode_prompt


def plain_greedy_seconds(reranker: Reranker, ids: list[int], steps: int) -> float:
    """Unconstrained greedy decoding of ``steps`` tokens (the reference per-step cost)."""
    session = DenseSession(reranker.model, reranker.tokenizer.pad_token_id)
    logits = session.prefill([ids])
    start = time.perf_counter()
    for _ in range(steps - 1):
        logits = session.step(logits.argmax(-1))
    return time.perf_counter() - start


def run_batch(rr: Reranker, encs: list, jump: bool) -> dict:
    """Decode one batch of prompts in one session; the per-batch costs and each row's ranking."""
    out = rank_prompts(
        DenseSession(rr.model, rr.tokenizer.pad_token_id),
        [e.input_ids for e in encs],
        [e.num_passages for e in encs],
        rr.table,
        jump_forward=jump,
    )
    return {
        "decode_seconds": out.decode_seconds,
        "forward_passes": out.forward_passes,
        "generated_tokens": sum(out.generated_tokens),
        "constraint_seconds": out.constraint_seconds,
        "orders": out.identifiers,
    }


def batched_rows(rr: Reranker, encs: list, batch_size: int, groups: int) -> list[dict]:
    """Jump-forward vs token by token on the same batches; the first batch is a warm-up (not returned)."""
    rows = []
    for g in range(groups + 1):
        # Consecutive queries, wrapping around when there are fewer than groups * batch_size.
        batch = [encs[(g * batch_size + i) % len(encs)] for i in range(batch_size)]
        row = {"group": g, "prompt_tokens": [len(e.input_ids) for e in batch]}
        for mode, jump in (("jump", True), ("token_by_token", False)):
            row[mode] = run_batch(rr, batch, jump)
        if g > 0:
            rows.append(row)
        jumped, plain = row["jump"], row["token_by_token"]
        print(
            f"batch {g:>3}{' (warm-up)' if g == 0 else ''}  jump {jumped['decode_seconds']:.2f}s "
            f"({jumped['forward_passes']} passes)  token-by-token {plain['decode_seconds']:.2f}s "
            f"({plain['forward_passes']} passes)",
            flush=True,
        )
    return rows


def batched_summary(rows: list[dict], batch_size: int) -> dict:
    def med(f):
        return statistics.median(f(r) for r in rows)

    return {
        "batch_size": batch_size,
        "batches": len(rows),
        "same_ranking_all_batches": all(r["jump"]["orders"] == r["token_by_token"]["orders"] for r in rows),
        "forward_passes_jump": med(lambda r: r["jump"]["forward_passes"]),
        "forward_passes_token_by_token": med(lambda r: r["token_by_token"]["forward_passes"]),
        "decode_seconds_jump": med(lambda r: r["jump"]["decode_seconds"]),
        "decode_seconds_token_by_token": med(lambda r: r["token_by_token"]["decode_seconds"]),
        "decode_speedup_jump": med(lambda r: r["token_by_token"]["decode_seconds"] / r["jump"]["decode_seconds"]),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", default="../shared/data/msmarco-dl19")
    parser.add_argument("--depth", type=int, default=20, help="BM25 candidates per prompt")
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--max_passage_tokens", type=int, default=100)
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--batch_groups", type=int, default=5, help="timed batches after one warm-up (0: skip)")
    parser.add_argument("--output", default="eval/results/decoding_cpu.json")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    collection = load_collection(args.collection)
    run = read_run(default_run_path(collection))
    qids = sorted(q for q in run if q in collection.qrels)
    rr = Reranker.from_pretrained(args.model)
    rows, encs = [], []
    for i, qid in enumerate([qids[0]] + qids[: args.queries]):
        docs = [collection.corpus[d] for d in run[qid][: args.depth]]
        enc = encode_prompt(rr.tokenizer, collection.queries[qid], docs, args.max_passage_tokens)
        if i > 0:
            encs.append(enc)
        row = {"qid": qid}
        for mode, jump in (("jump", True), ("token_by_token", False)):
            out = rank_prompts(
                DenseSession(rr.model, rr.tokenizer.pad_token_id),
                [enc.input_ids],
                [enc.num_passages],
                rr.table,
                jump_forward=jump,
            )
            row[mode] = {
                "decode_seconds": out.decode_seconds,
                "forward_passes": out.forward_passes,
                "generated_tokens": out.generated_tokens[0],
                "constraint_seconds": out.constraint_seconds,
                "order": out.identifiers[0],
            }
        row["plain_greedy_seconds"] = plain_greedy_seconds(rr, enc.input_ids, row["token_by_token"]["generated_tokens"])
        if i > 0:  # the first is a warm-up
            rows.append(row)
        print(
            f"{qid:>8} jump {row['jump']['decode_seconds']:.2f}s ({row['jump']['forward_passes']} passes)  "
            f"token-by-token {row['token_by_token']['decode_seconds']:.2f}s  plain {row['plain_greedy_seconds']:.2f}s",
            flush=True,
        )

    def med(f):
        return statistics.median(f(r) for r in rows)

    summary = {
        "queries": len(rows),
        "depth": args.depth,
        "torch_threads": torch.get_num_threads(),
        "same_ranking_all_queries": all(r["jump"]["order"] == r["token_by_token"]["order"] for r in rows),
        "generated_tokens": med(lambda r: r["jump"]["generated_tokens"]),
        "forward_passes_jump": med(lambda r: r["jump"]["forward_passes"]),
        "forward_passes_token_by_token": med(lambda r: r["token_by_token"]["forward_passes"]),
        "decode_seconds_jump": med(lambda r: r["jump"]["decode_seconds"]),
        "decode_seconds_token_by_token": med(lambda r: r["token_by_token"]["decode_seconds"]),
        "decode_seconds_plain_greedy_same_tokens": med(lambda r: r["plain_greedy_seconds"]),
        "decode_speedup_jump": med(lambda r: r["token_by_token"]["decode_seconds"] / r["jump"]["decode_seconds"]),
        "constraint_share_token_by_token": med(
            lambda r: r["token_by_token"]["constraint_seconds"] / r["token_by_token"]["decode_seconds"]
        ),
        "constrained_vs_plain_greedy": med(lambda r: r["token_by_token"]["decode_seconds"] / r["plain_greedy_seconds"]),
    }
    result = {"summary": summary, "per_query": rows}
    if args.batch_groups > 0:
        batched = batched_rows(rr, encs, args.batch_size, args.batch_groups)
        result["batched_summary"] = batched_summary(batched, args.batch_size)
        result["per_batch"] = batched
        summary = {**summary, **{f"batched_{k}": v for k, v in result["batched_summary"].items()}}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    for k, v in summary.items():
        print(f"{k:<42} {v:.4f}" if isinstance(v, float) else f"{k:<42} {v}")
    return summary


if __name__ == "__main__":
    main()
