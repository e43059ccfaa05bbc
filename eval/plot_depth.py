"""Plot nDCG@10 vs reranking depth from an ``eval/depth_methods.py`` JSON: BM25, all-MiniLM-L6-v2 and
the shipped weights by long-list method, one panel per collection; ``--markdown`` also prints the tables.

    .venv/bin/python eval/plot_depth.py eval/results/depth_methods_cpu.json eval/results/depth_methods_cpu.png
"""

from __future__ import annotations

import argparse
import json

BASELINE_NAMES = {"bm25": "BM25", "minilm": "all-MiniLM-L6-v2"}  # the JSON's baseline keys, as plotted


def series(cells: dict) -> dict[str, list[tuple[int, float]]]:
    """Per system, (depth, nDCG@10) points sorted by depth; a depth-20 list is one prompt for every method."""
    out: dict[str, list[tuple[int, float]]] = {}
    for depth, cell in sorted(cells.items(), key=lambda kv: int(kv[0])):
        for name, value in cell["baselines"].items():
            out.setdefault(BASELINE_NAMES[name], []).append((int(depth), value))
        for method, row in cell.items():
            if method != "baselines":
                out.setdefault(f"shipped, {method}", []).append((int(depth), row["ndcg@10"]))
    return out


def markdown(data: dict) -> str:
    """One table per collection: a row per system, a column per depth, ``nDCG (s/q, prompts/q)``."""
    out = []
    for collection, cells in data.items():
        depths = sorted(cells, key=int)
        rows: dict[str, dict[str, str]] = {}
        for depth in depths:
            for name, value in cells[depth]["baselines"].items():
                rows.setdefault(BASELINE_NAMES[name], {})[depth] = f"{value:.4f}"
            for method, row in cells[depth].items():
                if method != "baselines":
                    cost = f"{row['seconds_per_query']:.1f} s, {row['prompts_per_query']:g} prompts"
                    rows.setdefault(method, {})[depth] = f"{row['ndcg@10']:.4f} ({cost})"
        queries = sorted({r["queries"] for c in cells.values() for k, r in c.items() if k != "baselines"})
        out.append(f"{collection}, {'/'.join(map(str, queries))} queries:\n")
        out.append("| system | " + " | ".join(f"top-{d}" for d in depths) + " |")
        out.append("|---" * (len(depths) + 1) + "|")
        out += [f"| {name} | " + " | ".join(row.get(d, "") for d in depths) + " |" for name, row in rows.items()]
        out.append("")
    return "\n".join(out)


def plot(json_path: str, png_path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(json_path) as fh:
        data = json.load(fh)
    fig, axes = plt.subplots(1, len(data), figsize=(6 * len(data), 4.5), squeeze=False)
    for ax, (collection, cells) in zip(axes[0], data.items()):
        queries = {row["queries"] for cell in cells.values() for k, row in cell.items() if k != "baselines"}
        for name, points in series(cells).items():
            style = "--" if name in BASELINE_NAMES.values() else "-"
            ax.plot([d for d, _ in points], [v for _, v in points], style, marker="o", label=name)
        ax.set_title(f"{collection} ({'/'.join(map(str, sorted(queries)))} queries)")
        ax.set_xlabel("first-stage depth reranked")
        ax.set_ylabel("nDCG@10")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json_path")
    ap.add_argument("png_path")
    ap.add_argument("--markdown", action="store_true", help="Also print the tables as Markdown.")
    args = ap.parse_args(argv)
    plot(args.json_path, args.png_path)
    if args.markdown:
        with open(args.json_path) as fh:
            print(markdown(json.load(fh)))


if __name__ == "__main__":
    main()
