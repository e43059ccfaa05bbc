"""Build a 20-candidate listwise training set from the offline data, then label it completely.

    .venv/bin/python scripts/build_training_mix.py --out runs/mix/mix.embed.jsonl

WikiQA-train gives about 10 candidates per query, and the 100 MS MARCO training triples give one
positive and one negative: too short for the lists we rerank at inference (20 to 100 passages). Each
query's own candidates are kept and the list is filled up to ``--list_size`` with passages drawn
from other queries of the same source (a fixed seed, so the set is reproducible). Every list is then
labelled with the offline embedding teacher through ``rerank.labels`` (sliding windows, resumable).
``--promote_relevant`` moves the judged-relevant passages to the top of the teacher's permutation,
keeping the teacher's order inside both groups: the teacher orders everything, the judgements
correct its worst mistakes.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from rerank.data.collection import iter_jsonl, load_collection, read_run
from rerank.data.script_support import shared_data_dir
from rerank.labels import LabelConfig, run_labelling
from rerank.labels.training_lists import msmarco_triple_lists

DATA = shared_data_dir(__file__)


def wikiqa_lists(list_size: int, rng: random.Random) -> tuple[list[dict], dict[str, set[str]]]:
    coll = load_collection(str(DATA / "wikiqa-train"))
    run = read_run(str(DATA / "wikiqa-train" / "run.given.trec"))
    pool = sorted(coll.corpus)
    items, relevant = [], {}
    for qid in sorted(run):
        own = run[qid][:list_size]
        own_set = set(own)
        fill = []
        while len(own) + len(fill) < list_size:
            d = rng.choice(pool)
            if d not in own_set and d not in fill:
                fill.append(d)
        docids = own + fill
        items.append(
            {
                "qid": f"wikiqa-{qid}",
                "query": coll.queries[qid],
                "candidates": [{"docid": d, "text": coll.corpus[d]} for d in docids],
            }
        )
        relevant[f"wikiqa-{qid}"] = {d for d, g in coll.qrels.get(qid, {}).items() if g > 0}
    return items, relevant


def msmarco_lists(list_size: int, rng: random.Random) -> tuple[list[dict], dict[str, set[str]]]:
    triples = msmarco_triple_lists(DATA / "msmarco-train-triples" / "triples.jsonl", list_size, rng)
    items = [
        {
            "qid": t["qid"],
            "query": t["query"],
            "candidates": [{"docid": d, "text": t["passages"][d]} for d in t["docids"]],
        }
        for t in triples
    ]
    return items, {t["qid"]: {t["positive"]} for t in triples}


def promote(labels: Path, relevant: dict[str, set[str]], out: Path) -> int:
    """Rewrite each label with judged-relevant passages first (teacher order kept in both groups)."""
    moved = 0
    with open(out, "w", encoding="utf-8") as fh:
        for _, rec in iter_jsonl(labels):
            rel = relevant.get(rec["qid"], set())
            final = [d for d in rec["final_list"] if d in rel] + [d for d in rec["final_list"] if d not in rel]
            moved += final != rec["final_list"]
            fh.write(json.dumps(rec | {"final_list": final}) + "\n")
    return moved


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", default="runs/mix/mix.embed.jsonl", help="Label JSONL (a .candidates.jsonl goes beside it)."
    )
    ap.add_argument("--list_size", type=int, default=20, help="Candidates per training list.")
    ap.add_argument("--teacher", default="embed", help="Any rerank.labels teacher.")
    ap.add_argument(
        "--promote_relevant",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Put judged-relevant passages first in each label (teacher order kept).",
    )
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args(argv)
    if args.list_size < 2:
        ap.error("--list_size must be at least 2")

    rng = random.Random(args.seed)
    wiki, rel_w = wikiqa_lists(args.list_size, rng)
    marco, rel_m = msmarco_lists(args.list_size, rng)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cand_path = out.with_name(out.stem + ".candidates.jsonl")
    with open(cand_path, "w", encoding="utf-8") as fh:
        for item in wiki + marco:
            fh.write(json.dumps(item) + "\n")
    teacher_out = out.with_name(out.stem + ".teacher.jsonl")
    summary = run_labelling(
        LabelConfig(
            input=str(cand_path),
            output=str(teacher_out),
            teacher=args.teacher,
            depth=args.list_size,
            window_size=args.list_size,
            stride=max(1, args.list_size // 2),
        )
    )
    moved = promote(teacher_out, rel_w | rel_m if args.promote_relevant else {}, out)
    result = {
        "wikiqa_lists": len(wiki),
        "msmarco_lists": len(marco),
        "list_size": args.list_size,
        "labels": str(out),
        "promoted_lists": moved,
        "teacher": args.teacher,
        "labelling": {k: v for k, v in summary.items() if not isinstance(v, (list, dict))},
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
