"""``scoring="single_pass"``: order by log P(the answer starts with ``[k]``), from one prefill."""

from __future__ import annotations

from collections.abc import Sequence

from rerank.engine.single_pass import score_identifiers
from rerank.prompting.prompts import PromptEncoding
from rerank.ranking import WindowRanking
from rerank.scorers.base import Scorer, rankings_by_score


class SinglePassScorer(Scorer):
    """First-identifier scoring (FIRST-style): one prefill and one pass over the identifier tree."""

    name = "single_pass"
    score_kind = "log_prob"

    def answer_tokens(self, num_passages: int) -> int:
        first, _ = self.table.canonical.pieces(num_passages)
        return max(len(seq) for seq in first.values())

    def rank(self, encodings: Sequence[PromptEncoding], top_ks: Sequence[int | None]) -> list[WindowRanking]:
        out = score_identifiers(
            self.session(),
            [e.input_ids for e in encodings],
            [e.num_passages for e in encodings],
            self.table,
            prunable=[e.prunable_mask() for e in encodings],
        )
        return rankings_by_score(encodings, out.scores, out.prefill, out.scoring_seconds)
