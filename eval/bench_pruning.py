"""Pruned vs unpruned prefill on TREC DL19 with the default model (CPU): speed and fidelity.

Full run (about 30 minutes on an idle 2-core machine, one torch thread; much longer when the CPU is
shared, hence the optional time budget on the fidelity loop):

    .venv/bin/python eval/bench_pruning.py

What produced eval/results/pruning_cpu.json (a 2-core CPU with other work running):

    .venv/bin/python eval/bench_pruning.py --curve_queries 6 --timing_queries 1 --repeats 2 \
        --e2e_queries 1 --max_fidelity_minutes 40

Quick smoke run (a few minutes):

    .venv/bin/python eval/bench_pruning.py --limit_queries 2 --curve_queries 1 --timing_queries 1 \
        --repeats 1 --e2e_queries 1 --no_max_context --output /tmp/pruning_quick.json --plot ''

Sections of the JSON (default ``eval/results/pruning_cpu.json``):

* ``fidelity``: every query at N = ``--depth`` passages (BM25 order), ranked top-10 by constrained
  decoding after an unpruned prefill and after each pruned schedule. Per schedule: the median of the
  per-query prefill speedups (dense and pruned prefill of the same prompt run back to back, so CPU
  contention hits both alike), ``computed_fraction``, top-10 overlap, Kendall tau over the union of
  both top-10s, top-1 agreement, KL(unpruned || pruned) of the first answer token, nDCG@10 of both.
  The default schedule runs on all queries, the other curve points on the first ``--curve_queries``.
* ``timing``: prefill only, interleaved dense / pruned, ``--repeats`` rounds after a warm-up, at
  N = ``--depth`` and at the most passages that fit the context (``--no_max_context`` skips it).
* ``end_to_end``: ``Reranker.rerank`` (what a user calls) with ``pruning=None`` vs the default
  ``PruningConfig()``, full permutation and ``top_k=10``: prefill, decode and total seconds.

Speed numbers are ratios measured in the same process run, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from rerank import PruningConfig, Reranker, RerankerConfig
from rerank.data.collection import load_collection, read_run
from rerank.engine.generate import rank_prompts
from rerank.engine.pruning import PrunedSession
from rerank.engine.session import DenseSession
from rerank.evaluation import compute_metrics, kendall_tau, scored_by_rank, top_k_overlap
from rerank.prompting.identifiers import complete_order
from rerank.ranking import Window

ROOT = Path(__file__).resolve().parent.parent

# Curve points: the default plus gentler / harsher variants and the two other knobs.
PRESETS: dict[str, PruningConfig] = {
    "default": PruningConfig(),
    "keep70-40-20": PruningConfig(layer_fractions=[0.1, 0.33, 0.67], keep_ratios=[0.7, 0.4, 0.2]),
    "keep50-25-10": PruningConfig(layer_fractions=[0.1, 0.33, 0.67], keep_ratios=[0.5, 0.25, 0.1]),
    "keep30-15-5": PruningConfig(layer_fractions=[0.1, 0.33, 0.67], keep_ratios=[0.3, 0.15, 0.05]),
    "keep20-10-5": PruningConfig(layer_fractions=[0.1, 0.33, 0.67], keep_ratios=[0.2, 0.1, 0.05]),
    "late70-40-20": PruningConfig(layer_fractions=[0.27, 0.5, 0.77], keep_ratios=[0.7, 0.4, 0.2]),
    "one30@0.13": PruningConfig(layer_fractions=[0.13], keep_ratios=[0.3]),
    "passage50-25-10": PruningConfig(
        layer_fractions=[0.1, 0.33, 0.67], keep_ratios=[0.5, 0.25, 0.1], granularity="passage"
    ),
    "window8-50-25-10": PruningConfig(layer_fractions=[0.1, 0.33, 0.67], keep_ratios=[0.5, 0.25, 0.1], score_window=8),
}


class CapturingSession:
    """Forwards to a session; remembers the prefill logits (first answer position) and CPU seconds.

    Process CPU time is reported next to wall time: on a shared machine other jobs stretch wall time
    unevenly, while with one torch thread the CPU time of a prefill tracks the work it does.
    """

    def __init__(self, inner):
        self.inner = inner
        self.first_logits: torch.Tensor | None = None
        self.cpu_seconds = 0.0

    def prefill(self, prompts, prunable=None):
        tick = time.process_time()
        self.first_logits = self.inner.prefill(prompts, prunable)
        self.cpu_seconds = time.process_time() - tick
        return self.first_logits

    def step(self, tokens):
        return self.inner.step(tokens)

    @property
    def info(self):
        return self.inner.info


def union_tau(order_a: list[int], order_b: list[int], k: int = 10) -> float:
    """Kendall tau of the union of both top-k sets, ranked by their positions in each full order."""
    items = list(dict.fromkeys(order_a[:k] + order_b[:k]))
    pa = {x: i for i, x in enumerate(order_a)}
    pb = {x: i for i, x in enumerate(order_b)}
    return kendall_tau(sorted(items, key=pa.get), sorted(items, key=pb.get))


def kl(ref: torch.Tensor, other: torch.Tensor) -> float:
    """KL(ref || other) of the next-token distributions."""
    p = ref.float().log_softmax(-1)
    q = other.float().log_softmax(-1)
    return float((p.exp() * (p - q)).sum())


def ndcg10(qrels: dict, runs: dict[str, dict[str, list[str]]]) -> dict[str, float]:
    """nDCG@10 (``rerank.evaluation``) of each named run ``{qid: docids best first}``."""
    return {
        name: compute_metrics(qrels, {q: scored_by_rank(docs) for q, docs in run.items()}, graded=False)["ndcg@10"]
        for name, run in runs.items()
    }


def max_fitting(rr: Reranker, query: str, docs: list[str]) -> int:
    """The most leading passages whose prompt plus a complete answer fit the context (binary search)."""
    lo, hi = 1, len(docs)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if rr.fits(Window(query=query, passages=docs[:mid])):
            lo = mid
        else:
            hi = mid - 1
    return lo


def ranked(rr: Reranker, session, window: Window, top_k: int | None):
    enc = rr.encode(window)
    cap = CapturingSession(session)
    out = rank_prompts(
        cap, [enc.input_ids], [enc.num_passages], rr.table, top_k=[top_k], prunable=[enc.prunable_mask()]
    )
    order = complete_order([i - 1 for i in out.identifiers[0]], enc.num_passages)
    info = out.prefill
    return {
        "order": order,
        "logits": cap.first_logits[0],
        "prefill_s": info.seconds,
        "prefill_cpu_s": cap.cpu_seconds,
        "decode_s": out.decode_seconds,
        "computed_fraction": info.computed_fraction,
        "kept_tokens": info.kept_tokens,
        "prompt_tokens": info.prompt_tokens,
    }


def summarise(rows: list[dict]) -> dict:
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    mean = lambda xs: statistics.fmean(xs) if xs else float("nan")  # noqa: E731
    return {
        "queries": len(rows),
        "prefill_speedup_median": med([r["speedup"] for r in rows]),
        "prefill_speedup_p10": (sorted(r["speedup"] for r in rows)[len(rows) // 10] if rows else float("nan")),
        "prefill_cpu_speedup_median": med([r["cpu_speedup"] for r in rows]),
        "dense_prefill_s_median": med([r["dense_prefill_s"] for r in rows]),
        "pruned_prefill_s_median": med([r["prefill_s"] for r in rows]),
        "computed_fraction": mean([r["computed_fraction"] for r in rows]),
        "kept_fraction": mean([r["kept_tokens"] / r["prompt_tokens"] for r in rows]),
        "top10_overlap": mean([r["overlap10"] for r in rows]),
        "kendall_tau_top10_union": mean([r["tau"] for r in rows]),
        "top1_agreement": mean([float(r["top1"]) for r in rows]),
        "first_token_kl": mean([r["kl"] for r in rows]),
        "decode_s_median": med([r["decode_s"] for r in rows]),
    }


def run_fidelity(rr, coll, run, qids, args, names) -> dict:
    dense_orders: dict[str, list[str]] = {}
    pruned_orders: dict[str, dict[str, list[str]]] = {n: {} for n in names}
    rows: dict[str, list[dict]] = {n: [] for n in names}
    curve_qids = set(qids[: args.curve_queries])
    start = time.perf_counter()
    done = 0
    for qi, qid in enumerate(qids):
        if args.max_fidelity_minutes and time.perf_counter() - start > 60 * args.max_fidelity_minutes:
            print(f"  fidelity: time budget of {args.max_fidelity_minutes} min spent after {qi} queries", flush=True)
            break
        done += 1
        docids = run[qid][: args.depth]
        window = Window(query=coll.queries[qid], passages=[coll.corpus[d] for d in docids])
        dense = ranked(rr, DenseSession(rr.model, rr.tokenizer.pad_token_id), window, args.decode_top_k)
        dense_orders[qid] = [docids[i] for i in dense["order"]]
        for name in names:
            if name != "default" and qid not in curve_qids:
                continue
            got = ranked(
                rr, PrunedSession(rr.model, rr.tokenizer.pad_token_id, PRESETS[name]), window, args.decode_top_k
            )
            pruned_orders[name][qid] = [docids[i] for i in got["order"]]
            rows[name].append(
                {
                    "qid": qid,
                    "speedup": dense["prefill_s"] / got["prefill_s"],
                    "dense_prefill_s": dense["prefill_s"],
                    "cpu_speedup": dense["prefill_cpu_s"] / got["prefill_cpu_s"],
                    "prefill_s": got["prefill_s"],
                    "decode_s": got["decode_s"],
                    "dense_decode_s": dense["decode_s"],
                    "computed_fraction": got["computed_fraction"],
                    "kept_tokens": got["kept_tokens"],
                    "prompt_tokens": got["prompt_tokens"],
                    "overlap10": top_k_overlap(dense["order"], got["order"]),
                    "tau": union_tau(dense["order"], got["order"]),
                    "top1": dense["order"][0] == got["order"][0],
                    "kl": kl(dense["logits"], got["logits"]),
                    "top10": got["order"][:10],
                    "dense_top10": dense["order"][:10],
                }
            )
        d = rows["default"][-1]
        print(
            f"  [{qi + 1}/{len(qids)}] {qid} tokens={d['prompt_tokens']} dense {d['dense_prefill_s']:.1f}s "
            f"default {d['prefill_s']:.1f}s ({d['speedup']:.2f}x wall, {d['cpu_speedup']:.2f}x cpu) "
            f"overlap {d['overlap10']:.1f} kl {d['kl']:.3f}",
            flush=True,
        )
    out = {
        "depth": args.depth,
        "decode_top_k": args.decode_top_k,
        "queries_done": done,
        "queries_planned": len(qids),
        "schedules": {},
    }
    for name in names:
        summary = summarise(rows[name])
        subset = list(pruned_orders[name])
        scores = ndcg10(
            coll.qrels,
            {
                "unpruned": {q: dense_orders[q] for q in subset},
                "pruned": pruned_orders[name],
                "bm25": {q: run[q][: args.depth] for q in subset},
            },
        )
        summary.update(
            {
                "ndcg10_unpruned": scores["unpruned"],
                "ndcg10_pruned": scores["pruned"],
                "ndcg10_bm25": scores["bm25"],
                "ndcg10_delta_points": 100 * (scores["pruned"] - scores["unpruned"]),
                "config": asdict(PRESETS[name]),
                "per_query": rows[name],
            }
        )
        out["schedules"][name] = summary
    return out


def run_timing(rr, coll, run, qids, args, names, max_context: bool) -> dict:
    """Interleaved prefill-only timing (dense, then each schedule, per query and repeat)."""

    def prompt(qid, n):
        docs = [coll.corpus[d] for d in run[qid]]
        n = max_fitting(rr, coll.queries[qid], docs) if n is None else n
        enc = rr.encode(Window(query=coll.queries[qid], passages=docs[:n]))
        return n, enc

    sizes = [("depth", args.depth)] + ([("max_context", None)] if max_context else [])
    out = {}
    for label, n in sizes:
        times: dict[str, list[float]] = {"unpruned": [], **{k: [] for k in names}}
        ratios: dict[str, list[float]] = {k: [] for k in names}
        cpu_ratios: dict[str, list[float]] = {k: [] for k in names}
        fractions: dict[str, float] = {}
        ns, tokens = [], []
        encs = [prompt(q, n) for q in qids]
        dense = DenseSession(rr.model, rr.tokenizer.pad_token_id)
        dense.prefill([encs[0][1].input_ids])  # warm-up at this size
        for rep in range(args.repeats):
            for got_n, enc in encs:
                if rep == 0:
                    ns.append(got_n)
                    tokens.append(len(enc.input_ids))
                dense = CapturingSession(DenseSession(rr.model, rr.tokenizer.pad_token_id))
                dense.prefill([enc.input_ids])
                base = dense.info.seconds
                times["unpruned"].append(base)
                for name in names:
                    s = CapturingSession(PrunedSession(rr.model, rr.tokenizer.pad_token_id, PRESETS[name]))
                    s.prefill([enc.input_ids], [enc.prunable_mask()])
                    times[name].append(s.info.seconds)
                    ratios[name].append(base / s.info.seconds)
                    cpu_ratios[name].append(dense.cpu_seconds / s.cpu_seconds)
                    fractions[name] = s.info.computed_fraction
        out[label] = {
            "passages": ns,
            "prompt_tokens": tokens,
            "repeats": args.repeats,
            "median_prefill_s": {k: statistics.median(v) for k, v in times.items()},
            "speedup_median_of_pairs": {k: statistics.median(v) for k, v in ratios.items()},
            "cpu_speedup_median_of_pairs": {k: statistics.median(v) for k, v in cpu_ratios.items()},
            "speedup_of_medians": {
                k: statistics.median(times["unpruned"]) / statistics.median(times[k]) for k in names
            },
            "computed_fraction_last": fractions,
        }
        print(
            f"  timing {label}: N={ns} tokens={tokens} "
            + ", ".join(
                f"{k} {v:.2f}x wall, {out[label]['cpu_speedup_median_of_pairs'][k]:.2f}x cpu"
                for k, v in out[label]["speedup_median_of_pairs"].items()
            ),
            flush=True,
        )
    return out


def run_end_to_end(rr, coll, run, qids, args) -> dict:
    """What a user waits for: ``Reranker.rerank`` with and without the default pruning."""
    rankers = {
        "unpruned": Reranker(rr.model, rr.tokenizer, RerankerConfig(max_passage_tokens=rr.config.max_passage_tokens)),
        "default": Reranker(
            rr.model,
            rr.tokenizer,
            RerankerConfig(max_passage_tokens=rr.config.max_passage_tokens, pruning=PruningConfig()),
        ),
    }
    out = {}
    for top_k in (None, 10):
        acc = {name: {"prefill_s": [], "decode_s": [], "total_s": [], "cpu_s": []} for name in rankers}
        for qid in qids:
            docs = [coll.corpus[d] for d in run[qid][: args.depth]]
            for name, ranker in rankers.items():
                tick = time.process_time()
                res = ranker.rerank(coll.queries[qid], docs, top_k=top_k)
                acc[name]["cpu_s"].append(time.process_time() - tick)
                acc[name]["prefill_s"].append(res.stats.prefill_seconds)
                acc[name]["decode_s"].append(res.stats.decode_seconds)
                acc[name]["total_s"].append(res.stats.total_seconds)
        label = "full_permutation" if top_k is None else f"top_k={top_k}"
        med = {name: {k: statistics.median(v) for k, v in d.items()} for name, d in acc.items()}
        out[label] = {
            "queries": len(qids),
            "median": med,
            "total_speedup": med["unpruned"]["total_s"] / med["default"]["total_s"],
            "total_cpu_speedup": med["unpruned"]["cpu_s"] / med["default"]["cpu_s"],
            "prefill_speedup": med["unpruned"]["prefill_s"] / med["default"]["prefill_s"],
            "decode_share_unpruned": med["unpruned"]["decode_s"] / med["unpruned"]["total_s"],
        }
        print(
            f"  end-to-end {label}: unpruned {med['unpruned']['total_s']:.1f}s/query, default "
            f"{med['default']['total_s']:.1f}s/query ({out[label]['total_speedup']:.2f}x)",
            flush=True,
        )
    return out


def print_table(fidelity: dict) -> None:
    cols = [
        "queries",
        "prefill_speedup_median",
        "prefill_cpu_speedup_median",
        "computed_fraction",
        "top10_overlap",
        "kendall_tau_top10_union",
        "top1_agreement",
        "first_token_kl",
        "ndcg10_unpruned",
        "ndcg10_pruned",
    ]
    head = ["schedule", "q", "speedup", "cpu spd", "computed", "top10ov", "tau", "top1", "KL", "nDCG un", "nDCG pr"]
    print(" | ".join(f"{h:>16}" if i == 0 else f"{h:>8}" for i, h in enumerate(head)))
    for name, s in fidelity["schedules"].items():
        cells = [f"{name:>16}"] + [f"{s[c]:8.3f}" if isinstance(s[c], float) else f"{s[c]:8d}" for c in cols]
        print(" | ".join(cells))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        default=str(ROOT / ".." / "shared" / "data" / "msmarco-dl19"),
        help="collection folder (corpus.jsonl, queries.jsonl, qrels.txt, run.bm25.trec)",
    )
    parser.add_argument("--model", default=None, help="model path; default SmolLM2-135M-Instruct")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; 1 keeps CPU-time ratios meaningful on a shared machine"
    )
    parser.add_argument("--depth", type=int, default=50, help="passages per prompt, BM25 order")
    parser.add_argument("--max_passage_tokens", type=int, default=100)
    parser.add_argument("--limit_queries", type=int, default=None, help="fidelity queries (default all 43)")
    parser.add_argument("--curve_queries", type=int, default=12, help="queries for the non-default curve points")
    parser.add_argument(
        "--curve",
        nargs="*",
        default=["keep70-40-20", "keep30-15-5", "passage50-25-10", "window8-50-25-10"],
        choices=[k for k in PRESETS if k != "default"],
        help="extra schedules (names of PRESETS)",
    )
    parser.add_argument("--decode_top_k", type=int, default=10, help="identifiers decoded in the fidelity loop")
    parser.add_argument("--timing_queries", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no_max_context", action="store_true", help="skip timing at the largest N that fits")
    parser.add_argument("--e2e_queries", type=int, default=2)
    parser.add_argument(
        "--max_fidelity_minutes",
        type=float,
        default=None,
        help="stop starting new fidelity queries after this long (the JSON says how many ran)",
    )
    parser.add_argument("--output", default=str(ROOT / "eval" / "results" / "pruning_cpu.json"))
    parser.add_argument(
        "--plot",
        default=str(ROOT / "eval" / "results" / "pruning_cpu.png"),
        help="PNG of the speed/fidelity curve ('' to skip)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    coll = load_collection(args.data)
    run = read_run(os.path.join(args.data, "run.bm25.trec"))
    qids = [q for q in coll.queries if q in run and q in coll.qrels]
    if args.limit_queries:
        qids = qids[: args.limit_queries]
    rr = Reranker.from_pretrained(args.model, dtype=args.dtype, max_passage_tokens=args.max_passage_tokens)
    names = ["default"] + [n for n in args.curve if n != "default"]
    print(f"default PruningConfig: {asdict(PruningConfig())}", flush=True)
    # Warm-up: the first forwards of a process are much slower.
    warm = Window(query=coll.queries[qids[0]], passages=[coll.corpus[d] for d in run[qids[0]][: args.depth]])
    ranked(rr, DenseSession(rr.model, rr.tokenizer.pad_token_id), warm, 1)
    ranked(rr, PrunedSession(rr.model, rr.tokenizer.pad_token_id, PruningConfig()), warm, 1)

    result = {
        "model": args.model or "SmolLM2-135M-Instruct",
        "dtype": args.dtype,
        "threads": args.threads,
        "load_average_at_start": os.getloadavg(),
        "torch": torch.__version__,
        "data": os.path.basename(os.path.normpath(args.data)),
        "max_passage_tokens": args.max_passage_tokens,
        "default_config": asdict(PruningConfig()),
        "args": vars(args),
    }
    # Speed first (short), then the long fidelity loop, which may stop at its time budget.
    if args.timing_queries:
        result["timing"] = run_timing(
            rr, coll, run, qids[: args.timing_queries], args, ["default"], not args.no_max_context
        )
    if args.e2e_queries:
        result["end_to_end"] = run_end_to_end(rr, coll, run, qids[: args.e2e_queries], args)
    print(f"fidelity: {len(qids)} queries, N={args.depth}, curve {names[1:]} on {args.curve_queries}", flush=True)
    result["fidelity"] = run_fidelity(rr, coll, run, qids, args, names)
    result["wall_seconds"] = time.perf_counter() - start
    result["load_average_at_end"] = os.getloadavg()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w") as fh:
        json.dump(result, fh, indent=1)
    print_table(result["fidelity"])
    print(f"wrote {args.output} ({result['wall_seconds'] / 60:.1f} min)")
    if args.plot:
        try:
            from plot_pruning import plot  # eval/ is on sys.path when this script runs

            plot(args.output, args.plot)
            print(f"wrote {args.plot}")
        except ImportError as exc:  # matplotlib missing: the JSON is the result
            print(f"no plot ({exc})")


if __name__ == "__main__":
    main()
