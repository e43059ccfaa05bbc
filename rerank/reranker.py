"""The user-facing listwise reranker."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import fields, replace

from rerank.batching import batcher_for
from rerank.calibration import HeadCalibration, calibration_for_model
from rerank.chunked_reading import rank_by_chunks, rank_by_tournament
from rerank.config import PruningConfig, RerankerConfig, pruning_tag, readout_tag
from rerank.engine import pruning as _pruning
from rerank.engine.decoding import TokenTable
from rerank.fusion import fuse_with_first_stage
from rerank.inputs import check_batch, check_documents, check_query, check_top_k
from rerank.models import load_model_and_tokenizer, pruning_and_weights, recommended_settings, resolve_device
from rerank.precision import apply_cpu_precision, check_precision, resolve_precision
from rerank.prompting.presets import get_preset
from rerank.prompting.prompts import PromptEncoding, encode_prompt
from rerank.ranking import Window, WindowRanking, sliding_orders
from rerank.results import RankingResult, RankingStats
from rerank.scorers import scorer_class
from rerank.scorers.base import Scorer

logger = logging.getLogger(__name__)


def memo_key(input_ids: Sequence[int], top_k: int | None, reading: str | None) -> tuple:
    """What ``Reranker.window_memo`` files a readout under: the prompt, ``top_k`` and, for a pruned or
    reduced-precision read, its :func:`~rerank.config.readout_tag`."""
    return (tuple(input_ids), top_k) if reading is None else (tuple(input_ids), top_k, reading)


class Reranker:
    """Listwise LLM reranker: full ranking in one prompt, or sliding windows.

    Example:
        >>> rr = Reranker.from_pretrained()                       # doctest: +SKIP
        >>> rr.rank("what is a llama", ["A llama is a camelid.", "Paris is in France."])  # doctest: +SKIP
        [{'corpus_id': 0, 'score': 1.0}, {'corpus_id': 1, 'score': 0.5}]
    """

    def __init__(
        self, model, tokenizer, config: RerankerConfig | None = None, calibration: HeadCalibration | None = None
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or RerankerConfig()
        self.preset = get_preset(self.config.prompt)
        self.table = TokenTable.for_tokenizer(tokenizer, self.preset.ids)
        self.max_context = self.config.max_context or getattr(model.config, "max_position_embeddings", None) or 4096
        self._answer_budget: dict[int, int] = {}
        # Benchmarks that compare long-list methods set a dict here: identical prompts are then scored
        # once and their measured cost is reported again to every method that needs them.
        self.window_memo: dict | None = None
        # Calibration fitting sets a callable here: it sees every prompt's kind, window and raw readouts.
        self.prompt_observer: Callable[[str, Window, WindowRanking], None] | None = None
        self._scorers: dict[str | None, Scorer] = {}
        self.scorer = self._scorer(self.config.pruning)
        if self.config.chunk_pruning is not None:
            if not self.scorer.merges_chunks:
                raise ValueError(
                    f"chunk_pruning prunes the chunks a per-passage scorer reads a long list in (scoring='head'); "
                    f"scoring={self.config.scoring!r} reads no chunks: use pruning instead"
                )
            self._scorer(self.config.chunk_pruning)
        if calibration is not None and not self.scorer.merges_chunks:
            raise ValueError(f"a head calibration applies to scoring='head' only, not scoring={self.config.scoring!r}")
        if calibration is not None and calibration.layout != self.config.chunk_layout:
            # Still usable (each prompt's order is kept), but chunks of a long list are merged by a
            # prompt-mean term fitted on the other kind of prompt.
            logger.warning(
                "the calibration was fitted on %s chunks, these long lists are read in %s chunks: refit it with "
                "scripts/fit_calibration.py --layout %s for probabilities that hold across chunks",
                calibration.layout,
                self.config.chunk_layout,
                self.config.chunk_layout,
            )
        self.calibration = calibration

    def _scorer(self, pruning: PruningConfig | None) -> Scorer:
        """The scorer that reads prompts with ``pruning`` (built once per schedule, checked when built)."""
        tag = pruning_tag(pruning)
        if tag not in self._scorers:
            if pruning is not None:
                _pruning.check_supported(self.model, pruning)
            cls = scorer_class(self.config.scoring)
            self._scorers[tag] = cls(self.model, self.tokenizer, self.table, self.preset, pruning)
        return self._scorers[tag]

    def _pruning_for(self, prompt_kind: str) -> PruningConfig | None:
        """The schedule a prompt of ``prompt_kind`` is read with (``chunk_pruning`` for chunks, when set)."""
        if prompt_kind == "chunk" and self.config.chunk_pruning is not None:
            return self.config.chunk_pruning
        return self.config.pruning

    @property
    def score_kind(self) -> str:
        """What the model's scores are: ``"probability"`` when calibrated, else the scorer's kind."""
        return "probability" if self.calibration is not None else self.scorer.score_kind

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        device=None,
        dtype=None,
        precision: str | None = None,
        calibration: str | os.PathLike | bool | None = None,
        strategy: str = "full",
        window_size: int | None = None,
        stride: int | None = None,
        max_passage_tokens: int | None = 100,
        pruning: PruningConfig | str | None = None,
        **kwargs,
    ) -> Reranker:
        """Load a model and build a reranker.

        ``model=None`` is the shipped default reranker (SmolLM2-135M-Instruct + the packaged LoRA
        weights, ``scoring="head"``); ``model="base"`` the raw SmolLM2-135M-Instruct; otherwise a
        path or hub id. Extra keyword arguments are :class:`RerankerConfig` fields (``scoring``,
        ``num_passes``, ``on_overflow``, ``batch_size`` (prompts per forward; default 1 on CPU, where padded
        batches are slower, else 4), ``max_context``, ``prompt``: the prompt
        preset, e.g. ``prompt="rank_zephyr"`` for RankZephyr, see :mod:`rerank.prompting.presets`;
        ``first_stage_weight``: fusion with the input order, see :mod:`rerank.fusion`). Fields left
        out take the model folder's recommendation (its ``lazyrank.json``, e.g. ``scoring``,
        ``window_size``), else the defaults (``scoring="generate"``, ``window_size=20``, ``stride=10``).

        ``calibration``: ``None`` uses the model folder's ``calibration.json`` when it has one (the
        shipped weights do: scores become P(relevant), see :mod:`rerank.calibration`), ``False``
        keeps the raw head readout, a path loads that file; a file fitted for other weights is refused.

        ``precision`` (CPU only, :mod:`rerank.precision`): ``None`` / ``"auto"`` runs the decoder's linear
        layers in bf16 where the CPU has native bf16 (measured within 0.005 nDCG@10 of fp32 for the shipped
        weights) and fp32 elsewhere; ``"fp32"`` forces fp32. ``config.precision`` records what ran.

        ``pruning``: a :class:`PruningConfig`, a spec for :meth:`PruningConfig.from_spec` (``"default"``,
        ``"fast"``, ``"late"``, ``"0.5:0.5,..."``) or ``"recommended"``, the schedule the model folder names in its
        ``lazyrank.json``. A folder may ship weights tuned for its schedule (trained with it in the
        forward); they are loaded whenever that schedule is asked for, and the folder's dense weights
        otherwise. The shipped default names none: no schedule kept its nDCG@10 within 0.005 of the
        dense readout (docs/benchmarks.md#pruned-head-scoring-with-tuned-weights).

        Example:
            >>> fast = Reranker.from_pretrained("runs/prune/model", pruning="recommended")  # doctest: +SKIP
            >>> fast.rerank("what do bees eat", passages).stats.computed_fraction            # doctest: +SKIP
            0.68
        """

        known = {f.name for f in fields(RerankerConfig)}
        unknown = set(kwargs) - known
        if unknown:
            raise TypeError(f"unknown argument(s) for Reranker.from_pretrained: {sorted(unknown)}")
        pruning, weights = pruning_and_weights(model, pruning)
        # Settings the model folder recommends (lazyrank.json) fill what the caller left out.
        # strategy and max_passage_tokens are this method's own arguments: the caller's values stand.
        skip = {"pruning", "strategy", "max_passage_tokens"}
        recommended = {k: v for k, v in recommended_settings(model).items() if k in known and k not in skip}
        folder_window, folder_stride = recommended.pop("window_size", 20), recommended.pop("stride", 10)
        window_size = folder_window if window_size is None else window_size
        stride = folder_stride if stride is None else stride
        chosen = {name for name, value in kwargs.items() if value is not None}
        for name, value in recommended.items():
            if kwargs.get(name) is None:
                kwargs[name] = value
        if kwargs.get("chunk_layout") == "interleaved" and "deep_leaders" not in chosen:
            # A recommended deep_leaders seeds the final prompt with the first consecutive chunk.
            kwargs["deep_leaders"] = None
        if kwargs.get("scoring") is None:
            kwargs["scoring"] = "generate"
        if kwargs.get("batch_size") is None and resolve_device(device).type == "cpu":
            # One prompt per forward on CPU: a padded batch of a tournament's chunks took about 1.4x the
            # time of the same prompts read one by one (docs/benchmarks.md, "bf16 linear layers ...").
            kwargs["batch_size"] = 1
        config = RerankerConfig(
            model=model,
            device=None if device is None else str(device),
            dtype=None if dtype is None else str(dtype).replace("torch.", ""),
            strategy=strategy,
            window_size=window_size,
            stride=stride,
            max_passage_tokens=max_passage_tokens,
            pruning=pruning,
            **kwargs,
        )
        check_precision(precision)  # before the model loads: a typo should not cost a load
        if precision not in (None, "auto") and dtype is not None:
            raise ValueError(f"give dtype ({dtype!r}) or precision ({precision!r}), not both")
        lm, tok = load_model_and_tokenizer(weights, device=device, dtype=dtype)
        if dtype is None and next(lm.parameters()).device.type == "cpu":
            # CPU precision by measurement (rerank.precision): "auto" takes the cheapest precision
            # measured lossless for the shipped model that this CPU runs natively, else fp32.
            chosen = resolve_precision(precision)
            lm = apply_cpu_precision(lm, chosen)
            config.precision = chosen
        return cls(lm, tok, config, calibration=calibration_for_model(weights, calibration, config.scoring))

    # ------------------------------------------------------------------ window primitive
    def encode(self, window: Window) -> PromptEncoding:
        """The prompt for a window (memoised on the window)."""
        if "encoding" not in window.cache:
            # rank_llm's shrink-to-fit is a window rule: a full-list prompt over the context falls
            # back to sliding windows (on_overflow) rather than being squeezed to a few words each.
            shrink = self.preset.shrink_to_fit and len(window.passages) <= self.config.window_size
            window.cache["encoding"] = encode_prompt(
                self.tokenizer,
                window.query,
                window.passages,
                window.passage_tokens or self.config.max_passage_tokens,
                self.preset,
                max_tokens=self.max_context if shrink else None,
                answer_tokens=self.answer_budget(len(window.passages)) if shrink else None,
            )
        return window.cache["encoding"]

    def answer_budget(self, num: int) -> int:
        """Positions the answer needs after the prompt (the scorer's: a complete ranking, end-of-turn
        included, the longest identifier, or nothing)."""
        if num not in self._answer_budget:
            self._answer_budget[num] = self.scorer.answer_tokens(num)
        return self._answer_budget[num]

    def fits(self, window: Window) -> bool:
        """Whether the prompt plus a complete answer fit the model's context (and the identifier format)."""
        if self._over_identifier_limit(window):
            return False  # letters stop at [Z]: too many passages for one prompt
        return len(self.encode(window).input_ids) + self.answer_budget(len(window.passages)) <= self.max_context

    def _over_identifier_limit(self, window: Window) -> bool:
        limit = self.preset.ids.max_count
        return limit is not None and len(window.passages) > limit

    def _prompt_size(self, window: Window) -> str:
        """Prompt size for messages; a window over the identifier limit (letters) has no prompt."""
        if self._over_identifier_limit(window):
            return f"over the {self.preset.ids.max_count} {self.preset.identifiers} identifiers"
        return f"{len(self.encode(window).input_ids)} prompt tokens"

    def rank_windows(self, windows: Sequence[Window], prompt_kind: str = "single") -> list[WindowRanking]:
        """Rank independent windows (constrained decoding, or single-pass scoring), ``batch_size`` prompts at
        a time. With a calibration, each window's scores are probabilities for prompts of ``prompt_kind``
        (``rerank.calibration.PROMPT_KINDS``: how its passages were chosen)."""
        results = self.read_windows(windows, self._pruning_for(prompt_kind))
        if self.prompt_observer is not None:
            for window, ranking in zip(windows, results):
                self.prompt_observer(prompt_kind, window, ranking)
        if self.calibration is None:
            return results
        # The memo keeps raw readouts: calibration is per prompt and cheap.
        return [
            r if r.scores is None else replace(r, scores=self.calibration.probabilities(r.scores, prompt_kind))
            for r in results
        ]

    def read_windows(
        self, windows: Sequence[Window], pruning: PruningConfig | None | str = "config"
    ) -> list[WindowRanking]:
        """:meth:`rank_windows` without the calibration: the scorer's own scores (raw head readouts), read
        with ``pruning`` (by default the config's ``pruning``)."""
        if pruning == "config":
            pruning = self.config.pruning
        scorer, tag = self._scorer(pruning), readout_tag(pruning, self.config.precision)
        results: list[WindowRanking | None] = [None] * len(windows)
        todo = []
        for i, w in enumerate(windows):
            # One passage has only one order, but a scorer whose scores are merged across chunks still
            # needs its score.
            if len(w.passages) == 0 or (len(w.passages) == 1 and not self.scorer.merges_chunks):
                results[i] = WindowRanking(order=list(range(len(w.passages))), ranked=len(w.passages))
            else:
                if not self.fits(w):
                    raise ValueError(
                        f"a window of {len(w.passages)} passages needs {len(self.encode(w).input_ids)} prompt tokens "
                        f"plus {self.answer_budget(len(w.passages))} answer tokens, over the context of "
                        f"{self.max_context}; lower max_passage_tokens or window_size, or shorten the query "
                        "(it is written twice and never cut)"
                    )
                todo.append(i)
        if self.window_memo is not None:
            # A pruned or bf16 read of a prompt is another readout than its dense fp32 read: the key says which.
            keys = {i: memo_key(self.encode(windows[i]).input_ids, windows[i].top_k, tag) for i in todo}
            for i in [i for i in todo if keys[i] in self.window_memo]:
                results[i] = self.window_memo[keys[i]]
            todo = [i for i in todo if results[i] is None]
        # Similar lengths together keep left padding small.
        todo.sort(key=lambda i: len(self.encode(windows[i]).input_ids))
        size = self.config.batch_size
        for chunk_start in range(0, len(todo), size):
            chunk = todo[chunk_start : chunk_start + size]
            encs = [self.encode(windows[i]) for i in chunk]
            for i, ranking in zip(chunk, scorer.rank(encs, [windows[i].top_k for i in chunk])):
                results[i] = ranking
                if self.window_memo is not None:
                    self.window_memo[keys[i]] = ranking
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ routing and merging
    def _route(self, windows: Sequence[Window], stats: Sequence[RankingStats]) -> dict[str, list[int]]:
        """Which queries are ranked in one prompt (``full``), in chunks merged by score (``chunks``),
        chunks plus a final prompt over their leaders (``tournament``) or by sliding windows
        (``sliding``); lists of 0 or 1 passages need no model (``trivial``)."""
        routes: dict[str, list[int]] = {"trivial": [], "full": [], "chunks": [], "tournament": [], "sliding": []}
        for i, w in enumerate(windows):
            if len(w.passages) <= 1:
                routes["trivial"].append(i)
            elif self.scorer.merges_chunks:
                method = self._long_list_method(w)
                if method != "full":
                    stats[i].fallback = method
                if method in ("chunks", "tournament"):
                    stats[i].chunk_layout = self.config.chunk_layout
                routes[method].append(i)
            elif self.config.strategy == "sliding":
                routes["sliding"].append(i)
            elif self.fits(w):
                routes["full"].append(i)
            elif self.config.on_overflow == "sliding":
                logger.warning(
                    "query %d: %d passages (%s) exceed the %d-token context or the identifiers; "
                    "falling back to sliding windows",
                    i,
                    len(w.passages),
                    self._prompt_size(w),
                    self.max_context,
                )
                stats[i].fallback = "sliding"
                routes["sliding"].append(i)
            else:
                raise ValueError(
                    f"query {i}: {len(w.passages)} passages need {len(self.encode(w).input_ids)} prompt tokens "
                    f"(+{self.answer_budget(len(w.passages))} answer), over the {self.max_context}-token context; "
                    "set on_overflow='sliding', lower max_passage_tokens, pass fewer documents, or shorten the "
                    "query (it is written twice and never cut)"
                )
        return routes

    def _long_list_method(self, window: Window) -> str:
        """How a per-passage scorer ranks ``window`` (``RerankerConfig.long_list``; ``full`` = one prompt)."""
        method = self.config.long_list
        if self.config.strategy == "sliding":
            method = "sliding"
        if len(window.passages) <= self.config.window_size:
            return "full" if self.fits(window) else "chunks"
        if method == "one_prompt":
            return "full" if self.fits(window) else "chunks"
        return method

    def _result(self, order: list[int], ranked: int, scores: list[float] | None, stats: RankingStats) -> RankingResult:
        """The result type for one query: fused with the input order, the model's scores, or ranks."""
        if self.config.first_stage_weight > 0.0 and len(order) > 1:
            fused_order, fused = fuse_with_first_stage(order, self.config.first_stage_weight)
            return RankingResult.from_scores(fused_order, fused, len(fused_order), stats, "fused")
        if scores is not None:
            return RankingResult.from_scores(order, scores, ranked, stats, self.score_kind)
        return RankingResult.from_order(order, ranked, stats)

    # ------------------------------------------------------------------ public API
    def rerank_batch(
        self, queries: Sequence[str], documents: Sequence[Sequence[str]], top_k: int | None = None
    ) -> list[RankingResult]:
        """Rerank several queries, batching LLM calls across them."""
        queries, docs = check_batch(queries, documents)
        top_k = check_top_k(top_k)
        start = time.perf_counter()
        stats = [RankingStats(strategy=self.config.strategy) for _ in queries]
        orders: list[list[int]] = [list(range(len(d))) for d in docs]
        ranked = [len(d) for d in docs]
        model_scores: list[list[float] | None] = [None] * len(queries)

        def account(i: int, r: WindowRanking) -> None:
            stats[i].add_call(
                r.prompt_tokens,
                r.generated_tokens,
                r.prefill_seconds,
                r.decode_seconds,
                r.constraint_seconds,
                r.kept_tokens,
                r.computed_fraction,
            )
            stats[i].truncated_passages += r.truncated_passages

        windows = [Window(query=q, passages=d, top_k=top_k) for q, d in zip(queries, docs)]
        routes = self._route(windows, stats)
        full, chunked, sliding = routes["full"], routes["chunks"], routes["sliding"]
        tournaments = routes["tournament"]
        for i, r in zip(full, self.rank_windows([windows[i] for i in full])):
            orders[i], ranked[i], model_scores[i] = r.order, r.ranked, r.scores
            account(i, r)
        if chunked:
            got = rank_by_chunks(self, [windows[i] for i in chunked], lambda j, r: account(chunked[j], r))
            for i, (order, scores) in zip(chunked, got):
                orders[i], ranked[i], model_scores[i] = order, len(order), scores
        if tournaments:
            got = rank_by_tournament(self, [windows[i] for i in tournaments], lambda j, r: account(tournaments[j], r))
            for i, (order, scores) in zip(tournaments, got):
                orders[i], ranked[i], model_scores[i] = order, len(order), scores
        if sliding:
            got = sliding_orders(
                self,
                [windows[i] for i in sliding],
                self.config.window_size,
                self.config.stride,
                self.config.num_passes,
                on_call=lambda j, r: account(sliding[j], r),
                top_k=top_k,
            )
            for i, order in zip(sliding, got):
                orders[i], ranked[i] = order, len(order) if top_k is None else min(top_k, len(order))
        elapsed = (time.perf_counter() - start) / max(1, len(queries))
        for st in stats:
            st.total_seconds = elapsed
        return [self._result(orders[i], ranked[i], model_scores[i], stats[i]) for i in range(len(queries))]

    def rerank(self, query: str, documents: Sequence[str], top_k: int | None = None) -> RankingResult:
        """Rerank ``documents`` for ``query``; with ``top_k`` only the best ``top_k`` are decoded."""
        return self.rerank_batch([check_query(query)], [check_documents(documents)], top_k=top_k)[0]

    @staticmethod
    def _as_rank_output(
        result: RankingResult, documents: Sequence[str], top_k: int | None, return_documents: bool
    ) -> list[dict]:
        order = result.order if top_k is None else result.order[:top_k]
        out = []
        for index in order:
            item = {"corpus_id": index, "score": result.scores[index]}
            if return_documents:
                item["text"] = documents[index]
            out.append(item)
        return out

    def rank(
        self, query: str, documents: Sequence[str], top_k: int | None = None, return_documents: bool = False
    ) -> list[dict]:
        """sentence-transformers-style ranking: ``[{"corpus_id", "score", ("text")}]`` best first.

        With ``top_k`` only the best ``top_k`` entries are decoded and returned.
        """
        documents = check_documents(documents)
        result = self.rerank(query, documents, top_k=top_k)
        return self._as_rank_output(result, documents, top_k, return_documents)

    def rank_batch(
        self,
        queries: Sequence[str],
        documents: Sequence[Sequence[str]],
        top_k: int | None = None,
        return_documents: bool = False,
    ) -> list[list[dict]]:
        """:meth:`rank` for several queries, LLM calls batched across them."""
        results = self.rerank_batch(queries, documents, top_k=top_k)
        return [self._as_rank_output(r, d, top_k, return_documents) for r, d in zip(results, documents)]

    # ------------------------------------------------------------------ async API
    # The model runs on one worker thread behind a queue (rerank.batching); concurrent callers
    # that arrive within a few milliseconds share one batched rerank_batch call. Results equal the
    # synchronous methods'. Arguments are checked here, in the caller, so a bad call never reaches
    # the shared worker.
    async def arerank(self, query: str, documents: Sequence[str], top_k: int | None = None) -> RankingResult:
        """Async :meth:`rerank` that never blocks the event loop; safe under many concurrent callers."""
        query, documents, top_k = check_query(query), check_documents(documents), check_top_k(top_k)
        return await batcher_for(self).arerank(query, documents, top_k)

    async def arank(
        self, query: str, documents: Sequence[str], top_k: int | None = None, return_documents: bool = False
    ) -> list[dict]:
        """Async :meth:`rank` (``[{"corpus_id", "score", ("text")}]`` best first)."""
        documents = check_documents(documents)
        result = await self.arerank(query, documents, top_k=top_k)
        return self._as_rank_output(result, documents, top_k, return_documents)

    async def arank_batch(
        self,
        queries: Sequence[str],
        documents: Sequence[Sequence[str]],
        top_k: int | None = None,
        return_documents: bool = False,
    ) -> list[list[dict]]:
        """Async :meth:`rank_batch`: the queries are submitted together and batched with other callers'."""

        queries, docs = check_batch(queries, documents)
        top_k = check_top_k(top_k)
        results = await asyncio.gather(*(self.arerank(q, d, top_k=top_k) for q, d in zip(queries, docs)))
        return [self._as_rank_output(r, d, top_k, return_documents) for r, d in zip(results, docs)]
