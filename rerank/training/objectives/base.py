"""What every training objective shares: its output and the first position a loss reads.

An objective owns the model's forward pass for one batch: it takes the batch keys it needs (the
collator's ``labels``, ``rank_ids`` and its own extras), asks the model for logits at only the
positions its loss reads (``logits_to_keep``), and returns the loss with the terms worth logging
apart. The Trainer only calls it (:class:`rerank.training.train.ListwiseTrainer`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from rerank.training.losses import IGNORE_INDEX

if TYPE_CHECKING:  # the config names every objective: importing it here would be circular
    from rerank.training.objectives import ObjectiveConfig


@dataclass
class ObjectiveOutput:
    """One batch's loss, the model outputs, and the named terms it is made of (for the logs)."""

    loss: torch.Tensor
    outputs: Any
    terms: dict[str, float] = field(default_factory=dict)


class Objective(nn.Module):
    """A training objective: ``forward(model, batch) -> ObjectiveOutput``.

    Subclasses say how a model trained with them is read (``scoring``, a ``Reranker`` scoring
    mode) and what the training examples must hold (:meth:`example_options`).
    """

    scoring: ClassVar[str]
    needs_4d_mask: ClassVar[bool] = False  # a packed batch: flash-attention cannot take its mask

    @classmethod
    def from_config(cls, config: ObjectiveConfig, tokenizer) -> Objective:
        """The objective ``config`` selects, built from its options."""
        raise NotImplementedError

    @staticmethod
    def options_used(config: ObjectiveConfig) -> tuple:
        """The option dataclasses this objective reads (recorded with the run, compared on resume)."""
        raise NotImplementedError

    def example_options(self) -> dict[str, bool]:
        """The :class:`rerank.training.data.ExampleOptions` switches this objective needs."""
        raise NotImplementedError

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        raise NotImplementedError


def first_scored_position(labels: torch.Tensor) -> int:
    """The earliest position whose logits any loss reads: the one predicting the first target token
    of any row (tree nodes and their sources come after it)."""
    has_target = labels != IGNORE_INDEX
    if not bool(has_target.any()):
        return 0
    first = torch.where(has_target.any(1), has_target.int().argmax(1), torch.full_like(labels[:, 0], labels.size(1)))
    return max(int(first.min()) - 1, 0)


def lm_forward(model: nn.Module, batch: dict[str, torch.Tensor], lm_loss: nn.Module):
    """The LM term on the response tokens: ``(loss, outputs, start)``.

    Only the response (and tree) positions need vocabulary logits: with a 2k-token prompt and a
    100-token answer, projecting every position would cost 20x the lm_head work and hold a
    [B, L, V] fp32 tensor (GBs) for nothing. The loss then sees the same tail of the labels.
    """
    labels, rank_ids = batch.pop("labels"), batch.pop("rank_ids")
    start = first_scored_position(labels)
    outputs = model(**batch, use_cache=False, logits_to_keep=labels.size(1) - start)
    return lm_loss(outputs.logits, labels[:, start:], rank_ids[:, start:]), outputs, start


__all__ = ["Objective", "ObjectiveOutput", "first_scored_position", "lm_forward"]
