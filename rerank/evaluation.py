"""Resumable reranking evaluation on TREC-style collections (MS MARCO / TREC DL / BEIR)."""

from __future__ import annotations

import json
import logging
import random
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ir_measures
from ir_measures import RR, R, nDCG
from tqdm.auto import tqdm

from rerank.config import PruningConfig
from rerank.data.collection import Collection, default_run_path, load_collection, read_run, write_run
from rerank.data.resume import append_record, check_same_settings, save_settings
from rerank.distributed import DataParallel, detect, existing_shards, load_union, merge_shards, own_log, remove_logs
from rerank.fusion import check_weight
from rerank.models import recommended_settings, resolve_device
from rerank.precision import resolve_precision
from rerank.prompting.presets import get_preset
from rerank.reranker import Reranker

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """What to rerank and how; one row of a results table."""

    collection: str = field(metadata={"help": "Collection folder (shared-data or BEIR layout) or an ir_datasets id."})
    run: str | None = field(
        default=None, metadata={"help": "First-stage TREC run; default: the folder's run.bm25.trec / run.given.trec."}
    )
    depth: int = field(default=100, metadata={"help": "First-stage candidates reranked per query."})
    strategy: str = field(
        default="full", metadata={"help": "full | sliding | none (none = score the first-stage run as is)."}
    )
    model: str | None = field(
        default=None, metadata={"help": "Model path or hub id; None = the default SmolLM2 model."}
    )
    limit_queries: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N judged queries (sorted by qid)."}
    )
    output_dir: str = field(
        default="runs/eval", metadata={"help": "Where rankings.jsonl, run.trec and metrics.json go."}
    )
    window_size: int = field(default=20, metadata={"help": "Sliding window size."})
    stride: int = field(default=10, metadata={"help": "Sliding window stride."})
    max_passage_tokens: int | None = field(default=100, metadata={"help": "Token budget per passage."})
    scoring: str | None = field(
        default=None,
        metadata={
            "help": (
                "generate (decode the permutation) | single_pass (identifier log-probs from one prefill) | head "
                "(per-passage readout, one prefill); None = what the model recommends (head for the shipped default, "
                "else generate)."
            )
        },
    )
    prompt: str = field(
        default="lazyrank",
        metadata={
            "help": "Prompt preset (rerank.prompting.presets.PRESETS), e.g. rank_zephyr for RankZephyr checkpoints."
        },
    )
    first_stage_weight: float | None = field(
        default=None,
        metadata={
            "help": (
                "Fusion of the model's ranking with the first-stage order (rerank.fusion; 0 = model alone, 1 = first "
                "stage); None = what the model recommends, else 0."
            )
        },
    )
    pruning: str | None = field(
        default=None,
        metadata={
            "help": (
                "Prefill pruning: 'recommended' (the model folder's schedule, with the weights tuned for it), a "
                "preset ('default', 'fast') or depth:keep pairs like '0.1:0.5,0.33:0.25'; None = unpruned."
            )
        },
    )
    rank_top_k: int | None = field(
        default=None,
        metadata={
            "help": (
                "The top_k passed to Reranker.rerank(): decide only the best k (generate decodes only k "
                "identifiers); the rest keep the model's remaining order. None = all."
            )
        },
    )
    dtype: str | None = field(default=None, metadata={"help": "Model dtype (float32, bfloat16)."})
    precision: str | None = field(
        default=None, metadata={"help": "CPU precision (auto | fp32 | bf16 | int8, rerank.precision); None = auto."}
    )
    batch_size: int = field(default=1, metadata={"help": "Queries decoded together."})
    resume: bool = field(default=True, metadata={"help": "Skip queries already in output_dir/rankings.jsonl."})

    def __post_init__(self):
        if self.strategy not in ("full", "sliding", "none"):
            raise ValueError(f"strategy must be full, sliding or none, got {self.strategy!r}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.rank_top_k is not None and self.rank_top_k < 1:
            raise ValueError(f"rank_top_k must be >= 1 or None, got {self.rank_top_k}")
        if self.limit_queries is not None and self.limit_queries < 1:
            raise ValueError(f"limit_queries must be >= 1, got {self.limit_queries}")
        if self.pruning not in (None, "recommended"):
            PruningConfig.from_spec(self.pruning)  # fail before any model loads

        get_preset(self.prompt)  # an unknown preset fails before any model loads
        if self.first_stage_weight is not None:
            self.first_stage_weight = check_weight(self.first_stage_weight)


def relevance_cut(graded: bool) -> int:
    """The grade from which a passage counts as relevant: 2 on TREC DL's 0-3 scale, else 1."""
    return 2 if graded else 1


def binary_labels(judged: dict[str, int], docids: Sequence[str], graded: bool) -> list[int]:
    """1 for each of ``docids`` judged relevant (:func:`relevance_cut`), 0 otherwise (unjudged included).

    >>> binary_labels({"a": 1, "b": 2}, ["a", "b", "c"], graded=True)
    [0, 1, 0]
    """
    cut = relevance_cut(graded)
    return [int(judged.get(d, 0) >= cut) for d in docids]


def standard_measures(graded: bool) -> dict:
    """The reported ir-measures by name: nDCG@10, RR@10 and R@100 (binary ones at rel >= 2 when graded).

    Other harnesses (pt.Experiment in eval/pyterrier_dl19.py) take these same measure objects, so
    their numbers are this module's.
    """

    rel = relevance_cut(graded)
    return {"ndcg@10": nDCG @ 10, "rr@10": RR(rel=rel) @ 10, "recall@100": R(rel=rel) @ 100}


def compute_metrics(
    qrels: dict[str, dict[str, int]], run: dict[str, list[tuple[str, float]]], graded: bool
) -> dict[str, float]:
    """nDCG@10, RR@10 and R@100 with ir-measures (binary measures at rel >= 2 when graded)."""

    measures = standard_measures(graded)
    judged, flat_run = _ir_inputs(qrels, run)
    agg = ir_measures.calc_aggregate(list(measures.values()), judged, flat_run)
    return {name: float(agg[m]) for name, m in measures.items()}


def per_query_ndcg(qrels: dict[str, dict[str, int]], run: dict[str, list[tuple[str, float]]]) -> dict[str, float]:
    """nDCG@10 of each query of ``run`` (ir-measures, the same measure as :func:`compute_metrics`)."""
    judged, flat_run = _ir_inputs(qrels, run)
    return {m.query_id: float(m.value) for m in ir_measures.iter_calc([nDCG @ 10], judged, flat_run)}


def _ir_inputs(qrels: dict[str, dict[str, int]], run: dict[str, list[tuple[str, float]]]) -> tuple[dict, dict]:
    """The judgements of the run's queries and the run as ir-measures reads them."""
    flat_run = {qid: {doc: float(score) for doc, score in ranked} for qid, ranked in run.items()}
    return {qid: docs for qid, docs in qrels.items() if qid in flat_run}, flat_run


def scored_by_rank(ranked: Sequence[str]) -> list[tuple[str, float]]:
    """Docids best first, each with a score that falls by one per rank (what a TREC run needs).

    >>> scored_by_rank(["d3", "d1"])
    [('d3', 2.0), ('d1', 1.0)]
    """
    return [(d, float(len(ranked) - r)) for r, d in enumerate(ranked)]


def paired_randomization(a: Sequence[float], b: Sequence[float], trials: int = 20000, seed: int = 0) -> float:
    """Two-sided p-value of the mean of ``a - b`` under random sign flips of the per-query differences.

    >>> paired_randomization([0.5, 0.4], [0.5, 0.4])
    1.0
    >>> paired_randomization([1.0] * 12, [0.0] * 12) < 0.001
    True
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"need two equally long, non-empty lists of per-query values, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    observed = abs(sum(diffs)) - 1e-12
    rng = random.Random(seed)
    hits = sum(abs(sum(d if rng.random() < 0.5 else -d for d in diffs)) >= observed for _ in range(trials))
    return hits / trials


# Fields that change no ranking: a resumed run may differ in these.
_RESUME_FREE_FIELDS = {"output_dir", "resume", "limit_queries", "batch_size"}


def kendall_tau(a: Sequence, b: Sequence) -> float:
    """Kendall tau-a between two rankings of the same items (best first); 1.0 for fewer than two."""
    pos_b = {x: i for i, x in enumerate(b)}
    n = len(a)
    if n < 2:
        return 1.0
    score = sum(1 if pos_b[a[i]] < pos_b[a[j]] else -1 for i in range(n) for j in range(i + 1, n))
    return score / (n * (n - 1) / 2)


def top_k_overlap(a: Sequence, b: Sequence, k: int = 10) -> float:
    """Share of the first ``k`` of ranking ``b`` that is also in the first ``k`` of ranking ``a``."""
    return len(set(a[:k]) & set(b[:k])) / max(1, min(k, len(b)))


def _check_same_ranking_setup(out_dir: Path, cfg: EvalConfig) -> None:
    """Refuse to resume rankings made under another setup (model, scoring, pruning, ...): mixing
    them would report metrics of no single system."""
    check_same_settings(
        out_dir / "eval_config.json",
        asdict(cfg),
        ignore=_RESUME_FREE_FIELDS,
        advice="use another --output_dir, or --no_resume to start over there",
    )


def _load_done(path: Path) -> dict[str, dict]:
    """Finished queries by qid: rankings.jsonl plus the shard logs of an unfinished data-parallel run."""
    return load_union(path, key=_qid)


def _qid(record: dict) -> str:
    return str(record["qid"])


def _merge_rankings(records_path: Path, qids: list[str], dp: DataParallel) -> dict[str, dict]:
    """Wait for every process, let the main one append the shard records to rankings.jsonl in query
    order (the order one process writes), and return the merged records on every process."""
    dp.wait()
    if dp.is_main:
        merge_shards(records_path, qids, key=_qid)
    dp.wait()  # no process reads rankings.jsonl while the main one appends to it
    return _load_done(records_path)


def _resolve_model_settings(cfg: EvalConfig, reranker, device: str | None = None) -> None:
    """Fill the settings left as None with what actually runs (the given reranker's, else the model
    folder's lazyrank.json, else the defaults), so the resume check compares real settings. The CPU
    precision ``auto`` becomes the one this CPU runs: rankings read in fp32 and bf16 do not mix."""
    if cfg.precision in (None, "auto") and cfg.dtype is None:
        given = getattr(reranker, "config", None)
        if given is not None:  # a reranker built by the caller says what it runs (None: not from_pretrained)
            cfg.precision = given.precision or cfg.precision
        elif resolve_device(device).type == "cpu":  # what from_pretrained will load
            cfg.precision = resolve_precision(cfg.precision)

    defaults = {"scoring": "generate", "first_stage_weight": 0.0}
    recommended = None
    for name, default in defaults.items():
        if getattr(cfg, name) is not None:
            continue
        given = getattr(getattr(reranker, "config", None), name, None)
        if given is None:
            recommended = recommended_settings(cfg.model) if recommended is None else recommended
            given = recommended.get(name, default)
        setattr(cfg, name, given)


def _judged_first_stage(cfg: EvalConfig, collection: Collection) -> tuple[dict[str, list[str]], list[str]]:
    """The first-stage run to rerank and the queries to evaluate (judged, with text; ``limit_queries``)."""
    run_path = cfg.run or default_run_path(collection)
    if run_path is not None:
        first_stage = read_run(run_path)
    elif collection.first_stage is not None:
        first_stage, run_path = collection.first_stage, cfg.collection
    else:
        raise FileNotFoundError(f"no first-stage run given and none found in {cfg.collection}; pass --run")
    qids = sorted(q for q in first_stage if q in collection.qrels and q in collection.queries)
    if not qids:
        raise ValueError(f"no query of {run_path} is both judged and in queries.jsonl")
    return first_stage, qids[: cfg.limit_queries] if cfg.limit_queries else qids


def _open_logs(cfg: EvalConfig, out_dir: Path, records_path: Path, dp: DataParallel) -> tuple[dict, list[str], bool]:
    """Check, repair or clear the ranking logs; (records done, their ids on every process, shards present)."""
    shards_present = bool(existing_shards(records_path))
    if cfg.resume and (records_path.exists() or shards_present):
        _check_same_ranking_setup(out_dir, cfg)  # every process checks: all fail alike, none waits forever
    done: dict[str, dict] = {}
    if dp.is_main:
        if not cfg.resume:
            remove_logs([records_path])
            shards_present = False
        # Only the main process reads (and repairs) the logs, before anyone appends; the others get the ids.
        done = _load_done(records_path) if cfg.resume else {}
        save_settings(out_dir / "eval_config.json", asdict(cfg))
    done_ids = dp.broadcast(sorted(done) if dp.is_main else None)
    return done, done_ids, dp.broadcast(shards_present)


def _load_reranker(cfg: EvalConfig, dp: DataParallel):
    return Reranker.from_pretrained(
        cfg.model,
        device=dp.device,
        dtype=cfg.dtype,
        precision=cfg.precision,
        strategy=cfg.strategy,
        window_size=cfg.window_size,
        stride=cfg.stride,
        max_passage_tokens=cfg.max_passage_tokens,
        batch_size=cfg.batch_size,
        scoring=cfg.scoring,
        first_stage_weight=cfg.first_stage_weight,
        prompt=cfg.prompt,
        pruning=cfg.pruning,  # a spec string; "recommended" is resolved against the model folder
    )


def _rank_into_log(
    cfg: EvalConfig, reranker, collection: Collection, first_stage: dict[str, list[str]], todo: list[str], fh, on_record
) -> None:
    """Rerank ``todo`` in batches, appending one record per query to ``fh``."""
    for start in range(0, len(todo), max(1, cfg.batch_size)):
        batch = todo[start : start + max(1, cfg.batch_size)]
        cands = [[d for d in first_stage[q][: cfg.depth] if d in collection.corpus] for q in batch]
        missing = [len(first_stage[q][: cfg.depth]) - len(c) for q, c in zip(batch, cands)]
        if any(missing):
            logger.warning("%d candidate ids are missing from the corpus and were skipped", sum(missing))
        if cfg.strategy == "none":
            results = [None] * len(batch)
        else:
            results = reranker.rerank_batch(
                [collection.queries[q] for q in batch],
                [[collection.corpus[d] for d in c] for c in cands],
                top_k=cfg.rank_top_k,
            )
        for qid, cand, res in zip(batch, cands, results):
            order = list(range(len(cand))) if res is None else res.order
            rec = {
                "qid": qid,
                "ranking": [cand[i] for i in order],
                "stats": res.stats.to_dict() if res is not None else None,
            }
            append_record(fh, rec)
            on_record(qid, rec)


def _trec_run(qids: list[str], done: dict[str, dict], first_stage: dict[str, list[str]]) -> dict:
    """Reranked heads, then the candidates beyond depth in their first-stage order; scores by rank."""
    run: dict[str, list[tuple[str, float]]] = {}
    for qid in qids:
        ranked = list(done[qid]["ranking"])
        seen = set(ranked)
        ranked += [d for d in first_stage[qid] if d not in seen]
        run[qid] = scored_by_rank(ranked)
    return run


def _cost_summary(cfg: EvalConfig, reranker, stats: list[dict]) -> dict:
    def mean(key: str) -> float:
        return statistics.fmean(s[key] for s in stats) if stats else 0.0

    return {
        "seconds_per_query": mean("total_seconds"),
        "prefill_seconds_per_query": mean("prefill_seconds"),
        "decode_seconds_per_query": mean("decode_seconds"),
        "prompt_tokens_per_query": mean("prompt_tokens"),
        "generated_tokens_per_query": mean("generated_tokens"),
        "llm_calls_per_query": mean("llm_calls"),
        "computed_fraction": mean("computed_fraction") if stats else 1.0,
        "fallbacks": sum(1 for s in stats if s.get("fallback")),
        "scoring": (
            getattr(getattr(reranker, "config", None), "scoring", cfg.scoring) if cfg.strategy != "none" else None
        ),
        "pruning": cfg.pruning if cfg.strategy != "none" else None,
        "config": asdict(cfg),
    }


def evaluate(cfg: EvalConfig, reranker=None, collection: Collection | None = None, progress: bool = True) -> dict:
    """Rerank the first-stage run of ``cfg.collection`` and score it; returns the metrics dict.

    Writes ``rankings.jsonl`` (one record per query, appended as it goes: an interrupted run
    resumes), ``run.trec`` and ``metrics.json`` into ``cfg.output_dir``. Under ``accelerate launch``
    with N processes each ranks its share of the queries into a shard log and the main process merges
    them into the same files (see :mod:`rerank.distributed`); ``metrics["processes"]`` is N.
    """
    collection = collection or load_collection(cfg.collection)
    first_stage, qids = _judged_first_stage(cfg, collection)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records_path = out_dir / "rankings.jsonl"
    # Several processes under `accelerate launch`: each ranks every N-th remaining query into its own
    # shard log; one process (the usual case) writes rankings.jsonl directly, as always.
    dp = detect()
    if cfg.strategy != "none":
        _resolve_model_settings(cfg, reranker, dp.device)
    done, done_ids, shards_present = _open_logs(cfg, out_dir, records_path, dp)
    if cfg.strategy != "none" and reranker is None:
        reranker = _load_reranker(cfg, dp)
    finished = set(done_ids)
    todo = dp.share([q for q in qids if q not in finished])
    log_path = own_log(records_path, dp, shards_present)
    if dp.distributed:
        logger.info(
            "process %d of %d: %d of the %d remaining queries",
            dp.rank,
            dp.world,
            len(todo),
            len(qids) - len(finished & set(qids)),
        )
    bar = tqdm(
        total=len(qids) if not dp.distributed else len(todo),
        initial=len(qids) - len(todo) if not dp.distributed else 0,
        desc=f"rerank {cfg.strategy}" + (f" [{dp.rank}/{dp.world}]" if dp.distributed else ""),
        unit="q",
        disable=not progress or not dp.is_main,
    )

    def on_record(qid: str, rec: dict) -> None:
        if log_path == records_path:
            done[qid] = rec
        bar.update(1)

    with open(log_path, "a", encoding="utf-8") as fh:
        _rank_into_log(cfg, reranker, collection, first_stage, todo, fh, on_record)
    bar.close()
    if log_path != records_path:
        done = _merge_rankings(records_path, qids, dp)
    missing_qids = [q for q in qids if q not in done]
    if missing_qids:
        raise RuntimeError(
            f"{records_path} lacks {len(missing_qids)} queries after the run (e.g. {missing_qids[0]!r}): "
            "a process stopped early; run the same command again to resume"
        )
    run = _trec_run(qids, done, first_stage)
    if dp.is_main:
        write_run(out_dir / "run.trec", run, tag=f"lazyrank-{cfg.strategy}")
    metrics = compute_metrics(collection.qrels, run, collection.graded)
    metrics["queries"] = len(qids)
    metrics.update(_cost_summary(cfg, reranker, [done[q]["stats"] for q in qids if done[q].get("stats")]))
    metrics["processes"] = dp.world
    if dp.is_main:
        with open(out_dir / "metrics.json", "w", encoding="utf-8") as fh:
            json.dump(metrics, fh, indent=2)
    return metrics


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table of metric rows."""

    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    widths = [max([len(c)] + [len(cell(r.get(c, ""))) for r in rows]) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(cell(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)
