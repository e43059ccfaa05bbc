"""Head scoring with the shipped weights, made cheaper: pruned prefill schedules and CPU precisions.

    .venv/bin/python eval/bench_head_speed.py --collections msmarco-dl19 vaswani --limit_queries 12 --threads 1
    # -> eval/results/head_speed_cpu.json, eval/results/head_speed_cpu.png

For every query (BM25 top-``--depth``; Vaswani's first stage comes from ``rerank.data.bm25``) the
prompt is scored by the dense fp32 head and by each variant (a pruning schedule in fp32, or the
dense prefill in int8 / bf16, see ``rerank.precision``, or int8 for some linear layers only,
``int8[gate_proj+up_proj]``), back to back in one process, so CPU
contention hits all alike. Per variant the JSON holds nDCG@10 (ir-measures through
``rerank.evaluation``), the mean top-10 overlap with the dense ranking, the mean Kendall tau of the
two rankings, the median per-query prefill time ratio (pruned / dense) and the mean fraction of
token-layers computed. Per-query records go to ``<out>.records.jsonl`` as they are measured, so an
interrupted run resumes where it stopped. The PNG is the Pareto view: prefill time ratio vs nDCG@10.
``baselines`` holds BM25's and all-MiniLM-L6-v2's nDCG@10 on the same queries and candidates;
``precisions`` says which precisions this CPU runs natively (bf16 is emulated, slower,
without AVX-512 BF16 / AMX).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import time
from pathlib import Path

import torch

from rerank import PruningConfig, Reranker
from rerank.data.bm25 import first_stage_run
from rerank.data.collection import load_collection
from rerank.data.script_support import shared_data_dir
from rerank.engine.head_pruning import score_positions_pruned
from rerank.engine.passage_head import score_positions
from rerank.evaluation import compute_metrics, kendall_tau, scored_by_rank, top_k_overlap
from rerank.labels.teachers import EmbeddingTeacher
from rerank.precision import apply_cpu_precision, cpu_supports
from rerank.prompting.prompts import relevance_token_ids, sanitize
from rerank.ranking import Window

DATA = shared_data_dir(__file__)

# (name, spec, budget): early LazyLLM-like schedules, then later and gentler ones.
SCHEDULES = [
    ("default", "default", "global"),
    ("default/per-passage", "default", "per_passage"),
    ("fast", "fast", "global"),
    ("late 50-25", "0.5:0.5,0.75:0.25", "global"),
    ("late 50-25/per-passage", "0.5:0.5,0.75:0.25", "per_passage"),
    ("third 50-25/per-passage", "0.33:0.5,0.67:0.25", "per_passage"),
    # Pruned tokens kept as frozen context (PruningConfig.pruned_tokens="freeze").
    ("late 50-25/freeze", "late+freeze", "global"),
    ("two-thirds 30/freeze", "0.67:0.3+freeze", "global"),
]
PRECISIONS = ["int8", "bf16"]  # dense prefill, model converted by rerank.precision
# int8 of some linear layers only, by name suffix: "int8[gate_proj+up_proj]".
PARTIAL_INT8 = re.compile(r"int8\[([a-z_]+(?:\+[a-z_]+)*)\]")
TUNED = " +tuned"  # suffix of a schedule run with the pruning-tuned weights (--tuned)


def variants(schedules: list[str], precisions: list[str], tuned: bool) -> list[tuple[str, str, str]]:
    """(label, spec, budget) of every measured variant: schedules (also with the tuned weights), precisions."""
    chosen = [v for v in SCHEDULES if v[0] in schedules]
    with_tuned = [(label + TUNED, spec, budget) for label, spec, budget in chosen] if tuned else []
    return chosen + with_tuned + [(p, "dense", p) for p in precisions]


def _order(scores: list[float]) -> list[int]:
    """Passages best first, ties in first-stage order (as the reranker orders them)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def _first_stage(name: str, depth: int) -> tuple[object, dict[str, list[str]]]:
    collection = load_collection(str(DATA / name) if (DATA / name).is_dir() else name)
    return collection, first_stage_run(collection, depth)


