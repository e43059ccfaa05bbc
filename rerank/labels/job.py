"""The ``rerank labels`` job: label every query not yet in the output, resumably, on 1..N processes."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm
from transformers import HfArgumentParser

from rerank.data.resume import append_record
from rerank.distributed import detect, existing_shards, merge_appended, merge_shards, own_log, shutdown, union_ids
from rerank.labels.candidates import load_candidates
from rerank.labels.complete import iter_complete_labels, label_order
from rerank.labels.config import LabelConfig
from rerank.labels.records import label_record
from rerank.labels.teachers import build_teacher
from rerank.ranking import WindowRanker

logger = logging.getLogger(__name__)


def _label_qid(record: dict) -> str:
    return str(record["qid"])


_SUMMED = ("labelled", "failed", "calls", "prompt_tokens", "generated_tokens")


def run_labelling(config: LabelConfig, teacher: WindowRanker | None = None) -> dict:
    """Label every query of ``config.input`` not yet in ``config.output``; returns a summary.

    Under ``accelerate launch`` with N processes each labels every N-th remaining query into its own
    shard of the output, and the main process merges the shards into ``config.output`` in the order
    one process writes (see :mod:`rerank.distributed`); the summary covers all processes and records
    ``processes`` (N).
    """
    items, qrels = load_candidates(config.input, config.run, config.depth, config.qrels)
    if config.max_queries is not None:
        items = items[: config.max_queries]
    dp = detect()
    if teacher is None:
        first_stage = {it.qid: {d: r for r, d in enumerate(it.docids)} for it in items}
        # Each GPU process puts a local teacher on its own GPU unless --device says otherwise.
        teacher = build_teacher(
            config.teacher,
            qrels=qrels,
            first_stage=first_stage,
            base_url=config.base_url,
            api_key_env=config.api_key_env,
            device=config.device or dp.device,
            dtype=config.dtype,
            max_passage_tokens=config.max_passage_tokens,
            timeout=config.timeout,
            prompt=config.prompt,
        )
    Path(config.output).parent.mkdir(parents=True, exist_ok=True)
    # Only the main process reads (and repairs) the logs, before anyone appends; the others get the ids.
    shards_present = dp.broadcast(bool(existing_shards(config.output)) if dp.is_main else None)
    done = set(dp.broadcast(sorted(union_ids(config.output, key=_label_qid)) if dp.is_main else None))
    remaining = [it for it in items if it.qid not in done]
    todo = dp.share(remaining)
    out_path = own_log(config.output, dp, shards_present)
    err_path = own_log(config.errors_file, dp, shards_present)
    if dp.is_main:
        logger.info(
            "%d queries, %d already labelled, %d to do", len(items), len(items) - len(remaining), len(remaining)
        )
    summary = {
        "queries": len(items),
        "skipped_done": len(items) - len(remaining),
        "labelled": 0,
        "failed": 0,
        "calls": 0,
        "prompt_tokens": 0,
        "generated_tokens": 0,
        "seconds": 0.0,
    }

    start = time.perf_counter()
    with (
        open(out_path, "a", encoding="utf-8") as out,
        open(err_path, "a", encoding="utf-8") as err,
        tqdm(total=len(todo), desc="labels", disable=not config.progress or not dp.is_main, unit="q") as bar,
    ):
        for outcome in iter_complete_labels(
            teacher,
            todo,
            config.window_size,
            config.stride,
            config.max_passes,
            config.batch_size,
            config.max_retries,
            config.retry_wait,
        ):
            for key in ("calls", "prompt_tokens", "generated_tokens"):
                summary[key] += getattr(outcome.stats, key)
            if outcome.error:
                summary["failed"] += 1
                logger.warning("query %s failed: %s", outcome.item.qid, outcome.error)
                append_record(
                    err,
                    {
                        "qid": outcome.item.qid,
                        "error": outcome.error,
                        "stats": asdict(outcome.stats),
                        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    },
                    ensure_ascii=False,
                )
            else:
                summary["labelled"] += 1
                append_record(out, label_record(outcome, config.teacher, config.texts), ensure_ascii=False)
            bar.update(1)
    if out_path != Path(config.output):
        dp.wait()  # every shard is complete
        if dp.is_main:
            merge_shards(config.output, label_order(items, config), key=_label_qid, ensure_ascii=False)
            position = {it.qid: i for i, it in enumerate(items)}
            merge_appended(
                config.errors_file, lambda rec: position.get(str(rec.get("qid")), len(items)), ensure_ascii=False
            )
    parts = dp.gather({key: summary[key] for key in _SUMMED} | {"seconds": time.perf_counter() - start})
    summary.update({key: sum(part[key] for part in parts) for key in _SUMMED})
    summary["seconds"] = round(max(part["seconds"] for part in parts), 3)  # wall time of the slowest process
    summary["processes"] = dp.world
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``rerank labels``: build complete listwise labels (see the module docstring)."""

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = HfArgumentParser(
        LabelConfig,
        prog="rerank labels",
        description="Build complete listwise labels (a full teacher permutation of all N candidates).",
    )
    try:
        (config,) = parser.parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv))
    except (ValueError, TypeError) as exc:  # __post_init__ validation: a usage error, not a crash
        parser.error(str(exc))
    summary = run_labelling(config)
    dp = detect()  # the context run_labelling used (accelerate's state is a singleton)
    shutdown(dp)
    if dp.is_main:
        print(json.dumps(summary))
    return 0 if summary["failed"] == 0 else 1
