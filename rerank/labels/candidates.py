"""What gets labelled: one query and its first-stage candidates, from a collection folder or a JSONL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rerank.data.collection import iter_jsonl


@dataclass
class Candidates:
    """One query and its first-stage candidates (best first)."""

    qid: str
    query: str
    docids: list[str]
    texts: list[str]


def load_candidates(
    source: str, run: str | None = None, depth: int | None = None, qrels: str | None = None
) -> tuple[list[Candidates], dict[str, dict[str, int]]]:
    """Candidates per query and judgements (if any) from a collection folder or a candidates JSONL."""
    from rerank.data.collection import default_run_path, load_collection, read_qrels, read_run

    judged = read_qrels(qrels) if qrels else {}
    if Path(source).is_dir():
        coll = load_collection(source)
        run_path = run or default_run_path(coll)
        if run_path is None:
            raise FileNotFoundError(f"{source} has no run.*.trec; pass --run")
        ranked = read_run(run_path, depth=depth)
        items = []
        for qid, docids in ranked.items():
            if qid not in coll.queries:
                raise ValueError(f"{run_path}: query {qid!r} is not in {source}/queries.jsonl")
            missing = [d for d in docids if d not in coll.corpus]
            if missing:
                raise ValueError(
                    f"{run_path}: query {qid!r}: {len(missing)} docids not in the corpus, e.g. {missing[0]!r}"
                )
            items.append(Candidates(qid, coll.queries[qid], list(docids), [coll.corpus[d] for d in docids]))
        return items, judged or coll.qrels
    items = []
    for lineno, obj in iter_jsonl(source):
        try:
            cands = obj["candidates"][:depth] if depth else obj["candidates"]
            items.append(
                Candidates(
                    str(obj["qid"]),
                    str(obj["query"]),
                    [str(c["docid"]) for c in cands],
                    [str(c["text"]) for c in cands],
                )
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"{source}:{lineno}: expected {{qid, query, candidates: [{{docid, text}}]}} ({exc!r})"
            ) from None
    return items, judged
