"""rank_llm's ``Request`` / ``Result`` JSON, read and written without rank_llm installed.

One record is ``{"query": {"text", "qid"}, "candidates": [{"docid", "score", "doc": {...}}]}``; a file
is a JSON list of records or JSONL (one record per line). The document text sits in ``doc["text"]``,
``doc["segment"]``, ``doc["contents"]`` (or ``content`` / ``body`` / ``passage``; the first present
wins, rank_llm's order) with an optional ``doc["title"]``. Results are the same records with the
candidates in reranked order, so rank_llm, its evaluation scripts and LazyRank read each other's files.

Example:
    >>> requests = read_rank_llm_requests("retrieve_results_dl19.jsonl")        # doctest: +SKIP
    >>> results = reranker.rerank_batch([r.query for r in requests],            # doctest: +SKIP
    ...                                 [r.texts() for r in requests])
    >>> write_rank_llm_results("reranked.jsonl", requests, [r.order for r in results])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# rank_llm's _convert_doc_to_prompt_content looks for the text under these keys, in this order.
TEXT_KEYS = ("text", "segment", "contents", "content", "body", "passage")


@dataclass
class Candidate:
    """One first-stage candidate: id, first-stage score and the document fields as given."""

    docid: str | int
    score: float
    doc: dict[str, Any]

    def to_json(self) -> dict:
        return {"docid": self.docid, "score": self.score, "doc": self.doc}


@dataclass
class RankLLMRequest:
    """A query with its candidates (rank_llm ``Request``; a ``Result`` has the same shape)."""

    qid: str | int
    query: str
    candidates: list[Candidate] = field(default_factory=list)

    def texts(self) -> list[str]:
        """The candidates' passage strings for :meth:`rerank.Reranker.rerank` (titles included)."""
        return [document_text(c.doc) for c in self.candidates]

    def to_json(self) -> dict:
        return {"query": {"text": self.query, "qid": self.qid}, "candidates": [c.to_json() for c in self.candidates]}


def document_text(doc: dict[str, Any]) -> str:
    """A document's passage string as rank_llm builds it: ``Title: {t} Content: {text}`` when titled.

    Raises:
        ValueError: when no text key is present.
    """
    if not isinstance(doc, dict):
        raise ValueError(f"a candidate's doc must be an object, got {type(doc).__name__}")
    for key in TEXT_KEYS:
        if key in doc:
            text = doc[key]
            break
    else:
        raise ValueError(f"doc has no text field (one of {list(TEXT_KEYS)}); keys: {sorted(doc)}")
    if not isinstance(text, str):
        raise ValueError(f"doc[{key!r}] must be a string, got {type(text).__name__}")
    title = doc.get("title")
    return f"Title: {title} Content: {text}" if title else text


def _parse_record(obj: Any, where: str) -> RankLLMRequest:
    if not isinstance(obj, dict) or not isinstance(obj.get("query"), dict):
        raise ValueError(f"{where}: expected {{'query': {{'text', 'qid'}}, 'candidates': [...]}}")
    query = obj["query"]
    if not isinstance(query.get("text"), str) or "qid" not in query:
        raise ValueError(f"{where}: query needs a 'text' string and a 'qid'")
    candidates = []
    for i, cand in enumerate(obj.get("candidates", [])):
        if not isinstance(cand, dict) or "docid" not in cand or "doc" not in cand:
            raise ValueError(f"{where}: candidates[{i}] needs 'docid' and 'doc'")
        try:
            document_text(cand["doc"])  # fail here, with the location, rather than while ranking
        except ValueError as err:
            raise ValueError(f"{where}: candidates[{i}]: {err}") from None
        candidates.append(Candidate(docid=cand["docid"], score=float(cand.get("score", 0.0)), doc=cand["doc"]))
    return RankLLMRequest(qid=query["qid"], query=query["text"], candidates=candidates)


def read_rank_llm_requests(path: str | os.PathLike) -> list[RankLLMRequest]:
    """Read rank_llm requests (or results) from a JSON list or a JSONL file (told apart by content).

    Raises:
        ValueError: malformed JSON or a record without query / candidates / doc text, with its location.
    """
    with open(path, encoding="utf-8") as f:
        content = f.read()
    if content.lstrip().startswith("["):
        try:
            records = json.loads(content)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON: {err}") from None
        return [_parse_record(obj, f"{path}[{i}]") for i, obj in enumerate(records)]
    from rerank.data.collection import iter_jsonl

    return [_parse_record(obj, f"{path}:{number}") for number, obj in iter_jsonl(path)]


def reranked(request: RankLLMRequest, order: Sequence[int], scores: Sequence[float] | None = None) -> RankLLMRequest:
    """``request`` with its candidates in ``order`` (0-based indices, best first, a permutation).

    Without ``scores`` the k-th candidate takes the k-th highest first-stage score, as rank_llm
    writes results: scores stay descending, so trec_eval's sort by score keeps the new order.
    With ``scores`` (per original candidate, e.g. ``RankingResult.scores``) those are written.
    """
    num = len(request.candidates)
    if sorted(order) != list(range(num)):
        raise ValueError(f"order must be a permutation of range({num}), got {list(order)[:10]}...")
    if scores is not None and len(scores) != num:
        raise ValueError(f"scores has {len(scores)} values for {num} candidates")
    ranked_scores = sorted((c.score for c in request.candidates), reverse=True)
    candidates = []
    for rank, index in enumerate(order):
        cand = request.candidates[index]
        score = float(scores[index]) if scores is not None else ranked_scores[rank]
        candidates.append(Candidate(docid=cand.docid, score=score, doc=cand.doc))
    return RankLLMRequest(qid=request.qid, query=request.query, candidates=candidates)


def write_rank_llm_results(
    path: str | os.PathLike,
    requests: Sequence[RankLLMRequest],
    orders: Iterable[Sequence[int]] | None = None,
    scores: Iterable[Sequence[float] | None] | None = None,
    jsonl: bool | None = None,
) -> None:
    """Write rank_llm results: each request's candidates in its order (None = as they are).

    ``jsonl=None`` picks JSONL for a ``.jsonl`` path, else a JSON list (rank_llm's two formats).
    """
    requests = list(requests)
    orders = [None] * len(requests) if orders is None else list(orders)
    scores = [None] * len(requests) if scores is None else list(scores)
    if not len(orders) == len(scores) == len(requests):
        raise ValueError(f"{len(requests)} requests but {len(orders)} orders and {len(scores)} score lists")
    records = [(r if o is None else reranked(r, o, s)).to_json() for r, o, s in zip(requests, orders, scores)]
    if jsonl is None:
        jsonl = os.fspath(path).endswith(".jsonl")
    with open(path, "w", encoding="utf-8") as f:
        if jsonl:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            f.write(json.dumps(records, indent=2, ensure_ascii=False))


def rerank_rank_llm_file(
    reranker, in_path: str | os.PathLike, out_path: str | os.PathLike, top_k: int | None = None
) -> list[RankLLMRequest]:
    """Rerank every request of a rank_llm file with ``reranker`` and write the results file."""
    requests = read_rank_llm_requests(in_path)
    results = reranker.rerank_batch([r.query for r in requests], [r.texts() for r in requests], top_k=top_k)
    orders = [res.order for res in results]
    write_rank_llm_results(out_path, requests, orders)
    return [reranked(r, o) for r, o in zip(requests, orders)]
