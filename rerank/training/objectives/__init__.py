"""Training objectives: each owns its forward slice, its loss formula and its logged terms.

``objective:`` in a training YAML names one of :data:`OBJECTIVES`; its options live in their own
dataclass (parsed beside the training arguments by ``HfArgumentParser``):

* ``importance`` / ``lm``: :mod:`.language_model` (options :class:`LanguageModelArguments`), read with ``generate``;
* ``identifier_ranking``: :mod:`.identifier_ranking` (:class:`IdentifierRankingArguments`), read with ``single_pass``;
* ``head``: :mod:`.passage_head` (:class:`HeadArguments`), read with ``head``.

The LM term's options (:class:`LanguageModelArguments`) also apply to the LM term that
``identifier_ranking`` and ``head`` may add.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rerank.training.objectives.base import Objective, ObjectiveOutput, first_scored_position
from rerank.training.objectives.identifier_ranking import IdentifierRankingArguments, IdentifierRankingObjective
from rerank.training.objectives.language_model import LanguageModelArguments, LanguageModelObjective
from rerank.training.objectives.passage_head import HeadArguments, PassageHeadObjective

_CLASSES: dict[str, type[Objective]] = {
    "importance": LanguageModelObjective,
    "lm": LanguageModelObjective,
    "identifier_ranking": IdentifierRankingObjective,
    "head": PassageHeadObjective,
}
OBJECTIVES = tuple(_CLASSES)


@dataclass
class ObjectiveArguments:
    """Which objective trains the model."""

    objective: str = field(
        default="importance",
        metadata={
            "help": (
                "importance (rank-weighted LM) | lm (plain LM, ablation) | identifier_ranking (LM + "
                "single-pass ranking loss) | head (passage-end readout)."
            )
        },
    )

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")


@dataclass(frozen=True)
class ObjectiveConfig:
    """The selected objective and every objective's options (only the selected one's are used)."""

    name: str = "importance"
    lm: LanguageModelArguments = field(default_factory=LanguageModelArguments)
    ranking: IdentifierRankingArguments = field(default_factory=IdentifierRankingArguments)
    head: HeadArguments = field(default_factory=HeadArguments)

    def __post_init__(self):
        ObjectiveArguments(self.name)

    @property
    def cls(self) -> type[Objective]:
        return _CLASSES[self.name]

    @property
    def scoring(self) -> str:
        """The ``Reranker`` scoring mode that reads a model trained with this objective."""
        return self.cls.scoring

    def settings(self) -> dict[str, Any]:
        """The objective and the options it uses, flat (recorded in the output folder, compared on resume)."""
        settings: dict[str, Any] = {"objective": self.name}
        for options in self.cls.options_used(self):
            settings.update(asdict(options))
        return settings

    def build(self, tokenizer) -> Objective:
        """The objective module (``tokenizer``: the head objective reads its yes / no token ids)."""
        return self.cls.from_config(self, tokenizer)


__all__ = [
    "OBJECTIVES",
    "HeadArguments",
    "IdentifierRankingArguments",
    "IdentifierRankingObjective",
    "LanguageModelArguments",
    "LanguageModelObjective",
    "Objective",
    "ObjectiveArguments",
    "ObjectiveConfig",
    "ObjectiveOutput",
    "PassageHeadObjective",
    "first_scored_position",
]
