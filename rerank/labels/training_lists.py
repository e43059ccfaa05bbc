"""Training lists for the passage head from the offline sources, before any teacher scores them.

A list is a dict ``{"qid", "query", "initial_list", "passages": {docid: text}, "grades": {docid:
grade}}``; its qid starts with its source (``scifact-12``, ``selqa-3``, ``msmarco-7``,
``synthetic-q4``; :func:`source_of`). The sources (``scripts/build_training_lists.py``):

* :func:`given_lists`: SelQA / WikiQA questions with their own candidate sentences, in given order;
* :func:`qa_retrieved_lists`: the same questions at BM25 top N over all of the collection's sentences;
* :func:`scifact_train_lists`: SciFact TRAIN claims at BM25 top N over the corpus (never a test claim);
* :func:`triple_lists`: MS MARCO training triples filled up with other triples' passages;
* :func:`synthetic_lists`: the queries ``rerank generate-queries`` wrote for a corpus.

Two reshapes turn a long list into the prompts inference reads: :func:`chunked` (the chunks of a
tournament) and :func:`leaders_of` (its final prompt).
"""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path

from rerank.data.collection import iter_jsonl, load_collection, read_qrels, read_run
from rerank.long_lists import chunk_members

# Sources with a collection folder of their own under the shared data folder.
SOURCE_FOLDERS = {"selqa": "selqa", "wikiqa": "wikiqa", "scifact": "beir-scifact"}


def source_of(item: dict) -> str:
    """The source a list came from: its qid prefix (``selqa-12`` -> ``selqa``)."""
    return item["qid"].split("-", 1)[0]


@cache
def source_collection(folder: str):
    """A source's collection folder, loaded once per process: its lists, its retrieval index and the
    teacher's BM25 scores all read the same corpus."""
    return load_collection(folder)


@cache
def corpus_index(folder: str):
    """The BM25 (bm25s) index over a collection folder's corpus, built once per process: the lists a
    source retrieves and the teacher's BM25 scores of them read the same index."""
    from rerank.data.bm25 import BM25Index

    return BM25Index.build(source_collection(folder).corpus, show_progress=False)


def _as_list(prefix: str, qid: str, query: str, docs: list[str], corpus, judged: dict[str, int]) -> dict:
    return {
        "qid": f"{prefix}-{qid}",
        "query": query,
        "initial_list": docs,
        "passages": {d: corpus[d] for d in docs},
        "grades": {d: judged.get(d, 0) for d in docs},
    }


def given_lists(folder: str | Path, list_size: int) -> list[dict]:
    """Every judged question of a SelQA / WikiQA folder with its own candidates (``run.given.trec``:
    the same section or page, so the negatives are hard), capped at ``list_size``."""
    folder = Path(folder)
    coll = source_collection(str(folder))
    run = read_run(str(folder / "run.given.trec"))
    out = []
    for qid in sorted(run):
        judged = coll.qrels.get(qid, {})
        if any(g > 0 for g in judged.values()):
            out.append(_as_list(folder.name, qid, coll.queries[qid], run[qid][:list_size], coll.corpus, judged))
    return out


def retrieved_lists(
    folder: str | Path,
    prefix: str,
    qids: list[str],
    qrels: dict[str, dict[str, int]],
    depth: int,
    need_relevant: bool,
) -> list[dict]:
    """BM25 top ``depth`` over the corpus of the collection in ``folder`` for each of ``qids``: the
    first stage inference sees. Passages ``qrels`` does not judge count 0. ``need_relevant`` drops
    queries whose judged answer BM25 does not reach (their list would teach nothing about relevance)."""
    coll = source_collection(str(folder))
    hits = corpus_index(str(folder)).search([coll.queries[q] for q in qids], depth, show_progress=False)
    out = []
    for qid, ranked in zip(qids, hits):
        docs = [d for d, _ in ranked]
        judged = qrels.get(qid, {})
        if len(docs) < 2 or (need_relevant and not any(judged.get(d, 0) > 0 for d in docs)):
            continue
        out.append(_as_list(prefix, qid, coll.queries[qid], docs, coll.corpus, judged))
    return out


def scifact_train_lists(folder: str | Path, depth: int, claims: int = 0, offset: int = 0) -> list[dict]:
    """SciFact TRAIN claims (``qrels/train.tsv``; never a test claim) at BM25 top ``depth``:
    ``claims`` of them (0 = all) after the first ``offset`` in id order."""
    coll = source_collection(str(folder))
    train = read_qrels(Path(folder) / "qrels" / "train.tsv")
    qids = sorted(q for q in train if q in coll.queries and q not in coll.qrels)[offset:]
    return retrieved_lists(folder, "scifact", qids[:claims] if claims else qids, train, depth, False)


