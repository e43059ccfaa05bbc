"""Single-pass identifier ranking (``objective: identifier_ranking``): the LM term plus a ranking loss.

Each example packs, after the response, a tree of every passage's identifier tokens
(:mod:`rerank.training.single_pass_data`), so one forward pass also gives
``s_k = log P(the answer starts with identifier k | prompt)`` for every passage k
(:func:`rerank.engine.single_pass.identifier_scores`). With ``L_lm`` the LM objective's loss
(:mod:`rerank.training.objectives.language_model`, ``ranking_lm_loss: importance | lm``) and ``L_rank`` one of
:mod:`rerank.training.losses.identifier_ranking`'s losses on ``s`` against the label ranks::

    L = L_lm + ranking_weight * L_rank(s, r)

The LM term cannot be dropped: the tree is packed after the target, and its positions are read
from the same logits. A model trained so is read by ``scoring="single_pass"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from rerank.engine.single_pass import identifier_scores
from rerank.training.losses import LOSSES
from rerank.training.losses.identifier_ranking import RANKING_LOSSES, IdentifierRankingLoss
from rerank.training.objectives.base import Objective, ObjectiveOutput, lm_forward

if TYPE_CHECKING:
    from rerank.training.objectives import ObjectiveConfig

TREE_KEYS = ("edge_source", "edge_token", "path_matrix", "passage_ranks")


@dataclass
class IdentifierRankingArguments:
    """Options of ``objective: identifier_ranking``."""

    ranking_loss: str = field(
        default="ranknet",
        metadata={"help": "Ranking loss on the single-pass identifier scores: ranknet | listnet | listmle."},
    )
    ranking_weight: float = field(default=1.0, metadata={"help": "Weight of the ranking loss next to the LM term."})
    ranking_lm_loss: str = field(
        default="importance",
        metadata={
            "help": (
                "The LM term beside it: importance | lm (the tree is packed after the target, so there always is one)."
            )
        },
    )

    def __post_init__(self):
        if self.ranking_loss not in RANKING_LOSSES:
            raise ValueError(f"ranking_loss must be one of {RANKING_LOSSES}, got {self.ranking_loss!r}")
        if self.ranking_weight <= 0:
            raise ValueError(f"ranking_weight must be > 0, got {self.ranking_weight}")
        if self.ranking_lm_loss not in LOSSES:
            raise ValueError(f"ranking_lm_loss must be one of {LOSSES}, got {self.ranking_lm_loss!r}")


class IdentifierRankingObjective(Objective):
    """LM loss on the response plus a weighted ranking loss on the packed identifier tree (module docstring)."""

    scoring = "single_pass"
    needs_4d_mask = True

    def __init__(self, lm_loss: nn.Module, ranking_loss: IdentifierRankingLoss, weight: float = 1.0):
        super().__init__()
        self.lm_loss, self.ranking_loss, self.weight = lm_loss, ranking_loss, weight

    @classmethod
    def from_config(cls, config: ObjectiveConfig, tokenizer=None) -> IdentifierRankingObjective:
        options = config.ranking
        lm = config.lm.build(options.ranking_lm_loss)
        return cls(lm, IdentifierRankingLoss(options.ranking_loss), options.ranking_weight)

    @staticmethod
    def options_used(config: ObjectiveConfig) -> tuple:
        return (config.ranking, config.lm) if config.ranking.ranking_lm_loss == "importance" else (config.ranking,)

    def example_options(self) -> dict[str, bool]:
        return {"identifier_tree": True, "passage_head": False, "include_target": True}

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        tree = {k: batch.pop(k) for k in TREE_KEYS}
        loss, outputs, start = lm_forward(model, batch, self.lm_loss)
        sources = (tree["edge_source"] - start).clamp(min=0)  # padding nodes (source 0) have no path weight
        scores = identifier_scores(outputs.logits, sources, tree["edge_token"], tree["path_matrix"])
        ranking = self.ranking_loss(scores, tree["passage_ranks"])
        # The two terms apart, so a stalled one is visible in the logs.
        terms = {"lm_loss": float(loss.detach()), "ranking_loss": float(ranking.detach())}
        return ObjectiveOutput(loss + self.weight * ranking, outputs, terms)
