"""Reading collections, qrels and TREC runs (the shared-data layout and BEIR's own)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# The one resume mechanism for appended JSONL logs; imported here for the callers that know it as data.recover_records.
from rerank.data.resume import append_record, recover_records  # noqa: F401


@dataclass
class Collection:
    """Queries, passages and judgements of one test collection."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    path: str = ""
    first_stage: dict[str, list[str]] | None = None  # an ir_datasets collection's scoreddocs

    @property
    def graded(self) -> bool:
        """True when judgements use grades above 1 (TREC DL 0..3): binary measures then use rel >= 2."""
        return any(g > 1 for judged in self.qrels.values() for g in judged.values())


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-empty line; malformed JSON raises with file and line."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON at character {exc.pos + 1} ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _read_jsonl(path: Path, key: str = "_id") -> dict[str, str]:
    out: dict[str, str] = {}
    for lineno, obj in iter_jsonl(path):
        if key not in obj:
            raise ValueError(f"{path}:{lineno}: missing field {key!r}")
        title = obj.get("title") or ""
        text = obj.get("text", "")
        out[str(obj[key])] = f"{title}. {text}".strip() if title else text
    return out


def read_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """TREC qrels (``qid 0 docid rel``) or BEIR tsv (``query-id corpus-id score`` with a header)."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 4:
                qid, _, docid, rel = parts
            elif len(parts) == 3:
                qid, docid, rel = parts
            else:
                raise ValueError(
                    f"{path}:{lineno}: expected 'qid 0 docid rel' or 'qid docid rel', got {line.strip()!r}"
                )
            try:
                grade = int(float(rel))
            except ValueError:
                if lineno == 1:  # BEIR header
                    continue
                raise ValueError(f"{path}:{lineno}: relevance {rel!r} is not a number") from None
            qrels.setdefault(qid, {})[docid] = grade
    return qrels


def read_run(path: str | os.PathLike, depth: int | None = None) -> dict[str, list[str]]:
    """TREC run (``qid Q0 docid rank score tag``) -> per query, docids best first (by rank, then score)."""
    rows: dict[str, list[tuple[int, float, str]]] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 6:
                raise ValueError(f"{path}:{lineno}: expected 'qid Q0 docid rank score tag', got {line.strip()!r}")
            qid, _, docid, rank, score = parts[:5]
            try:
                rows.setdefault(qid, []).append((int(rank), -float(score), docid))
            except ValueError:
                raise ValueError(f"{path}:{lineno}: rank {rank!r} or score {score!r} is not a number") from None
    run = {}
    for qid, items in rows.items():
        docs = list(dict.fromkeys(d for _, _, d in sorted(items)))
        run[qid] = docs[:depth] if depth else docs
    return run


def write_run(path: str | os.PathLike, run: dict[str, list[tuple[str, float]]], tag: str = "lazyrank") -> None:
    """Write ``{qid: [(docid, score), ...best first]}`` as a TREC run."""
    with open(path, "w", encoding="utf-8") as fh:
        for qid, ranked in run.items():
            for rank, (docid, score) in enumerate(ranked, start=1):
                fh.write(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")


def load_collection(source: str | os.PathLike) -> Collection:
    """Load a collection folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels.txt`` or BEIR's
    ``qrels/test.tsv``), or an ``ir_datasets`` id when ir_datasets is installed.

    Example:
        >>> c = load_collection("../shared/data/msmarco-dl19")       # doctest: +SKIP
        >>> len(c.queries), c.graded
        (43, True)
    """
    path = Path(source)
    if not path.is_dir():
        if os.sep in str(source) or str(source).startswith("."):
            raise FileNotFoundError(f"collection folder {path} does not exist")
        return _load_ir_datasets(str(source))
    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"collection folder {path} has no {name}")
    qrels_path = next(
        (p for p in (path / "qrels.txt", path / "qrels" / "test.tsv", path / "qrels" / "dev.tsv") if p.is_file()), None
    )
    return Collection(
        corpus=_read_jsonl(path / "corpus.jsonl"),
        queries=_read_jsonl(path / "queries.jsonl"),
        qrels=read_qrels(qrels_path) if qrels_path else {},
        path=str(path),
    )


def default_run_path(collection: Collection) -> Path | None:
    """The folder's first-stage run: ``run.bm25.trec``, else ``run.given.trec``."""
    for name in ("run.bm25.trec", "run.given.trec"):
        candidate = Path(collection.path) / name
        if collection.path and candidate.is_file():
            return candidate
    return None


def _load_ir_datasets(dataset_id: str) -> Collection:
    try:
        import ir_datasets
    except ImportError:
        raise ImportError(
            f"{dataset_id!r} is not a folder; loading ir_datasets ids needs the extra: pip install 'lazyrank[irds]'"
        ) from None
    try:
        ds = ir_datasets.load(dataset_id)
    except KeyError:
        raise FileNotFoundError(f"{dataset_id!r} is neither a collection folder nor an ir_datasets id") from None
    queries = {q.query_id: q.text for q in ds.queries_iter()}
    qrels: dict[str, dict[str, int]] = {}
    for q in ds.qrels_iter():
        qrels.setdefault(q.query_id, {})[q.doc_id] = int(q.relevance)
    store = ds.docs_store()
    if not ds.has_scoreddocs():
        raise ValueError(f"{dataset_id!r} has no first-stage run (scoreddocs); pass --run")
    scored: dict[str, list[tuple[float, str]]] = {}
    for sd in ds.scoreddocs_iter():
        scored.setdefault(sd.query_id, []).append((-sd.score, sd.doc_id))
    first_stage = {q: [d for _, d in sorted(items)] for q, items in scored.items()}
    wanted = {d for docs in first_stage.values() for d in docs}
    corpus = {doc.doc_id: getattr(doc, "text", "") for doc in store.get_many_iter(wanted)}
    return Collection(corpus=corpus, queries=queries, qrels=qrels, path="", first_stage=first_stage)
