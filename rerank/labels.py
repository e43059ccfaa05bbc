"""Complete listwise labels: multi-pass sliding windows over a teacher (docs/design.md section 3).

Pass 1 runs back-to-front sliding windows (``window_size`` w, ``stride`` s) over all N candidates
and freezes ranks 1..s; pass 2 runs over the remaining N - s and freezes s+1..2s; ... until the
remainder fits one window, which is ranked once. The result is a full permutation of all N.
Windows of several queries are ranked in one teacher call per round.

The job behind ``rerank labels`` appends one JSON line per finished query (flushed and fsynced),
so an interrupted run resumes by skipping the qids already in the output; a truncated last line is
cut off. Teacher failures are retried ``max_retries`` times, then written to an errors file and the
query stays unlabelled (a later run retries it) -- never padded into a wrong label.

Under ``accelerate launch`` several processes share the queries (each appends to its own shard,
the main process merges them into the file one process writes; :mod:`rerank.distributed`).

Output line (compatible with the paper's released labels, plus texts and costs)::

    {"qid", "query", "initial_list": [docid...], "final_list": [docid...],
     "passages": {docid: text}, "teacher", "stats": {"calls", "prompt_tokens", ...}}

Command (see ``main``)::

    rerank labels --input ../shared/data/wikiqa-train --teacher embed --output labels/wikiqa.embed.jsonl
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

from .data import iter_jsonl
from .decoding import is_permutation
from .distributed import detect, existing_shards, merge_appended, merge_shards, own_log, shutdown, union_ids
from .ranking import Window, WindowRanker, WindowRanking, window_starts
from .resume import append_record, recover_records

logger = logging.getLogger(__name__)

TEXT_MODES = ("inline", "none")


@dataclass
class LabelConfig:
    """Options of ``rerank labels``."""

    input: str = field(metadata={"help": "Collection folder (corpus.jsonl, queries.jsonl, qrels, run.*.trec) or a "
                                          "JSONL of {qid, query, candidates: [{docid, text}]} in first-stage order."})
    output: str = field(metadata={"help": "Label JSONL to append to (resumed if it exists)."})
    teacher: str = field(metadata={"help": "qrels | embed[:PATH] | openai:MODEL | llm | a local model path or hub id."})
    run: Optional[str] = field(default=None, metadata={"help": "First-stage TREC run for a collection folder; default run.bm25.trec or run.given.trec there."})
    qrels: Optional[str] = field(default=None, metadata={"help": "Qrels file for --teacher qrels with a JSONL input (a folder brings its own)."})
    top_n: int = field(default=100, metadata={"help": "Candidates per query (first-stage top-N)."})
    window_size: int = field(default=20, metadata={"help": "Passages per teacher window (w)."})
    stride: int = field(default=10, metadata={"help": "Window step; also the ranks frozen after each pass (s <= w/2)."})
    max_passes: Optional[int] = field(default=None, metadata={"help": "Stop after this many passes (the rest keeps the last pass's order); None = until complete."})
    batch_size: int = field(default=8, metadata={"help": "Queries whose windows go to the teacher together."})
    max_retries: int = field(default=2, metadata={"help": "Retries of a failed teacher window before the query is recorded as failed."})
    retry_wait: float = field(default=1.0, metadata={"help": "Seconds before the first retry (doubles each time)."})
    texts: str = field(default="inline", metadata={"help": "'inline': store passage texts in each line; 'none': ids only (train with --corpus_file)."})
    max_queries: Optional[int] = field(default=None, metadata={"help": "Label at most this many queries (input order)."})
    errors_file: Optional[str] = field(default=None, metadata={"help": "Where failures go; default OUTPUT.errors.jsonl."})
    base_url: Optional[str] = field(default=None, metadata={"help": "OpenAI-compatible endpoint for openai:MODEL."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Environment variable holding the API key."})
    timeout: float = field(default=120.0, metadata={"help": "Seconds per API request."})
    prompt: str = field(default="lazyrank", metadata={"help": "Prompt preset of a local LLM teacher (rerank.presets.PRESETS), e.g. rank_zephyr for a RankZephyr checkpoint."})
    device: Optional[str] = field(default=None, metadata={"help": "Device of a local teacher model."})
    dtype: Optional[str] = field(default=None, metadata={"help": "dtype of a local teacher LLM."})
    max_passage_tokens: Optional[int] = field(default=100, metadata={"help": "Per-passage token budget of a local LLM teacher."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self):
        from .presets import get_preset

        get_preset(self.prompt)  # an unknown preset fails before any teacher loads
        for name in ("top_n", "window_size", "stride", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if 2 * self.stride > self.window_size:
            # The top s of a pass are exact only if a window carries its best s into the next one.
            raise ValueError(f"stride ({self.stride}) must be at most half of window_size ({self.window_size})")
        if self.max_passes is not None and self.max_passes < 1:
            raise ValueError(f"max_passes must be >= 1 or None, got {self.max_passes}")
        if self.max_retries < 0 or self.retry_wait < 0:
            raise ValueError("max_retries and retry_wait must be >= 0")
        if self.texts not in TEXT_MODES:
            raise ValueError(f"texts must be one of {TEXT_MODES}, got {self.texts!r}")
        if self.errors_file is None:
            self.errors_file = self.output + ".errors.jsonl"


# ---------------------------------------------------------------------------------------------- inputs
@dataclass
class Candidates:
    """One query and its first-stage candidates (best first)."""

    qid: str
    query: str
    docids: list[str]
    texts: list[str]


def load_candidates(source: str, run: str | None = None, top_n: int | None = None,
                    qrels: str | None = None) -> tuple[list[Candidates], dict[str, dict[str, int]]]:
    """Candidates per query and judgements (if any) from a collection folder or a candidates JSONL."""
    from .data import default_run_path, load_collection, read_qrels, read_run

    judged = read_qrels(qrels) if qrels else {}
    if Path(source).is_dir():
        coll = load_collection(source)
        run_path = run or default_run_path(coll)
        if run_path is None:
            raise FileNotFoundError(f"{source} has no run.*.trec; pass --run")
        ranked = read_run(run_path, top_k=top_n)
        items = []
        for qid, docids in ranked.items():
            if qid not in coll.queries:
                raise ValueError(f"{run_path}: query {qid!r} is not in {source}/queries.jsonl")
            missing = [d for d in docids if d not in coll.corpus]
            if missing:
                raise ValueError(f"{run_path}: query {qid!r}: {len(missing)} docids not in the corpus, e.g. {missing[0]!r}")
            items.append(Candidates(qid, coll.queries[qid], list(docids), [coll.corpus[d] for d in docids]))
        return items, judged or coll.qrels
    items = []
    for lineno, obj in iter_jsonl(source):
        try:
            cands = obj["candidates"][:top_n] if top_n else obj["candidates"]
            items.append(Candidates(str(obj["qid"]), str(obj["query"]), [str(c["docid"]) for c in cands],
                                    [str(c["text"]) for c in cands]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{source}:{lineno}: expected {{qid, query, candidates: [{{docid, text}}]}} ({exc!r})") from None
    return items, judged


# ---------------------------------------------------------------------------------------------- algorithm
@dataclass
class LabelStats:
    """Teacher cost of one query's complete label."""

    calls: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    passes: int = 0
    retries: int = 0
    seconds: float = 0.0


