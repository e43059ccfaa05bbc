"""``scoring="head"``: order by the relevance each passage's end token reads out (logit yes - no)."""

from __future__ import annotations

from collections.abc import Sequence

from rerank.config import PruningConfig
from rerank.engine.head_pruning import score_positions_pruned
from rerank.engine.passage_head import score_positions
from rerank.engine.pruning import unsupported_reason
from rerank.prompting.prompts import PromptEncoding, relevance_token_ids
from rerank.ranking import WindowRanking
from rerank.scorers.base import Scorer, rankings_by_score


class HeadScorer(Scorer):
    """One prefill, one readout per passage end, nothing decoded (needs a model trained for it).

    Its scores are read per passage, so lists longer than the context are scored in chunks whose
    scores are merged. With a pruning schedule the prefill keeps every passage end
    (:mod:`rerank.engine.head_pruning`).
    """

    name = "head"
    score_kind = "head_logit"
    merges_chunks = True

    def check_pruning(self, pruning: PruningConfig) -> None:
        pruning.check_head_scoring()  # either pruned_tokens mode: head scoring implements both

    def answer_tokens(self, num_passages: int) -> int:
        return 0  # nothing is generated or appended

    def rank(self, encodings: Sequence[PromptEncoding], top_ks: Sequence[int | None]) -> list[WindowRanking]:
        yes_id, no_id = relevance_token_ids(self.tokenizer)
        prompts, reads = [e.input_ids for e in encodings], [e.passage_end_positions() for e in encodings]
        # An unsupported model under allow_unsupported_fallback reads dense (the Reranker warned when built).
        if self.pruning is None or unsupported_reason(self.model, self.pruning) is not None:
            out = score_positions(self.model, prompts, reads, yes_id, no_id, self.tokenizer.pad_token_id)
        else:
            out = score_positions_pruned(
                self.model, prompts, reads, [e.prunable_mask() for e in encodings], yes_id, no_id, self.pruning
            )
        return rankings_by_score(encodings, out.scores, out.prefill, 0.0)
