"""Build the head-training labels from every real offline training source, with teacher scores.

    .venv/bin/python eval/build_training_lists.py --out runs/head/train.jsonl

Sources (never ``msmarco-dl19`` nor the SciFact TEST claims: those are evaluation sets):
* ``selqa`` and ``wikiqa``: each question's own candidate sentences (same section / page, so the
  negatives are hard), in the given order;
* ``beir-scifact`` TRAIN claims (``qrels/train.tsv``): BM25 (bm25s) top ``--scifact_depth`` over the
  corpus, the first stage seen at inference;
* ``msmarco-train-triples``: positive + negative, filled up to ``--list_size`` with other triples'
  passages, shuffled (no first-stage order exists);
* ``synthetic``: the queries ``rerank generate-queries`` wrote for a corpus (``--synthetic
  QUERIES.jsonl``; its source passage is the one judged relevant, the BM25 candidates beside it are
  the list): domain adaptation without any qrels of that corpus.
Each list gets graded teacher scores (all-MiniLM-L6-v2 cosine, offline) and a complete label:
judged-relevant passages first (by grade), the rest in the teacher's order. ``--report`` prints the
label quality of teacher-only vs teacher + judgements vs BM25 order against the qrels (nDCG@10).
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

from tqdm import tqdm

from rerank.data import iter_jsonl, load_collection, read_qrels, read_run
from rerank.prompts import sanitize
from rerank.flags import FlagParser

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LAZYRANK_SHARED_DATA", REPO.parent / "shared" / "data"))


def given_lists(name: str, list_size: int) -> list[dict]:
    coll = load_collection(str(DATA / name))
    run = read_run(str(DATA / name / "run.given.trec"))
    out = []
    for qid in sorted(run):
        judged = coll.qrels.get(qid, {})
        if not any(g > 0 for g in judged.values()):
            continue
        docs = run[qid][:list_size]
        out.append({"qid": f"{name}-{qid}", "query": coll.queries[qid], "initial_list": docs,
                    "passages": {d: coll.corpus[d] for d in docs}, "grades": {d: judged.get(d, 0) for d in docs}})
    return out


def scifact_train_lists(depth: int) -> list[dict]:
    from rerank.retrieval import BM25Index

    coll = load_collection(str(DATA / "beir-scifact"))
    train = read_qrels(DATA / "beir-scifact" / "qrels" / "train.tsv")
    test = set(coll.qrels)
    qids = sorted(q for q in train if q in coll.queries and q not in test)
    index = BM25Index.build(coll.corpus, show_progress=False)
    hits = index.search([coll.queries[q] for q in qids], depth, show_progress=False)
    out = []
    for qid, ranked in zip(qids, hits):
        docs = [d for d, _ in ranked]
        if len(docs) < 2:
            continue
        out.append({"qid": f"scifact-{qid}", "query": coll.queries[qid], "initial_list": docs,
                    "passages": {d: coll.corpus[d] for d in docs}, "grades": {d: train[qid].get(d, 0) for d in docs}})
    return out


def synthetic_lists(queries_file: str, list_size: int) -> list[dict]:
    """Lists of ``rerank generate-queries`` output: its candidates file (BM25 order) and qrels."""
    from rerank.labels import load_candidates

    stem = Path(queries_file)
    base = stem.with_suffix("")
    items, qrels = load_candidates(str(base.with_name(base.name + ".candidates.jsonl")), depth=list_size,
                                   qrels=str(base.with_name(base.name + ".qrels.txt")))
    out = []
    for it in items:
        judged = qrels.get(it.qid, {})
        if len(it.docids) < 2 or not any(judged.get(d, 0) > 0 for d in it.docids):
            continue  # the source passage fell out of the list: nothing to learn
        out.append({"qid": f"synthetic-{it.qid}", "query": it.query, "initial_list": list(it.docids),
                    "passages": dict(zip(it.docids, it.texts)), "grades": {d: judged.get(d, 0) for d in it.docids}})
    return out


def msmarco_lists(list_size: int, rng: random.Random) -> list[dict]:
    rows = [obj for _, obj in iter_jsonl(DATA / "msmarco-train-triples" / "triples.jsonl")]
    texts = {}
    for i, row in enumerate(rows):
        texts[f"m{i}-pos"], texts[f"m{i}-neg"] = row["positive"], row["negative"]
    pool = sorted(texts)
    out = []
    for i, row in enumerate(rows):
        own = [f"m{i}-pos", f"m{i}-neg"]
        docs = own + [d for d in rng.sample(pool, list_size + 2) if d not in own][: list_size - 2]
        rng.shuffle(docs)
        out.append({"qid": f"msmarco-{i}", "query": row["query"], "initial_list": docs,
                    "passages": {d: texts[d] for d in docs}, "grades": {f"m{i}-pos": 1}})
    return out


def ndcg10(order: list[str], grades: dict[str, int]) -> float:
    gains = [grades.get(d, 0) for d in order[:10]]
    ideal = sorted(grades.values(), reverse=True)[:10]
    dcg = sum((2 ** g - 1) / math.log2(i + 2) for i, g in enumerate(gains))
    idcg = sum((2 ** g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def main(argv: list[str] | None = None) -> dict:
    ap = FlagParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/head/train.jsonl", help="Label JSONL to write.")
    ap.add_argument("--list-size", type=int, default=20, help="Candidates per SelQA/WikiQA/MS MARCO list (cap).")
    ap.add_argument("--scifact-depth", type=int, default=10, help="BM25 candidates per SciFact train claim.")
    ap.add_argument("--sources", default="selqa,wikiqa,scifact,msmarco", help="Comma-separated subset.")
    ap.add_argument("--synthetic", default=None,
                    help="queries.jsonl of `rerank generate-queries` for the 'synthetic' source (its .candidates.jsonl "
                         "and .qrels.txt are read beside it).")
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args(argv)
    if args.list_size < 2:
        ap.error("--list_size must be at least 2")
    from rerank.teachers import EmbeddingTeacher

    rng = random.Random(args.seed)
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    lists: list[dict] = []
    for src in sources:
        if src in ("selqa", "wikiqa"):
            lists += given_lists(src, args.list_size)
        elif src == "scifact":
            lists += scifact_train_lists(args.scifact_depth)
        elif src == "msmarco":
            lists += msmarco_lists(args.list_size, rng)
        elif src == "synthetic":
            if not args.synthetic:
                ap.error("the 'synthetic' source needs --synthetic QUERIES.jsonl")
            lists += synthetic_lists(args.synthetic, args.list_size)
        else:
            ap.error(f"unknown source {src!r}")
    teacher = EmbeddingTeacher()
    quality = {"first_stage": [], "teacher": [], "label": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    with open(tmp, "w", encoding="utf-8") as fh:
        for item in tqdm(lists, desc="teacher scores"):
            docs = item["initial_list"]
            # The teacher reads what the model reads: sanitised text (no budget cut: it has its own).
            vecs = teacher._embed([sanitize(item["passages"][d]) for d in docs])
            qvec = teacher._embed([sanitize(item["query"])])[0]
            cos = (vecs @ qvec).tolist()
            scores = dict(zip(docs, cos))
            by_teacher = sorted(docs, key=lambda d: (-scores[d], docs.index(d)))
            grades = item["grades"]
            final = sorted(by_teacher, key=lambda d: -grades.get(d, 0))  # stable: teacher order within a grade
            for key, order in (("first_stage", docs), ("teacher", by_teacher), ("label", final)):
                quality[key].append(ndcg10(order, grades))
            fh.write(json.dumps({"qid": item["qid"], "query": item["query"], "initial_list": docs, "final_list": final,
                                 "passages": item["passages"], "teacher_scores": scores}) + "\n")
    tmp.replace(out)
    summary = {"labels": str(out), "lists": len(lists),
               "by_source": {s: sum(1 for x in lists if x["qid"].startswith(s)) for s in sources},
               "label_ndcg10_vs_qrels": {k: round(sum(v) / len(v), 4) for k, v in quality.items()}}
    print(json.dumps(summary, indent=2))
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
