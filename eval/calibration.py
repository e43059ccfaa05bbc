"""Are the shipped default's scores probabilities? ECE and precision of "score >= 0.5" on held-out judged lists.

    .venv/bin/python eval/calibration.py --cell dl19:100:tournament --cell scifact:100:tournament \\
        --out eval/results/calibration_cpu.json

A cell ``COLLECTION:DEPTH:METHOD`` reads the records ``eval/depth_methods.py`` wrote for that method
with ``--calibrated`` (``<work_dir>/<collection>/<depth>-<method>+cal.jsonl``: the scores a user gets)
and, as the "before" row, the raw readouts of the ``chunks`` method at the same depth with a plain
sigmoid. ``COLLECTION:DEPTH:METHOD:PRECISION`` reads the cell ``depth_methods.py --precision`` read in
that CPU precision (``...+cal+bf16.jsonl``). Relevant = grade >= 2 on TREC DL's 0-3 scale, >= 1
elsewhere; unjudged passages count as not relevant. Reported per cell: expected calibration error over
10 equal-width bins, the precision of "score >= 0.5" and how many passages per query it keeps, and the
same for the before row; and the precision of the model's first 1, 2 and 3 passages (the ceiling of a
threshold).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rerank.calibration import expected_calibration_error, sigmoid
from rerank.data.collection import load_collection
from rerank.data.resume import recover_records
from rerank.data.script_support import EVAL_COLLECTIONS, shared_data_dir
from rerank.evaluation import binary_labels
from rerank.precision import PRECISIONS

DATA = shared_data_dir(__file__)
COLLECTIONS = EVAL_COLLECTIONS


def calibration_report(probs: list[float], labels: list[int], queries: int) -> dict:
    kept = [y for p, y in zip(probs, labels) if p >= 0.5]
    return {
        "ece": round(expected_calibration_error(probs, labels), 4),
        "precision_at_0.5": round(sum(kept) / len(kept), 4) if kept else None,
        "kept_per_query": round(len(kept) / queries, 2),
        "relevant_per_query": round(sum(labels) / queries, 2),
        "mean_score": round(sum(probs) / len(probs), 4),
        "passages": len(probs),
    }


def labelled(records: list[dict], qrels: dict, graded: bool, transform=None) -> tuple[list[float], list[int]]:
    probs, labels = [], []
    for rec in records:
        probs += [transform(score) if transform else score for score in rec["scores"]]
        labels += binary_labels(qrels.get(rec["qid"], {}), rec["docids"], graded)
    return probs, labels


def precision_at_ranks(records: list[dict], qrels: dict, graded: bool, ranks=(1, 2, 3)) -> dict[str, float]:
    """Mean share of relevant passages among each query's first k (the model's order): what a threshold
    that keeps k passages a query could reach at best, whatever the calibration.

    >>> precision_at_ranks([{"qid": "q", "docids": ["a", "b"], "order": [1, 0]}], {"q": {"b": 1}}, False, (1, 2))
    {'p@1': 1.0, 'p@2': 0.5}
    """
    out = {}
    for k in ranks:
        shares = []
        for rec in records:
            labels = binary_labels(qrels.get(rec["qid"], {}), rec["docids"], graded)
            shares.append(sum(labels[i] for i in rec["order"][:k]) / k)
        out[f"p@{k}"] = round(sum(shares) / len(shares), 4)
    return out


def parse_cell(spec: str) -> tuple[str, str, str, list[str]]:
    """``COLLECTION:DEPTH:METHOD[:PRECISION]`` -> its parts; a method may hold colons of its own.

    >>> parse_cell("dl19:100:tournament-interleaved=0.67:0.3+freeze:bf16")
    ('dl19', '100', 'tournament-interleaved=0.67:0.3+freeze', ['bf16'])
    >>> parse_cell("dl19:100:tournament")
    ('dl19', '100', 'tournament', [])
    """
    parts = spec.split(":", 2)
    if len(parts) != 3:
        raise SystemExit(f"--cell {spec!r}: expected COLLECTION:DEPTH:METHOD[:PRECISION]")
    collection, depth, method = parts
    head, _, last = method.rpartition(":")
    if head and last in PRECISIONS:
        return collection, depth, head, [last]
    return collection, depth, method, []


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", action="append", required=True, help="COLLECTION:DEPTH:METHOD[:PRECISION] (repeatable).")
    ap.add_argument("--work_dir", default="runs/depth", help="eval/depth_methods.py's --work_dir.")
    ap.add_argument("--out", default="eval/results/calibration_cpu.json")
    ap.add_argument(
        "--label",
        default=None,
        help="Store each cell's report under this name and update --out (other cells and labels kept), "
        "to set calibrations side by side; without it the file is written afresh.",
    )
    args = ap.parse_args(argv)
    out_path = Path(args.out)
    out = json.loads(out_path.read_text()) if args.label and out_path.is_file() else {}
    for spec in args.cell:
        collection, depth, method, precision = parse_cell(spec)
        coll = load_collection(DATA / COLLECTIONS[collection])
        folder = Path(args.work_dir) / collection
        calibrated = recover_records(folder / f"{depth}-{method}+cal{''.join('+' + p for p in precision)}.jsonl")
        if not calibrated or any(r["score_kind"] != "probability" for r in calibrated):
            raise SystemExit(f"{spec}: no calibrated records (run eval/depth_methods.py --calibrated)")
        raw = [r for r in recover_records(folder / f"{depth}-chunks.jsonl") if r["score_kind"] == "head_logit"]
        qids = {r["qid"] for r in calibrated}
        raw = [r for r in raw if r["qid"] in qids]
        probs, labels = labelled(calibrated, coll.qrels, coll.graded)
        row = out.get(spec, {}) if args.label else {}
        row["precision_at_rank"] = precision_at_ranks(calibrated, coll.qrels, coll.graded)
        row.update(
            {"queries": len(calibrated), args.label or "calibrated": calibration_report(probs, labels, len(calibrated))}
        )
        if raw and not args.label:
            p0, y0 = labelled(raw, coll.qrels, coll.graded, sigmoid)
            row["sigmoid_of_raw_readout"] = calibration_report(p0, y0, len(raw))
        out[spec] = row
        print(spec, json.dumps(row))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
