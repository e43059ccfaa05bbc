"""The user-facing listwise reranker."""

from __future__ import annotations

import logging
import time
from dataclasses import fields
from typing import Any, Sequence

from .config import PruningConfig, RerankerConfig
from .decoding import TokenTable, complete_order
from .engine.generate import rank_prompts
from .engine.identifiers import score_identifiers
from .engine.head_pruning import score_positions_pruned
from .engine.passage_head import score_positions
from .engine.session import DenseSession
from .fusion import fuse_with_first_stage
from .presets import get_preset
from .prompts import PromptEncoding, encode_prompt, encode_target, relevance_token_ids
from .ranking import Window, WindowRanking, sliding_orders
from .results import RankingResult, RankingStats

logger = logging.getLogger(__name__)


def _check_query(query: Any, name: str = "query") -> str:
    if not isinstance(query, str):
        raise TypeError(f"{name} must be a str, got {type(query).__name__}")
    return query


def _check_documents(documents: Any, name: str = "documents") -> list[str]:
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise TypeError(f"{name} must be a list of str, got {type(documents).__name__}")
    for i, doc in enumerate(documents):
        if not isinstance(doc, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(doc).__name__}")
    return list(documents)


def _scored_rankings(encs: Sequence[PromptEncoding], scores: Sequence[Sequence[float]], prefill,
                     after_prefill_seconds: float) -> list[WindowRanking]:
    """Window rankings ordered by per-passage scores (ties: first-stage order). Every passage is scored
    by the model, so the whole order is the model's (``top_k`` only cuts the output)."""
    rankings = []
    for row, enc in enumerate(encs):
        row_scores = scores[row]
        order = sorted(range(enc.num_passages), key=lambda i: (-row_scores[i], i))
        rankings.append(WindowRanking(order=order, ranked=enc.num_passages, scores=row_scores, generated_tokens=0,
                                      **_call_costs(encs, row, prefill, after_prefill_seconds)))
    return rankings


def _check_batch(queries: Any, documents: Any) -> tuple[list[str], list[list[str]]]:
    """Validate parallel lists of queries and document lists (batch entry points)."""
    if isinstance(queries, str) or not isinstance(queries, Sequence):
        raise TypeError(f"queries must be a list of str, got {type(queries).__name__}")
    if isinstance(documents, str) or not isinstance(documents, Sequence):
        raise TypeError(f"documents must be a list of lists of str, got {type(documents).__name__}")
    if len(queries) != len(documents):
        raise ValueError(f"queries ({len(queries)}) and documents ({len(documents)}) must have the same length")
    return ([_check_query(q, f"queries[{i}]") for i, q in enumerate(queries)],
            [_check_documents(d, f"documents[{i}]") for i, d in enumerate(documents)])


def _check_top_k(top_k: Any) -> int | None:
    if top_k is None:
        return None
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    return top_k


def _call_costs(encs: Sequence[PromptEncoding], row: int, info, after_prefill_seconds: float) -> dict:
    """Cost fields of one row of a batched call; wall time is shared equally among the rows."""
    enc, share = encs[row], 1.0 / len(encs)
    return {"prompt_tokens": len(enc.input_ids), "prefill_seconds": info.seconds * share,
            "decode_seconds": after_prefill_seconds * share,
            "kept_tokens": info.extra.get("kept_tokens_per_row", [None] * len(encs))[row],
            "computed_fraction": info.computed_fraction, "truncated_passages": enc.truncated_passages}


