"""Teacher scores and complete labels for training lists (:mod:`rerank.labels.training_lists`).

Each list gets the all-MiniLM-L6-v2 cosine of every passage to its query and the passage's BM25
score over its own source; the teacher is the cosine (``minilm``) or the ensemble of both
(``ensemble``, :func:`ensemble_scores`). The label puts judged-relevant passages first (by grade),
the rest in the teacher's order (:func:`label_list`).

The cosines are the costly part; :class:`CosineCache` keeps them on disk as they are computed, so
an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from rerank.data.resume import append_record, recover_records
from rerank.labels.training_lists import SOURCE_FOLDERS, corpus_index, leaders_of, source_of

TEACHERS = ("minilm", "ensemble")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation of one list's scores."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def zscores(values: Sequence[float]) -> list[float] | None:
    """Per-list standard scores; None when the list has no spread."""
    mean, std = mean_std(values)
    if std <= 1e-6:
        return None
    return [(v - mean) / std for v in values]


def ensemble_scores(cosines: Sequence[float], bm25: Sequence[float], bm25_weight: float) -> list[float]:
    """``(1 - w) z(cosine) + w z(BM25)``, mapped back onto the cosines' mean and spread so a KL
    temperature tuned on cosines keeps its meaning.

    >>> [round(x, 3) for x in ensemble_scores([0.2, 0.4], [1.0, 0.0], 0.5)]
    [0.3, 0.3]
    """
    zc, zb = zscores(cosines), zscores(bm25)
    if zc is None:
        return list(cosines)
    if zb is None:
        zb = [0.0] * len(bm25)
    mean, std = mean_std(cosines)
    return [mean + std * ((1 - bm25_weight) * a + bm25_weight * b) for a, b in zip(zc, zb)]


def boost_judged(scores: dict[str, float], grades: dict[str, int], boost: float) -> dict[str, float]:
    """Lift every judged-relevant passage above the best unjudged one: top + boost * grade, so the
    KL term agrees with the rank term.

    >>> boost_judged({"a": 0.1, "b": 0.5}, {"a": 1}, 0.1)
    {'a': 0.6, 'b': 0.5}
    """
    if boost <= 0 or not any(g > 0 for g in grades.values()):
        return dict(scores)
    top = max(scores.values())
    return {d: (round(top + boost * grades[d], 6) if grades.get(d, 0) > 0 else s) for d, s in scores.items()}


def order_by(docs: Sequence[str], scores: Sequence[float]) -> list[str]:
    """``docs`` by descending score, ties in input order."""
    rank = {d: i for i, d in enumerate(docs)}
    by_doc = dict(zip(docs, scores))
    return sorted(docs, key=lambda d: (-by_doc[d], rank[d]))


class ListBM25:
    """BM25 scores of a list's passages for its query, each source scored over its own collection.

    Sources with a collection folder (SelQA, WikiQA, SciFact; under ``data``) use its corpus, the index
    their retrieved lists came from; the others (MS MARCO triples, synthetic lists) use
    ``pools[source]``, the passages of all their lists.
    """

    def __init__(self, pools: dict[str, dict[str, str]], data: str | os.PathLike | None = None):
        self.pools, self.data, self.indexes = pools, data, {}

    def __call__(self, item: dict) -> list[float]:
        from rerank.data.bm25 import BM25Index

        source = source_of(item)
        if source not in self.indexes:
            folder = SOURCE_FOLDERS.get(source) if self.data is not None else None
            if folder:
                self.indexes[source] = corpus_index(str(Path(self.data) / folder))
            else:
                self.indexes[source] = BM25Index.build(self.pools[source], show_progress=False)
        return self.indexes[source].score(item["query"], item["initial_list"])


class CosineCache:
    """The teacher's cosines of each list, appended to a JSONL file as they are computed.

    A list is looked up by qid and reused only when its passages are the same ones in the same
    order; a torn last line (an interrupted write) is dropped on open.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.saved = {r["qid"]: r for r in recover_records(self.path)} if self.path.is_file() else {}
        self.reused = 0

    def scores(self, item: dict, compute: Callable[[dict], list[float]]) -> list[float]:
        """The cosines of ``item``'s passages: saved ones, else ``compute(item)`` (then saved)."""
        hit = self.saved.get(item["qid"])
        if hit is not None and hit["docids"] == item["initial_list"]:
            self.reused += 1
            return hit["cosine"]
        cosine = [float(c) for c in compute(item)]
        record = {"qid": item["qid"], "docids": item["initial_list"], "cosine": cosine}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            append_record(fh, record)
        self.saved[item["qid"]] = record
        return cosine


def label_list(
    item: dict,
    cosine: Sequence[float],
    bm25: Sequence[float],
    teacher: str = "minilm",
    bm25_weight: float = 0.5,
    judged_boost: float = 0.0,
    leaders: int = 0,
) -> tuple[dict, dict[str, list[str]]]:
    """The label record of one list and the orders its label-quality summary compares.

    ``cosine`` and ``bm25`` score ``item["initial_list"]``. With ``leaders`` N the list is first cut to
    the teacher's N best in first-stage order (:func:`~rerank.labels.training_lists.leaders_of`),
    then scored as a list of its own (the ensemble's z-scores are per list). Returns the record
    (``qid``, ``query``, ``initial_list``, ``final_list``, ``passages``, ``teacher_scores``, ``grades``
    of the relevant) and ``{"first_stage", "bm25", "minilm", "ensemble", "label"}`` orders.

    >>> item = {"qid": "q", "query": "x", "initial_list": ["a", "b", "c"],
    ...         "passages": dict.fromkeys("abc", ""), "grades": {"c": 1}}
    >>> record, orders = label_list(item, [0.9, 0.5, 0.1], [0.0, 2.0, 1.0])
    >>> record["final_list"], orders["bm25"]
    (['c', 'a', 'b'], ['b', 'c', 'a'])
    """
    if teacher not in TEACHERS:
        raise ValueError(f"teacher must be one of {TEACHERS}, got {teacher!r}")
    docs = item["initial_list"]
    ens = ensemble_scores(cosine, bm25, bm25_weight)
    if leaders and len(docs) > leaders:
        kept = leaders_of(item, ens if teacher == "ensemble" else list(cosine), leaders)
        # A passage's BM25 score does not depend on its list-mates: keep its score, re-standardise.
        keep = {d: i for i, d in enumerate(docs)}
        cosine = [cosine[keep[d]] for d in kept["initial_list"]]
        bm25 = [bm25[keep[d]] for d in kept["initial_list"]]
        item, docs = kept, kept["initial_list"]
        ens = ensemble_scores(cosine, bm25, bm25_weight)
    soft_scores = ens if teacher == "ensemble" else list(cosine)
    orders = {name: order_by(docs, vals) for name, vals in (("bm25", bm25), ("minilm", cosine), ("ensemble", ens))}
    grades = item["grades"]
    final = sorted(orders["ensemble" if teacher == "ensemble" else "minilm"], key=lambda d: -grades.get(d, 0))
    record = {
        "qid": item["qid"],
        "query": item["query"],
        "initial_list": docs,
        "final_list": final,
        "passages": item["passages"],
        "teacher_scores": boost_judged(dict(zip(docs, soft_scores)), grades, judged_boost),
        "grades": {d: g for d, g in grades.items() if g > 0},
    }
    return record, {"first_stage": list(docs), **orders, "label": final}
