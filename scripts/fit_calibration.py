"""Fit the head calibration of a weights folder on judged development lists (rerank.calibration).

    .venv/bin/python scripts/fit_calibration.py --collection ../shared/data/vaswani \\
        --records runs/depth/vaswani/100-chunks.jsonl --weights rerank/weights/smollm2-135m-head

``--records`` are raw head readouts made by ``eval/depth_methods.py`` with the ``chunks`` method (no
``--calibrated``): per query the first-stage docids and one readout each, read in prompts of
``--window`` passages laid out as ``--layout`` says (``chunks@interleaved`` records: ``--layout
interleaved``). With ``--variant LABEL`` they are ``eval/bench_head_speed.py`` records
instead, and the readouts of that variant are fitted (the pruning-tuned weights read through their
schedule: ``--variant "default +tuned" --weights rerank/weights/smollm2-135m-head/pruned``).
Relevant means grade >= 2 on a graded collection (TREC DL), >= 1 otherwise;
unjudged passages count as not relevant. Writes ``calibration.json`` into the weights folder, tied
to its weights by sha256. Fit it on a collection that is neither training data nor a test set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rerank.calibration import CALIBRATION_FILE, HeadCalibration, weights_fingerprint
from rerank.data.collection import load_collection
from rerank.data.resume import recover_records
from rerank.evaluation import binary_labels
from rerank.long_lists import CHUNK_LAYOUTS, chunk_members


def prompts_and_labels(
    records: list[dict], qrels: dict, graded: bool, window: int, layout: str = "consecutive"
) -> tuple[list, list]:
    """Per prompt (chunks of ``window`` in ``layout``, as the readouts were made), the raw readouts
    and 0/1 labels.

    >>> prompts_and_labels([{"qid": "q", "docids": list("abcd"), "scores": [4, 3, 2, 1]}],
    ...     {"q": {"c": 1}}, False, 2, "interleaved")
    ([[4, 2], [3, 1]], [[0, 1], [0, 0]])
    """
    prompts, labels = [], []
    for rec in records:
        judged = qrels.get(rec["qid"], {})
        for members in chunk_members(len(rec["docids"]), window, layout):
            prompts.append([rec["scores"][i] for i in members])
            labels.append(binary_labels(judged, [rec["docids"][i] for i in members], graded))
    return prompts, labels


def main(argv: list[str] | None = None) -> HeadCalibration:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collection", required=True, help="Collection folder with the judgements.")
    ap.add_argument("--records", required=True, help="Raw chunk readouts from eval/depth_methods.py.")
    ap.add_argument("--weights", default="rerank/weights/smollm2-135m-head", help="Weights folder to calibrate.")
    ap.add_argument("--window", type=int, default=20, help="Passages per prompt the readouts were made with.")
    ap.add_argument(
        "--layout", choices=CHUNK_LAYOUTS, default="consecutive", help="How the readouts' prompts were laid out."
    )
    ap.add_argument("--out", default=None, help="Where to write (default: WEIGHTS/calibration.json).")
    ap.add_argument(
        "--variant", default=None, help="Fit this variant of eval/bench_head_speed.py records (e.g. 'default +tuned')."
    )
    args = ap.parse_args(argv)
    coll = load_collection(args.collection)
    if args.variant is None:
        records = [r for r in recover_records(args.records) if r.get("score_kind") == "head_logit"]
    else:
        name = Path(args.collection).name
        records = [
            {"qid": r["qid"], "docids": r["docids"], "scores": r["pruned"][args.variant]["scores"]}
            for r in recover_records(args.records)
            if r.get("collection") == name and args.variant in r.get("pruned", {})
        ]
    if not records:
        what = (
            f"readouts of variant {args.variant!r}" if args.variant else "raw head readouts (score_kind 'head_logit')"
        )
        raise SystemExit(f"{args.records}: no {what} to fit on")
    prompts, labels = prompts_and_labels(records, coll.qrels, coll.graded, args.window, args.layout)
    cal = HeadCalibration.fit(
        prompts,
        labels,
        fingerprint=weights_fingerprint(args.weights),
        fitted_on=f"{Path(args.collection).name}: {len(records)} queries, {sum(map(len, prompts))} passages "
        f"in {args.layout} prompts of {args.window} ({Path(args.records).name}"
        + (f", {args.variant})" if args.variant else ")"),
        layout=args.layout,
    )
    out = Path(args.out or Path(args.weights) / CALIBRATION_FILE)
    cal.save(out)
    print(f"wrote {out}: {cal}")
    return cal


if __name__ == "__main__":
    main()
