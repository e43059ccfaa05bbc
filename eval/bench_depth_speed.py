"""The shipped default end to end at one depth, its variants and all-MiniLM-L6-v2, timed back to back.

    .venv/bin/python eval/bench_depth_speed.py --collection dl19 --depth 100 --limit_queries 12 \\
        --variants dense chunk_passage_tokens=50 minilm --out eval/results/depth_speed_cpu.json

For every query (BM25 top-``--depth``) each variant reranks the same candidates through
``Reranker.rerank`` one after the other in one process, so machine load hits them alike: ``dense`` is
the shipped default as ``from_pretrained()`` builds it, ``FIELD=VALUE`` the same with one
``RerankerConfig`` field changed (``chunk_passage_tokens=50``, ``chunk_pruning=none``; join several
with ``+``, a schedule's ``+freeze`` suffix stays with it; ``precision=fp32`` / ``precision=bf16``
loads the weights again in that CPU precision and is refused where the CPU would fall back to
another), and ``minilm`` all-MiniLM-L6-v2's cosine over the same candidates, every text embedded anew
(no cache). A first query is ranked once by every variant and
not timed (warm-up). Per variant the JSON holds nDCG@10, mean and median wall seconds per query, the
median per-query ratio to the first variant, prompts and prompt tokens per query, the fraction of
token-layers computed and the top-10 overlap with the first variant. Per-query records go to
``<out>.records.jsonl`` as they are measured: an interrupted run resumes, and one with another
``--model``, ``--threads`` or precision of ``dense`` (``from_pretrained``'s choice on this CPU) is
refused.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from dataclasses import fields, replace
from pathlib import Path

from rerank.config import FREEZE_SUFFIX
from rerank.data.bm25 import first_stage_run
from rerank.data.collection import load_collection
from rerank.data.resume import append_record, recover_records
from rerank.data.script_support import resolve_collection, shared_data_dir, update_json
from rerank.evaluation import compute_metrics, scored_by_rank, top_k_overlap

DATA = shared_data_dir(__file__)


def parse_variant(spec: str) -> dict:
    """A variant's ``RerankerConfig`` changes: ``dense`` none, else ``FIELD=VALUE[+FIELD=VALUE]``.

    >>> parse_variant("chunk_passage_tokens=50+chunk_pruning=0.5:0.5,0.75:0.25")
    {'chunk_passage_tokens': 50, 'chunk_pruning': '0.5:0.5,0.75:0.25'}
    >>> parse_variant("chunk_pruning=late+freeze+precision=bf16")  # a schedule's +freeze stays with it
    {'chunk_pruning': 'late+freeze', 'precision': 'bf16'}
    >>> parse_variant("dense")
    {}
    """
    if spec == "dense":
        return {}
    changes = {}
    for part in re.split(r"\+(?!" + re.escape(FREEZE_SUFFIX[1:]) + r"\b)", spec):
        field, sep, value = part.partition("=")
        if not sep or not field:
            raise SystemExit(f"--variants: {spec!r} is not dense, minilm or FIELD=VALUE[+FIELD=VALUE]")
        for kind in (int, float):
            try:
                changes[field] = kind(value)
                break
            except ValueError:
                continue
        else:
            changes[field] = None if value == "none" else value
    return changes


def rank_with(variant: str, reranker, minilm, query: str, docs: list[str]) -> tuple[list[int], dict]:
    """One variant's order of ``docs`` and its cost: wall seconds, and prompts and token-layers for the model."""
    if variant == "minilm":
        from rerank.prompting.prompts import sanitize

        minilm.clear_cache()  # the warm-up embedded these very texts
        tick = time.perf_counter()
        scores = minilm.cosine_scores(sanitize(query), [sanitize(d) for d in docs])
        order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))
        return order, {"seconds": time.perf_counter() - tick}
    tick = time.perf_counter()
    res = reranker.rerank(query, docs)
    cost = {"seconds": time.perf_counter() - tick, "prompts": res.stats.llm_calls}
    cost["prompt_tokens"] = res.stats.prompt_tokens
    cost["computed_fraction"] = res.stats.computed_fraction
    cost["method"] = res.stats.fallback or "full"
    return res.order, cost


