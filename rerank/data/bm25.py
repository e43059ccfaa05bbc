"""A first stage for any corpus: BM25 with ``bm25s`` (+ PyStemmer), saved and reloaded.

It builds candidate lists where a collection ships no run (SciFact train claims, synthetic queries,
a user's own corpus). The defaults are the settings of the shipped SciFact run (Snowball English
stemming, English stop words, k1 = 0.9, b = 0.4, title + text), so ``rerank retrieve`` on
``beir-scifact`` reproduces ``run.bm25.trec``::

    rerank retrieve --collection ../shared/data/beir-scifact --depth 100 --output runs/scifact.bm25.trec

Example:
    >>> index = BM25Index.build({"d1": "bees shiver to keep warm", "d2": "paris is in france"})  # doctest: +SKIP
    >>> index.search(["how do bees keep warm"], depth=1)                                         # doctest: +SKIP
    [[('d1', 1.2...)]]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

_INDEX_META = "lazyrank_index.json"


def _require_bm25s():
    try:
        import bm25s
        import Stemmer
    except ImportError as exc:  # pragma: no cover - both are core dependencies
        raise ImportError("BM25 retrieval needs bm25s and PyStemmer: pip install bm25s PyStemmer") from exc
    return bm25s, Stemmer


@dataclass
class BM25Config:
    """BM25 settings (the shipped SciFact run's by default)."""

    k1: float = field(default=0.9, metadata={"help": "BM25 term-frequency saturation."})
    b: float = field(default=0.4, metadata={"help": "BM25 length normalisation."})
    method: str = field(
        default="lucene", metadata={"help": "bm25s scoring variant: lucene | robertson | atire | bm25l | bm25+."}
    )
    stemmer: str | None = field(
        default="english", metadata={"help": "PyStemmer (Snowball) language; None = no stemming."}
    )
    stopwords: str | None = field(default="en", metadata={"help": "bm25s stop-word list; None = keep every token."})

    def __post_init__(self):
        if self.k1 < 0 or not 0.0 <= self.b <= 1.0:
            raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")
        if self.method not in ("lucene", "robertson", "atire", "bm25l", "bm25+"):
            raise ValueError(f"method must be one of lucene, robertson, atire, bm25l, bm25+; got {self.method!r}")


class BM25Index:
    """A bm25s index over a ``{docid: text}`` corpus, with its docids, saved to / loaded from a folder."""

    def __init__(self, retriever, docids: list[str], config: BM25Config):
        self.retriever, self.docids, self.config = retriever, docids, config

    def _stemmer(self):
        _, Stemmer = _require_bm25s()
        return Stemmer.Stemmer(self.config.stemmer) if self.config.stemmer else None

    @classmethod
    def build(cls, corpus: dict[str, str], config: BM25Config | None = None, show_progress: bool = True) -> BM25Index:
        """Tokenise and index every passage of ``corpus``."""
        bm25s, _ = _require_bm25s()
        config = config or BM25Config()
        if not corpus:
            raise ValueError("cannot index an empty corpus")
        docids = list(corpus)
        index = cls(None, docids, config)
        tokens = bm25s.tokenize(
            [corpus[d] for d in docids],
            stopwords=config.stopwords,
            stemmer=index._stemmer(),
            show_progress=show_progress,
        )
        index.retriever = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
        index.retriever.index(tokens, show_progress=show_progress)
        return index

    def save(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        self.retriever.save(str(folder))
        meta = {"docids": self.docids, "config": self.config.__dict__}
        (folder / _INDEX_META).write_text(json.dumps(meta), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> BM25Index:
        bm25s, _ = _require_bm25s()
        folder = Path(folder)
        meta_path = folder / _INDEX_META
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder} is not a LazyRank BM25 index (no {_INDEX_META})")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        return cls(bm25s.BM25.load(str(folder)), list(meta["docids"]), BM25Config(**meta["config"]))

    def _tokenize_queries(self, queries: Sequence[str], return_ids: bool):
        """Queries tokenised as the corpus was (same stop words and stemmer)."""
        bm25s, _ = _require_bm25s()
        return bm25s.tokenize(
            list(queries),
            stopwords=self.config.stopwords,
            stemmer=self._stemmer(),
            return_ids=return_ids,
            show_progress=False,
        )

    @cached_property
    def _rows(self) -> dict[str, int]:
        """docid -> row in the index, built on first use (only ``score`` needs it)."""
        return {d: i for i, d in enumerate(self.docids)}

    def search(
        self, queries: Sequence[str], depth: int = 100, show_progress: bool = True
    ) -> list[list[tuple[str, float]]]:
        """Top ``depth`` ``(docid, score)`` per query, best first (fewer when the corpus is smaller)."""
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        depth = min(depth, len(self.docids))
        tokens = self._tokenize_queries(queries, return_ids=True)
        results, scores = self.retriever.retrieve(tokens, k=depth, show_progress=show_progress)
        out = []
        for row_ids, row_scores in zip(results, scores):
            # A query with no indexed term scores 0 everywhere: such hits carry no evidence, drop them.
            out.append([(self.docids[int(i)], float(s)) for i, s in zip(row_ids, row_scores) if s > 0])
        return out

    def score(self, query: str, docids: Sequence[str]) -> list[float]:
        """BM25 score of ``query`` for each of ``docids`` (indexed passages), in their order.

        Used to score a given candidate list (e.g. an ensemble teacher) without retrieving.
        """
        missing = [d for d in docids if d not in self._rows]
        if missing:
            raise KeyError(f"{len(missing)} docid(s) are not in this BM25 index, e.g. {missing[0]!r}")
        vocab = self.retriever.vocab_dict
        known = [t for t in self._tokenize_queries([query], return_ids=False)[0] if t in vocab]
        if not known:
            return [0.0] * len(docids)
        all_scores = self.retriever.get_scores(known)
        return [float(all_scores[self._rows[d]]) for d in docids]


def retrieve_collection(
    collection_dir: str,
    depth: int = 100,
    queries: dict[str, str] | None = None,
    index_dir: str | None = None,
    config: BM25Config | None = None,
) -> dict[str, list[tuple[str, float]]]:
    """BM25 run ``{qid: [(docid, score), ...]}`` over a collection folder (shared or BEIR layout).

    ``queries`` defaults to the collection's own; ``index_dir`` caches the index (built once, then
    reloaded).
    """
    from rerank.data.collection import load_collection

    coll = load_collection(collection_dir)
    if not coll.corpus:
        where = Path(coll.path) / "corpus.jsonl" if coll.path else collection_dir
        raise ValueError(f"{where} holds no passage: nothing to index")
    if index_dir and (Path(index_dir) / _INDEX_META).is_file():
        index = BM25Index.load(index_dir)
    else:
        index = BM25Index.build(coll.corpus, config)
        if index_dir:
            index.save(index_dir)
    queries = coll.queries if queries is None else queries
    if not queries:
        raise ValueError(f"{collection_dir}: no queries to retrieve for")
    qids = list(queries)
    hits = index.search([queries[q] for q in qids], depth)
    return dict(zip(qids, hits))


def first_stage_run(collection, depth: int = 100, cache: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Each query's first-stage candidates, best first: the folder's own run (``run.bm25.trec``, else
    ``run.given.trec``), else BM25 over its corpus, saved to ``cache`` (a TREC run, at least top-100
    deep whatever ``depth`` asked for, so a shallow caller cannot cut a later deep one's candidates) and
    read back from there next time, so every script ranks the same candidates.

    ``collection`` is a :class:`rerank.data.collection.Collection` loaded from a folder.
    """
    from rerank.data.collection import default_run_path, read_run, write_run

    given = default_run_path(collection)
    if given is not None:
        return read_run(given, depth)
    if cache is not None and Path(cache).is_file():
        return read_run(cache, depth)
    ranked = retrieve_collection(collection.path, depth=max(depth, 100))
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        write_run(cache, ranked, tag="bm25")
    return {q: [d for d, _ in rows[:depth]] for q, rows in ranked.items()}


def write_rank_llm_requests(
    path: str, collection_dir: str, run: dict[str, list[tuple[str, float]]], queries: dict[str, str] | None = None
) -> None:
    """Write a BM25 run as rank_llm requests (query, candidates with score and ``doc.contents``)."""
    from rerank.data.collection import load_collection
    from rerank.data.rank_llm_files import Candidate, RankLLMRequest, write_rank_llm_results

    coll = load_collection(collection_dir)
    queries = coll.queries if queries is None else queries
    requests = [
        RankLLMRequest(
            qid=qid,
            query=queries[qid],
            candidates=[Candidate(docid=d, score=float(sc), doc={"contents": coll.corpus[d]}) for d, sc in hits],
        )
        for qid, hits in run.items()
    ]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_rank_llm_results(path, requests)


def main(argv: Sequence[str] | None = None) -> int:
    """``rerank retrieve --collection DIR [--queries FILE] [--depth 100] --output run.trec``."""
    from rerank.data.collection import _read_jsonl, write_run

    ap = argparse.ArgumentParser(prog="rerank retrieve", description="BM25 first stage (bm25s) for a collection.")
    ap.add_argument("--collection", required=True, help="Folder with corpus.jsonl (shared or BEIR layout).")
    ap.add_argument("--queries", default=None, help="A queries.jsonl to use instead of the collection's own.")
    ap.add_argument("--depth", type=int, default=100, help="Candidates per query.")
    ap.add_argument("--output", required=True, help="TREC run file to write.")
    ap.add_argument("--index_dir", default=None, help="Save the index here (or load it if present).")
    ap.add_argument(
        "--rank_llm_output",
        default=None,
        help="Also write the candidates as rank_llm requests (JSONL or a JSON list) for `rerank rank-llm`.",
    )
    ap.add_argument("--k1", type=float, default=0.9)
    ap.add_argument("--b", type=float, default=0.4)
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.depth < 1:
        ap.error("--depth must be >= 1")
    queries = None
    if args.queries:
        queries = _read_jsonl(Path(args.queries))
    run = retrieve_collection(args.collection, args.depth, queries, args.index_dir, BM25Config(k1=args.k1, b=args.b))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_run(args.output, run, tag="bm25s")
    print(f"wrote {args.output}: {len(run)} queries, {sum(len(v) for v in run.values())} hits")
    if args.rank_llm_output:
        write_rank_llm_requests(args.rank_llm_output, args.collection, run, queries)
        print(f"wrote {args.rank_llm_output}: rank_llm requests")
    return 0
