"""Raw head readouts of every prompt the shipped default reads, by kind of prompt, for calibration.

    .venv/bin/python eval/prompt_readouts.py --collection vaswani --depth 100 --work_dir runs/ilcal --read_only
    .venv/bin/python eval/prompt_readouts.py --collection path/to/my-collection --depth 100 --model path/to/weights

``--collection`` is one of the shared collections by name or a folder of your own (``corpus.jsonl``,
``queries.jsonl`` and qrels, as ``rerank.data.collection.load_collection`` reads them; its own
``run.given.trec`` is reranked if it has one, else BM25's run, cached in the work dir). Ranks each
judged query's first-stage top ``--depth`` as the default does (``long_list`` and
``chunk_layout`` from the weights' ``lazyrank.json``, the weights' calibration choosing a
tournament's leaders) and writes, per query, every prompt it read: its kind (``chunk``, ``final`` or
``single``, see ``rerank.calibration.PROMPT_KINDS``), its passages' docids and their raw head readouts,
to ``<work_dir>/<collection>/<depth>-prompts.jsonl`` (resumable). The window memo of
``eval/depth_methods.py`` in the same work dir is shared, so prompts it already scored cost nothing;
``--read_only`` refuses to score any other. ``scripts/fit_calibration.py --kind`` fits one kind's
parameters on these records.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rerank.data.bm25 import first_stage_run
from rerank.data.collection import load_collection
from rerank.data.resume import append_record, recover_records
from rerank.data.script_support import EVAL_COLLECTIONS, VASWANI_RUN_CACHE, resolve_collection, shared_data_dir
from rerank.data.window_memo import DiskMemo

DATA = shared_data_dir(__file__)


def main(argv: list[str] | None = None) -> Path:
    from tqdm import tqdm

    from rerank import Reranker

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--collection", default="vaswani", help=f"One of {sorted(EVAL_COLLECTIONS)} or a collection folder."
    )
    ap.add_argument("--depth", type=int, default=100, help="First-stage depth to rerank.")
    ap.add_argument("--model", default=None, help="Model folder (default: the shipped weights).")
    ap.add_argument("--limit_queries", type=int, default=None, help="Only this many judged queries (sorted by id).")
    ap.add_argument("--query_offset", type=int, default=0, help="Skip this many judged queries first.")
    ap.add_argument(
        "--run_cache",
        default=None,
        help=f"Where the BM25 run is cached (default: {VASWANI_RUN_CACHE} for vaswani, as "
        "eval/depth_methods.py, else WORK_DIR/NAME/bm25.trec).",
    )
    ap.add_argument("--work_dir", default="runs/depth", help="eval/depth_methods.py's work dir (memo, records).")
    ap.add_argument("--read_only", action="store_true", help="Only re-read prompts the memo holds.")
    args = ap.parse_args(argv)

    folder, name, default_cache = resolve_collection(args.collection, DATA, args.work_dir)
    coll = load_collection(folder)
    work = Path(args.work_dir) / name
    work.mkdir(parents=True, exist_ok=True)
    run = first_stage_run(coll, args.depth, cache=args.run_cache or default_cache)
    qids = sorted(q for q in run if q in coll.qrels and q in coll.queries)
    if not qids:
        raise SystemExit(f"{folder}: no query has both judgements and first-stage candidates")
    qids = qids[args.query_offset :][: args.limit_queries]
    out = work / f"{args.depth}-prompts.jsonl"
    done = {r["qid"] for r in recover_records(out)} if out.is_file() else set()

    reranker = Reranker.from_pretrained(args.model, first_stage_weight=0.0, batch_size=1)
    reranker.window_memo = DiskMemo(work / "memo.jsonl", read_only=args.read_only)
    prompts: list[dict] = []
    docid_of: dict[str, str] = {}
    reranker.prompt_observer = lambda kind, window, ranking: prompts.append(
        {"kind": kind, "docids": [docid_of[p] for p in window.passages], "readouts": ranking.scores}
    )
    with open(out, "a", encoding="utf-8") as fh:
        for qid in tqdm([q for q in qids if q not in done], desc=out.stem):
            docs = run[qid][: args.depth]
            texts = [coll.corpus[d] for d in docs]
            # Two docids with the same text read the same: either label is the passage's.
            docid_of.clear()
            docid_of.update((t, d) for t, d in zip(reversed(texts), reversed(docs)))
            prompts.clear()
            res = reranker.rerank(coll.queries[qid], texts)
            record = {"qid": qid, "method": res.stats.fallback or "full", "layout": reranker.config.chunk_layout}
            append_record(fh, record | {"prompts": list(prompts)})
    return out


if __name__ == "__main__":
    main()