class Reranker:
    """Listwise LLM reranker: full ranking in one prompt, or sliding windows.

    Example:
        >>> rr = Reranker.from_pretrained()                       # doctest: +SKIP
        >>> rr.rank("what is a llama", ["A llama is a camelid.", "Paris is in France."])  # doctest: +SKIP
        [{'corpus_id': 0, 'score': 1.0}, {'corpus_id': 1, 'score': 0.5}]
    """

    def __init__(self, model, tokenizer, config: RerankerConfig | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or RerankerConfig()
        self.preset = get_preset(self.config.prompt)
        self.table = TokenTable.for_tokenizer(tokenizer, self.preset.ids)
        self.max_context = self.config.max_context or getattr(model.config, "max_position_embeddings", None) or 4096
        self._answer_budget: dict[int, int] = {}
        if self.config.pruning is not None:
            from .engine import pruning as _pruning  # noqa: F401  (validates support early)

            _pruning.check_supported(model, self.config.pruning)

    @classmethod
    def from_pretrained(cls, model: str | None = None, *, device=None, dtype=None, strategy: str = "full",
                        window_size: int = 20, stride: int = 10, max_passage_tokens: int | None = 100,
                        pruning: PruningConfig | None = None, **kwargs) -> "Reranker":
        """Load a model and build a reranker.

        ``model=None`` is the shipped default reranker (SmolLM2-135M-Instruct + the packaged LoRA
        weights, ``scoring="head"``); ``model="base"`` the raw SmolLM2-135M-Instruct; otherwise a
        path or hub id. Extra keyword arguments are :class:`RerankerConfig` fields (``scoring``,
        ``num_passes``, ``on_overflow``, ``batch_size``, ``max_context``, ``prompt``: the prompt
        preset, e.g. ``prompt="rank_zephyr"`` for RankZephyr, see :mod:`rerank.presets`;
        ``first_stage_weight``: fusion with the input order, see :mod:`rerank.fusion`). Fields left
        out take the model folder's recommendation (its ``lazyrank.json``, e.g. ``scoring``), else
        the defaults (``scoring="generate"``).
        """
        from .models import load_model_and_tokenizer, recommended_settings

        known = {f.name for f in fields(RerankerConfig)}
        unknown = set(kwargs) - known
        if unknown:
            raise TypeError(f"unknown argument(s) for Reranker.from_pretrained: {sorted(unknown)}")
        # Settings the model folder recommends (lazyrank.json) fill what the caller left out.
        recommended = {k: v for k, v in recommended_settings(model).items() if k in known and k != "pruning"}
        for name, value in recommended.items():
            if kwargs.get(name) is None:
                kwargs[name] = value
        if kwargs.get("scoring") is None:
            kwargs["scoring"] = "generate"
        config = RerankerConfig(model=model, device=None if device is None else str(device),
                                dtype=None if dtype is None else str(dtype).replace("torch.", ""),
                                strategy=strategy, window_size=window_size, stride=stride,
                                max_passage_tokens=max_passage_tokens, pruning=pruning, **kwargs)
        lm, tok = load_model_and_tokenizer(model, device=device, dtype=dtype)
        return cls(lm, tok, config)

    # ------------------------------------------------------------------ window primitive
    def encode(self, window: Window) -> PromptEncoding:
        """The prompt for a window (memoised on the window)."""
        if "encoding" not in window.cache:
            # rank_llm's shrink-to-fit is a window rule: a full-list prompt over the context falls
            # back to sliding windows (on_overflow) rather than being squeezed to a few words each.
            shrink = self.preset.shrink_to_fit and len(window.passages) <= self.config.window_size
            window.cache["encoding"] = encode_prompt(self.tokenizer, window.query, window.passages,
                                                     self.config.max_passage_tokens, self.preset,
                                                     max_tokens=self.max_context if shrink else None,
                                                     answer_tokens=self.answer_budget(len(window.passages)) if shrink else None)
        return window.cache["encoding"]

    def answer_budget(self, num: int) -> int:
        """Positions the answer needs after the prompt: a complete ranking (end-of-turn included), or
        for single-pass scoring the longest identifier."""
        if num not in self._answer_budget:
            if self.config.scoring == "head":
                self._answer_budget[num] = 0  # nothing is generated or appended
            elif self.config.scoring == "single_pass":
                first, _ = self.table.canonical.pieces(num)
                self._answer_budget[num] = max(len(seq) for seq in first.values())
            else:
                self._answer_budget[num] = len(encode_target(self.tokenizer, list(range(num)), self.preset))
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

    def _session(self):
        if self.config.pruning is None:
            return DenseSession(self.model, self.tokenizer.pad_token_id)
        from .engine.pruning import PrunedSession

        return PrunedSession(self.model, self.tokenizer.pad_token_id, self.config.pruning)

    def rank_windows(self, windows: Sequence[Window]) -> list[WindowRanking]:
        """Rank independent windows (constrained decoding, or single-pass scoring), ``batch_size`` prompts at a time."""
        results: list[WindowRanking | None] = [None] * len(windows)
        todo = []
        for i, w in enumerate(windows):
            if len(w.passages) <= 1:
                results[i] = WindowRanking(order=list(range(len(w.passages))), ranked=len(w.passages))
            else:
                if not self.fits(w):
                    raise ValueError(
                        f"a window of {len(w.passages)} passages needs {len(self.encode(w).input_ids)} prompt tokens "
                        f"plus {self.answer_budget(len(w.passages))} answer tokens, over the context of "
                        f"{self.max_context}; lower max_passage_tokens or window_size, or shorten the query "
                        "(it is written twice and never cut)")
                todo.append(i)
        # Similar lengths together keep left padding small.
        todo.sort(key=lambda i: len(self.encode(windows[i]).input_ids))
        size = self.config.batch_size
        for chunk_start in range(0, len(todo), size):
            chunk = todo[chunk_start:chunk_start + size]
            encs = [self.encode(windows[i]) for i in chunk]
            if self.config.scoring in ("single_pass", "head"):
                scored = self._score_chunk(encs) if self.config.scoring == "single_pass" else self._head_chunk(encs)
                for i, ranking in zip(chunk, scored):
                    results[i] = ranking
                continue
            out = rank_prompts(self._session(), [e.input_ids for e in encs], [e.num_passages for e in encs],
                               self.table, top_k=[windows[i].top_k for i in chunk],
                               prunable=[e.prunable_mask() for e in encs])
            for row, i in enumerate(chunk):
                emitted = [k - 1 for k in out.identifiers[row]]
                results[i] = WindowRanking(
                    order=complete_order(emitted, encs[row].num_passages), ranked=len(emitted),
                    generated_tokens=out.generated_tokens[row],
                    constraint_seconds=out.constraint_seconds / len(chunk),
                    **_call_costs(encs, row, out.prefill, out.decode_seconds))
        return results  # type: ignore[return-value]

    def _score_chunk(self, encs: list[PromptEncoding]) -> list[WindowRanking]:
        """Single-pass scoring: order by log P(first identifier), ties by first-stage order."""
        out = score_identifiers(self._session(), [e.input_ids for e in encs], [e.num_passages for e in encs],
                                self.table, prunable=[e.prunable_mask() for e in encs])
        return _scored_rankings(encs, out.scores, out.prefill, out.scoring_seconds)

    def _head_chunk(self, encs: list[PromptEncoding]) -> list[WindowRanking]:
        """Head scoring: order by the yes-no readout at each passage's end, ties by first-stage order."""
        yes_id, no_id = relevance_token_ids(self.tokenizer)
        prompts, reads = [e.input_ids for e in encs], [e.passage_end_positions() for e in encs]
        if self.config.pruning is None:
            out = score_positions(self.model, prompts, reads, yes_id, no_id, self.tokenizer.pad_token_id)
        else:
            out = score_positions_pruned(self.model, prompts, reads, [e.prunable_mask() for e in encs], yes_id, no_id,
                                         self.config.pruning)
        return _scored_rankings(encs, out.scores, out.prefill, 0.0)

    # ------------------------------------------------------------------ public API
    def rerank_batch(self, queries: Sequence[str], documents: Sequence[Sequence[str]],
                     top_k: int | None = None) -> list[RankingResult]:
        """Rerank several queries, batching LLM calls across them."""
        queries, docs = _check_batch(queries, documents)
        top_k = _check_top_k(top_k)
        start = time.perf_counter()
        stats = [RankingStats(strategy=self.config.strategy) for _ in queries]
        orders: list[list[int] | None] = [None] * len(queries)
        ranked = [0] * len(queries)

        def account(i: int, r: WindowRanking) -> None:
            stats[i].add_call(r.prompt_tokens, r.generated_tokens, r.prefill_seconds, r.decode_seconds,
                              r.constraint_seconds, r.kept_tokens, r.computed_fraction)
            stats[i].truncated_passages += r.truncated_passages

        windows = [Window(query=q, passages=d, top_k=top_k) for q, d in zip(queries, docs)]
        sliding = []
        full = []
        chunked = []
        head = self.config.scoring == "head"
        for i, w in enumerate(windows):
            if len(w.passages) <= 1:
                orders[i], ranked[i] = list(range(len(w.passages))), len(w.passages)
            elif head and (self.config.strategy == "sliding" or not self.fits(w)):
                # Head scores are per passage, so windows need no merging passes: score consecutive
                # chunks of window_size and order all passages by their scores.
                if self.config.strategy == "full":
                    stats[i].fallback = "chunks"
                chunked.append(i)
            elif self.config.strategy == "sliding":
                sliding.append(i)
            elif self.fits(w):
                full.append(i)
            elif self.config.on_overflow == "sliding":
                logger.warning("query %d: %d passages (%s) exceed the %d-token context or the identifiers; "
                               "falling back to sliding windows", i, len(w.passages), self._prompt_size(w),
                               self.max_context)
                stats[i].fallback = "sliding"
                sliding.append(i)
            else:
                raise ValueError(
                    f"query {i}: {len(w.passages)} passages need {len(self.encode(w).input_ids)} prompt tokens "
                    f"(+{self.answer_budget(len(w.passages))} answer), over the {self.max_context}-token context; "
                    "set on_overflow='sliding', lower max_passage_tokens, pass fewer documents, or shorten the "
                    "query (it is written twice and never cut)")
        model_scores: list[list[float] | None] = [None] * len(queries)
        if full:
            for i, r in zip(full, self.rank_windows([windows[i] for i in full])):
                orders[i], ranked[i], model_scores[i] = r.order, r.ranked, r.scores
                account(i, r)
        if chunked:
            size = self.config.window_size
            pieces = [(i, offset) for i in chunked for offset in range(0, len(windows[i].passages), size)]
            scored = self.rank_windows([Window(query=windows[i].query, passages=windows[i].passages[o:o + size])
                                        for i, o in pieces])
            merged: dict[int, list[float]] = {i: [] for i in chunked}
            for (i, offset), r in zip(pieces, scored):
                if r.scores is None:  # rank_windows skips one-passage windows: score it on its own
                    alone = Window(query=windows[i].query, passages=windows[i].passages[offset:offset + 1])
                    r = self._head_chunk([self.encode(alone)])[0]
                merged[i] += r.scores
                account(i, r)
            for i in chunked:
                scores = merged[i]
                orders[i] = sorted(range(len(scores)), key=lambda k: (-scores[k], k))
                ranked[i], model_scores[i] = len(scores), scores
        if sliding:
            got = sliding_orders(self, [windows[i] for i in sliding], self.config.window_size, self.config.stride,
                                 self.config.num_passes, on_call=lambda j, r: account(sliding[j], r),
                                 top_k=top_k)
            for i, order in zip(sliding, got):
                orders[i], ranked[i] = order, len(order)
                if top_k is not None:
                    ranked[i] = min(top_k, len(order))
        elapsed = (time.perf_counter() - start) / max(1, len(queries))
        results = []
        for i in range(len(queries)):
            stats[i].total_seconds = elapsed
            if self.config.first_stage_weight > 0.0 and len(orders[i]) > 1:
                order, fused = fuse_with_first_stage(orders[i], self.config.first_stage_weight)
                results.append(RankingResult.from_scores(order, fused, len(order), stats[i], "fused"))
            elif model_scores[i] is not None:
                kind = "head_logit" if self.config.scoring == "head" else "log_prob"
                results.append(RankingResult.from_scores(orders[i], model_scores[i], ranked[i], stats[i], kind))
            else:
                results.append(RankingResult.from_order(orders[i], ranked[i], stats[i]))
        return results

    def rerank(self, query: str, documents: Sequence[str], top_k: int | None = None) -> RankingResult:
        """Rerank ``documents`` for ``query``; with ``top_k`` only the best ``top_k`` are decoded."""
        return self.rerank_batch([_check_query(query)], [_check_documents(documents)], top_k=top_k)[0]

    @staticmethod
    def _as_rank_output(result: RankingResult, documents: Sequence[str], top_k: int | None,
                        return_documents: bool) -> list[dict]:
        order = result.order if top_k is None else result.order[:top_k]
        out = []
        for index in order:
            item = {"corpus_id": index, "score": result.scores[index]}
            if return_documents:
                item["text"] = documents[index]
            out.append(item)
        return out

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None,
             return_documents: bool = False) -> list[dict]:
        """sentence-transformers-style ranking: ``[{"corpus_id", "score", ("text")}]`` best first.

        With ``top_k`` only the best ``top_k`` entries are decoded and returned.
        """
        documents = _check_documents(documents)
        result = self.rerank(query, documents, top_k=top_k)
        return self._as_rank_output(result, documents, top_k, return_documents)

    def rank_batch(self, queries: Sequence[str], documents: Sequence[Sequence[str]], top_k: int | None = None,
                   return_documents: bool = False) -> list[list[dict]]:
        """:meth:`rank` for several queries, LLM calls batched across them."""
        results = self.rerank_batch(queries, documents, top_k=top_k)
        return [self._as_rank_output(r, d, top_k, return_documents) for r, d in zip(results, documents)]

    # ------------------------------------------------------------------ async API
    # The model runs on one worker thread behind a queue (rerank.serving.batcher); concurrent callers
    # that arrive within a few milliseconds share one batched rerank_batch call. Results equal the
    # synchronous methods'. Arguments are checked here, in the caller, so a bad call never reaches
    # the shared worker.
    async def arerank(self, query: str, documents: Sequence[str], top_k: int | None = None) -> RankingResult:
        """Async :meth:`rerank` that never blocks the event loop; safe under many concurrent callers."""
        from .serving.batcher import batcher_for

        query, documents, top_k = _check_query(query), _check_documents(documents), _check_top_k(top_k)
        return await batcher_for(self).arerank(query, documents, top_k)

    async def arank(self, query: str, documents: Sequence[str], top_k: int | None = None,
                    return_documents: bool = False) -> list[dict]:
        """Async :meth:`rank` (``[{"corpus_id", "score", ("text")}]`` best first)."""
        documents = _check_documents(documents)
        result = await self.arerank(query, documents, top_k=top_k)
        return self._as_rank_output(result, documents, top_k, return_documents)

    async def arank_batch(self, queries: Sequence[str], documents: Sequence[Sequence[str]],
                          top_k: int | None = None, return_documents: bool = False) -> list[list[dict]]:
        """Async :meth:`rank_batch`: the queries are submitted together and batched with other callers'."""
        import asyncio

        queries, docs = _check_batch(queries, documents)
        top_k = _check_top_k(top_k)
        results = await asyncio.gather(*(self.arerank(q, d, top_k=top_k) for q, d in zip(queries, docs)))
        return [self._as_rank_output(r, d, top_k, return_documents) for r, d in zip(results, docs)]