def main(argv: list[str] | None = None) -> dict:
    import torch

    from rerank import Reranker, RerankerConfig
    from rerank.labels.teachers import EmbeddingTeacher
    from rerank.precision import check_precision, resolve_precision

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collection", default="dl19", help="An evaluation collection name or a collection folder.")
    ap.add_argument("--depth", type=int, default=100, help="First-stage candidates reranked per query.")
    ap.add_argument("--limit_queries", type=int, default=12, help="Judged queries timed (sorted by id).")
    ap.add_argument("--query_offset", type=int, default=0, help="Skip this many judged queries first.")
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["dense", "chunk_passage_tokens=50", "minilm"],
        help="dense, minilm, or FIELD=VALUE[+FIELD=VALUE] (RerankerConfig changes); the first is the reference.",
    )
    ap.add_argument("--model", default=None, help="Model folder (default: the shipped weights).")
    ap.add_argument("--threads", type=int, default=2, help="torch threads.")
    ap.add_argument("--work_dir", default="runs/depth", help="Where BM25 runs of folders without one are cached.")
    ap.add_argument("--out", default="eval/results/depth_speed_cpu.json", help="JSON to update.")
    args = ap.parse_args(argv)
    variants = list(dict.fromkeys(args.variants))
    torch.set_num_threads(args.threads)
    folder, name, run_cache = resolve_collection(args.collection, DATA, args.work_dir)
    coll = load_collection(folder)
    run = first_stage_run(coll, args.depth, cache=run_cache)
    qids = sorted(q for q in run if q in coll.qrels and q in coll.queries)
    qids = qids[args.query_offset : args.query_offset + args.limit_queries]
    # Checked before the model loads: a typo should not cost a load.
    known = {f.name for f in fields(RerankerConfig)}
    changes = {v: parse_variant(v) for v in variants if v != "minilm"}
    auto = resolve_precision(None)  # what from_pretrained() runs on this CPU: the precision of ``dense``
    for v, change in changes.items():
        if set(change) - known:
            raise SystemExit(f"--variants {v!r}: {sorted(set(change) - known)} not RerankerConfig fields")
        try:
            check_precision(change.get("precision"))
        except ValueError as err:
            raise SystemExit(f"--variants {v!r}: {err}") from None
        if change.get("precision") == "auto":
            change["precision"] = auto
        if change.get("precision", auto) != resolve_precision(change.get("precision", auto)):
            raise SystemExit(f"--variants {v!r}: this CPU does not run {change['precision']} natively")
    records = Path(args.out).with_suffix(".records.jsonl")
    key = f"{name}@{args.depth}"
    settings = {"model": args.model, "threads": args.threads, "precision": auto}
    done = {(r["key"], r["qid"]): r for r in recover_records(records)} if records.is_file() else {}
    for (k, qid), row in done.items():
        # Records from before precisions were recorded were all timed in fp32.
        if k == key and {"precision": "fp32", **row.get("settings", {})} != settings:
            raise SystemExit(
                f"{records}: {key} query {qid} was timed with {row.get('settings')}, this run asks {settings}: "
                "mixing them would time no single setting; pass another --out"
            )
    readers: dict = {}  # one model per CPU precision the variants ask for
    configs = {}
    for v, change in changes.items():
        wanted = change.get("precision", auto)
        if wanted not in readers:
            readers[wanted] = Reranker.from_pretrained(args.model, batch_size=1, precision=wanted)
        configs[v] = (readers[wanted], replace(readers[wanted].config, **change))
    minilm = EmbeddingTeacher() if "minilm" in variants else None

    def ranked(variant: str, qid: str) -> tuple[list[int], dict]:
        reader = None
        if variant in configs:
            reader = configs[variant][0]
            reader.config = configs[variant][1]
        docs = run[qid][: args.depth]
        return rank_with(variant, reader, minilm, coll.queries[qid], [coll.corpus[d] for d in docs])

    todo = [q for q in qids if (key, q) not in done or set(variants) - set(done[key, q]["variants"])]
    if todo:
        for v in variants:  # warm-up, not timed
            ranked(v, todo[0])
    with open(records, "a", encoding="utf-8") as fh:
        for qid in todo:
            fresh = {"key": key, "qid": qid, "settings": settings, "docids": run[qid][: args.depth], "variants": {}}
            row = done.get((key, qid), fresh)
            for v in variants:
                if v not in row["variants"]:
                    order, cost = ranked(v, qid)
                    row["variants"][v] = {"order": order, **cost}
            done[key, qid] = row
            append_record(fh, row)
            print(qid, {v: round(row["variants"][v]["seconds"], 2) for v in variants}, flush=True)
    rows = [done[key, q] for q in qids]
    first = variants[0]
    table: dict = {"queries": len(rows), "threads": args.threads, "bm25": _ndcg(coll, rows, None)}
    for v in variants:
        secs = [r["variants"][v]["seconds"] for r in rows]
        cell = {
            "ndcg@10": _ndcg(coll, rows, v),
            "seconds_per_query": round(statistics.mean(secs), 2),
            "median_seconds": round(statistics.median(secs), 2),
            f"x_{first}": round(statistics.median(s / r["variants"][first]["seconds"] for s, r in zip(secs, rows)), 3),
            f"top10_overlap_{first}": round(
                statistics.mean(
                    top_k_overlap(r["variants"][v]["order"], r["variants"][first]["order"], 10) for r in rows
                ),
                3,
            ),
        }
        if v != "minilm":
            cell["computed_fraction"] = round(statistics.mean(r["variants"][v]["computed_fraction"] for r in rows), 3)
            cell["prompts_per_query"] = round(statistics.mean(r["variants"][v]["prompts"] for r in rows), 2)
            cell["prompt_tokens_per_query"] = round(statistics.mean(r["variants"][v]["prompt_tokens"] for r in rows))
        table[v] = cell
    update_json(args.out, [key], table)
    print(key, table, flush=True)
    return table


def _ndcg(coll, rows: list[dict], variant: str | None) -> float:
    """nDCG@10 of ``variant``'s orders (``None``: the first stage's)."""
    run = {}
    for r in rows:
        order = range(len(r["docids"])) if variant is None else r["variants"][variant]["order"]
        run[r["qid"]] = scored_by_rank([r["docids"][k] for k in order])
    return round(compute_metrics(coll.qrels, run, coll.graded)["ndcg@10"], 4)


if __name__ == "__main__":
    main()
