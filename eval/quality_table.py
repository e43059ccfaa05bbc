"""Does the reranker rank better than its input? nDCG@10 of every system on the same queries.

    .venv/bin/python eval/quality_table.py --out eval/results/quality_cpu.json \\
        --system bm25 --system minilm --system base:single_pass \\
        --system shipped:head=default:head --depths 20,100 --collections dl19,scifact

Rows are systems, columns ``{collection}@{depth}`` (nDCG@10 over ALL judged queries of the
collection, and seconds per query on this machine). A system is

* ``bm25``: the first-stage run as is;
* ``minilm``: all-MiniLM-L6-v2 cosine over the same candidates (the peer a CPU user picks);
* ``NAME=MODEL:SCORING[:PRUNING]``: a LazyRank reranker (``MODEL`` = ``default`` for the shipped
  default, ``base`` for the raw SmolLM2-135M-Instruct, or a path; ``PRUNING`` a spec or
  ``recommended``), e.g. ``base:single_pass`` is short for ``base:single_pass=base:single_pass``.

Every cell is an ``rerank.evaluation.evaluate`` run in ``--work_dir/<system>/<collection>-<depth>``
(appended per query: an interrupted table resumes; a cell made with other settings is refused).
``--deadline_minutes`` stops starting new cells after that long and writes what is done.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rerank.data.script_support import EVAL_COLLECTIONS, shared_data_dir

DATA = shared_data_dir(__file__)
COLLECTIONS = {k: EVAL_COLLECTIONS[k] for k in ("dl19", "scifact")}


class EmbeddingReranker:
    """all-MiniLM-L6-v2 cosine as a ``rerank_batch`` ranker (the offline embedding teacher)."""

    def __init__(self):
        from rerank.labels.teachers import EmbeddingTeacher

        self.teacher = EmbeddingTeacher()

    def rerank_batch(self, queries, documents, top_k=None):
        from rerank.prompting.prompts import sanitize
        from rerank.results import RankingResult, RankingStats

        out = []
        for query, docs in zip(queries, documents):
            start = time.perf_counter()
            self.teacher._cache.clear()  # time a cold query: no help from an earlier cell's cache
            scores = self.teacher.cosine_scores(sanitize(query), [sanitize(d) for d in docs])
            order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))
            stats = RankingStats(strategy="embed")
            stats.total_seconds = time.perf_counter() - start
            out.append(RankingResult.from_scores(order, scores, len(docs), stats))
        return out


def parse_system(spec: str) -> dict:
    if spec in ("bm25", "minilm"):
        return {"name": spec, "kind": spec}
    name, _, body = spec.partition("=")
    body = body or name
    parts = body.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ValueError(f"system {spec!r}: expected bm25, minilm or NAME=MODEL:SCORING[:PRUNING]")
    return {
        "name": name,
        "kind": "lazyrank",
        "model": parts[0],
        "scoring": parts[1],
        "pruning": parts[2] if len(parts) == 3 else None,
    }


def build_reranker(system: dict, depth: int):
    from rerank import Reranker

    if system["kind"] == "minilm":
        return EmbeddingReranker()
    model = {"default": None, "base": "base"}.get(system["model"], system["model"])
    # A spec string: "recommended" is the model folder's schedule with the weights tuned for it.
    return Reranker.from_pretrained(model, scoring=system["scoring"], pruning=system["pruning"], batch_size=1)


def main(argv: list[str] | None = None) -> dict:
    from rerank.evaluation import EvalConfig, evaluate, format_table

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", action="append", required=True, help="bm25 | minilm | NAME=MODEL:SCORING[:PRUNING]")
    ap.add_argument("--collections", default="dl19,scifact", help=f"Comma-separated, from {sorted(COLLECTIONS)}.")
    ap.add_argument("--depths", default="20,100", help="First-stage depths to rerank.")
    ap.add_argument("--work_dir", default="runs/quality", help="Per-cell evaluation folders (resumable).")
    ap.add_argument("--out", default="eval/results/quality_cpu.json", help="JSON table to write.")
    ap.add_argument("--limit_queries", type=int, default=None, help="Only the first N judged queries (a smoke run).")
    ap.add_argument("--deadline_minutes", type=float, default=None, help="Start no new cell after this long.")
    args = ap.parse_args(argv)
    systems = [parse_system(s) for s in args.system]
    collections = [c.strip() for c in args.collections.split(",") if c.strip()]
    for c in collections:
        if c not in COLLECTIONS:
            ap.error(f"unknown collection {c!r}; choose from {sorted(COLLECTIONS)}")
    depths = [int(d) for d in args.depths.split(",")]
    start = time.monotonic()
    out_path = Path(args.out)
    table = json.loads(out_path.read_text()) if out_path.is_file() else {"rows": {}}
    for system in systems:
        reranker = None
        for coll in collections:
            for depth in depths:
                if args.deadline_minutes and time.monotonic() - start > 60 * args.deadline_minutes:
                    print(f"deadline reached: skipping {system['name']} {coll}@{depth}")
                    continue
                kind = system["kind"]
                cfg = EvalConfig(
                    collection=str(DATA / COLLECTIONS[coll]),
                    depth=depth,
                    strategy="none" if kind == "bm25" else "full",
                    model={"minilm": "all-MiniLM-L6-v2"}.get(kind, system.get("model")),
                    scoring={"minilm": "embed"}.get(kind, system.get("scoring", "generate")),
                    pruning=system.get("pruning"),
                    limit_queries=args.limit_queries,
                    output_dir=str(Path(args.work_dir) / system["name"] / f"{coll}-{depth}"),
                )
                if kind != "bm25" and reranker is None:
                    reranker = build_reranker(system, depth)
                metrics = evaluate(cfg, reranker=reranker)
                row = table["rows"].setdefault(system["name"], {"system": system})
                row[f"{coll}@{depth}"] = {
                    "ndcg@10": round(metrics["ndcg@10"], 4),
                    "queries": metrics["queries"],
                    "seconds_per_query": round(metrics["seconds_per_query"], 3),
                }
                out_path.parent.mkdir(parents=True, exist_ok=True)
                out_path.write_text(json.dumps(table, indent=1))
    cells = [f"{c}@{d}" for c in collections for d in depths]
    rows = []
    for name, row in table["rows"].items():
        flat = {"system": name}
        for cell in cells:
            if cell in row:
                flat[cell] = row[cell]["ndcg@10"]
                flat[f"{cell} s/q"] = row[cell]["seconds_per_query"]
        rows.append(flat)
    print(format_table(rows, ["system"] + [c for cell in cells for c in (cell, f"{cell} s/q")]))
    return table


if __name__ == "__main__":
    main()
