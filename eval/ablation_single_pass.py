"""Quality matrix of the single-pass ablation: models x depths x {generate, single_pass} x {dense, pruned} (+ sliding).

    python eval/ablation_single_pass.py --models lm=runs/gpu/lm joint=runs/gpu/joint \\
        --groups 20 50 100 --budgets 100 100 60 --device cuda --batch_size 16 --schedules fast=fast \\
        --output eval/results/single_pass_ablation_gpu.json

Every variant reranks the BM25 top-N of all judged DL19 queries with ``Reranker.rerank_batch``
(queries batched), and nDCG@10 comes from ir-measures. This script is about quality: it reports
seconds per query of each batched pass only as a side note (the per-query latency benchmark is
``eval/bench_strategies.py``). Rankings are appended to ``<output>.records.jsonl`` as each batch
finishes, so an interrupted run resumes; ``--deadline_minutes`` stops starting new batches after
that long and still writes the JSON from what is done. A rerun that points a model name at another
path, or changes a depth's budget or a variant's schedule, is refused (``<output>.settings.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rerank import PruningConfig, Reranker, RerankerConfig
from rerank.data.collection import default_run_path, load_collection, read_run, recover_records
from rerank.data.resume import append_record, guard_records
from rerank.data.script_support import ranking_settings
from rerank.evaluation import compute_metrics, format_table, scored_by_rank

VARIANTS = {  # name: (strategy, scoring, pruning schedule key); --schedules adds single_pass+NAME
    "generate": ("full", "generate", None),
    "single_pass": ("full", "single_pass", None),
    "generate+prune": ("full", "generate", "default"),
    "single_pass+prune": ("full", "single_pass", "default"),
    "sliding": ("sliding", "generate", None),
}


def resume_settings(
    args: argparse.Namespace, models: dict[str, str], variants: dict, schedules: dict[str, PruningConfig]
) -> dict:
    """What the records depend on, one key per model name, depth and variant: a rerun into the same
    output may add models, depths or variants, but not point a name at another model path, change a
    depth's passage budget or a variant's pruning schedule (that would mix two systems under one name).
    Device, batch size, query count and deadline change no ranking and are left out."""
    fixed = {"collection": args.collection, "dtype": args.dtype} | {f"model[{n}]": p for n, p in models.items()}
    return ranking_settings(
        fixed,
        zip(args.groups, args.budgets),
        {
            name: {"strategy": strategy, "scoring": scoring, "pruning": None if sched is None else schedules[sched]}
            for name, (strategy, scoring, sched) in variants.items()
        },
    )


def _depth(record: dict) -> int:
    return record["depth"] if "depth" in record else record["top_n"]  # top_n: logs written before the rename


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", required=True, help="NAME=PATH pairs (PATH 'default' = the base model).")
    ap.add_argument("--collection", default="../shared/data/msmarco-dl19")
    ap.add_argument("--groups", type=int, nargs="+", default=[20, 100], help="Depths N (BM25 top-N).")
    ap.add_argument("--budgets", type=int, nargs="+", default=[100, 60], help="Passage token budget per depth.")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument(
        "--schedules",
        nargs="*",
        default=["fast=fast"],
        help="NAME=SPEC pruning schedules (SPEC: a preset or depth:keep,...), "
        "each adding a 'single_pass+NAME' variant.",
    )
    ap.add_argument("--queries", type=int, default=None, help="First K judged queries (default all).")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--deadline_minutes", type=float, default=None)
    ap.add_argument("--output", default="eval/results/single_pass_ablation.json")
    ap.add_argument(
        "--summarize_only",
        action="store_true",
        help="Write the JSON from the records gathered so far (e.g. merged from several runs), ranking nothing.",
    )
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if len(args.budgets) != len(args.groups):
        ap.error(f"--budgets needs one value per group ({len(args.groups)}), got {len(args.budgets)}")
    if any("=" not in m or m.startswith("=") for m in args.models):
        ap.error(f"--models takes NAME=PATH pairs, got {args.models}")
    models = dict(m.split("=", 1) for m in args.models)
    schedules = {"default": PruningConfig()}
    extra = {}
    for spec in args.schedules:
        name, _, text = spec.partition("=")
        try:
            schedules[name] = PruningConfig.from_spec(text)
        except ValueError as exc:
            ap.error(f"--schedules {spec}: {exc}")
        extra[f"single_pass+{name}"] = ("full", "single_pass", name)
    variants = {}  # in the order given, the extra schedules right after single_pass+prune (or last)
    for v in args.variants:
        variants[v] = VARIANTS[v]
        if v == "single_pass+prune":
            variants.update(extra)
    variants.update(extra)

    start = time.monotonic()
    coll = load_collection(args.collection)
    first_stage = read_run(default_run_path(coll))
    qids = sorted(q for q in first_stage if q in coll.qrels)[: args.queries]
    records_path = Path(args.output).with_suffix(".records.jsonl")
    records_path.parent.mkdir(parents=True, exist_ok=True)
    if not args.summarize_only:  # summarising ranks nothing, so it mixes nothing
        # Checked before any model loads, so a refused rerun fails at once.
        settings = resume_settings(args, models, variants, schedules)
        guard_records(records_path, Path(args.output).with_suffix(".settings.json"), settings)
    done = {(r["model"], _depth(r), r["variant"], r["qid"]) for r in recover_records(records_path)}
    # Small models: load them all, and loop depth -> variant -> model, so a deadline cuts the
    # comparison evenly instead of dropping a whole model.
    bases = (
        {}
        if args.summarize_only
        else {
            name: Reranker.from_pretrained(None if path == "default" else path, device=args.device, dtype=args.dtype)
            for name, path in models.items()
        }
    )
    out_of_time = False
    with open(records_path, "a", encoding="utf-8") as fh:
        for depth, budget in zip(args.groups, args.budgets):
            if out_of_time or args.summarize_only:
                break
            for variant, (strategy, scoring, sched) in variants.items():
                if out_of_time:
                    break
                for name, base in bases.items():
                    cfg = RerankerConfig(
                        strategy=strategy,
                        scoring=scoring,
                        max_passage_tokens=budget,
                        batch_size=args.batch_size,
                        pruning=schedules.get(sched),
                    )
                    ranker = Reranker(base.model, base.tokenizer, cfg)
                    todo = [q for q in qids if (name, depth, variant, q) not in done]
                    for i in range(0, len(todo), args.batch_size):
                        if args.deadline_minutes and time.monotonic() - start > 60 * args.deadline_minutes:
                            out_of_time = True
                            break
                        chunk = todo[i : i + args.batch_size]
                        cands = [first_stage[q][:depth] for q in chunk]
                        t0 = time.perf_counter()
                        results = ranker.rerank_batch(
                            [coll.queries[q] for q in chunk], [[coll.corpus[d] for d in c] for c in cands]
                        )
                        per_query = (time.perf_counter() - t0) / len(chunk)
                        for q, c, res in zip(chunk, cands, results):
                            append_record(
                                fh,
                                {
                                    "model": name,
                                    "depth": depth,
                                    "variant": variant,
                                    "qid": q,
                                    "ranking": [c[j] for j in res.order],
                                    "batch_s_per_query": per_query,
                                    "fallback": res.stats.fallback,
                                },
                            )
                        print(
                            f"{name} top-{depth} {variant:<18} {i + len(chunk)}/{len(todo)}  {per_query:.3f} s/q",
                            flush=True,
                        )
                    if out_of_time:
                        break

    records = recover_records(records_path)
    rows = []
    for name in models:
        for depth in args.groups:
            for variant in variants:
                recs = [r for r in records if (r["model"], _depth(r), r["variant"]) == (name, depth, variant)]
                if not recs:
                    continue
                run = {r["qid"]: scored_by_rank(r["ranking"]) for r in recs}
                bm25 = {q: scored_by_rank(first_stage[q][:depth]) for q in run}
                rows.append(
                    {
                        "model": name,
                        "depth": depth,
                        "variant": variant,
                        "queries": len(recs),
                        "ndcg@10": compute_metrics(coll.qrels, run, coll.graded)["ndcg@10"],
                        "bm25_ndcg@10": compute_metrics(coll.qrels, bm25, coll.graded)["ndcg@10"],
                        "batch_s_per_query": sum(r["batch_s_per_query"] for r in recs) / len(recs),
                        "fallbacks": sum(1 for r in recs if r["fallback"]),
                    }
                )
    out = {
        "models": models,
        "collection": args.collection,
        "device": args.device or "auto",
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "budgets": dict(zip(map(str, args.groups), args.budgets)),
        "schedules": {
            k: {"layer_fractions": v.layer_fractions, "keep_ratios": v.keep_ratios} for k, v in schedules.items()
        },
        "complete": all(r["queries"] == len(qids) for r in rows)
        and len(rows) == len(models) * len(args.groups) * len(variants),
        "rows": rows,
    }
    Path(args.output).write_text(json.dumps(out, indent=2))
    print(format_table(rows, ["model", "depth", "variant", "queries", "ndcg@10", "bm25_ndcg@10", "batch_s_per_query"]))
    return out


if __name__ == "__main__":
    main()
