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

The lists come from :mod:`rerank.labels.training_lists`, their scores and labels from
:mod:`rerank.labels.list_teacher`. The teacher's cosines are appended to ``OUT.cosine.jsonl`` as
they are computed (kept afterwards): an interrupted build resumes from them, and a rebuild with
another teacher mix or boost reuses them. The label file itself is written whole at the end.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tqdm import tqdm

from rerank.data.script_support import shared_data_dir
from rerank.evaluation import compute_metrics, scored_by_rank
from rerank.labels.list_teacher import TEACHERS, CosineCache, ListBM25, label_list
from rerank.labels.training_lists import (
    chunked,
    given_lists,
    qa_retrieved_lists,
    scifact_train_lists,
    source_of,
    synthetic_lists,
    triple_lists,
)
from rerank.long_lists import CHUNK_LAYOUTS
from rerank.prompting.prompts import sanitize

DATA = shared_data_dir(__file__)


def ndcg10(qrels: dict[str, dict[str, int]], run: dict[str, list[tuple[str, float]]]) -> float:
    """Mean nDCG@10 of ``run`` over its lists (``rerank.evaluation``: ir-measures, trec_eval's linear gains)."""
    return compute_metrics(qrels, run, graded=False)["ndcg@10"]


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
        choices=TEACHERS,
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
            lists += qa_retrieved_lists(DATA / src, args.qa_depth, args.qa_questions, rng)
        elif src in ("selqa", "wikiqa"):
            lists += given_lists(DATA / src, args.list_size)
        elif src == "scifact":
            scifact = DATA / "beir-scifact"
            lists += scifact_train_lists(scifact, args.scifact_depth, args.scifact_claims, args.scifact_offset)
        elif src == "msmarco":
            lists += triple_lists(DATA / "msmarco-train-triples" / "triples.jsonl", args.list_size, rng)
        elif src == "synthetic":
            if not args.synthetic:
                ap.error("the 'synthetic' source needs --synthetic QUERIES.jsonl")
            lists += synthetic_lists(args.synthetic, args.list_size)
        else:
            ap.error(f"unknown source {src!r}")
    if args.chunk_size:
        lists = [part for item in lists for part in chunked(item, args.chunk_size, args.chunk_layout)]
    pools: dict[str, dict[str, str]] = {}
    for item in lists:
        pools.setdefault(source_of(item), {}).update(item["passages"])
    list_bm25 = ListBM25(pools, DATA)
    out = Path(args.out)
    cache = CosineCache(out.with_suffix(".cosine.jsonl"))
    teacher = None

    def cosine(item: dict) -> list[float]:
        nonlocal teacher
        teacher = teacher or EmbeddingTeacher()
        # The teacher reads what the model reads: sanitised text (no budget cut: it has its own).
        return teacher.cosine_scores(
            sanitize(item["query"]), [sanitize(item["passages"][d]) for d in item["initial_list"]]
        )

    qrels: dict[str, dict[str, int]] = {}
    runs: dict[str, dict[str, dict[str, list[tuple[str, float]]]]] = {}  # source -> order -> run
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    with open(tmp, "w", encoding="utf-8") as fh:
        for item in tqdm(lists, desc="teacher scores"):
            record, orders = label_list(
                item,
                cache.scores(item, cosine),
                list_bm25(item),
                args.teacher,
                args.bm25_weight,
                args.judged_boost,
                args.leaders,
            )
            qrels[record["qid"]] = {d: item["grades"].get(d, 0) for d in record["initial_list"]}
            for key, order in orders.items():
                runs.setdefault(source_of(item), {}).setdefault(key, {})[record["qid"]] = scored_by_rank(order)
            fh.write(json.dumps(record) + "\n")
    tmp.replace(out)
    summary = {
        "labels": str(out),
        "lists": len(lists),
        "cosines_reused": cache.reused,
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
