"""Label lists with a head model's own dense readouts: the teacher for training with pruning in the loop.

    .venv/bin/python scripts/dense_teacher_labels.py --labels runs/prune/lists.jsonl \\
        --out runs/prune/dense.jsonl --limit 400

Each input label's candidates (first-stage order kept) are scored by ``--model`` (default: the
shipped weights) with ``scoring="head"``, dense prefill and no calibration, one prompt per list. The
output record keeps the candidates, takes the dense order as ``final_list`` and the raw readouts as
``teacher_scores``: training with ``head_pruning`` and ``head_teacher_mse`` then teaches the pruned
prefill to read what the dense one reads (configs/train/head-pruned-cpu.yaml). Lists longer than one
prompt are refused by the reranker (readouts of different prompts are no single teacher). Appends one line per
list and skips lists already written, so an interrupted run resumes; the settings are saved beside
the output and a resume with other settings is refused.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from tqdm import tqdm

from rerank import Reranker
from rerank.data.resume import append_record, guard_records
from rerank.labels.records import read_labels, scan_done
from rerank.ranking import Window


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", required=True, help="Label JSONL whose candidates are scored (texts inline).")
    ap.add_argument("--out", required=True, help="Label JSONL to append to (resumed if it exists).")
    ap.add_argument("--model", default=None, help="Head model (folder or adapter); default: the shipped weights.")
    ap.add_argument("--max_passage_tokens", type=int, default=100, help="Per-passage token budget (as inference).")
    ap.add_argument("--batch_size", type=int, default=4, help="Lists scored per forward batch.")
    ap.add_argument("--limit", type=int, default=None, help="Score at most this many lists (a random sample).")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the --limit sample.")
    args = ap.parse_args(argv)

    records, _ = read_labels(args.labels)
    if args.limit is not None:
        records = random.Random(args.seed).sample(records, min(args.limit, len(records)))
    settings = {
        "labels": str(Path(args.labels).resolve()),
        "model": args.model,
        "budget": args.max_passage_tokens,
        "limit": args.limit,
        "seed": args.seed,
    }
    guard_records(args.out, f"{args.out}.settings.json", settings)
    done = scan_done(args.out)
    todo = [r for r in records if r.qid not in done]
    reranker = Reranker.from_pretrained(
        args.model,
        scoring="head",
        calibration=False,
        max_passage_tokens=args.max_passage_tokens,
        batch_size=args.batch_size,
    )
    with open(args.out, "a", encoding="utf-8") as fh, tqdm(total=len(todo), desc="dense readouts") as bar:
        for start in range(0, len(todo), args.batch_size):
            group = todo[start : start + args.batch_size]
            windows = [
                Window(r.query, [r.passages[d] for d in r.initial_list], qid=r.qid, docids=r.initial_list)
                for r in group
            ]
            for record, ranking in zip(group, reranker.rank_windows(windows)):
                scores = dict(zip(record.initial_list, ranking.scores))
                append_record(
                    fh,
                    {
                        "qid": record.qid,
                        "query": record.query,
                        "initial_list": record.initial_list,
                        "final_list": [record.initial_list[k] for k in ranking.order],
                        "passages": record.passages,
                        "teacher_scores": scores,
                        "teacher": f"dense head readout of {args.model or 'the shipped weights'}",
                    },
                )
            bar.update(len(group))


if __name__ == "__main__":
    main()