def measure(
    rr: Reranker,
    models: dict,
    name: str,
    depth: int,
    records: Path,
    limit: int | None,
    schedules: list[tuple[str, str, str]],
    tuned=None,
) -> tuple[list[dict], object]:
    """Per-query dense and pruned scores for one collection (resumed from ``records``), and the collection.

    ``models`` maps a precision to the converted dense model; ``tuned`` is the pruning-tuned model that
    runs each schedule a second time (labels ending in :data:`TUNED`).
    """
    collection, run = _first_stage(name, depth)
    qids = sorted(q for q in run if q in collection.qrels and q in collection.queries)[:limit]
    done = {}
    if records.is_file():
        for line in records.read_text().splitlines():
            row = json.loads(line)
            if row["collection"] == name and row["depth"] == depth:
                done[row["qid"]] = row
    yes, no = relevance_token_ids(rr.tokenizer)
    configs = [
        (label, PruningConfig(**{**vars(PruningConfig.from_spec(spec)), "budget": budget}))
        for label, spec, budget in schedules
    ]
    runs = [(label, config, rr.model) for label, config in configs]
    if tuned is not None:
        runs += [(label + TUNED, config, tuned) for label, config in configs]
    with records.open("a") as log:
        for n, qid in enumerate(qids):
            wanted = [label for label, _, _ in runs] + list(models)
            if qid in done and all(label in done[qid]["pruned"] for label in wanted):
                continue
            docids = run[qid]
            enc = rr.encode(Window(query=collection.queries[qid], passages=[collection.corpus[d] for d in docids]))
            prompt, reads, mask = [enc.input_ids], [enc.passage_end_positions()], [enc.prunable_mask()]
            row = {"collection": name, "depth": depth, "qid": qid, "docids": docids, "tokens": len(enc.input_ids)}
            tick = time.perf_counter()
            row["dense"] = score_positions(rr.model, prompt, reads, yes, no, rr.tokenizer.pad_token_id).scores[0]
            row["dense_seconds"] = time.perf_counter() - tick
            row["pruned"] = {}
            for label, config, model in runs:
                tick = time.perf_counter()
                out = score_positions_pruned(model, prompt, reads, mask, yes, no, config)
                row["pruned"][label] = {
                    "scores": out.scores[0],
                    "seconds": time.perf_counter() - tick,
                    "computed_fraction": out.prefill.computed_fraction,
                }
            for label, model in models.items():
                tick = time.perf_counter()
                out = score_positions(model, prompt, reads, yes, no, rr.tokenizer.pad_token_id)
                row["pruned"][label] = {
                    "scores": out.scores[0],
                    "seconds": time.perf_counter() - tick,
                    "computed_fraction": 1.0,
                }
            log.write(json.dumps(row) + "\n")
            log.flush()
            done[qid] = row
            print(f"{name} {n + 1}/{len(qids)} dense {row['dense_seconds']:.2f}s", flush=True)
    return [done[q] for q in qids], collection


def summarise(rows: list[dict], qrels: dict, graded: bool, measured: list[tuple[str, str, str]]) -> dict:
    def ndcg(key):
        run = {}
        for r in rows:
            scores = r["dense"] if key is None else r["pruned"][key]["scores"]
            run[r["qid"]] = [(d, s) for d, s in zip(r["docids"], scores)]
        return round(compute_metrics(qrels, run, graded=graded)["ndcg@10"], 4)

    out = {
        "queries": len(rows),
        "dense": {
            "ndcg@10": ndcg(None),
            "median_seconds": round(statistics.median(r["dense_seconds"] for r in rows), 3),
        },
    }
    for label, spec, budget in measured:
        cells = [r["pruned"][label] for r in rows]
        out[label] = {
            "spec": spec,
            "budget": budget,
            "ndcg@10": ndcg(label),
            "top10_overlap": round(
                statistics.mean(top_k_overlap(_order(r["dense"]), _order(c["scores"])) for r, c in zip(rows, cells)), 3
            ),
            "kendall_tau": round(
                statistics.mean(kendall_tau(_order(r["dense"]), _order(c["scores"])) for r, c in zip(rows, cells)), 3
            ),
            "prefill_ratio": round(
                statistics.median(c["seconds"] / r["dense_seconds"] for r, c in zip(rows, cells)), 3
            ),
            "computed_fraction": round(statistics.mean(c["computed_fraction"] for c in cells), 3),
        }
    return out


def baselines(rows: list[dict], collection, teacher: EmbeddingTeacher) -> dict:
    """nDCG@10 of BM25 (the input order) and all-MiniLM-L6-v2 cosine on the same queries and candidates."""
    bm25, minilm = {}, {}
    for r in rows:
        docids = r["docids"]
        bm25[r["qid"]] = scored_by_rank(docids)
        cos = teacher.cosine_scores(
            sanitize(collection.queries[r["qid"]]), [sanitize(collection.corpus[d]) for d in docids]
        )
        minilm[r["qid"]] = list(zip(docids, cos))
    return {
        name: round(compute_metrics(collection.qrels, run, graded=collection.graded)["ndcg@10"], 4)
        for name, run in (("bm25", bm25), ("all-MiniLM-L6-v2", minilm))
    }


