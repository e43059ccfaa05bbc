"""Head scoring (``objective: head``): relevance read at every passage's end, plus an optional LM term.

The prompt marks each passage's end; there the model's ``s_k = logit(yes) - logit(no)`` is passage
k's relevance (:func:`rerank.engine.passage_head.relevance_from_logits`). With
:class:`rerank.training.losses.passage_head.PassageHeadLoss` on the label ranks ``r`` and the teacher scores
``t`` (temperature ``T``, weight ``lambda``), and ``L_lm`` the LM objective's loss on the response
when ``head_lm_loss`` names one (``none``: the examples hold the prompt only)::

    L = head_weight * [ L_rank(s, r) + lambda * KL(softmax(t / T) || softmax(s)) + ... ]  (+ L_lm)

(the squared-error and pointwise terms of that loss as ``head_teacher_mse`` and ``head_pointwise_weight`` set them)

Only the passage-end positions and the response tail are projected to the vocabulary: one
``logits_to_keep`` index tensor, so the forward stays one call through the (DDP / DeepSpeed / peft)
wrapper. A model trained so is read by ``scoring="head"``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from rerank.config import PruningConfig
from rerank.engine.head_pruning import score_row_pruned
from rerank.engine.passage_head import relevance_from_logits
from rerank.engine.pruning import _causal_lm, check_supported, layer_schedule
from rerank.prompting.prompts import relevance_token_ids
from rerank.training.losses import LOSSES
from rerank.training.losses.identifier_ranking import RANKING_LOSSES
from rerank.training.losses.passage_head import PassageHeadLoss
from rerank.training.objectives.base import Objective, ObjectiveOutput, first_scored_position

if TYPE_CHECKING:
    from rerank.training.objectives import ObjectiveConfig

HEAD_LM_LOSSES = (*LOSSES, "none")


@dataclass
class HeadArguments:
    """Options of ``objective: head``."""

    head_rank_loss: str = field(
        default="ranknet",
        metadata={"help": "Rank loss on the head scores against the label ranks: ranknet | listnet | listmle."},
    )
    head_weight: float = field(default=1.0, metadata={"help": "Weight of the head loss next to the LM term (if any)."})
    head_teacher_weight: float = field(
        default=1.0,
        metadata={
            "help": (
                "Weight lambda of KL(softmax(teacher/T) || softmax(head scores)) for labels carrying "
                "teacher_scores; 0 = ranks only."
            )
        },
    )
    head_teacher_temperature: float = field(
        default=0.05,
        metadata={"help": "Temperature T of the teacher distribution (all-MiniLM cosines span about 0..0.8)."},
    )
    head_lm_loss: str = field(
        default="none",
        metadata={
            "help": "An LM term on the response beside the head loss: importance | lm | none (prompt-only examples)."
        },
    )
    head_teacher_mse: float = field(
        default=0.0,
        metadata={
            "help": (
                "Weight mu of the mean squared error to the teacher scores, for teachers on the head's own scale "
                "(self-distillation: the dense model's readouts), so scores keep their calibration."
            )
        },
    )
    head_pointwise_weight: float = field(
        default=0.0,
        metadata={
            "help": (
                "Weight nu of the binary cross-entropy of sigmoid(head score) against the judged relevance of lists "
                "carrying grades: ties every prompt's scores to one scale, so chunks of a long list merge by score."
            )
        },
    )
    head_pruning: str | None = field(
        default=None,
        metadata={
            "help": (
                "A pruning schedule (PruningConfig.from_spec: 'default', 'fast' or 'depth:keep,...', '+freeze' to keep "
                "pruned tokens as frozen context) run in the "
                "forward: the head learns to read relevance from the pruned prefill. None = dense forward."
            )
        },
    )
    head_pruning_budget: str = field(
        default="global",
        metadata={"help": "Budget of head_pruning: global | per_passage (PruningConfig.budget)."},
    )

    def __post_init__(self):
        if self.head_rank_loss not in RANKING_LOSSES:
            raise ValueError(f"head_rank_loss must be one of {RANKING_LOSSES}, got {self.head_rank_loss!r}")
        if self.head_weight <= 0:
            raise ValueError(f"head_weight must be > 0, got {self.head_weight}")
        if self.head_lm_loss not in HEAD_LM_LOSSES:
            raise ValueError(f"head_lm_loss must be one of {HEAD_LM_LOSSES}, got {self.head_lm_loss!r}")
        # PassageHeadLoss checks the teacher weights and temperature, the schedule its own fields.
        PassageHeadLoss(
            self.head_rank_loss,
            self.head_teacher_weight,
            self.head_teacher_temperature,
            self.head_teacher_mse,
            self.head_pointwise_weight,
        )
        if self.head_pruning is not None:
            self.pruning_config()

    def pruning_config(self) -> PruningConfig | None:
        """The schedule of ``head_pruning`` (None: dense), checked for head scoring."""
        if self.head_pruning is None:
            return None
        config = dataclasses.replace(PruningConfig.from_spec(self.head_pruning), budget=self.head_pruning_budget)
        config.check_head_scoring()
        return config


class PassageHeadObjective(Objective):
    """Head loss on the yes-no readout at every passage's end (+ an LM term); formula in the module docstring."""

    scoring = "head"

    def __init__(
        self,
        head_loss: PassageHeadLoss,
        relevance_ids: tuple[int, int],
        weight: float = 1.0,
        lm_loss: nn.Module | None = None,
        pruning: PruningConfig | None = None,
    ):
        super().__init__()
        self.head_loss, self.relevance_ids, self.weight, self.lm_loss = head_loss, relevance_ids, weight, lm_loss
        if pruning is not None and lm_loss is not None:
            raise ValueError("head_pruning trains the head readout alone: set head_lm_loss to none")
        self.pruning = pruning

    @classmethod
    def from_config(cls, config: ObjectiveConfig, tokenizer) -> PassageHeadObjective:
        options = config.head
        head = PassageHeadLoss(
            options.head_rank_loss,
            options.head_teacher_weight,
            options.head_teacher_temperature,
            options.head_teacher_mse,
            options.head_pointwise_weight,
        )
        lm_loss = None if options.head_lm_loss == "none" else config.lm.build(options.head_lm_loss)
        return cls(head, relevance_token_ids(tokenizer), options.head_weight, lm_loss, options.pruning_config())

    @staticmethod
    def options_used(config: ObjectiveConfig) -> tuple:
        return (config.head, config.lm) if config.head.head_lm_loss == "importance" else (config.head,)

    def example_options(self) -> dict[str, bool]:
        return {"identifier_tree": False, "passage_head": True, "include_target": self.lm_loss is not None}

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        positions, ranks = batch.pop("head_positions"), batch.pop("passage_ranks")
        teacher, labels, rank_ids = batch.pop("teacher_scores"), batch.pop("labels"), batch.pop("rank_ids")
        prunable, relevance = batch.pop("prunable", None), batch.pop("relevance", None)
        if self.pruning is not None:
            if prunable is None:
                raise ValueError("head_pruning needs the examples' prunable masks (ExampleOptions.passage_head)")
            scores = self._pruned_scores(model, batch, positions, ranks, prunable)
            loss = self.weight * self.head_loss(scores, ranks, teacher, relevance)
            # A dict, as the Trainer's evaluation reads model outputs: the scores are what was predicted.
            return ObjectiveOutput(loss, {"head_scores": scores}, dict(self.head_loss.last_terms))
        length = batch["input_ids"].size(1)
        heads = positions[ranks > 0].unique()  # sorted, shared by the batch rows
        start = first_scored_position(labels) if self.lm_loss is not None else length
        keep = torch.cat([heads, torch.arange(start, length, device=heads.device)])
        outputs = model(**batch, use_cache=False, logits_to_keep=keep)
        head_logits = outputs.logits[:, : heads.numel()]
        index = torch.searchsorted(heads, positions.clamp(min=0)).clamp(max=heads.numel() - 1)
        picked = head_logits.gather(1, index[..., None].expand(-1, -1, head_logits.size(-1)))
        scores = relevance_from_logits(picked, *self.relevance_ids)
        loss = self.weight * self.head_loss(scores, ranks, teacher, relevance)
        terms = dict(self.head_loss.last_terms)
        if self.lm_loss is not None:
            lm = self.lm_loss(outputs.logits[:, heads.numel() :], labels[:, start:], rank_ids[:, start:])
            terms["lm_loss"] = float(lm.detach())
            loss = loss + lm
        return ObjectiveOutput(loss, outputs, terms)

    def _pruned_scores(
        self,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        positions: torch.Tensor,
        ranks: torch.Tensor,
        prunable: torch.Tensor,
    ) -> torch.Tensor:
        """``[B, K]`` head scores from the pruned prefill (:func:`score_row_pruned`), one row at a time.

        Survivor sets differ per prompt, so rows cannot share one padded forward; padding passages
        score 0 and are masked by the loss.
        """
        # DDP / DeepSpeed wrap the (peft) model; the pruned forward calls its layers directly.
        inner = getattr(model, "module", model)
        check_supported(inner, self.pruning)
        lm = _causal_lm(inner)
        schedule = layer_schedule(self.pruning, len(lm.model.layers))
        rows = []
        for b in range(positions.size(0)):
            valid = ranks[b] > 0
            reads = positions[b][valid].tolist()
            row, _ = score_row_pruned(
                lm, batch["input_ids"][b], reads, prunable[b].bool(), *self.relevance_ids, schedule, self.pruning
            )
            full = torch.zeros(positions.size(1), dtype=row.dtype, device=row.device)
            rows.append(full.masked_scatter(valid.to(row.device), row))
        return torch.stack(rows)
