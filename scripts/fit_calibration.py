"""Fit the head calibration of a weights folder on judged development lists (rerank.calibration).

    .venv/bin/python scripts/fit_calibration.py --collection ../shared/data/vaswani \\
        --records runs/depth/vaswani/100-chunks.jsonl --weights rerank/weights/smollm2-135m-head
    .venv/bin/python scripts/fit_calibration.py --collection ../shared/data/vaswani --kind final \\
        --records runs/depth/vaswani/100-prompts.jsonl --weights rerank/weights/smollm2-135m-head

``--records`` are raw head readouts of one of three kinds:
* ``eval/prompt_readouts.py`` records: every prompt the default read, with its kind; the prompts of
  ``--kind`` are fitted (the only records that hold a tournament's ``final`` prompts).
* ``eval/depth_methods.py`` records of the ``chunks`` method (no ``--calibrated``): per query the
  first-stage docids and one readout each, read in prompts of ``--window`` passages laid out as
  ``--layout`` says (``chunks@interleaved`` records: ``--layout interleaved``); records of lists of at
  most ``--window`` passages are ``single`` prompts.
* with ``--variant LABEL``, ``eval/bench_head_speed.py`` records, and the readouts of that variant
  are fitted (the pruning-tuned weights read through their schedule: ``--variant "default +tuned"
  --weights rerank/weights/smollm2-135m-head/pruned``).
Relevant means grade >= 2 on a graded collection (TREC DL), >= 1 otherwise; unjudged passages count
as not relevant. ``--kind chunk`` writes a new ``calibration.json`` into the weights folder, tied to
its weights by sha256; ``--kind final`` or ``single`` adds that kind's parameters to the one there.
Before writing, the fit is checked by 2-fold cross-validation over queries (odd / even): the
expected calibration error of that kind's prompts, fitted on one half and read on the other, beside
the file's current parameters for the same prompts (``--report`` keeps it in a JSON). Fit on a
collection that is neither training data nor a test set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rerank.calibration import (
    CALIBRATION_FILE,
    PROMPT_KINDS,
    HeadCalibration,
    expected_calibration_error,
    weights_fingerprint,
)
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


def prompts_of_kind(records: list[dict], qrels: dict, graded: bool, kind: str) -> tuple[list, list, list]:
    """Per prompt of ``kind`` in ``eval/prompt_readouts.py`` records: readouts, labels and its query.

    >>> prompts_of_kind([{"qid": "q", "prompts": [{"kind": "final", "docids": ["a", "b"], "readouts": [1, 0]},
    ...     {"kind": "chunk", "docids": ["c"], "readouts": [2]}]}], {"q": {"b": 1}}, False, "final")
    ([[1, 0]], [[0, 1]], ['q'])
    """
    prompts, labels, qids = [], [], []
    for rec in records:
        for prompt in rec["prompts"]:
            if prompt["kind"] == kind:
                prompts.append(prompt["readouts"])
                labels.append(binary_labels(qrels.get(rec["qid"], {}), prompt["docids"], graded))
                qids.append(rec["qid"])
    return prompts, labels, qids


def cross_validated_ece(prompts: list, labels: list, qids: list, kind: str, current: HeadCalibration | None) -> dict:
    """ECE of ``kind``'s prompts fitted on odd queries and read on even ones and the reverse, beside the
    ``current`` calibration's ECE on the same prompts."""
    order = {q: i for i, q in enumerate(dict.fromkeys(qids))}  # queries in record order
    probs, truth, before = [], [], []
    for half in (0, 1):
        train = [i for i, q in enumerate(qids) if order[q] % 2 == half]
        test = [i for i, q in enumerate(qids) if order[q] % 2 != half]
        if not test:
            continue
        fitted = HeadCalibration.fit([prompts[i] for i in train], [labels[i] for i in train], fingerprint="cv")
        for i in test:
            probs += fitted.probabilities(prompts[i])
            truth += labels[i]
            if current is not None:
                before += current.probabilities(prompts[i], kind)
    out = {"cross_validated_ece": round(expected_calibration_error(probs, truth), 4)}
    if current is not None:
        out["current_ece"] = round(expected_calibration_error(before, truth), 4)
    return out


