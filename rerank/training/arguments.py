"""Arguments of ``rerank train``: the run, the LoRA adapter and the objective, each its own dataclass.

One YAML file (flat keys) plus command-line overrides feed them all through ``HfArgumentParser``,
which hands each key to the dataclass that declares it::

    objective: head            # ObjectiveArguments: importance | lm | identifier_ranking | head
    head_rank_loss: ranknet    # HeadArguments (the selected objective's options)
    lora_r: 16                 # LoraArguments (maps onto peft.LoraConfig)
    learning_rate: 3.0e-4      # LazyRankTrainingArguments (transformers.TrainingArguments + data options)
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments

from rerank.training.data import check_shuffle
from rerank.training.objectives import (
    HeadArguments,
    IdentifierRankingArguments,
    LanguageModelArguments,
    ObjectiveArguments,
    ObjectiveConfig,
)

logger = logging.getLogger(__name__)

DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@dataclass
class LazyRankTrainingArguments(TrainingArguments):
    """The run and its data, on top of :class:`transformers.TrainingArguments` (all overridable on the command line)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Base model folder or hub id; None = the default SmolLM2-135M-Instruct (offline)."},
    )
    train_file: str | None = field(
        default=None,
        metadata={"help": "Label JSONL from `rerank labels` (or the paper's released labels with --corpus_file)."},
    )
    corpus_file: str | None = field(
        default=None, metadata={"help": "Collection folder or corpus.jsonl for labels stored as ids only."}
    )
    on_invalid_labels: str = field(
        default="error",
        metadata={"help": "A final_list that is not a permutation of initial_list: 'error' or 'skip' (counted)."},
    )
    max_passage_tokens: int | None = field(
        default=100,
        metadata={"help": "Per-passage token budget; must match inference (Reranker's max_passage_tokens)."},
    )
    prompt: str = field(
        default="lazyrank",
        metadata={
            "help": (
                "Prompt preset (rerank.prompting.presets.PRESETS) to train on, e.g. rank_mistral100 to continue a "
                "RankMistral100-style checkpoint; numeric identifiers only. Recorded in lazyrank.json so "
                "inference uses the same prompt."
            )
        },
    )
    passages_per_example: int | None = field(
        default=None, metadata={"help": "Keep the first-stage top-k candidates of each label; None = all."}
    )
    shuffle_initial_order: bool = field(
        default=False,
        metadata={"help": "Present candidates in a random (seeded, per-example) order: initial-order augmentation."},
    )
    shuffle_fraction: float = field(
        default=0.0,
        metadata={
            "help": (
                "Shuffle only this share of the examples (a seeded draw per example) and keep the first-stage "
                "order in the others: the order stays a prior the model may use, not the answer. 0 = none."
            )
        },
    )
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Drop examples longer than this many tokens (counted in the log); None = keep all."},
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "sdpa | eager | flash_attention_2; None = flash-attn on CUDA when installed, else sdpa."},
    )
    eval_fraction: float = field(
        default=0.0,
        metadata={
            "help": (
                "Hold out this fraction of the labels (seeded) and report the loss on them every eval_steps; "
                "0 = no held-out set."
            )
        },
    )
    max_train_minutes: float | None = field(
        default=None,
        metadata={
            "help": (
                "Stop after the optimizer step that crosses this wall-clock budget and save as usual (all "
                "ranks stop together); None = no limit."
            )
        },
    )
    stop_at_step: int | None = field(
        default=None,
        metadata={
            "help": (
                "Stop and save at this global step while the LR schedule still runs to max_steps (replays a "
                "run that was cut short, e.g. the shipped weights' segments); None = run to max_steps."
            )
        },
    )
    metrics_file: str | None = field(
        default=None,
        metadata={
            "help": "Write step time, tokens/s and peak memory here (JSON); default OUTPUT_DIR/train_metrics.json."
        },
    )
    # The Trainer would drop rank_ids (not a forward() argument) otherwise.
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep False: the loss needs the rank_ids column."}
    )

    def __post_init__(self):
        if not 0.0 <= self.eval_fraction < 0.5:
            raise ValueError(f"eval_fraction must lie in [0, 0.5), got {self.eval_fraction}")
        if self.on_invalid_labels not in ("error", "skip"):
            raise ValueError(f"on_invalid_labels must be 'error' or 'skip', got {self.on_invalid_labels!r}")
        check_shuffle(self.shuffle_initial_order, self.shuffle_fraction)  # before any model is loaded
        if self.max_train_minutes is not None and self.max_train_minutes <= 0:
            raise ValueError(f"max_train_minutes must be > 0 or None, got {self.max_train_minutes}")
        if self.stop_at_step is not None and self.stop_at_step < 1:
            raise ValueError(f"stop_at_step must be >= 1 or None, got {self.stop_at_step}")
        if self.max_passage_tokens is not None and self.max_passage_tokens < 1:
            raise ValueError(f"max_passage_tokens must be >= 1 or None, got {self.max_passage_tokens}")
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must stay False (the loss needs rank_ids)")
        super().__post_init__()