def qa_retrieved_lists(folder: str | Path, depth: int, questions: int, rng: random.Random) -> list[dict]:
    """SelQA / WikiQA questions at BM25 top ``depth`` over all of the collection's sentences.

    The retrieved sentences come from the question's own section or page and from others of the same
    article or topic, so a deep list holds the hard negatives a joined list would; ``questions`` (0 =
    all) is a seeded sample of the questions with a judged answer.
    """
    coll = source_collection(str(folder))
    qids = sorted(q for q, judged in coll.qrels.items() if q in coll.queries and any(g > 0 for g in judged.values()))
    if questions and questions < len(qids):
        qids = sorted(rng.sample(qids, questions))
    return retrieved_lists(folder, Path(folder).name, qids, coll.qrels, depth, True)


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


def triple_lists(triples: str | Path, list_size: int, rng: random.Random) -> list[dict]:
    """One list per MS MARCO training triple, its positive judged 1, shuffled (no first-stage order)."""
    return [
        {
            "qid": t["qid"],
            "query": t["query"],
            "initial_list": t["docids"],
            "passages": t["passages"],
            "grades": {t["positive"]: 1},
        }
        for t in msmarco_triple_lists(triples, list_size, rng)
    ]


def synthetic_lists(queries_file: str | Path, list_size: int) -> list[dict]:
    """Lists of ``rerank generate-queries`` output: its candidates file (BM25 order) and qrels, read
    beside ``queries_file``; a query whose source passage fell out of its list is dropped."""
    from rerank.labels import load_candidates

    base = Path(queries_file).with_suffix("")
    items, qrels = load_candidates(
        str(base.with_name(base.name + ".candidates.jsonl")),
        depth=list_size,
        qrels=str(base.with_name(base.name + ".qrels.txt")),
    )
    out = []
    for it in items:
        judged = qrels.get(it.qid, {})
        if len(it.docids) >= 2 and any(judged.get(d, 0) > 0 for d in it.docids):
            out.append(_as_list("synthetic", it.qid, it.query, list(it.docids), dict(zip(it.docids, it.texts)), judged))
    return out


def _subset(item: dict, docs: list[str], qid: str | None = None) -> dict:
    return {
        **item,
        "qid": qid or item["qid"],
        "initial_list": docs,
        "passages": {d: item["passages"][d] for d in docs},
        "grades": {d: g for d, g in item["grades"].items() if d in docs},
    }


def chunked(item: dict, size: int, layout: str = "consecutive") -> list[dict]:
    """``item`` cut into the prompts of ``size`` passages inference reads it in (itself when it is not
    longer): consecutive ranks, or interleaved ones (:func:`rerank.long_lists.chunk_members`); chunk
    ``c`` is qid ``<qid>#c``.

    >>> [c["initial_list"] for c in chunked({"qid": "q", "query": "x", "initial_list": list("abcd"),
    ...     "passages": dict.fromkeys("abcd", ""), "grades": {"c": 1}}, 2, "interleaved")]
    [['a', 'c'], ['b', 'd']]
    """
    docs = item["initial_list"]
    if len(docs) <= size:
        return [item]
    out = []
    for c, members in enumerate(chunk_members(len(docs), size, layout)):
        if len(members) < 2:
            break  # a lone passage has no list to rank
        out.append(_subset(item, [docs[i] for i in members], f"{item['qid']}#{c}"))
    return out


def leaders_of(item: dict, scores: list[float], size: int) -> dict:
    """``item`` reduced to the ``size`` passages of highest ``scores`` (one per ``initial_list``
    passage), in first-stage order: what a tournament's final prompt reads (itself when not longer).

    >>> leaders_of({"qid": "q", "initial_list": list("abcd"), "passages": dict.fromkeys("abcd", ""),
    ...     "grades": {"a": 1, "d": 1}}, [0.1, 0.9, 0.2, 0.8], 2)["initial_list"]
    ['b', 'd']
    """
    docs = item["initial_list"]
    if len(docs) <= size:
        return item
    best = sorted(range(len(docs)), key=lambda i: (-scores[i], i))[:size]
    return _subset(item, [docs[i] for i in sorted(best)])