@dataclass
class LabelOutcome:
    """A finished query: ``order`` (0-based into the candidates) or ``error``."""

    item: Candidates
    order: list[int] | None
    stats: LabelStats
    error: str | None = None


@dataclass
class _Job:
    item: Candidates
    order: list[int]
    stats: LabelStats = field(default_factory=LabelStats)
    frozen: int = 0
    schedule: list[int] = field(default_factory=list)
    step: int = 0
    done: bool = False
    error: str | None = None


def _next_pass(job: _Job, window_size: int, stride: int, max_passes: int | None) -> None:
    """Plan the next pass over the unfrozen remainder, or mark the job done."""
    remaining = len(job.order) - job.frozen
    if remaining <= 1 or (max_passes is not None and job.stats.passes >= max_passes):
        job.done = True
        return
    job.schedule = [job.frozen + s for s in window_starts(remaining, window_size, stride)]
    job.step = 0
    job.stats.passes += 1


def _rank_settled(teacher: WindowRanker, windows: Sequence[Window], max_retries: int,
                  retry_wait: float) -> tuple[list[WindowRanking | Exception], list[int]]:
    """Rank windows; a failing window is retried alone up to ``max_retries`` times.

    Returns per window a ranking or the last exception, and per window the retries spent. A
    ranking that is not a permutation of the window counts as a failure.
    """
    def check(ranking: WindowRanking, window: Window) -> WindowRanking:
        if not is_permutation(ranking.order, len(window.passages)):
            raise ValueError(f"teacher returned {ranking.order!r}, not a permutation of {len(window.passages)}")
        return ranking

    results: list[WindowRanking | Exception] = []
    try:
        got = teacher.rank_windows(list(windows))
        if len(got) != len(windows):
            raise ValueError(f"teacher returned {len(got)} rankings for {len(windows)} windows")
        for r, w in zip(got, windows):
            try:
                results.append(check(r, w))
            except ValueError as exc:
                results.append(exc)
    except Exception as exc:  # noqa: BLE001 - any teacher failure is retried, then recorded
        if len(windows) == 1:
            results = [exc]
        else:  # isolate the failing window(s): each is retried on its own below
            results = [exc] * len(windows)
            max_retries += 1
    retries = [0] * len(windows)
    for i, w in enumerate(windows):
        wait = retry_wait
        while isinstance(results[i], Exception) and retries[i] < max_retries:
            if wait > 0:
                time.sleep(wait)
                wait *= 2
            retries[i] += 1
            try:
                results[i] = check(teacher.rank_windows([w])[0], w)
            except Exception as exc:  # noqa: BLE001
                results[i] = exc
    return results, retries


