"""Helpers shared by the scripts in ``eval/`` and ``scripts/`` (not part of the public API).

* :func:`msmarco_triple_lists`: one training list per MS MARCO training triple, filled with other
  triples' passages (``scripts/build_training_lists.py``, ``scripts/build_training_mix.py``);
* :func:`ranking_settings`: what the records of a resumable ranking benchmark depend on, for
  :func:`rerank.data.resume.check_same_settings` (``eval/bench_strategies.py``, ``eval/ablation_single_pass.py``);
* :func:`shared_data_dir` and :data:`EVAL_COLLECTIONS`: where the offline data is, and the short
  names the evaluation scripts give its collections; :func:`resolve_collection`: a short name or a
  folder of one's own, and where its BM25 run is cached when the folder has none.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from rerank.data.collection import iter_jsonl

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


def msmarco_triple_lists(triples: str | Path, list_size: int, rng: random.Random) -> list[dict]:
    """One list of ``list_size`` passages per triple of ``triples.jsonl`` (query, positive, negative).

    The triple's own positive (``m{i}-pos``) and negative (``m{i}-neg``) are filled up with passages
    drawn from the other triples, then shuffled: no first-stage order exists, so position must not
    give the positive away. Returns ``{"qid": "msmarco-{i}", "query", "docids", "passages": {docid:
    text} in docids order, "positive"}`` per triple; the same ``rng`` state gives the same lists.
    """
    rows = [obj for _, obj in iter_jsonl(triples)]
    texts = {}
    for i, row in enumerate(rows):
        texts[f"m{i}-pos"], texts[f"m{i}-neg"] = row["positive"], row["negative"]
    pool = sorted(texts)
    out = []
    for i, row in enumerate(rows):
        own = [f"m{i}-pos", f"m{i}-neg"]
        docids = own + [d for d in rng.sample(pool, list_size + 2) if d not in own][: list_size - 2]
        rng.shuffle(docids)
        out.append(
            {
                "qid": f"msmarco-{i}",
                "query": row["query"],
                "docids": docids,
                "passages": {d: texts[d] for d in docids},
                "positive": f"m{i}-pos",
            }
        )
    return out


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
