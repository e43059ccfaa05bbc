"""Make a development collection from another split of a BEIR folder's judgements.

    .venv/bin/python scripts/split_collection.py ../shared/data/beir-scifact --split train --skip 240 \\
        --limit 60 --out runs/scifact-dev

BEIR folders judge several splits of one query file (``qrels/train.tsv``, ``qrels/test.tsv``), but
``load_collection`` reads the test split and the folder's ``run.bm25.trec`` holds the test queries
only. The new folder holds the chosen split's judged queries (sorted by id; ``--skip`` / ``--limit``
pick a slice, e.g. claims no training list used), their judgements as ``qrels.txt`` and a link to
the source corpus, and no run: ``eval/depth_methods.py --collection runs/scifact-dev`` reranks BM25
over the whole corpus, as for any folder of one's own. Nothing is copied but the slice's queries.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from rerank.data.collection import iter_jsonl, read_qrels


def split_collection(source: Path, split: str, out: Path, skip: int = 0, limit: int | None = None) -> list[str]:
    """Write ``out`` (queries.jsonl, qrels.txt, corpus.jsonl -> source's) and return its query ids."""
    qrels_path = source / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise SystemExit(f"{source}: no judgements for split {split!r} ({qrels_path} is missing)")
    qrels = read_qrels(qrels_path)
    queries = {obj["_id"]: obj for _, obj in iter_jsonl(source / "queries.jsonl")}
    qids = sorted(q for q, judged in qrels.items() if q in queries and any(g > 0 for g in judged.values()))
    qids = qids[skip:][:limit]
    if not qids:
        raise SystemExit(f"{qrels_path}: no judged query left after --skip {skip} --limit {limit}")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "queries.jsonl", "w", encoding="utf-8") as fh:
        for q in qids:
            fh.write(json.dumps(queries[q]) + "\n")
    with open(out / "qrels.txt", "w", encoding="utf-8") as fh:
        for q in qids:
            for d, grade in sorted(qrels[q].items()):
                fh.write(f"{q} 0 {d} {grade}\n")
    link = out / "corpus.jsonl"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink((source / "corpus.jsonl").resolve(), link)
    return qids


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="A BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv).")
    ap.add_argument("--split", default="train", help="The judgements to keep (qrels/SPLIT.tsv).")
    ap.add_argument("--skip", type=int, default=0, help="Skip this many judged queries (sorted by id) first.")
    ap.add_argument("--limit", type=int, default=None, help="Keep at most this many.")
    ap.add_argument("--out", type=Path, required=True, help="The new collection folder.")
    args = ap.parse_args(argv)
    qids = split_collection(args.source, args.split, args.out, args.skip, args.limit)
    print(f"{args.out}: {len(qids)} {args.split} queries ({qids[0]} .. {qids[-1]})")


if __name__ == "__main__":
    main()