def iter_complete_labels(teacher: WindowRanker, items: Iterable[Candidates], window_size: int = 20, stride: int = 10,
                         max_passes: int | None = None, batch_size: int = 8, max_retries: int = 2,
                         retry_wait: float = 1.0) -> Iterator[LabelOutcome]:
    """Complete labels for ``items``, yielded per query as each finishes.

    Example:
        >>> teacher = QrelsTeacher({"q": {"b": 2}})                       # doctest: +SKIP
        >>> [o.order for o in iter_complete_labels(teacher, [Candidates("q", "x", ["a", "b"], ["A", "B"])])]
        [[1, 0]]
    """
    items = list(items)
    for chunk_start in range(0, len(items), batch_size):
        jobs = [_Job(item=it, order=list(range(len(it.docids)))) for it in items[chunk_start:chunk_start + batch_size]]
        for job in jobs:
            _next_pass(job, window_size, stride, max_passes)
        pending = list(jobs)
        while pending:
            live = [j for j in pending if not j.done]
            for job in [j for j in pending if j.done]:
                pending.remove(job)
                yield LabelOutcome(job.item, None if job.error else job.order, job.stats, job.error)
            if not live:
                break
            windows, spans = [], []
            for job in live:
                start = job.schedule[job.step]
                ids = job.order[start:start + window_size]
                spans.append((start, ids))
                windows.append(Window(query=job.item.query, passages=[job.item.texts[k] for k in ids],
                                      qid=job.item.qid, docids=[job.item.docids[k] for k in ids]))
            tick = time.perf_counter()
            results, retries = _rank_settled(teacher, windows, max_retries, retry_wait)
            share = (time.perf_counter() - tick) / len(live)
            for job, (start, ids), result, spent in zip(live, spans, results, retries):
                job.stats.seconds += share
                job.stats.retries += spent
                job.stats.calls += 1 + spent
                if isinstance(result, Exception):
                    job.error = f"{type(result).__name__}: {result}"
                    job.done = True
                    continue
                job.stats.prompt_tokens += result.prompt_tokens
                job.stats.generated_tokens += result.generated_tokens
                job.order[start:start + len(ids)] = [ids[k] for k in result.order]
                job.step += 1
                if job.step == len(job.schedule):  # pass finished
                    remaining = len(job.order) - job.frozen
                    if remaining <= window_size:
                        job.done = True  # the remainder was ranked in one window
                    else:
                        job.frozen += stride
                        _next_pass(job, window_size, stride, max_passes)


