"""The label file format: one JSON line per query, read by training, written by ``rerank labels``.

Line (compatible with the paper's released labels, plus texts and costs)::

    {"qid", "query", "initial_list": [docid...], "final_list": [docid...],
     "passages": {docid: text}, "teacher", "stats": {"calls", "prompt_tokens", ...}}

Head training reads two optional fields: ``teacher_scores`` ({docid: graded teacher relevance}) and
``grades`` ({docid: judged relevance grade, 0 = judged or assumed not relevant}); a list with
``grades`` trains the head's pointwise term (``head_pointwise_weight``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rerank.data.collection import iter_jsonl
from rerank.data.resume import recover_records

if TYPE_CHECKING:
    from rerank.labels.complete import LabelOutcome

logger = logging.getLogger(__name__)


@dataclass
class LabelRecord:
    """One training label: query, candidates in first-stage order, and the complete ranking."""

    qid: str
    query: str
    initial_list: list[str]
    final_list: list[str]
    passages: dict[str, str]
    teacher_scores: dict[str, float] | None = None  # graded teacher relevance per docid (head training)
    grades: dict[str, int] | None = None  # judged relevance per docid (the head's pointwise term)


def _load_corpus(corpus: str | os.PathLike) -> dict[str, str]:
    from rerank.data.collection import _read_jsonl, load_collection

    return load_collection(corpus).corpus if Path(corpus).is_dir() else _read_jsonl(Path(corpus))


def read_labels(
    path: str | os.PathLike, corpus: str | os.PathLike | dict | None = None, on_invalid: str = "error"
) -> tuple[list[LabelRecord], int]:
    """Read a label JSONL (ours, or the paper's released ids-only format with ``corpus``).

    ``final_list`` must be a permutation of ``initial_list``; otherwise ``on_invalid="error"``
    raises with file and line, ``"skip"`` drops the line. Returns ``(records, skipped)``.
    """
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    texts = corpus if isinstance(corpus, dict) else (_load_corpus(corpus) if corpus else {})
    records, skipped = [], 0
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        try:
            qid = str(obj["qid"])
            query = str(obj["query"])
            initial = [str(d) for d in obj["initial_list"]]
            final = [str(d) for d in obj["final_list"]]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{where}: expected fields qid, query, initial_list, final_list ({exc!r})") from None
        if len(set(initial)) != len(initial) or sorted(final) != sorted(initial):
            if on_invalid == "skip":
                skipped += 1
                continue
            raise ValueError(
                f"{where}: final_list is not a permutation of initial_list "
                f"({len(final)} vs {len(initial)} ids, {len(set(final) ^ set(initial))} differ)"
            )
        inline = obj.get("passages") or {}
        passages = {}
        for d in initial:
            text = inline.get(d, texts.get(d))
            if text is None:
                raise ValueError(f"{where}: no text for docid {d!r} (inline 'passages' or --corpus_file)")
            passages[d] = str(text)
        teacher = obj.get("teacher_scores")
        if teacher is not None:
            if not isinstance(teacher, dict) or any(not isinstance(teacher.get(d), (int, float)) for d in initial):
                raise ValueError(f"{where}: teacher_scores must map every docid of initial_list to a number")
            teacher = {d: float(teacher[d]) for d in initial}
        grades = obj.get("grades")
        if grades is not None:
            if not isinstance(grades, dict) or any(
                isinstance(g, bool) or not isinstance(g, int) or g < 0 for g in grades.values()
            ):
                raise ValueError(f"{where}: grades must map docids to non-negative integers")
            # Passages the list does not grade count as not relevant (sparse judgments, as in qrels).
            grades = {d: int(grades.get(d, 0)) for d in initial}
        records.append(LabelRecord(qid, query, initial, final, passages, teacher, grades))
    if skipped:
        logger.warning("%s: skipped %d labels whose final_list is not a permutation of initial_list", path, skipped)
    return records, skipped


def scan_done(path: str | os.PathLike) -> set[str]:
    """Qids already labelled in ``path``; a torn last line is cut off in place (:mod:`rerank.data.resume`)."""
    return set(recover_records(path, project=lambda rec: str(rec["qid"])))


def label_record(outcome: LabelOutcome, teacher_name: str, texts: str = "inline") -> dict:
    """The JSON line of a finished query (``texts="none"``: ids only, train with ``--corpus_file``)."""
    item = outcome.item
    rec = {
        "qid": item.qid,
        "query": item.query,
        "initial_list": item.docids,
        "final_list": [item.docids[k] for k in outcome.order],
    }  # type: ignore[union-attr]
    if texts == "inline":
        rec["passages"] = dict(zip(item.docids, item.texts))
    rec["teacher"] = teacher_name
    rec["stats"] = asdict(outcome.stats)
    return rec