@dataclass
class LoraArguments:
    """LoRA or full fine-tuning; the ``lora_*`` fields are :class:`peft.LoraConfig`'s (see :meth:`peft_config`)."""

    use_lora: bool = field(default=True, metadata={"help": "Train a LoRA adapter (peft); false = full fine-tuning."})
    init_adapter: str | None = field(
        default=None,
        metadata={
            "help": (
                "Start from this LoRA adapter folder instead of a fresh LoRA ('default' = the shipped "
                "reranker's): continue or domain-adapt a trained reranker. Its rank, targets and layers win "
                "over the lora_* options."
            )
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (LoraConfig.r)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha (LoraConfig.lora_alpha)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (LoraConfig.lora_dropout)."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_LORA_TARGETS),
        metadata={"help": "Module names LoRA adapts (LoraConfig.target_modules)."},
    )
    lora_layers_from: float = field(
        default=0.0,
        metadata={
            "help": (
                "Adapt only the layers from this fraction of the depth on (0.5 = the top half; "
                "LoraConfig.layers_to_transform): backward then stops there, so steps are cheaper; 0 = every "
                "layer."
            )
        },
    )

    def __post_init__(self):
        if not 0.0 <= self.lora_layers_from < 1.0:
            raise ValueError(f"lora_layers_from must lie in [0, 1), got {self.lora_layers_from}")
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}")
        if self.init_adapter is not None:
            if not self.use_lora:
                raise ValueError("init_adapter continues a LoRA adapter: it needs use_lora true")
            self.init_adapter = str(resolve_adapter(self.init_adapter))

    def peft_config(self, num_layers: int):
        """The :class:`peft.LoraConfig` of a fresh adapter on a model of ``num_layers`` decoder layers."""
        from peft import LoraConfig

        layers = None
        if self.lora_layers_from > 0:
            layers = list(range(int(round(self.lora_layers_from * num_layers)), num_layers))
        return LoraConfig(
            task_type="CAUSAL_LM",
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=list(self.lora_target_modules),
            layers_to_transform=layers,
        )


def resolve_adapter(name: str) -> Path:
    """An adapter folder from a path or ``'default'`` (the shipped reranker's); a clear error otherwise."""
    if name == "default":
        from rerank.models import shipped_weights_dir

        folder = Path(shipped_weights_dir())
    else:
        folder = Path(name)
    if not (folder / "adapter_config.json").is_file():
        raise ValueError(f"init_adapter={name!r}: {folder} holds no adapter_config.json (not a LoRA adapter folder)")
    return folder


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``rerank train`` reads: the run, the adapter, the objective."""

    args: LazyRankTrainingArguments
    lora: LoraArguments
    objective: ObjectiveConfig


# Each YAML key / flag goes to the one dataclass that declares it.
ARGUMENT_CLASSES = (
    LazyRankTrainingArguments,
    LoraArguments,
    ObjectiveArguments,
    LanguageModelArguments,
    IdentifierRankingArguments,
    HeadArguments,
)


def _running_under_deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def parse_args(argv: Sequence[str]) -> TrainConfig:
    """``[config.yaml] [--field value ...]``: YAML values, then command-line overrides."""
    import yaml

    argv = list(argv)
    values: dict = {}
    if argv and not argv[0].startswith("-"):
        path = argv.pop(0)
        with open(path, encoding="utf-8") as fh:
            values = yaml.safe_load(fh) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of argument names to values")
    # Parse only the flags actually given (defaults suppressed), already converted to their types.
    overrides = HfArgumentParser(ARGUMENT_CLASSES, argument_default=argparse.SUPPRESS)
    for action in overrides._actions:
        if action.dest != "help":
            action.default = argparse.SUPPRESS
            action.required = False
    values.update(vars(overrides.parse_args(argv)))
    if not torch.cuda.is_available():
        # CPU machine: DDP needs use_cpu (MULTI_CPU + gloo); DeepSpeed must not get cpu=True (it would
        # fall back to plain DDP) but needs gloo, or every rank believes it is rank 0.
        if _running_under_deepspeed():
            values.setdefault("ddp_backend", "gloo")
            # An inherited ACCELERATE_USE_CPU=true would silently turn DeepSpeed into plain MULTI_CPU DDP.
            if os.environ.pop("ACCELERATE_USE_CPU", None) is not None:
                logger.info("DeepSpeed launch: ignoring ACCELERATE_USE_CPU from the environment")
        else:
            values.setdefault("use_cpu", True)
            os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    args, lora, selected, lm, ranking, head = HfArgumentParser(ARGUMENT_CLASSES).parse_dict(values)
    if args.train_file is None:
        raise ValueError("train_file is required (in the YAML or --train_file)")
    objective = ObjectiveConfig(selected.objective, lm, ranking, head)
    if objective.cls.needs_4d_mask and args.attn_implementation == "flash_attention_2":
        raise ValueError(
            f"objective {objective.name} packs a batch with a 4-D mask, which flash-attention cannot "
            "take; use attn_implementation=sdpa"
        )
    return TrainConfig(args, lora, objective)