# ---------------------------------------------------------------------------------------------- label files
@dataclass
class LabelRecord:
    """One training label: query, candidates in first-stage order, and the complete ranking."""

    qid: str
    query: str
    initial_list: list[str]
    final_list: list[str]
    passages: dict[str, str]
    teacher_scores: dict[str, float] | None = None  # graded teacher relevance per docid (head training)


def _load_corpus(corpus: str | os.PathLike) -> dict[str, str]:
    from .data import _read_jsonl, load_collection

    return load_collection(corpus).corpus if Path(corpus).is_dir() else _read_jsonl(Path(corpus))


def read_labels(path: str | os.PathLike, corpus: str | os.PathLike | dict | None = None,
                on_invalid: str = "error") -> tuple[list[LabelRecord], int]:
    """Read a label JSONL (ours, or the paper's released ids-only format with ``corpus``).

    ``final_list`` must be a permutation of ``initial_list``; otherwise ``on_invalid="error"``
    raises with file and line, ``"skip"`` drops the line. Returns ``(records, skipped)``.
    """
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    texts = corpus if isinstance(corpus, dict) else (_load_corpus(corpus) if corpus else {})
    records, skipped = [], 0
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        try:
            qid = str(obj["qid"])
            query = str(obj["query"])
            initial = [str(d) for d in obj["initial_list"]]
            final = [str(d) for d in obj["final_list"]]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{where}: expected fields qid, query, initial_list, final_list ({exc!r})") from None
        if len(set(initial)) != len(initial) or sorted(final) != sorted(initial):
            if on_invalid == "skip":
                skipped += 1
                continue
            raise ValueError(f"{where}: final_list is not a permutation of initial_list "
                             f"({len(final)} vs {len(initial)} ids, {len(set(final) ^ set(initial))} differ)")
        inline = obj.get("passages") or {}
        passages = {}
        for d in initial:
            text = inline.get(d, texts.get(d))
            if text is None:
                raise ValueError(f"{where}: no text for docid {d!r} (inline 'passages' or --corpus_file)")
            passages[d] = str(text)
        teacher = obj.get("teacher_scores")
        if teacher is not None:
            if not isinstance(teacher, dict) or any(not isinstance(teacher.get(d), (int, float)) for d in initial):
                raise ValueError(f"{where}: teacher_scores must map every docid of initial_list to a number")
            teacher = {d: float(teacher[d]) for d in initial}
        records.append(LabelRecord(qid, query, initial, final, passages, teacher))
    if skipped:
        logger.warning("%s: skipped %d labels whose final_list is not a permutation of initial_list", path, skipped)
    return records, skipped


def scan_done(path: str | os.PathLike) -> set[str]:
    """Qids already labelled in ``path``; a torn last line is cut off in place (:mod:`rerank.resume`)."""
    return set(recover_records(path, project=lambda rec: str(rec["qid"])))


def label_record(outcome: LabelOutcome, teacher_name: str, texts: str = "inline") -> dict:
    item = outcome.item
    rec = {"qid": item.qid, "query": item.query, "initial_list": item.docids,
           "final_list": [item.docids[k] for k in outcome.order]}  # type: ignore[union-attr]
    if texts == "inline":
        rec["passages"] = dict(zip(item.docids, item.texts))
    rec["teacher"] = teacher_name
    rec["stats"] = asdict(outcome.stats)
    return rec


class _KeepOrderTeacher:
    """Answers every window with its own order: cheap stand-in to replay a run's window schedule."""

    def rank_windows(self, windows: Sequence[Window]) -> list[WindowRanking]:
        return [WindowRanking(order=list(range(len(w.passages))), ranked=len(w.passages)) for w in windows]