def main(argv: list[str] | None = None) -> HeadCalibration:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collection", required=True, help="Collection folder with the judgements.")
    ap.add_argument(
        "--records",
        required=True,
        help="Raw readouts (see above: three record kinds).",
    )
    ap.add_argument("--weights", default="rerank/weights/smollm2-135m-head", help="Weights folder to calibrate.")
    ap.add_argument("--window", type=int, default=20, help="Passages per prompt the readouts were made with.")
    ap.add_argument(
        "--layout", choices=CHUNK_LAYOUTS, default="consecutive", help="How the readouts' prompts were laid out."
    )
    ap.add_argument("--kind", choices=PROMPT_KINDS, default="chunk", help="Kind of prompt to fit (rerank.calibration).")
    ap.add_argument("--out", default=None, help="Where to write (default: WEIGHTS/calibration.json).")
    ap.add_argument(
        "--report", default=None, help="JSON to update with this kind's 2-fold check and fitted parameters."
    )
    ap.add_argument(
        "--variant", default=None, help="Fit this variant of eval/bench_head_speed.py records (e.g. 'default +tuned')."
    )
    args = ap.parse_args(argv)
    coll = load_collection(args.collection)
    fingerprint = weights_fingerprint(args.weights)
    out = Path(args.out or Path(args.weights) / CALIBRATION_FILE)
    current = None
    if out.is_file():
        try:
            current = HeadCalibration.load(out, fingerprint)
        except ValueError:
            if args.kind != "chunk":
                raise
    raw = recover_records(args.records)
    layout = args.layout
    if raw and "prompts" in raw[0]:
        prompts, labels, qids = prompts_of_kind(raw, coll.qrels, coll.graded, args.kind)
        layout = raw[0].get("layout", args.layout)
        source = f"{args.kind} prompts"
    else:
        if args.kind == "final":
            raise SystemExit(f"{args.records}: final prompts are recorded only by eval/prompt_readouts.py")
        records = _readout_records(raw, args)
        prompts, labels = prompts_and_labels(records, coll.qrels, coll.graded, args.window, layout)
        qids = [r["qid"] for r in records for _ in chunk_members(len(r["docids"]), args.window, layout)]
        source = f"{layout} prompts of {args.window}"
    if not prompts:
        raise SystemExit(f"{args.records}: no {args.kind} prompts to fit on")
    fitted = HeadCalibration.fit(
        prompts,
        labels,
        fingerprint=fingerprint,
        fitted_on=f"{Path(args.collection).name}: {len(set(qids))} queries, {sum(map(len, prompts))} passages "
        f"in {source} ({Path(args.records).name}" + (f", {args.variant})" if args.variant else ")"),
        layout=layout,
    )
    check = cross_validated_ece(prompts, labels, qids, args.kind, current)
    print(f"{args.kind} prompts, 2-fold over queries:", check)
    if args.report:
        report = Path(args.report)
        table = json.loads(report.read_text()) if report.is_file() else {}
        table[args.kind] = check | {"parameters": fitted.parameters(), "fitted_on": fitted.fitted_on}
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(table, indent=1) + "\n")
    if args.kind == "chunk":
        if current is not None and (current.final_prompt or current.single_prompt):
            print(f"note: the final and single parameters of {out} were fitted beside the old chunk set: refit them")
        cal = fitted
    elif current is None:
        raise SystemExit(f"--kind {args.kind} adds to a calibration: fit {out} with --kind chunk first")
    else:
        cal = current.with_kind(args.kind, fitted)
    cal.save(out)
    print(f"wrote {out}: {cal}")
    return cal


def _readout_records(raw: list[dict], args) -> list[dict]:
    """Per query docids and one raw readout each, from depth_methods or bench_head_speed records."""
    if args.variant is None:
        records = [r for r in raw if r.get("score_kind") == "head_logit"]
    else:
        name = Path(args.collection).name
        records = [
            {"qid": r["qid"], "docids": r["docids"], "scores": r["pruned"][args.variant]["scores"]}
            for r in raw
            if r.get("collection") == name and args.variant in r.get("pruned", {})
        ]
    if not records:
        what = (
            f"readouts of variant {args.variant!r}" if args.variant else "raw head readouts (score_kind 'head_logit')"
        )
        raise SystemExit(f"{args.records}: no {what} to fit on")
    return records


if __name__ == "__main__":
    main()
