"""``scoring="generate"``: decode the permutation ``[4] > [1] > ...`` under a constraint that keeps it valid."""

from __future__ import annotations

from collections.abc import Sequence

from rerank.engine.generate import rank_prompts
from rerank.prompting.identifiers import complete_order
from rerank.prompting.prompts import PromptEncoding, encode_target
from rerank.ranking import WindowRanking
from rerank.scorers.base import Scorer, call_costs


class GenerateScorer(Scorer):
    """Constrained decoding of the ranking; the order is all it produces (``score_kind="rank"``)."""

    name = "generate"
    needs_top_k = True

    def answer_tokens(self, num_passages: int) -> int:
        return len(encode_target(self.tokenizer, list(range(num_passages)), self.preset))

    def rank(self, encodings: Sequence[PromptEncoding], top_ks: Sequence[int | None]) -> list[WindowRanking]:
        out = rank_prompts(
            self.session(),
            [e.input_ids for e in encodings],
            [e.num_passages for e in encodings],
            self.table,
            top_k=list(top_ks),
            prunable=[e.prunable_mask() for e in encodings],
        )
        rankings = []
        for row, enc in enumerate(encodings):
            emitted = [k - 1 for k in out.identifiers[row]]
            rankings.append(
                WindowRanking(
                    order=complete_order(emitted, enc.num_passages),
                    ranked=len(emitted),
                    generated_tokens=out.generated_tokens[row],
                    constraint_seconds=out.constraint_seconds / len(encodings),
                    **call_costs(encodings, row, out.prefill, out.decode_seconds),
                )
            )
        return rankings
