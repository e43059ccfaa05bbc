"""Ship pruning-tuned head weights beside a packaged reranker, for the schedule they were tuned with.

    .venv/bin/python scripts/package_pruned_weights.py --run runs/prune/model \\
        --bench eval/results/head_pruning_tuned_cpu.json

Copies the adapter of ``--run`` (a ``rerank train`` output trained with ``head_pruning``, e.g.
configs/train/head-pruned-cpu.yaml) into ``rerank/weights/<name>/pruned/`` and records the schedule
in the folder's ``lazyrank.json`` (``"pruning": {"schedule": ..., "weights": "pruned"}``), where
``Reranker.from_pretrained(pruning="recommended")`` finds both. The schedule is the run's own
(``train_settings.json``), so weights and schedule cannot drift apart. A section is added to the
model card with the run's steps and, given ``--bench`` (``eval/bench_head_speed.py`` JSON), the
measured quality and prefill ratios. Run it after ``scripts/package_weights.py`` (which replaces the
folder) and fit the pruned weights' calibration after it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from rerank.models import package_adapter
from rerank.training.objectives import HeadArguments

REPO = Path(__file__).resolve().parents[1]

PRUNED_SUBFOLDER = "pruned"


def card_section(schedule: dict, settings: dict, metrics: dict, bench: dict | None, command: str) -> list[str]:
    """The model card's lines about the pruning-tuned weights."""
    lines = [
        '## Pruned prefill (`pruning="recommended"`)',
        "",
        f"* Weights: `{PRUNED_SUBFOLDER}/`, the adapter above fine-tuned with its head read from the pruned "
        f"prefill (schedule `{settings['head_pruning']}`, budget `{settings['head_pruning_budget']}`: "
        f"layers at {schedule['layer_fractions']} of the depth keep {schedule['keep_ratios']} of the passage-body "
        "tokens), distilled to the dense readouts of the weights above "
        f"(rank {settings.get('head_rank_loss')}, KL weight {settings.get('head_teacher_weight')}, "
        f"squared-error weight {settings.get('head_teacher_mse')}); {metrics.get('global_step', '?')} steps on "
        f"`{Path(settings.get('train_file', '?')).name}` (scripts/dense_teacher_labels.py).",
        f"* Command: `{command}`.",
    ]
    if bench:
        header = "| collection | dense | pruned, dense weights | pruned, tuned weights | prefill |"
        lines += ["", header, "|---|---|---|---|---|"]
        for name, cell in bench["collections"].items():
            label = next((k for k in cell if k.endswith(" +tuned")), None)
            if label is None:
                continue
            plain = cell[label.removesuffix(" +tuned")]
            lines.append(
                f"| {name} ({cell['queries']} q) | {cell['dense']['ndcg@10']:.4f} | {plain['ndcg@10']:.4f} "
                f"(overlap {plain['top10_overlap']:.2f}) | {cell[label]['ndcg@10']:.4f} (overlap "
                f"{cell[label]['top10_overlap']:.2f}) | x{cell[label]['prefill_ratio']:.2f} |"
            )
        lines += ["", "nDCG@10 at top-20 and top-10 overlap with the dense ranking, from `eval/bench_head_speed.py`."]
    return lines + [""]


def main(argv: list[str] | None = None) -> Path:
    from rerank.models import RECOMMENDED_SETTINGS_FILE, SHIPPED_WEIGHTS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="Output folder of `rerank train` with head_pruning.")
    ap.add_argument("--name", default=SHIPPED_WEIGHTS, help="Packaged weights folder under --weights_root.")
    ap.add_argument("--weights_root", default=str(REPO / "rerank" / "weights"), help="Where packaged weights live.")
    ap.add_argument("--bench", default=None, help="eval/bench_head_speed.py JSON (with --tuned) for the card.")
    ap.add_argument(
        "--command",
        default="python -m rerank.training.train configs/train/head-pruned-cpu.yaml",
        help="The training command, for the card.",
    )
    ap.add_argument("--dtype", default="float32", choices=["bfloat16", "float32"])
    ap.add_argument("--max_mb", type=float, default=25.0)
    args = ap.parse_args(argv)
    run, dest = Path(args.run), Path(args.weights_root) / args.name
    if not (run / "adapter_config.json").is_file():
        ap.error(f"{run} holds no LoRA adapter (adapter_config.json)")
    if not (dest / RECOMMENDED_SETTINGS_FILE).is_file():
        ap.error(f"{dest} is no packaged reranker ({RECOMMENDED_SETTINGS_FILE} missing): run package_weights.py first")
    settings_file = run / "train_settings.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    if not settings.get("head_pruning"):
        ap.error(f"{run} was not trained with head_pruning ({settings_file}): its weights match no schedule")
    head = HeadArguments(head_pruning=settings["head_pruning"], head_pruning_budget=settings["head_pruning_budget"])
    schedule = dataclasses.asdict(head.pruning_config())
    package_adapter(run, dest / PRUNED_SUBFOLDER, args.dtype, args.max_mb)
    recommended = json.loads((dest / RECOMMENDED_SETTINGS_FILE).read_text())
    recommended["pruning"] = {"schedule": schedule, "weights": PRUNED_SUBFOLDER}
    (dest / RECOMMENDED_SETTINGS_FILE).write_text(json.dumps(recommended, indent=1))
    metrics_file, state_file = run / "train_metrics.json", run / "trainer_state.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    if not metrics and state_file.is_file():  # a checkpoint folder: its trainer state
        metrics = {"global_step": json.loads(state_file.read_text()).get("global_step")}
    bench = json.loads(Path(args.bench).read_text()) if args.bench else None
    card = (dest / "README.md").read_text()
    card = card.split("\n## Pruned prefill")[0].rstrip("\n") + "\n\n"  # re-packaging replaces the section
    (dest / "README.md").write_text(card + "\n".join(card_section(schedule, settings, metrics, bench, args.command)))
    print(f"wrote {dest / PRUNED_SUBFOLDER} and the pruning entry of {dest / RECOMMENDED_SETTINGS_FILE}")
    return dest


if __name__ == "__main__":
    main()
