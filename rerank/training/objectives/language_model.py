"""The importance-aware LM objective (``objective: importance``) and its plain-NLL ablation (``lm``).

The model is trained to write the label's ranking ``[a] > [b] > ... <end>``; every response token's
negative log-likelihood is weighted by the rank its identifier has (:mod:`rerank.training.losses.importance`)::

    L = - sum_i w_i * log p(y_i | x, y_<i) / D
    w_i = 1 + 1 / log2(r_i + 1)  on identifier tokens at output rank r_i,  alpha on separators and <end>
    D   = number of response tokens (``loss_normalize: tokens``) or sum_i w_i (``weights``)

``lm`` sets every ``w_i = 1`` and ``D`` = the token count. Only the positions from the one predicting
the first response token on are projected to the vocabulary. A model trained so is read by decoding
its answer (``scoring="generate"``). The same LM term, with these options, is what
``identifier_ranking`` and ``head`` add when their ``*_lm_loss`` option names one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from rerank.training.losses import LOSSES, ImportanceAwareLoss, build_loss
from rerank.training.objectives.base import Objective, ObjectiveOutput, lm_forward

if TYPE_CHECKING:
    from rerank.training.objectives import ObjectiveConfig


@dataclass
class LanguageModelArguments:
    """Options of the LM term (used by every objective whose LM term is ``importance``)."""

    importance_alpha: float = field(
        default=1.0, metadata={"help": "Weight of separator and end tokens in the importance-aware loss."}
    )
    loss_normalize: str = field(
        default="tokens",
        metadata={"help": "Divide the weighted sum by the number of response 'tokens' or by the sum of 'weights'."},
    )

    def __post_init__(self):
        if self.importance_alpha < 0:
            raise ValueError(f"importance_alpha must be >= 0, got {self.importance_alpha}")
        if self.loss_normalize not in ("tokens", "weights"):
            raise ValueError(f"loss_normalize must be 'tokens' or 'weights', got {self.loss_normalize!r}")

    def build(self, kind: str) -> ImportanceAwareLoss:
        """The LM loss module ``kind`` (``importance`` or ``lm``) with these options."""
        return build_loss(kind, self.importance_alpha, self.loss_normalize)


class LanguageModelObjective(Objective):
    """Response-token NLL, rank-weighted (``importance``) or plain (``lm``); formula in the module docstring."""

    scoring = "generate"

    def __init__(self, loss: ImportanceAwareLoss):
        super().__init__()
        self.loss = loss

    @classmethod
    def from_config(cls, config: ObjectiveConfig, tokenizer=None) -> LanguageModelObjective:
        if config.name not in LOSSES:
            raise ValueError(f"an LM objective is one of {LOSSES}, got {config.name!r}")
        return cls(config.lm.build(config.name))

    @staticmethod
    def options_used(config: ObjectiveConfig) -> tuple:
        return (config.lm,) if config.name == "importance" else ()

    def example_options(self) -> dict[str, bool]:
        return {"identifier_tree": False, "passage_head": False, "include_target": True}

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        loss, outputs, _ = lm_forward(model, batch, self.loss)
        return ObjectiveOutput(loss, outputs)