def label_order(items: Sequence[Candidates], config: LabelConfig) -> list[str]:
    """Qids in the order one process appends their labels when it labels all ``items``.

    Queries of a batch finish (and are written) after different numbers of teacher rounds, so the
    file is not in input order. That order depends only on list lengths and the window schedule,
    never on the teacher's answers, so replaying the schedule with a stand-in teacher gives it; a
    data-parallel merge uses it to write the file one process would.
    """
    outcomes = iter_complete_labels(_KeepOrderTeacher(), items, config.window_size, config.stride, config.max_passes,
                                    config.batch_size, max_retries=0, retry_wait=0.0)
    return [outcome.item.qid for outcome in outcomes]


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
    items, qrels = load_candidates(config.input, config.run, config.top_n, config.qrels)
    if config.max_queries is not None:
        items = items[: config.max_queries]
    dp = detect()
    if teacher is None:
        from .teachers import build_teacher

        first_stage = {it.qid: {d: r for r, d in enumerate(it.docids)} for it in items}
        # Each GPU process puts a local teacher on its own GPU unless --device says otherwise.
        teacher = build_teacher(config.teacher, qrels=qrels, first_stage=first_stage, base_url=config.base_url,
                                api_key_env=config.api_key_env, device=config.device or dp.device, dtype=config.dtype,
                                max_passage_tokens=config.max_passage_tokens, timeout=config.timeout,
                                prompt=config.prompt)
    Path(config.output).parent.mkdir(parents=True, exist_ok=True)
    # Only the main process reads (and repairs) the logs, before anyone appends; the others get the ids.
    shards_present = dp.broadcast(bool(existing_shards(config.output)) if dp.is_main else None)
    done = set(dp.broadcast(sorted(union_ids(config.output, key=_label_qid)) if dp.is_main else None))
    remaining = [it for it in items if it.qid not in done]
    todo = dp.share(remaining)
    out_path = own_log(config.output, dp, shards_present)
    err_path = own_log(config.errors_file, dp, shards_present)
    if dp.is_main:
        logger.info("%d queries, %d already labelled, %d to do", len(items), len(items) - len(remaining),
                    len(remaining))
    summary = {"queries": len(items), "skipped_done": len(items) - len(remaining), "labelled": 0, "failed": 0,
               "calls": 0, "prompt_tokens": 0, "generated_tokens": 0, "seconds": 0.0}
    from tqdm.auto import tqdm

    start = time.perf_counter()
    with open(out_path, "a", encoding="utf-8") as out, open(err_path, "a", encoding="utf-8") as err, \
            tqdm(total=len(todo), desc="labels", disable=not config.progress or not dp.is_main, unit="q") as bar:
        for outcome in iter_complete_labels(teacher, todo, config.window_size, config.stride, config.max_passes,
                                            config.batch_size, config.max_retries, config.retry_wait):
            for key in ("calls", "prompt_tokens", "generated_tokens"):
                summary[key] += getattr(outcome.stats, key)
            if outcome.error:
                summary["failed"] += 1
                logger.warning("query %s failed: %s", outcome.item.qid, outcome.error)
                append_record(err, {"qid": outcome.item.qid, "error": outcome.error, "stats": asdict(outcome.stats),
                                    "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, ensure_ascii=False)
            else:
                summary["labelled"] += 1
                append_record(out, label_record(outcome, config.teacher, config.texts), ensure_ascii=False)
            bar.update(1)
    if out_path != Path(config.output):
        dp.wait()  # every shard is complete
        if dp.is_main:
            merge_shards(config.output, label_order(items, config), key=_label_qid, ensure_ascii=False)
            position = {it.qid: i for i, it in enumerate(items)}
            merge_appended(config.errors_file, lambda rec: position.get(str(rec.get("qid")), len(items)),
                           ensure_ascii=False)
    parts = dp.gather({key: summary[key] for key in _SUMMED} | {"seconds": time.perf_counter() - start})
    summary.update({key: sum(part[key] for part in parts) for key in _SUMMED})
    summary["seconds"] = round(max(part["seconds"] for part in parts), 3)  # wall time of the slowest process
    summary["processes"] = dp.world
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``rerank labels``: build complete listwise labels (see the module docstring)."""
    from transformers import HfArgumentParser

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = HfArgumentParser(LabelConfig, prog="rerank labels", description=__doc__.split("\n\n")[0])
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


if __name__ == "__main__":
    raise SystemExit(main())
