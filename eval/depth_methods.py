"""Full ranking vs chunks vs tournament vs sliding windows: nDCG@10 and cost of the shipped weights by depth.

    .venv/bin/python eval/depth_methods.py --collection dl19 --depths 20,50,100 \\
        --methods chunks,tournament,sliding,one_prompt,one_prompt:60 --out eval/results/depth_methods_cpu.json

A cell is (collection, depth, method); a method is a ``RerankerConfig.long_list`` value, with an
optional passage budget after a colon (``one_prompt:60`` = every passage cut to 60 tokens so that 100
fit one prompt), ``deep_leaders`` after a slash (``tournament/5``), ``chunk_layout`` after an at
sign (``chunks@interleaved``), the tournament's ``final_order`` after a percent sign
(``tournament@interleaved%chunk_score``), its ``final_chunk_weight`` after a tilde
(``tournament@interleaved~0.5``), its ``final_reread`` after a caret (``tournament@interleaved^10``),
a ``chunk_passage_tokens`` budget after an ampersand (``tournament@interleaved&50``: chunk prompts cut
each passage to 50 tokens, the final prompt to the method's budget) and a ``chunk_pruning`` schedule
name after an equals sign (``tournament@interleaved=fast``: chunks pruned, the final prompt dense).
Prompts the memo has already read (the final prompt over the same leaders) are not read again.
The shipped weights run with
fusion off (the model alone) unless ``--first_stage_weight``, and with raw head readouts unless
``--calibrated`` (then chunks merge by calibrated probability and a tournament's leaders are chosen by it).
``--precision`` is the CPU precision (``rerank.precision``; default ``auto``, as ``from_pretrained`` chooses);
a cell read in another precision than fp32 is named ``METHOD[+cal]+PRECISION`` and its prompts are
memoised apart from the fp32 reads.

Every cell shares one window memo on disk (``<work_dir>/memo.jsonl``): an identical prompt is
scored once (the chunks of ``chunks`` are the first prompts of ``tournament``; a depth-20 list is
the first chunk at depth 100). A method's seconds per query are the sum of the measured prefill
times of the prompts it needs, each measured when it was first scored, so sharing saves wall time
without hiding cost. Per-query rankings and scores go to ``<work_dir>/<cell>.jsonl`` as they are
made: an interrupted run resumes (the memo and records are append-only). The JSON has, per
collection (``vaswani[0:40]`` with ``--limit_queries 40``) and depth, BM25's and all-MiniLM-L6-v2's
nDCG@10 on the same queries beside every method.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from rerank.data.bm25 import first_stage_run
from rerank.data.collection import load_collection
from rerank.data.resume import append_record, check_same_settings, recover_records, save_settings
from rerank.data.script_support import EVAL_COLLECTIONS, VASWANI_RUN_CACHE, resolve_collection, shared_data_dir
from rerank.data.window_memo import DiskMemo
from rerank.evaluation import compute_metrics, scored_by_rank

DATA = shared_data_dir(__file__)


def parse_method(spec: str) -> dict:
    """``METHOD[:BUDGET][/DEEP][@LAYOUT][%FINAL_ORDER][~CHUNK_WEIGHT][^REREAD][&CHUNK_BUDGET][=CHUNK_PRUNING]``
    -> the ``RerankerConfig`` fields it sets (every one, so a cell never inherits the previous cell's).

    >>> parse_method("tournament/0@consecutive")["deep_leaders"]
    0
    >>> got = parse_method("tournament@interleaved%chunk_score~0.25^10&50=fast")
    >>> sorted(got.items())  # doctest: +NORMALIZE_WHITESPACE
    [('chunk_layout', 'interleaved'), ('chunk_passage_tokens', 50), ('chunk_pruning', 'fast'),
     ('deep_leaders', None), ('final_chunk_weight', 0.25), ('final_order', 'chunk_score'), ('final_reread', 10),
     ('long_list', 'tournament'), ('max_passage_tokens', 100)]
    """
    spec, _, chunk_pruning = spec.partition("=")
    spec, _, chunk_budget = spec.partition("&")
    spec, _, reread = spec.partition("^")
    spec, _, chunk_weight = spec.partition("~")
    spec, _, final_order = spec.partition("%")
    spec, _, layout = spec.partition("@")
    spec, _, deep = spec.partition("/")
    name, _, budget = spec.partition(":")
    return {
        "long_list": name,
        "max_passage_tokens": int(budget) if budget else 100,
        "deep_leaders": int(deep) if deep else None,
        "chunk_layout": layout or "consecutive",
        "final_order": final_order or "first_stage",
        "final_chunk_weight": float(chunk_weight) if chunk_weight else 0.0,
        "final_reread": int(reread) if reread else None,
        "chunk_pruning": chunk_pruning or None,
        "chunk_passage_tokens": int(chunk_budget) if chunk_budget else None,
    }


def first_stage(folder: Path, run_cache: Path, args) -> tuple:
    coll = load_collection(folder)
    run = first_stage_run(coll, 100, cache=args.run_cache or run_cache)
    qids = sorted(q for q in run if q in coll.qrels and q in coll.queries)
    if args.limit_queries:
        qids = qids[args.query_offset : args.query_offset + args.limit_queries]
    return coll, run, qids


def baselines(coll, run, qids, depth: int, work_dir: Path) -> dict:
    """BM25 and all-MiniLM-L6-v2 nDCG@10 on the same queries and candidates (MiniLM cached per query)."""
    from rerank.labels.teachers import EmbeddingTeacher
    from rerank.prompting.prompts import sanitize

    path = work_dir / f"minilm-{depth}.jsonl"
    done = {r["qid"]: r for r in recover_records(path)} if path.is_file() else {}
    teacher = None
    with open(path, "a", encoding="utf-8") as fh:
        for qid in qids:
            if qid in done:
                continue
            teacher = teacher or EmbeddingTeacher()
            docs = run[qid][:depth]
            scores = teacher.cosine_scores(sanitize(coll.queries[qid]), [sanitize(coll.corpus[d]) for d in docs])
            done[qid] = {"qid": qid, "docids": docs, "scores": scores}
            append_record(fh, done[qid])
    bm25 = {q: scored_by_rank(run[q][:depth]) for q in qids}
    minilm = {q: list(zip(done[q]["docids"], done[q]["scores"])) for q in qids}
    return {
        "bm25": round(compute_metrics(coll.qrels, bm25, coll.graded)["ndcg@10"], 4),
        "minilm": round(compute_metrics(coll.qrels, minilm, coll.graded)["ndcg@10"], 4),
    }


def run_cell(reranker, coll, run, qids, depth: int, spec: str, path: Path) -> dict:
    from tqdm import tqdm

    done = {r["qid"]: r for r in recover_records(path)} if path.is_file() else {}
    # A new config, not attributes set on the old one: its __post_init__ checks the method's settings.
    reranker.config = replace(reranker.config, **parse_method(spec))
    with open(path, "a", encoding="utf-8") as fh:
        for qid in tqdm(qids, desc=path.stem, disable=len(qids) == len(done)):
            if qid in done:
                continue
            docs = run[qid][:depth]
            res = reranker.rerank(coll.queries[qid], [coll.corpus[d] for d in docs])
            st = res.stats
            done[qid] = {
                "qid": qid,
                "docids": docs,
                "order": res.order,
                "scores": res.scores,
                "score_kind": res.score_kind,
                "method": st.fallback or "full",
                "prompts": st.llm_calls,
                "prompt_tokens": st.prompt_tokens,
                "seconds": st.prefill_seconds + st.decode_seconds,
            }
            append_record(fh, done[qid])
    ranked = {}
    for q in qids:
        ranked[q] = scored_by_rank([done[q]["docids"][k] for k in done[q]["order"]])
    recs = [done[q] for q in qids]
    return {
        "ndcg@10": round(compute_metrics(coll.qrels, ranked, coll.graded)["ndcg@10"], 4),
        "seconds_per_query": round(statistics.mean(r["seconds"] for r in recs), 2),
        "prompts_per_query": round(statistics.mean(r["prompts"] for r in recs), 2),
        "prompt_tokens_per_query": round(statistics.mean(r["prompt_tokens"] for r in recs)),
        "methods_used": sorted({r["method"] for r in recs}),
        "queries": len(recs),
    }


def main(argv: list[str] | None = None) -> dict:
    from rerank import Reranker

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--collection", default="dl19", help=f"One of {sorted(EVAL_COLLECTIONS)} or a collection folder of one's own."
    )
    ap.add_argument("--depths", default="20,50,100", help="First-stage depths (comma-separated).")
    ap.add_argument(
        "--methods",
        default="chunks,tournament,sliding",
        help=(
            "long_list[:budget][/deep][@layout][%%final_order][~final_chunk_weight][^final_reread]"
            "[&chunk_passage_tokens][=chunk_pruning], comma-separated."
        ),
    )
    ap.add_argument(
        "--calibrated", action="store_true", help="Apply the weights' calibration.json (cells named METHOD+cal)."
    )
    ap.add_argument("--model", default=None, help="Model folder (default: the shipped weights).")
    ap.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "int8"],
        help="CPU precision (rerank.precision); cells read in another than fp32 are named METHOD+PRECISION.",
    )
    ap.add_argument("--first_stage_weight", type=float, default=0.0, help="Fusion weight (0 = the model alone).")
    ap.add_argument("--limit_queries", type=int, default=None, help="Only this many judged queries (sorted by id).")
    ap.add_argument("--query_offset", type=int, default=0, help="Skip this many judged queries first.")
    ap.add_argument(
        "--run_cache",
        default=None,
        help="Where BM25's run is cached for a folder without a run of its own (default: "
        f"{VASWANI_RUN_CACHE} for vaswani, else WORK_DIR/NAME/bm25.trec).",
    )
    ap.add_argument("--work_dir", default="runs/depth", help="Memo and per-cell records (resumable).")
    ap.add_argument("--out", default="eval/results/depth_methods_cpu.json", help="JSON to update.")
    args = ap.parse_args(argv)
    folder, collection, run_cache = resolve_collection(args.collection, DATA, args.work_dir)
    work = Path(args.work_dir) / collection
    work.mkdir(parents=True, exist_ok=True)
    settings = {"model": args.model, "first_stage_weight": args.first_stage_weight, "window_size": 20, "stride": 10}
    check_same_settings(work / "settings.json", settings, what="depth-method records")
    save_settings(work / "settings.json", settings)

    coll, run, qids = first_stage(folder, run_cache, args)
    reranker = Reranker.from_pretrained(
        args.model,
        first_stage_weight=args.first_stage_weight,
        batch_size=1,
        calibration=None if args.calibrated else False,
        precision=args.precision,
    )
    if args.calibrated and reranker.calibration is None:
        raise SystemExit("--calibrated: the model folder has no calibration.json")
    reranker.window_memo = DiskMemo(work / "memo.jsonl")
    out_path = Path(args.out)
    # A subset of the queries is its own table: its baselines are measured on the same subset.
    key = collection
    if args.limit_queries:
        key += f"[{args.query_offset}:{args.query_offset + args.limit_queries}]"
    table: dict = {}
    for depth in [int(d) for d in args.depths.split(",")]:
        cell = table.setdefault(key, {}).setdefault(str(depth), {})
        cell["baselines"] = baselines(coll, run, qids, depth, work)
        for spec in args.methods.split(","):
            name = spec + ("+cal" if args.calibrated else "")
            if reranker.config.precision not in (None, "fp32"):
                name += f"+{reranker.config.precision}"
            start = time.monotonic()
            cell[name] = run_cell(
                reranker,
                coll,
                run,
                qids,
                depth,
                spec,
                work / f"{depth}-{name.replace('/', '-d').replace('@', '-')}.jsonl",
            )
            cell[name]["wall_minutes"] = round((time.monotonic() - start) / 60, 1)
            print(collection, depth, name, cell[name], cell["baselines"], flush=True)
            write_cell(out_path, key, depth, {"baselines": cell["baselines"], name: cell[name]})
    return table


def write_cell(out_path: Path, collection: str, depth: int, cells: dict) -> None:
    """Merge cells into the JSON as it is now (another run may have written other cells meanwhile)."""
    table = json.loads(out_path.read_text()) if out_path.is_file() else {}
    table.setdefault(collection, {}).setdefault(str(depth), {}).update(cells)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=1))
    tmp.replace(out_path)


if __name__ == "__main__":
    main()
