"""Plot nDCG@10 vs reranking depth from an ``eval/depth_methods.py`` JSON: BM25, all-MiniLM-L6-v2 and
the shipped weights by long-list method, one panel per collection; ``--markdown`` also prints the tables.

    .venv/bin/python eval/plot_depth.py eval/results/depth_methods_cpu.json eval/results/depth_methods_cpu.png
    .venv/bin/python eval/plot_depth.py eval/results/depth_long_cpu.json eval/results/depth_long_cpu.png \
        --also eval/results/depth_interleaved_cpu.json --collections "vaswani[0:40],dl19,scifact[0:25]"

``--also`` adds the methods of other JSONs (the same weights, queries and candidates) to the same
panels; ``--collections`` keeps only the named panels.
"""

from __future__ import annotations

import argparse
import json

BASELINE_NAMES = {"bm25": "BM25", "minilm": "all-MiniLM-L6-v2"}  # the JSON's baseline keys, as plotted


def series(cells: dict) -> dict[str, list[tuple[int, float]]]:
    """Per system, (depth, nDCG@10) points sorted by depth; a depth-20 list is one prompt for every method,
    so a method measured only deeper starts from the depth-20 value of the cell's first method.

    >>> cells = {"20": {"baselines": {"bm25": 0.5}, "a": {"ndcg@10": 0.6}},
    ...          "100": {"baselines": {"bm25": 0.4}, "a": {"ndcg@10": 0.55}, "b": {"ndcg@10": 0.62}}}
    >>> series(cells)["shipped, b"]
    [(20, 0.6), (100, 0.62)]
    """
    out: dict[str, list[tuple[int, float]]] = {}
    for depth, cell in sorted(cells.items(), key=lambda kv: int(kv[0])):
        for name, value in cell["baselines"].items():
            out.setdefault(BASELINE_NAMES[name], []).append((int(depth), value))
        for method, row in cell.items():
            if method != "baselines":
                out.setdefault(f"shipped, {method}", []).append((int(depth), row["ndcg@10"]))
    one_prompt = [row["ndcg@10"] for k, row in cells.get("20", {}).items() if k != "baselines"][:1]
    for name, points in out.items():
        if one_prompt and name.startswith("shipped, ") and points[0][0] > 20:
            points.insert(0, (20, one_prompt[0]))
    return out


def load(json_path: str, also: list[str] = (), collections: str | None = None) -> dict:
    """The first JSON with the methods of ``also`` merged into its cells, limited to ``collections``."""
    with open(json_path) as fh:
        data = json.load(fh)
    for path in also:
        with open(path) as fh:
            for collection, cells in json.load(fh).items():
                for depth, cell in cells.items():
                    data.setdefault(collection, {}).setdefault(depth, {}).update(cell)
    if collections:
        data = {c: data[c] for c in collections.split(",") if c in data}
    return data


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


def plot(data: dict, png_path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(data), figsize=(6 * len(data), 4.5), squeeze=False)
    names = list(dict.fromkeys(name for cells in data.values() for name in series(cells)))
    palette = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    color = {name: palette(i) for i, name in enumerate(names)}  # one colour per system in every panel
    for ax, (collection, cells) in zip(axes[0], data.items()):
        queries = {row["queries"] for cell in cells.values() for k, row in cell.items() if k != "baselines"}
        for name, points in series(cells).items():
            style = "--" if name in BASELINE_NAMES.values() else "-"
            xs, ys = [d for d, _ in points], [v for _, v in points]
            ax.plot(xs, ys, style, marker="o", label=name, color=color[name])
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
    ap.add_argument("--also", action="append", default=[], help="Another JSON whose methods join the panels.")
    ap.add_argument("--collections", default=None, help="Comma-separated panels to keep (default: all).")
    ap.add_argument("--markdown", action="store_true", help="Also print the tables as Markdown.")
    args = ap.parse_args(argv)
    data = load(args.json_path, args.also, args.collections)
    plot(data, args.png_path)
    if args.markdown:
        print(markdown(data))


if __name__ == "__main__":
    main()
