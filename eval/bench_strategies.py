"""Full ranking vs sliding windows (w=20, s=10) vs single-pass scoring on TREC DL19: quality and cost.

    python eval/bench_strategies.py --collection ../shared/data/msmarco-dl19 \
        --groups 20:43 50:10 100:5 --output eval/results/strategies_cpu.json

Each group ``N:Q`` reranks the BM25 top-N of the first Q judged queries. For every query all
variants (full, full top_k=10, sliding, sliding top_k=10, single_pass) run back to back, so machine load hits
them alike; one warm-up query per group is discarded. Per-query records are appended to
``<output>.records.jsonl`` and skipped on a rerun, so an interrupted benchmark resumes; what they
depend on (model, per-group passage budget, per-variant settings) goes to ``<output>.settings.json``,
and a rerun that changes any of it under the same names is refused (new groups and variants are fine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from rerank import PruningConfig, Reranker, RerankerConfig
from rerank.data.collection import default_run_path, load_collection, read_run, recover_records
from rerank.data.resume import append_record, guard_records
from rerank.data.script_support import ranking_settings
from rerank.evaluation import compute_metrics, format_table, scored_by_rank

VARIANTS = {  # name: (strategy, decode top_k, scoring, pruning spec or None); --schedules adds single_pass+NAME
    "full": ("full", None, "generate", None),
    "full@10": ("full", 10, "generate", None),
    "sliding": ("sliding", None, "generate", None),
    "sliding@10": ("sliding", 10, "generate", None),
    "single_pass": ("full", None, "single_pass", None),
    "full+prune": ("full", None, "generate", "default"),
    "full@10+prune": ("full", 10, "generate", "default"),
    "single_pass+prune": ("full", None, "single_pass", "default"),
}
DEFAULT_VARIANTS = ["full", "full@10", "sliding", "sliding@10", "single_pass"]
WINDOW_SIZE, STRIDE = 20, 10


def resume_settings(args: argparse.Namespace, variants: dict, budgets: list[int]) -> dict:
    """What the records depend on, one key per group and per variant: a rerun into the same output
    may add groups or variants, but not change the model, a group's passage budget or a variant's
    pruning spec (that would mix two systems under one name)."""
    fixed = {"collection": args.collection, "model": args.model, "window_size": WINDOW_SIZE, "stride": STRIDE}
    return ranking_settings(
        fixed,
        zip(args.groups, budgets),
        {
            name: {
                "strategy": strategy,
                "top_k": top_k,
                "scoring": scoring,
                "pruning": None if pruning is None else PruningConfig.from_spec(pruning),
            }
            for name, (strategy, top_k, scoring, pruning) in variants.items()
        },
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", default="../shared/data/msmarco-dl19")
    parser.add_argument(
        "--groups",
        nargs="+",
        default=["20:43", "50:10", "100:5"],
        help="N:Q pairs: rerank the top N of the first Q judged queries",
    )
    parser.add_argument(
        "--max_passage_tokens",
        type=int,
        nargs="+",
        default=[100, 100, 60],
        help="token budget per passage for each group (top-100 needs less to fit 8k)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=DEFAULT_VARIANTS,
        choices=list(VARIANTS),
        help="'+prune' variants use the default PruningConfig()",
    )
    parser.add_argument(
        "--schedules",
        nargs="*",
        default=[],
        help="NAME=SPEC pruning schedules (SPEC: a preset or depth:keep,...), each adding a "
        "'single_pass+NAME' variant after the others",
    )
    parser.add_argument("--model", default=None)
    parser.add_argument("--output", default="eval/results/strategies_cpu.json")
    parser.add_argument(
        "--summarize_only", action="store_true", help="write the JSON from the records gathered so far, ranking nothing"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    variants = {v: VARIANTS[v] for v in args.variants}
    for spec in args.schedules:
        name, _, text = spec.partition("=")
        try:
            PruningConfig.from_spec(text)
        except ValueError as exc:
            parser.error(f"--schedules {spec}: {exc}")
        variants[f"single_pass+{name}"] = ("full", None, "single_pass", text)

    collection = load_collection(args.collection)
    first_stage = read_run(default_run_path(collection))
    qids = sorted(q for q in first_stage if q in collection.qrels)
    records_path = Path(args.output).with_suffix(".records.jsonl")
    records_path.parent.mkdir(parents=True, exist_ok=True)
    budgets = args.max_passage_tokens + [args.max_passage_tokens[-1]] * len(args.groups)
    if not args.summarize_only:  # summarising ranks nothing, so it mixes nothing
        # Checked before the model loads, so a refused rerun fails at once.
        settings = resume_settings(args, variants, budgets)
        guard_records(records_path, Path(args.output).with_suffix(".settings.json"), settings)
    done = {(r["group"], r["variant"], r["qid"]) for r in recover_records(records_path)}
    base = None if args.summarize_only else Reranker.from_pretrained(args.model)

    def reranker_for(strategy: str, scoring: str, pruning: str | None, budget: int) -> Reranker:
        cfg = RerankerConfig(
            strategy=strategy,
            window_size=WINDOW_SIZE,
            stride=STRIDE,
            max_passage_tokens=budget,
            batch_size=1,
            scoring=scoring,
            pruning=None if pruning is None else PruningConfig.from_spec(pruning),
        )
        return Reranker(base.model, base.tokenizer, cfg)

    with open(records_path, "a", encoding="utf-8") as fh:
        for group, budget in zip(args.groups, budgets):
            if args.summarize_only:
                break
            depth, num_q = (int(x) for x in group.split(":"))
            rankers = {v: reranker_for(spec[0], spec[2], spec[3], budget) for v, spec in variants.items()}
            warm = qids[0]
            for v in variants:  # warm-up, discarded
                docs = [collection.corpus[d] for d in first_stage[warm][:depth]]
                rankers[v].rerank(collection.queries[warm], docs, top_k=variants[v][1])
            for qid in qids[:num_q]:
                cands = first_stage[qid][:depth]
                docs = [collection.corpus[d] for d in cands]
                for v in variants:
                    if (group, v, qid) in done:
                        continue
                    res = rankers[v].rerank(collection.queries[qid], docs, top_k=variants[v][1])
                    rec = {
                        "group": group,
                        "variant": v,
                        "qid": qid,
                        "budget": budget,
                        "ranking": [cands[i] for i in res.order],
                        "stats": res.stats.to_dict(),
                    }
                    append_record(fh, rec)
                    print(f"{group} {v:<11} {qid:>8}  {res.stats.total_seconds:6.2f} s", flush=True)

    records = recover_records(records_path)
    rows = []
    for group in args.groups:
        for v in variants:
            recs = [r for r in records if r["group"] == group and r["variant"] == v]
            if not recs:
                continue
            run = {r["qid"]: scored_by_rank(r["ranking"]) for r in recs}
            metrics = compute_metrics(collection.qrels, run, collection.graded)
            bm25 = compute_metrics(
                collection.qrels,
                {q: scored_by_rank(first_stage[q][: int(group.split(":")[0])]) for q in run},
                collection.graded,
            )

            def med(key: str, recs: list[dict] = recs) -> float:
                return statistics.median(r["stats"][key] for r in recs)

            rows.append(
                {
                    "depth": int(group.split(":")[0]),
                    "variant": v,
                    "queries": len(recs),
                    "passage_tokens": recs[0]["budget"],
                    "ndcg@10": metrics["ndcg@10"],
                    "bm25_ndcg@10": bm25["ndcg@10"],
                    "s_per_query": med("total_seconds"),
                    "prefill_s": med("prefill_seconds"),
                    "decode_s": med("decode_seconds"),
                    "constraint_s": med("constraint_seconds"),
                    "prompt_tokens": med("prompt_tokens"),
                    "generated_tokens": med("generated_tokens"),
                    "llm_calls": med("llm_calls"),
                    "computed_fraction": med("computed_fraction"),
                    "fallbacks": sum(1 for r in recs if r["stats"].get("fallback")),
                }
            )
    for row in rows:
        row["constraint_share_of_decode"] = row["constraint_s"] / row["decode_s"] if row["decode_s"] else 0.0
        full = next((r for r in rows if r["depth"] == row["depth"] and r["variant"] == "full"), None)
        row["seconds_vs_full"] = row["s_per_query"] / full["s_per_query"] if full else None
        sliding = next((r for r in rows if r["depth"] == row["depth"] and r["variant"] == "sliding"), None)
        row["speedup_vs_sliding"] = sliding["s_per_query"] / row["s_per_query"] if sliding else None
    out = {
        "machine": "2-core CPU, torch threads default",
        "model": args.model or "SmolLM2-135M-Instruct",
        "schedules": {name: spec for name, _, spec in (s.partition("=") for s in args.schedules)},
        "note": "medians over queries after one warm-up query; seconds_vs_full is the ratio of medians",
        "rows": rows,
    }
    Path(args.output).write_text(json.dumps(out, indent=2))
    print(
        format_table(
            rows,
            [
                "depth",
                "variant",
                "queries",
                "ndcg@10",
                "bm25_ndcg@10",
                "s_per_query",
                "prefill_s",
                "decode_s",
                "prompt_tokens",
                "generated_tokens",
                "llm_calls",
                "seconds_vs_full",
                "speedup_vs_sliding",
                "constraint_share_of_decode",
            ],
        )
    )
    return out


if __name__ == "__main__":
    main()
