"""Helpers shared by the scripts in ``eval/`` and ``scripts/`` (not part of the public API).

* :func:`ranking_settings`: what the records of a resumable ranking benchmark depend on, for
  :func:`rerank.data.resume.check_same_settings` (``eval/bench_strategies.py``, ``eval/ablation_single_pass.py``);
* :func:`shared_data_dir` and :data:`EVAL_COLLECTIONS`: where the offline data is, and the short
  names the evaluation scripts give its collections; :func:`resolve_collection`: a short name or a
  folder of one's own, and where its BM25 run is cached when the folder has none.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

# Short names of the evaluation collections under the shared data folder.
EVAL_COLLECTIONS = {"dl19": "msmarco-dl19", "scifact": "beir-scifact", "vaswani": "vaswani"}

# Vaswani ships no run: every script reranks the same BM25 run, built once and cached here.
VASWANI_RUN_CACHE = "runs/depth/vaswani.bm25.trec"


def shared_data_dir(script: str | os.PathLike) -> Path:
    """The offline data folder for a script of this repository (``eval/`` or ``scripts/``):
    ``$LAZYRANK_SHARED_DATA``, else ``shared/data`` beside the repository."""
    repo = Path(script).resolve().parents[1]
    return Path(os.environ.get("LAZYRANK_SHARED_DATA", repo.parent / "shared" / "data"))


def resolve_collection(arg: str, data: Path, work_dir: str | os.PathLike) -> tuple[Path, str, Path]:
    """``--collection`` as the evaluation scripts take it -> (folder, name, BM25 run cache).

    ``arg`` is one of :data:`EVAL_COLLECTIONS` (a folder under ``data``) or a collection folder of
    one's own (``corpus.jsonl``, ``queries.jsonl`` and qrels). A folder without a run of its own is
    reranked from BM25, cached at :data:`VASWANI_RUN_CACHE` for Vaswani and ``work_dir/NAME/bm25.trec``
    otherwise, so every script sees the same candidates.

    >>> resolve_collection("vaswani", Path("data"), "runs/x")[1:]
    ('vaswani', PosixPath('runs/depth/vaswani.bm25.trec'))
    """
    if arg in EVAL_COLLECTIONS:
        folder, name = data / EVAL_COLLECTIONS[arg], arg
    elif Path(arg).is_dir():
        folder, name = Path(arg), Path(arg).name
    else:
        raise SystemExit(f"--collection {arg!r}: neither one of {sorted(EVAL_COLLECTIONS)} nor a folder")
    cache = Path(VASWANI_RUN_CACHE) if name == "vaswani" else Path(work_dir) / name / "bm25.trec"
    return folder, name, cache


def update_json(path: str | os.PathLike, keys: Sequence[str], cell: object) -> None:
    """Set ``cell`` at the nested ``keys`` of the JSON report at ``path`` (created if missing), keeping
    every other cell: several runs of a script add to one report."""
    out = Path(path)
    report = json.loads(out.read_text()) if out.is_file() else {}
    node = report
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = cell
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def ranking_settings(fixed: Mapping, budgets: Iterable[tuple[object, int]], variants: Mapping[str, Mapping]) -> dict:
    """What a resumable ranking benchmark's records depend on, one key per depth and per variant.

    ``fixed`` (collection, model(s), ...) is copied first; each ``(depth, budget)`` becomes
    ``max_passage_tokens[depth]``; each variant ``{"strategy", ..., "pruning": PruningConfig | None}``
    becomes ``variant[name]`` with its pruning schedule spelled out. A rerun into the same output may
    add depths or variants but not change one under the same name (that would mix two systems).
    """
    settings = dict(fixed)
    for depth, budget in budgets:
        settings[f"max_passage_tokens[{depth}]"] = budget
    for name, spec in variants.items():
        pruning = spec.get("pruning")
        settings[f"variant[{name}]"] = {**spec, "pruning": None if pruning is None else asdict(pruning)}
    return settings