def convert(model, precision: str):
    """A copy of ``model`` in ``precision``: a name of ``rerank.precision`` or ``int8[a+b]`` (int8 for the
    decoder's linear layers named ``*a`` or ``*b`` only)."""
    partial = PARTIAL_INT8.fullmatch(precision)
    if partial:
        return apply_cpu_precision(copy.deepcopy(model), "int8", partial.group(1).split("+"))
    return apply_cpu_precision(copy.deepcopy(model), precision)


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, cell in report["collections"].items():
        labels = [label for label in cell if isinstance(cell[label], dict) and "prefill_ratio" in cell[label]]
        xs = [1.0] + [cell[label]["prefill_ratio"] for label in labels]
        ys = [cell["dense"]["ndcg@10"]] + [cell[label]["ndcg@10"] for label in labels]
        ax.scatter(xs, ys, label=name)
        for label, x, y in zip(["dense"] + labels, xs, ys):
            ax.annotate(label, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel("prefill time, pruned / dense (median per query)")
    ax.set_ylabel("nDCG@10 (head scoring, model alone)")
    tuned = " (+tuned: weights trained with that schedule)" if report.get("tuned_weights") else ""
    ax.set_title(f"Cheaper head scoring, shipped weights{tuned}, top-{report['depth']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--collections", nargs="+", default=["msmarco-dl19", "vaswani"], help="Folders under ../shared/data (or paths)."
    )
    ap.add_argument("--depth", type=int, default=20, help="BM25 candidates per query.")
    ap.add_argument("--limit_queries", type=int, default=None, help="First N judged queries per collection.")
    ap.add_argument("--threads", type=int, default=2, help="torch threads.")
    ap.add_argument(
        "--schedules",
        nargs="*",
        default=[label for label, _, _ in SCHEDULES],
        help=f"Pruning schedules to measure, by label: {[label for label, _, _ in SCHEDULES]}.",
    )
    ap.add_argument("--precisions", nargs="*", default=PRECISIONS, help="Dense precisions to measure beside fp32.")
    ap.add_argument(
        "--base_precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="Precision of the dense reference and of every pruning schedule (bf16: the CPU default where native).",
    )
    ap.add_argument(
        "--tuned",
        default=None,
        help="Pruning-tuned weights (adapter folder): each schedule runs again with them (labels ending '+tuned').",
    )
    ap.add_argument("--out", default="eval/results/head_speed_cpu.json")
    ap.add_argument("--plot", default="eval/results/head_speed_cpu.png", help="PNG path; '' for none.")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    unknown = set(args.schedules) - {label for label, _, _ in SCHEDULES}
    bad = [p for p in args.precisions if p not in PRECISIONS and not PARTIAL_INT8.fullmatch(p)]
    if unknown or bad:
        ap.error(f"unknown schedules {sorted(unknown)} or precisions {bad} (known: {PRECISIONS}, int8[a+b])")
    measured = variants(args.schedules, args.precisions, args.tuned is not None)
    rr = Reranker.from_pretrained(first_stage_weight=0.0, precision=args.base_precision)
    models = {p: convert(rr.model, p) for p in args.precisions}
    tuned = Reranker.from_pretrained(args.tuned, precision=args.base_precision).model if args.tuned else None
    teacher = EmbeddingTeacher()
    records = Path(args.out).with_suffix(".records.jsonl")
    records.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "model": "shipped default (head)",
        "depth": args.depth,
        "threads": args.threads,
        "tuned_weights": args.tuned,
        "base_precision": rr.config.precision,
        "schedules": {label: {"spec": spec, "budget": budget} for label, spec, budget in measured if spec != "dense"},
        "precisions": {p: {"native_on_this_cpu": cpu_supports(p.split("[")[0])} for p in args.precisions},
        "collections": {},
    }
    for name in args.collections:
        schedules = [v for v in SCHEDULES if v[0] in args.schedules]
        rows, collection = measure(rr, models, name, args.depth, records, args.limit_queries, schedules, tuned)
        report["collections"][name] = summarise(rows, collection.qrels, collection.graded, measured)
        report["collections"][name]["baselines"] = baselines(rows, collection, teacher)
    Path(args.out).write_text(json.dumps(report, indent=1))
    if args.plot:
        plot(report, args.plot)
    for name, cell in report["collections"].items():
        print(f"{name}: dense nDCG@10 {cell['dense']['ndcg@10']}, same queries: {cell['baselines']}")
        for label, _, _ in measured:
            c = cell[label]
            print(
                f"  {label:26s} nDCG {c['ndcg@10']:.4f} overlap {c['top10_overlap']:.2f} tau {c['kendall_tau']:.2f} "
                f"prefill x{c['prefill_ratio']:.2f} computed {c['computed_fraction']:.2f}"
            )
    return report


if __name__ == "__main__":
    main()
