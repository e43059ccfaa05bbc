"""The scorer interface: one scoring mode turns a batch of listwise prompts into window rankings."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from rerank.config import PruningConfig
from rerank.engine.decoding import TokenTable
from rerank.engine.session import DenseSession, PrefillInfo
from rerank.prompting.presets import PromptPreset
from rerank.prompting.prompts import PromptEncoding
from rerank.ranking import WindowRanking


class Scorer(ABC):
    """How one ``scoring=`` mode ranks the passages of already-encoded prompts.

    The reranker builds prompts, batches them and merges the results; a scorer only says what its
    answer needs after the prompt, whether it can run on a pruned prefill, and ranks a batch.

    Class attributes:
        name: the ``scoring=`` value.
        score_kind: what its per-passage scores are (``RankingResult.score_kind``): ``"rank"`` when
            it produces an order only.
        needs_top_k: its cost depends on ``top_k`` (decoding stops after ``top_k`` identifiers);
            scorers that score every passage anyway ignore it, so callers can batch requests that
            ask for different ``top_k``.
        merges_chunks: its scores are read per passage and merged across prompts, so a list over the
            context is scored in consecutive chunks (no sliding passes).
    """

    name: ClassVar[str]
    score_kind: ClassVar[str] = "rank"
    needs_top_k: ClassVar[bool] = False
    merges_chunks: ClassVar[bool] = False

    def __init__(self, model, tokenizer, table: TokenTable, preset: PromptPreset, pruning: PruningConfig | None):
        self.model = model
        self.tokenizer = tokenizer
        self.table = table
        self.preset = preset
        self.pruning = pruning
        if pruning is not None:
            self.check_pruning(pruning)

    def check_pruning(self, pruning: PruningConfig) -> None:
        """Raise ``ValueError`` naming why ``pruning`` cannot serve this mode (default: any schedule that
        drops what it prunes; the identifier scorings decode over the pruned caches)."""
        pruning.check_cached_decoding()

    def session(self):
        """A fresh dense or pruned model session (see :mod:`rerank.engine.session`)."""
        if self.pruning is None:
            return DenseSession(self.model, self.tokenizer.pad_token_id)
        from rerank.engine.pruning import PrunedSession  # the pruned engine loads transformers' model code

        return PrunedSession(self.model, self.tokenizer.pad_token_id, self.pruning)

    @abstractmethod
    def answer_tokens(self, num_passages: int) -> int:
        """Positions the answer needs after a prompt of ``num_passages`` (for the context check)."""

    @abstractmethod
    def rank(self, encodings: Sequence[PromptEncoding], top_ks: Sequence[int | None]) -> list[WindowRanking]:
        """One ranking per prompt (each has at least two passages)."""


def call_costs(encs: Sequence[PromptEncoding], row: int, info: PrefillInfo, after_prefill_seconds: float) -> dict:
    """Cost fields of one row of a batched call; wall time is shared equally among the rows."""
    enc, share = encs[row], 1.0 / len(encs)
    return {
        "prompt_tokens": len(enc.input_ids),
        "prefill_seconds": info.seconds * share,
        "decode_seconds": after_prefill_seconds * share,
        "kept_tokens": info.extra.get("kept_tokens_per_row", [None] * len(encs))[row],
        "computed_fraction": info.computed_fraction,
        "truncated_passages": enc.truncated_passages,
    }


def rankings_by_score(
    encs: Sequence[PromptEncoding], scores: Sequence[Sequence[float]], info: PrefillInfo, after_prefill_seconds: float
) -> list[WindowRanking]:
    """Window rankings ordered by per-passage scores (ties: first-stage order). Every passage is scored
    by the model, so the whole order is the model's (``top_k`` only cuts the output)."""
    rankings = []
    for row, enc in enumerate(encs):
        row_scores = scores[row]
        order = sorted(range(enc.num_passages), key=lambda i: (-row_scores[i], i))
        rankings.append(
            WindowRanking(
                order=order,
                ranked=enc.num_passages,
                scores=row_scores,
                generated_tokens=0,
                **call_costs(encs, row, info, after_prefill_seconds),
            )
        )
    return rankings
