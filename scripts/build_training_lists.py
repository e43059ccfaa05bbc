"""Build the head-training labels from every real offline training source, with teacher scores.

    .venv/bin/python scripts/build_training_lists.py --out runs/head/train.jsonl

Sources (never ``msmarco-dl19`` nor the SciFact TEST claims: those are evaluation sets):
* ``selqa`` and ``wikiqa``: each question's own candidate sentences (same section / page, so the
  negatives are hard), in the given order; with ``--qa_depth N``, BM25 top N over all the collection's
  sentences instead (other sections of the same article join the list), ``--qa_questions`` a sample;
* ``beir-scifact`` TRAIN claims (``qrels/train.tsv``): BM25 (bm25s) top ``--scifact_depth`` over the
  corpus, the first stage seen at inference (``--scifact_claims`` caps how many, after skipping the
  first ``--scifact_offset`` in id order);
* ``msmarco-train-triples``: positive + negative, filled up to ``--list_size`` with other triples'
  passages, shuffled (no first-stage order exists);
* ``synthetic``: the queries ``rerank generate-queries`` wrote for a corpus (``--synthetic
  QUERIES.jsonl``; its source passage is the one judged relevant, the BM25 candidates beside it are
  the list): domain adaptation without any qrels of that corpus.
``--chunk_size`` cuts every longer list into chunks of that many passages, each its own list (qid
``scifact-12#3`` = the fourth chunk; consecutive ranks, or interleaved ones with ``--chunk_layout``):
the prompts a long list is ranked in at inference, most of them without a relevant passage, which
the head's pointwise term learns to score low. ``--leaders N`` instead keeps, of every longer list,
the teacher's N best passages in first-stage order: the final prompt of a tournament, where the
candidates that reach it from deep in the first stage sit at its end.
Each list gets graded teacher scores, its judged grades (``grades``) and a complete label:
judged-relevant passages first (by grade), the rest in the teacher's order. The teacher
(``--teacher``) is all-MiniLM-L6-v2 cosine (``minilm``) or an ensemble of that cosine and the
passage's BM25 score for the query over its own collection (``ensemble``: the mean of the two
per-list z-scores, mapped back onto the list's cosine scale so the KL temperature keeps its
meaning). ``--judged_boost`` lifts judged-relevant passages above every other soft score, so the KL
term agrees with the rank term. The summary reports, per source, the nDCG@10 against the qrels of
the input order, BM25, MiniLM, the ensemble and the label.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

from tqdm import tqdm

from rerank.data.collection import load_collection, read_qrels, read_run
from rerank.data.script_support import msmarco_triple_lists, shared_data_dir
from rerank.evaluation import compute_metrics
from rerank.long_lists import CHUNK_LAYOUTS, chunk_members
from rerank.prompting.prompts import sanitize

DATA = shared_data_dir(__file__)


def given_lists(name: str, list_size: int) -> list[dict]:
    coll = load_collection(str(DATA / name))
    run = read_run(str(DATA / name / "run.given.trec"))
    out = []
    for qid in sorted(run):
        judged = coll.qrels.get(qid, {})
        if not any(g > 0 for g in judged.values()):
            continue
        docs = run[qid][:list_size]
        out.append(
            {
                "qid": f"{name}-{qid}",
                "query": coll.queries[qid],
                "initial_list": docs,
                "passages": {d: coll.corpus[d] for d in docs},
                "grades": {d: judged.get(d, 0) for d in docs},
            }
        )
    return out


def retrieved_lists(
    coll, prefix: str, qids: list[str], qrels: dict[str, dict[str, int]], depth: int, need_relevant: bool
) -> list[dict]:
    """BM25 (bm25s) top ``depth`` over the whole corpus of ``coll`` (a loaded collection) for each of
    ``qids``: the first stage inference sees. Passages the qrels do not judge count 0.
    ``need_relevant`` drops queries whose judged answer BM25 does not reach (their list would teach
    the head nothing about relevance)."""
    from rerank.data.bm25 import BM25Index

    index = BM25Index.build(coll.corpus, show_progress=False)
    hits = index.search([coll.queries[q] for q in qids], depth, show_progress=False)
    out = []
    for qid, ranked in zip(qids, hits):
        docs = [d for d, _ in ranked]
        judged = qrels.get(qid, {})
        if len(docs) < 2 or (need_relevant and not any(judged.get(d, 0) > 0 for d in docs)):
            continue
        out.append(
            {
                "qid": f"{prefix}-{qid}",
                "query": coll.queries[qid],
                "initial_list": docs,
                "passages": {d: coll.corpus[d] for d in docs},
                "grades": {d: judged.get(d, 0) for d in docs},
            }
        )
    return out


def scifact_train_lists(depth: int, claims: int = 0, offset: int = 0) -> list[dict]:
    """SciFact TRAIN claims (never a test claim) at BM25 top ``depth``: ``claims`` of them (0 = all)
    after the first ``offset`` in id order."""
    coll = load_collection(str(DATA / "beir-scifact"))
    train = read_qrels(DATA / "beir-scifact" / "qrels" / "train.tsv")
    qids = sorted(q for q in train if q in coll.queries and q not in coll.qrels)[offset:]
    return retrieved_lists(coll, "scifact", qids[:claims] if claims else qids, train, depth, False)


def qa_retrieved_lists(name: str, depth: int, questions: int, rng: random.Random) -> list[dict]:
    """SelQA / WikiQA questions at BM25 top ``depth`` over all of the collection's sentences.

    The retrieved sentences come from the question's own section or page and from others of the same
    article or topic, so a deep list holds the hard negatives a joined list would; ``questions`` (0 =
    all) is a seeded sample of the questions with a judged answer.
    """
    coll = load_collection(str(DATA / name))
    qids = sorted(q for q, judged in coll.qrels.items() if q in coll.queries and any(g > 0 for g in judged.values()))
    if questions and questions < len(qids):
        qids = sorted(rng.sample(qids, questions))
    return retrieved_lists(coll, name, qids, coll.qrels, depth, True)


def synthetic_lists(queries_file: str, list_size: int) -> list[dict]:
    """Lists of ``rerank generate-queries`` output: its candidates file (BM25 order) and qrels."""
    from rerank.labels import load_candidates

    stem = Path(queries_file)
    base = stem.with_suffix("")
    items, qrels = load_candidates(
        str(base.with_name(base.name + ".candidates.jsonl")),
        depth=list_size,
        qrels=str(base.with_name(base.name + ".qrels.txt")),
    )
    out = []
    for it in items:
        judged = qrels.get(it.qid, {})
        if len(it.docids) < 2 or not any(judged.get(d, 0) > 0 for d in it.docids):
            continue  # the source passage fell out of the list: nothing to learn
        out.append(
            {
                "qid": f"synthetic-{it.qid}",
                "query": it.query,
                "initial_list": list(it.docids),
                "passages": dict(zip(it.docids, it.texts)),
                "grades": {d: judged.get(d, 0) for d in it.docids},
            }
        )
    return out


def chunked(item: dict, size: int, layout: str = "consecutive") -> list[dict]:
    """``item`` cut into the prompts of ``size`` passages inference reads it in (itself when it is not
    longer): consecutive ranks, or interleaved ones (``rerank.long_lists.chunk_members``).

    >>> [c["initial_list"] for c in chunked({"qid": "q", "query": "x", "initial_list": list("abcd"),
    ...     "passages": dict.fromkeys("abcd", ""), "grades": {"c": 1}}, 2, "interleaved")]
    [['a', 'c'], ['b', 'd']]
    """
    docs = item["initial_list"]
    if len(docs) <= size:
        return [item]
    out = []
    for c, members in enumerate(chunk_members(len(docs), size, layout)):
        part = [docs[i] for i in members]
        if len(part) < 2:
            break  # a lone passage has no list to rank
        out.append(
            {
                **item,
                "qid": f"{item['qid']}#{c}",
                "initial_list": part,
                "passages": {d: item["passages"][d] for d in part},
                "grades": {d: g for d, g in item["grades"].items() if d in part},
            }
        )
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
    part = [docs[i] for i in sorted(best)]
    return {
        **item,
        "initial_list": part,
        "passages": {d: item["passages"][d] for d in part},
        "grades": {d: g for d, g in item["grades"].items() if d in part},
    }


def ndcg10(qrels: dict[str, dict[str, int]], run: dict[str, list[tuple[str, float]]]) -> float:
    """Mean nDCG@10 of ``run`` over its lists (``rerank.evaluation``: ir-measures, trec_eval's linear gains)."""
    return compute_metrics(qrels, run, graded=False)["ndcg@10"]


def order_by(docs: list[str], scores: list[float]) -> list[str]:
    """``docs`` by descending score, ties in input order."""
    by_doc = dict(zip(docs, scores))
    return sorted(docs, key=lambda d: (-by_doc[d], docs.index(d)))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation of one list's scores."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def zscores(values: list[float]) -> list[float] | None:
    """Per-list standard scores; None when the list has no spread."""
    mean, std = mean_std(values)
    if std <= 1e-6:
        return None
    return [(v - mean) / std for v in values]


def ensemble_scores(cosines: list[float], bm25: list[float], bm25_weight: float) -> list[float]:
    """(1-w) z(cosine) + w z(BM25), mapped back onto the cosines' mean and spread.

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
    """Lift every judged-relevant passage above the best unjudged one: top + boost * grade.

    >>> boost_judged({"a": 0.1, "b": 0.5}, {"a": 1}, 0.1)
    {'a': 0.6, 'b': 0.5}
    """
    if boost <= 0 or not any(g > 0 for g in grades.values()):
        return dict(scores)
    top = max(scores.values())
    return {d: (round(top + boost * grades[d], 6) if grades.get(d, 0) > 0 else s) for d, s in scores.items()}


def source_of(item: dict) -> str:
    """The source a list came from: its qid prefix (``selqa-12`` -> ``selqa``)."""
    return item["qid"].split("-", 1)[0]


class ListBM25:
    """BM25 scores of a list's passages for its query, each source scored over its own collection.

    Sources with a collection folder (SelQA, WikiQA, SciFact) use its corpus; the others (MS MARCO
    triples, synthetic lists) use ``pools[source]``, the passages of all their lists.
    """

    FOLDERS = {"selqa": "selqa", "wikiqa": "wikiqa", "scifact": "beir-scifact"}

    def __init__(self, pools: dict[str, dict[str, str]]):
        self.pools, self.indexes = pools, {}

    def __call__(self, item: dict) -> list[float]:
        from rerank.data.bm25 import BM25Index

        source = source_of(item)
        if source not in self.indexes:
            folder = self.FOLDERS.get(source)
            corpus = load_collection(str(DATA / folder)).corpus if folder else self.pools[source]
            self.indexes[source] = BM25Index.build(corpus, show_progress=False)
        return self.indexes[source].score(item["query"], item["initial_list"])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/head/train.jsonl", help="Label JSONL to write.")
    ap.add_argument("--list_size", type=int, default=20, help="Candidates per SelQA/WikiQA/MS MARCO list (cap).")
    ap.add_argument("--scifact_depth", type=int, default=10, help="BM25 candidates per SciFact train claim.")
    ap.add_argument("--scifact_claims", type=int, default=0, help="Only the first N SciFact train claims (0 = all).")
    ap.add_argument(
        "--scifact_offset", type=int, default=0, help="Skip the first N SciFact train claims (id order) first."
    )
    ap.add_argument(
        "--qa_depth",
        type=int,
        default=0,
        help="SelQA/WikiQA: BM25 top-N over the collection's sentences instead of each question's given "
        "candidates (0 = given candidates).",
    )
    ap.add_argument(
        "--qa_questions",
        type=int,
        default=0,
        help="With --qa_depth: a seeded sample of N questions per source (0 = all).",
    )
    ap.add_argument("--chunk_size", type=int, default=0, help="Cut longer lists into lists of this many (0 = off).")
    ap.add_argument(
        "--chunk_layout",
        choices=CHUNK_LAYOUTS,
        default="consecutive",
        help="How --chunk_size cuts: consecutive ranks (1-20, 21-40, ...) or interleaved ones (1, 6, 11, ...; "
        "RerankerConfig.chunk_layout), the prompts the model will read.",
    )
    ap.add_argument(
        "--leaders",
        type=int,
        default=0,
        help="Keep the teacher's N best passages of every longer list, in first-stage order (a tournament's "
        "final prompt; 0 = off; not with --chunk_size).",
    )
    ap.add_argument(
        "--teacher",
        choices=("minilm", "ensemble"),
        default="minilm",
        help="Soft scores and the order of unjudged passages: MiniLM cosine, or its ensemble with BM25.",
    )
    ap.add_argument("--bm25_weight", type=float, default=0.5, help="Weight of BM25 in the ensemble teacher (0..1).")
    ap.add_argument(
        "--judged_boost",
        type=float,
        default=0.0,
        help="Soft score of a judged-relevant passage = best score in its list + boost * grade (0 = off).",
    )
    ap.add_argument("--sources", default="selqa,wikiqa,scifact,msmarco", help="Comma-separated subset.")
    ap.add_argument(
        "--synthetic",
        default=None,
        help="queries.jsonl of `rerank generate-queries` for the 'synthetic' source (its .candidates.jsonl "
        "and .qrels.txt are read beside it).",
    )
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args(argv)
    if args.list_size < 2:
        ap.error("--list_size must be at least 2")
    if not 0.0 <= args.bm25_weight <= 1.0:
        ap.error(f"--bm25_weight must be in [0, 1], got {args.bm25_weight}")
    if args.chunk_size < 0 or args.chunk_size == 1:
        ap.error(f"--chunk_size must be 0 (off) or at least 2, got {args.chunk_size}")
    if args.leaders < 0 or args.leaders == 1 or (args.leaders and args.chunk_size):
        ap.error(f"--leaders must be 0 (off) or at least 2, and not with --chunk_size; got {args.leaders}")
    if args.scifact_offset < 0:
        ap.error(f"--scifact_offset must be >= 0, got {args.scifact_offset}")
    if args.chunk_layout != "consecutive" and not args.chunk_size:
        ap.error(f"--chunk_layout {args.chunk_layout} lays out chunks: it needs --chunk_size")
    if args.qa_depth < 0 or args.qa_depth == 1 or args.qa_questions < 0:
        ap.error(
            "--qa_depth must be 0 (off) or at least 2 and --qa_questions >= 0, "
            f"got {args.qa_depth} and {args.qa_questions}"
        )
    if args.judged_boost < 0:
        ap.error(f"--judged_boost must be >= 0, got {args.judged_boost}")
    from rerank.labels.teachers import EmbeddingTeacher

    rng = random.Random(args.seed)
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    lists: list[dict] = []
    for src in sources:
        if src in ("selqa", "wikiqa") and args.qa_depth:
            lists += qa_retrieved_lists(src, args.qa_depth, args.qa_questions, rng)
        elif src in ("selqa", "wikiqa"):
            lists += given_lists(src, args.list_size)
        elif src == "scifact":
            lists += scifact_train_lists(args.scifact_depth, args.scifact_claims, args.scifact_offset)
        elif src == "msmarco":
            lists += [
                {
                    "qid": t["qid"],
                    "query": t["query"],
                    "initial_list": t["docids"],
                    "passages": t["passages"],
                    "grades": {t["positive"]: 1},
                }
                for t in msmarco_triple_lists(DATA / "msmarco-train-triples" / "triples.jsonl", args.list_size, rng)
            ]
        elif src == "synthetic":
            if not args.synthetic:
                ap.error("the 'synthetic' source needs --synthetic QUERIES.jsonl")
            lists += synthetic_lists(args.synthetic, args.list_size)
        else:
            ap.error(f"unknown source {src!r}")
    if args.chunk_size:
        lists = [part for item in lists for part in chunked(item, args.chunk_size, args.chunk_layout)]
    teacher = EmbeddingTeacher()
    pools: dict[str, dict[str, str]] = {}
    for item in lists:
        pools.setdefault(source_of(item), {}).update(item["passages"])
    list_bm25 = ListBM25(pools)
    keys = ("first_stage", "bm25", "minilm", "ensemble", "label")
    qrels: dict[str, dict[str, int]] = {}
    runs: dict[str, dict[str, dict[str, list[tuple[str, float]]]]] = {}  # source -> order -> run
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    with open(tmp, "w", encoding="utf-8") as fh:
        for item in tqdm(lists, desc="teacher scores"):
            docs = item["initial_list"]
            src = source_of(item)
            # The teacher reads what the model reads: sanitised text (no budget cut: it has its own).
            cos = teacher.cosine_scores(sanitize(item["query"]), [sanitize(item["passages"][d]) for d in docs])
            bm25 = list_bm25(item)
            ens = ensemble_scores(cos, bm25, args.bm25_weight)
            if args.leaders and len(docs) > args.leaders:
                # The final prompt's passages, scored as a list of their own (the ensemble's z-scores are per list).
                kept = leaders_of(item, ens if args.teacher == "ensemble" else cos, args.leaders)
                cos = [cos[docs.index(d)] for d in kept["initial_list"]]
                item, docs = kept, kept["initial_list"]
                bm25 = list_bm25(item)
                ens = ensemble_scores(cos, bm25, args.bm25_weight)
            by = {name: order_by(docs, vals) for name, vals in (("bm25", bm25), ("minilm", cos), ("ensemble", ens))}
            soft = dict(zip(docs, ens if args.teacher == "ensemble" else cos))
            grades = item["grades"]
            final = sorted(by["ensemble" if args.teacher == "ensemble" else "minilm"], key=lambda d: -grades.get(d, 0))
            orders = {"first_stage": docs, **by, "label": final}
            qrels[item["qid"]] = grades
            for key in keys:
                runs.setdefault(src, {}).setdefault(key, {})[item["qid"]] = [
                    (d, float(len(orders[key]) - r)) for r, d in enumerate(orders[key])
                ]
            fh.write(
                json.dumps(
                    {
                        "qid": item["qid"],
                        "query": item["query"],
                        "initial_list": docs,
                        "final_list": final,
                        "passages": item["passages"],
                        "teacher_scores": boost_judged(soft, grades, args.judged_boost),
                        "grades": {d: g for d, g in grades.items() if g > 0},
                    }
                )
                + "\n"
            )
    tmp.replace(out)
    summary = {
        "labels": str(out),
        "lists": len(lists),
        "by_source": {s: sum(1 for x in lists if x["qid"].startswith(s)) for s in sources},
        "teacher": args.teacher,
        "bm25_weight": args.bm25_weight,
        "judged_boost": args.judged_boost,
        "scifact_depth": args.scifact_depth,
        "scifact_claims": args.scifact_claims,
        "scifact_offset": args.scifact_offset,
        "leaders": args.leaders,
        "chunk_size": args.chunk_size,
        "chunk_layout": args.chunk_layout,
        "qa_depth": args.qa_depth,
        "qa_questions": args.qa_questions,
        "label_ndcg10_vs_qrels": {
            src: {k: round(ndcg10(qrels, run), 4) for k, run in by_key.items()} for src, by_key in runs.items()
        },
    }
    print(json.dumps(summary, indent=2))
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
