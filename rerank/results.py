"""Result types returned by the reranker."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class RankingStats:
    """Cost of ranking one query (summed over all LLM calls for that query)."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    llm_calls: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    total_seconds: float = 0.0
    constraint_seconds: float = 0.0
    kept_tokens: int = 0
    computed_fraction: float = 1.0
    truncated_passages: int = 0
    strategy: str = "full"
    fallback: str | None = None
    # How the chunks of a long list were cut (``chunks``/``tournament`` fallbacks): "consecutive"
    # or "interleaved" (rerank.long_lists); None when the list was read some other way.
    chunk_layout: str | None = None

    def add_call(
        self,
        prompt_tokens: int,
        generated_tokens: int,
        prefill_seconds: float,
        decode_seconds: float,
        constraint_seconds: float = 0.0,
        kept_tokens: int | None = None,
        computed_fraction: float = 1.0,
    ) -> None:
        """Accumulate one LLM call; ``computed_fraction`` is averaged weighted by prompt tokens."""
        kept = prompt_tokens if kept_tokens is None else kept_tokens
        total = self.prompt_tokens + prompt_tokens
        if total:
            self.computed_fraction = (
                self.computed_fraction * self.prompt_tokens + computed_fraction * prompt_tokens
            ) / total
        self.prompt_tokens = total
        self.kept_tokens += kept
        self.generated_tokens += generated_tokens
        self.llm_calls += 1
        self.prefill_seconds += prefill_seconds
        self.decode_seconds += decode_seconds
        self.constraint_seconds += constraint_seconds

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RankingResult:
    """A reranked list.

    Attributes:
        order: indices into the input documents, best first (always a permutation of ``range(N)``).
        scores: one score per INPUT document (indexed like the input). With ``scoring="single_pass"``
            and full ranking they are log P(the answer starts with this passage's identifier):
            comparable across documents of one query, usable for thresholds. Otherwise they are
            rank-derived and monotone:
            a document the model placed at 0-based rank ``r`` of ``N`` gets ``1 - r / N`` (in
            ``(0, 1]``); documents left in first-stage order after a ``top_k`` cut get ``-(r - k + 1) / N``
            (``<= 0``), so a score above zero means "ranked by the model". They are not calibrated
            relevance probabilities. With ``scoring="head"`` they are the readout
            ``logit(yes) - logit(no)`` at each passage's end, whatever the strategy (long lists are
            scored in chunks, each passage once): comparable across queries too.
        ranked_by_model: how many leading entries of ``order`` the model decided.
        stats: cost accounting.
        score_kind: what ``scores`` hold: ``"rank"`` (rank-derived), ``"log_prob"`` (single-pass
            identifier log-probabilities), ``"head_logit"`` (the head readout) or ``"fused"``
            (``first_stage_weight > 0``: weighted reciprocal-rank fusion values, see ``rerank.fusion``).
    """

    order: list[int]
    scores: list[float]
    ranked_by_model: int
    stats: RankingStats = field(default_factory=RankingStats)
    score_kind: str = "rank"

    @classmethod
    def from_scores(
        cls, order: list[int], scores: list[float], ranked_by_model: int, stats: RankingStats, kind: str = "log_prob"
    ) -> RankingResult:
        """A result whose scores are the model's own (``kind``: "log_prob", "head_logit" or "fused")."""
        return cls(
            order=list(order), scores=list(scores), ranked_by_model=ranked_by_model, stats=stats, score_kind=kind
        )

    @classmethod
    def from_order(cls, order: list[int], ranked_by_model: int, stats: RankingStats) -> RankingResult:
        n = len(order)
        scores = [0.0] * n
        for rank, index in enumerate(order):
            scores[index] = 1.0 - rank / n if rank < ranked_by_model else -(rank - ranked_by_model + 1) / n
        return cls(order=list(order), scores=scores, ranked_by_model=ranked_by_model, stats=stats)
