"""Plot the speed/fidelity curve of a ``bench_pruning.py`` JSON.

.venv/bin/python eval/plot_pruning.py eval/results/pruning_cpu.json eval/results/pruning_cpu.png
"""

from __future__ import annotations

import json
import sys


def plot(json_path: str, png_path: str) -> None:
    """Two panels: prefill speedup vs computed fraction, and top-10 overlap / first-token KL vs speedup."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(json_path) as fh:
        data = json.load(fh)
    schedules = data["fidelity"]["schedules"]
    # CPU-time ratios are the robust ones on a shared machine (one torch thread); wall ratios otherwise.
    key = "prefill_cpu_speedup_median" if data.get("threads") == 1 else "prefill_speedup_median"
    what = "CPU time" if key.startswith("prefill_cpu") else "wall time"
    names = sorted(schedules, key=lambda n: schedules[n][key])
    speed = [schedules[n][key] for n in names]
    frac = [schedules[n]["computed_fraction"] for n in names]
    overlap = [schedules[n]["top10_overlap"] for n in names]
    kl = [schedules[n]["first_token_kl"] for n in names]
    labels = [f"{n} (q={schedules[n]['queries']})" for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.scatter(frac, speed)
    for i, (label, x, y) in enumerate(zip(labels, frac, speed)):
        left.annotate(label, (x, y), fontsize=7, xytext=(4, 10 * (i % 3) - 10), textcoords="offset points")
    left.plot([0.3, 1.0], [1 / 0.3, 1.0], ":", color="grey", label="1 / computed fraction")
    left.axhline(2.0, color="red", lw=0.8, ls="--", label="target 2x")
    left.set_xlabel("computed fraction (token-layers / full prefill)")
    left.set_ylabel(f"prefill speedup, {what}\n(median of paired runs)")
    left.legend(fontsize=7)
    # Points may cover different query subsets (see q=...): markers only, no connecting line.
    right.scatter(speed, overlap, marker="o", label="top-10 overlap with unpruned")
    right.axhline(0.8, color="red", lw=0.8, ls="--", label="overlap target 0.8")
    right.set_xlabel(f"prefill speedup ({what})")
    right.set_ylabel("top-10 overlap")
    right.set_ylim(0, 1.05)
    twin = right.twinx()
    twin.scatter(speed, kl, marker="s", color="tab:orange", label="KL(unpruned || pruned), first answer token")
    for i, (label, x, y) in enumerate(zip(labels, speed, kl)):
        twin.annotate(label, (x, y), fontsize=7, xytext=(4, 10 * (i % 3) - 10), textcoords="offset points")
    twin.set_ylabel("first-token KL (nats)")
    twin.set_ylim(0, max(kl) * 1.3 if kl else 1)
    lines = right.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    right.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower left")
    n = data["fidelity"].get("depth", data["fidelity"].get("top_n"))  # top_n: files before the rename
    fig.suptitle(f"Pruned prefill, {data['model']} {data['dtype']}, {data['data']} N={n}")
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plot_pruning.py RESULTS.json OUT.png")
    plot(sys.argv[1], sys.argv[2])
