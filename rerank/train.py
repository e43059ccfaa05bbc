"""Fine-tune a listwise reranker on complete labels (``rerank train``).

A thin :class:`transformers.Trainer` subclass (only ``compute_loss``) with the importance-aware
loss, and a :class:`TrainingArguments` subclass for our options, read from a YAML file with
command-line overrides. accelerate, DeepSpeed (ZeRO-2/3) and peft do the rest::

    python -m rerank.train configs/train/default-cpu.yaml --max_steps 3
    accelerate launch --config_file configs/accelerate/cpu_zero3.yaml -m rerank.train \\
        configs/train/default-cpu.yaml --output_dir runs/x --max_steps 5

On a machine without CUDA the script trains on CPU by itself (``use_cpu`` plus
``ACCELERATE_USE_CPU`` for DDP; gloo as the DeepSpeed backend), so the same accelerate configs
and code paths as on GPUs run with 2 CPU processes. The output folder (a LoRA adapter or a full
model, with the tokenizer) loads with ``Reranker.from_pretrained(output_dir)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments

from rerank.losses import LOSSES, build_loss

logger = logging.getLogger(__name__)

DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@dataclass
class LazyRankTrainingArguments(TrainingArguments):
    """Our options on top of :class:`transformers.TrainingArguments` (all overridable on the command line)."""

    model_name_or_path: Optional[str] = field(default=None, metadata={"help": "Base model folder or hub id; None = the default SmolLM2-135M-Instruct (offline)."})
    train_file: Optional[str] = field(default=None, metadata={"help": "Label JSONL from `rerank labels` (or the paper's released labels with --corpus_file)."})
    corpus_file: Optional[str] = field(default=None, metadata={"help": "Collection folder or corpus.jsonl for labels stored as ids only."})
    on_invalid_labels: str = field(default="error", metadata={"help": "A final_list that is not a permutation of initial_list: 'error' or 'skip' (counted)."})
    max_passage_tokens: Optional[int] = field(default=100, metadata={"help": "Per-passage token budget; must match inference (Reranker's max_passage_tokens)."})
    prompt: str = field(default="lazyrank", metadata={"help": "Prompt preset (rerank.prompting.presets.PRESETS) to train on, e.g. rank_mistral100 to continue a RankMistral100-style checkpoint; numeric identifiers only. Recorded in lazyrank.json so inference uses the same prompt."})
    passages_per_example: Optional[int] = field(default=None, metadata={"help": "Keep the first-stage top-k candidates of each label; None = all."})
    shuffle_initial_order: bool = field(default=False, metadata={"help": "Present candidates in a random (seeded, per-example) order: initial-order augmentation."})
    max_seq_length: Optional[int] = field(default=None, metadata={"help": "Drop examples longer than this many tokens (counted in the log); None = keep all."})
    loss: str = field(default="importance", metadata={"help": "'importance' (rank-weighted), 'lm' (plain response NLL, ablation), or 'none' (no response tokens: a head-only objective)."})
    importance_alpha: float = field(default=1.0, metadata={"help": "Weight of separator and end tokens in the importance-aware loss."})
    loss_normalize: str = field(default="tokens", metadata={"help": "Divide the weighted sum by the number of response 'tokens' or by the sum of 'weights'."})
    use_lora: bool = field(default=True, metadata={"help": "Train a LoRA adapter (peft); false = full fine-tuning."})
    init_adapter: Optional[str] = field(default=None, metadata={"help": "Start from this LoRA adapter folder instead of a fresh LoRA ('default' = the shipped reranker's): continue or domain-adapt a trained reranker. Its rank, targets and layers win over the lora_* options."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS), metadata={"help": "Module names LoRA adapts."})
    lora_layers_from: float = field(default=0.0, metadata={"help": "Adapt only the layers from this fraction of the depth on (0.5 = the top half): backward then stops there, so steps are cheaper; 0 = every layer."})
    attn_implementation: Optional[str] = field(default=None, metadata={"help": "sdpa | eager | flash_attention_2; None = flash-attn on CUDA when installed, else sdpa."})
    ranking_loss: Optional[str] = field(default=None, metadata={"help": "Add a ranking loss on single-pass identifier scores: ranknet | listnet | listmle; None = LM objective only."})
    ranking_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the ranking loss next to the (importance-aware) LM loss."})
    head_loss: Optional[str] = field(default=None, metadata={"help": "Train scoring='head' (yes-no readout at every passage's end): ranknet | listnet | listmle on the label ranks, plus the teacher KL; None = off."})
    head_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the head loss next to the LM loss (if any)."})
    head_teacher_weight: float = field(default=1.0, metadata={"help": "Weight lambda of KL(softmax(teacher/T) || softmax(head scores)) for labels carrying teacher_scores; 0 = ranks only."})
    head_teacher_temperature: float = field(default=0.05, metadata={"help": "Temperature T of the teacher distribution (all-MiniLM cosines span about 0..0.8)."})
    eval_fraction: float = field(default=0.0, metadata={"help": "Hold out this fraction of the labels (seeded) and report the loss on them every eval_steps; 0 = no held-out set."})
    max_train_minutes: Optional[float] = field(default=None, metadata={"help": "Stop after the optimizer step that crosses this wall-clock budget and save as usual (all ranks stop together); None = no limit."})
    stop_at_step: Optional[int] = field(default=None, metadata={"help": "Stop and save at this global step while the LR schedule still runs to max_steps (replays a run that was cut short, e.g. the shipped weights' segments); None = run to max_steps."})
    metrics_file: Optional[str] = field(default=None, metadata={"help": "Write step time, tokens/s and peak memory here (JSON); default OUTPUT_DIR/train_metrics.json."})
    # The Trainer would drop rank_ids (not a forward() argument) otherwise.
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep False: the loss needs the rank_ids column."})

    def __post_init__(self):
        if self.loss not in (*LOSSES, "none"):
            raise ValueError(f"loss must be one of {(*LOSSES, 'none')}, got {self.loss!r}")
        if self.head_loss is not None:
            from rerank.losses.identifier_ranking import RANKING_LOSSES as _HEAD_RANKS

            if self.head_loss not in _HEAD_RANKS:
                raise ValueError(f"head_loss must be one of {_HEAD_RANKS} or None, got {self.head_loss!r}")
            if self.ranking_loss is not None:
                raise ValueError("head_loss and ranking_loss need different batch layouts: choose one")
            if self.head_loss_weight <= 0:
                raise ValueError(f"head_loss_weight must be > 0, got {self.head_loss_weight}")
        if self.loss == "none" and self.head_loss is None:
            raise ValueError("loss='none' leaves nothing to train: set head_loss")
        if self.loss == "none" and self.ranking_loss is not None:
            raise ValueError("ranking_loss scores a tree packed after the target: it needs loss 'importance' or 'lm'")
        if not 0.0 <= self.eval_fraction < 0.5:
            raise ValueError(f"eval_fraction must lie in [0, 0.5), got {self.eval_fraction}")
        if self.loss_normalize not in ("tokens", "weights"):
            raise ValueError(f"loss_normalize must be 'tokens' or 'weights', got {self.loss_normalize!r}")
        if self.on_invalid_labels not in ("error", "skip"):
            raise ValueError(f"on_invalid_labels must be 'error' or 'skip', got {self.on_invalid_labels!r}")
        if self.importance_alpha < 0:
            raise ValueError(f"importance_alpha must be >= 0, got {self.importance_alpha}")
        if self.max_train_minutes is not None and self.max_train_minutes <= 0:
            raise ValueError(f"max_train_minutes must be > 0 or None, got {self.max_train_minutes}")
        if self.stop_at_step is not None and self.stop_at_step < 1:
            raise ValueError(f"stop_at_step must be >= 1 or None, got {self.stop_at_step}")
        if not 0.0 <= self.lora_layers_from < 1.0:
            raise ValueError(f"lora_layers_from must lie in [0, 1), got {self.lora_layers_from}")
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}")
        if self.init_adapter is not None:
            if not self.use_lora:
                raise ValueError("init_adapter continues a LoRA adapter: it needs use_lora true")
            self.init_adapter = str(resolve_adapter(self.init_adapter))
        if self.max_passage_tokens is not None and self.max_passage_tokens < 1:
            raise ValueError(f"max_passage_tokens must be >= 1 or None, got {self.max_passage_tokens}")
        if self.ranking_loss is not None:
            from rerank.losses.identifier_ranking import RANKING_LOSSES

            if self.ranking_loss not in RANKING_LOSSES:
                raise ValueError(f"ranking_loss must be one of {RANKING_LOSSES} or None, got {self.ranking_loss!r}")
            if self.ranking_loss_weight <= 0:
                raise ValueError(f"ranking_loss_weight must be > 0, got {self.ranking_loss_weight}")
            if self.attn_implementation == "flash_attention_2":
                raise ValueError("ranking_loss packs a tree with a 4-D mask, which flash-attention cannot take; "
                                 "use attn_implementation=sdpa")
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must stay False (the loss needs rank_ids)")
        super().__post_init__()


def first_scored_position(labels: torch.Tensor) -> int:
    """The earliest position whose logits any loss reads: the one predicting the first target token
    of any row (tree nodes and their sources come after it)."""
    from rerank.losses import IGNORE_INDEX

    has_target = labels != IGNORE_INDEX
    if not bool(has_target.any()):
        return 0
    first = torch.where(has_target.any(1), has_target.int().argmax(1), torch.full_like(labels[:, 0], labels.size(1)))
    return max(int(first.min()) - 1, 0)


class ListwiseTrainer(Trainer):
    """Trainer whose loss is :class:`~rerank.losses.ImportanceAwareLoss` (or plain LM) on response tokens."""

    def __init__(self, *args, loss_fn: torch.nn.Module | None, ranking_loss: torch.nn.Module | None = None,
                 ranking_loss_weight: float = 1.0, head_loss: torch.nn.Module | None = None,
                 head_loss_weight: float = 1.0, relevance_ids: tuple[int, int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self.ranking_loss, self.ranking_loss_weight = ranking_loss, ranking_loss_weight
        self.head_loss, self.head_loss_weight, self.relevance_ids = head_loss, head_loss_weight, relevance_ids
        # Our loss is a per-micro-batch mean: let the Trainer divide it by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self.tokens_seen = 0
        self._component_sums: dict[str, float] = {}
        self._component_count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        rank_ids = inputs.pop("rank_ids")
        num_tokens = inputs.pop("num_tokens", None)  # packed batches carry a 4-D mask: count tokens apart
        if model.training:
            self.tokens_seen += int(num_tokens.sum()) if num_tokens is not None else int(inputs["attention_mask"].sum())
        if "head_positions" in inputs:
            return self._head_compute_loss(model, inputs, labels, rank_ids, return_outputs)
        tree = {k: inputs.pop(k) for k in ("edge_source", "edge_token", "path_matrix", "passage_ranks") if k in inputs}
        # Only the response (and tree) positions need vocabulary logits: with a 2k-token prompt and
        # a 100-token answer, projecting every position would cost 20x the lm_head work and hold a
        # [B, L, V] fp32 tensor (GBs) for nothing. The losses then see the same tail of the labels.
        start = first_scored_position(labels)
        outputs = model(**inputs, use_cache=False, logits_to_keep=labels.size(1) - start)
        loss = self.loss_fn(outputs.logits, labels[:, start:], rank_ids[:, start:])
        if self.ranking_loss is not None and tree:
            from rerank.engine.single_pass import identifier_scores

            sources = (tree["edge_source"] - start).clamp(min=0)  # padding nodes (source 0) have no path weight
            scores = identifier_scores(outputs.logits, sources, tree["edge_token"], tree["path_matrix"])
            ranking = self.ranking_loss(scores, tree["passage_ranks"])
            if model.training:  # the two terms apart, so a stalled one is visible in the logs
                self._add_component("lm_loss", loss)
                self._add_component("ranking_loss", ranking)
            loss = loss + self.ranking_loss_weight * ranking
        return (loss, outputs) if return_outputs else loss

    def _head_compute_loss(self, model, inputs, labels, rank_ids, return_outputs):
        """Head objective: scores at every passage's end (+ the LM loss on the response, if any).

        Only the passage-end positions and the response tail are projected to the vocabulary: one
        ``logits_to_keep`` index tensor, so the forward stays one call through the (DDP / DeepSpeed
        / peft) wrapper.
        """
        from rerank.engine.passage_head import relevance_from_logits

        positions, ranks = inputs.pop("head_positions"), inputs.pop("passage_ranks")
        teacher = inputs.pop("teacher_scores")
        length = inputs["input_ids"].size(1)
        heads = positions[ranks > 0].unique()                      # sorted, shared by the batch rows
        start = first_scored_position(labels) if self.loss_fn is not None else length
        keep = torch.cat([heads, torch.arange(start, length, device=heads.device)])
        outputs = model(**inputs, use_cache=False, logits_to_keep=keep)
        head_logits = outputs.logits[:, : heads.numel()]
        index = torch.searchsorted(heads, positions.clamp(min=0))
        index = index.clamp(max=heads.numel() - 1)
        picked = head_logits.gather(1, index[..., None].expand(-1, -1, head_logits.size(-1)))
        scores = relevance_from_logits(picked, *self.relevance_ids)
        head = self.head_loss(scores, ranks, teacher)
        loss = self.head_loss_weight * head
        if model.training:
            for name, value in self.head_loss.last_terms.items():
                self._add_component(name, torch.tensor(value))
        if self.loss_fn is not None:
            lm = self.loss_fn(outputs.logits[:, heads.numel():], labels[:, start:], rank_ids[:, start:])
            if model.training:
                self._add_component("lm_loss", lm)
            loss = loss + lm
        if model.training and self.loss_fn is None:
            self._component_count += 1
        return (loss, outputs) if return_outputs else loss

    def _add_component(self, name: str, value: torch.Tensor) -> None:
        self._component_sums[name] = self._component_sums.get(name, 0.0) + float(value.detach())
        if name == "lm_loss":
            self._component_count += 1

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Adds the mean LM and ranking terms since the last log (joint objective only)."""
        if "loss" in logs and self._component_count:
            for name, total in self._component_sums.items():
                logs[name] = round(total / self._component_count, 4)
            self._component_sums, self._component_count = {}, 0
        super().log(logs, *args, **kwargs)


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step (the first, with warm-up, is reported apart)."""

    def __init__(self):
        self.times: list[float] = []
        self._last = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._last is not None:
            self.times.append(time.perf_counter() - self._last)


class TimeLimit(TrainerCallback):
    """Ends training after the step that crosses ``minutes`` of wall time (a fixed-budget run).

    Ranks would read their clocks at slightly different moments, and one rank leaving the loop
    while another enters the next step's collectives hangs the job, so the decision is all-reduced.
    """

    def __init__(self, minutes: float):
        self.seconds = 60.0 * minutes
        self.start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        import torch.distributed as dist

        over = torch.tensor(float(time.monotonic() - self.start > self.seconds))
        if dist.is_available() and dist.is_initialized():
            if dist.get_backend() == "nccl":
                over = over.to(args.device)
            dist.all_reduce(over, op=dist.ReduceOp.MAX)
        if over.item() > 0:
            logging.getLogger(__name__).info("max_train_minutes=%s reached at step %d: stopping",
                                             self.seconds / 60, state.global_step)
            control.should_training_stop = True
            control.should_save = True


class StopAtStep(TrainerCallback):
    """Stop (and save) at a fixed global step, leaving the LR schedule defined by ``max_steps``."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            logging.getLogger(__name__).info("stop_at_step=%d reached: stopping", self.step)
            control.should_training_stop = True
            control.should_save = True


# ---------------------------------------------------------------------------------------------- arguments
def _running_under_deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def parse_args(argv: Sequence[str]) -> LazyRankTrainingArguments:
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
    overrides = HfArgumentParser(LazyRankTrainingArguments, argument_default=argparse.SUPPRESS)
    for action in overrides._actions:
        if action.dest != "help":
            action.default = argparse.SUPPRESS
            action.required = False
    given = vars(overrides.parse_args(argv))
    values.update(given)
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
    (args,) = HfArgumentParser(LazyRankTrainingArguments).parse_dict(values)
    if args.train_file is None:
        raise ValueError("train_file is required (in the YAML or --train_file)")
    return args


def resolve_checkpoint(args: LazyRankTrainingArguments) -> str | None:
    """``resume_from_checkpoint``: a path, or 'auto'/'last'/'true' = the newest checkpoint in output_dir (if any)."""
    value = args.resume_from_checkpoint
    if value is None or str(value).lower() in ("false", "no", "none", ""):
        return None
    if str(value).lower() in ("auto", "last", "true"):
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
        if last is None:
            logger.info("no checkpoint in %s: starting from scratch", args.output_dir)
        return last
    if not os.path.isdir(value):
        raise FileNotFoundError(f"resume_from_checkpoint={value} is not a folder")
    return value


# ---------------------------------------------------------------------------------------------- model
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


def load_model(args: LazyRankTrainingArguments):
    """Base model (+ LoRA) and tokenizer; built after the arguments so ZeRO-3 partitions at load time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rerank.models import choose_attn_implementation, default_model_path

    path = str(args.model_name_or_path or default_model_path())
    dtype = torch.bfloat16 if args.bf16 else (torch.float16 if args.fp16 else torch.float32)
    attn = args.attn_implementation or choose_attn_implementation(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    model.config.use_cache = False
    if args.use_lora:
        from peft import LoraConfig, get_peft_model

        if args.gradient_checkpointing:
            model.enable_input_require_grads()  # checkpointed blocks need a grad path through frozen embeddings
        if args.init_adapter:
            from peft import PeftModel

            return PeftModel.from_pretrained(model, args.init_adapter, is_trainable=True), tokenizer
        layers = None
        if args.lora_layers_from > 0:
            depth = model.config.num_hidden_layers
            layers = list(range(int(round(args.lora_layers_from * depth)), depth))
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=args.lora_r, lora_alpha=args.lora_alpha,
                                                 lora_dropout=args.lora_dropout,
                                                 target_modules=list(args.lora_target_modules),
                                                 layers_to_transform=layers))
    return model, tokenizer


def split_heldout(dataset, fraction: float, seed: int):
    """(train, held-out) with a seeded ``fraction`` held out; (dataset, None) when fraction is 0."""
    if fraction <= 0:
        return dataset, None
    parts = dataset.train_test_split(test_size=fraction, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def shutdown_distributed(barrier: bool = True) -> None:
    """Destroy every process group while the interpreter is still fully alive.

    Why: each process group (the default one and the subgroups DeepSpeed creates) is also held by
    torch's C++ group registry, a process-wide static that only ``destroy_process_group`` empties.
    Left alone, the gloo groups and their worker threads are destroyed during C++ static destruction
    at exit, in an unspecified order relative to the objects they use; when a joinable
    ``std::thread`` is destroyed first the runtime calls ``std::terminate`` ("terminate called
    without an active exception", rc 1) after training has succeeded. The barrier first keeps a fast
    rank from tearing down while a slower one is still inside a collective (not after a failure:
    the other rank may never arrive).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if barrier:
        dist.barrier()
    dist.destroy_process_group()


def write_recommended_settings(args: LazyRankTrainingArguments) -> None:
    """``lazyrank.json`` in the output folder: how ``Reranker.from_pretrained(output_dir)`` should rank
    by default (a head-trained model is read at the passage ends, not decoded)."""
    from rerank.models import RECOMMENDED_SETTINGS_FILE

    scoring = "head" if args.head_loss else ("single_pass" if args.ranking_loss else "generate")
    reranker = {"scoring": scoring} if args.prompt == "lazyrank" else {"scoring": scoring, "prompt": args.prompt}
    settings = {"reranker": reranker, "max_passage_tokens": args.max_passage_tokens,
                "trained_with": {"loss": args.loss, "head_loss": args.head_loss, "ranking_loss": args.ranking_loss,
                                 "train_file": args.train_file, "seed": args.seed}}
    path = Path(args.output_dir) / RECOMMENDED_SETTINGS_FILE
    path.write_text(json.dumps(settings, indent=1), encoding="utf-8")


def train(args: LazyRankTrainingArguments, callbacks: Sequence[TrainerCallback] = ()) -> dict:
    """Build data, model and trainer from ``args``, train (resuming if asked), save; returns metrics."""
    from transformers import set_seed

    from rerank.losses.identifier_ranking import IdentifierRankingLoss
    from rerank.training_data import ExampleOptions, ListwiseCollator, build_dataset

    set_seed(args.seed)  # LoRA initialisation draws from the global RNG before the Trainer exists
    model, tokenizer = load_model(args)
    options = ExampleOptions(max_passage_tokens=args.max_passage_tokens, passages_per_example=args.passages_per_example,
                             shuffle_initial_order=args.shuffle_initial_order, max_seq_length=args.max_seq_length,
                             seed=args.seed, identifier_tree=args.ranking_loss is not None,
                             passage_head=args.head_loss is not None, include_target=args.loss != "none",
                             prompt=args.prompt)
    with args.main_process_first(desc="encoding labels"):
        dataset = build_dataset(tokenizer, args.train_file, options, args.corpus_file, args.on_invalid_labels)
    dataset, heldout = split_heldout(dataset, args.eval_fraction, args.seed)
    head_loss = relevance_ids = None
    if args.head_loss is not None:
        from rerank.losses.passage_head import PassageHeadLoss
        from rerank.prompting.prompts import relevance_token_ids

        head_loss = PassageHeadLoss(args.head_loss, args.head_teacher_weight, args.head_teacher_temperature)
        relevance_ids = relevance_token_ids(tokenizer)
    timer = StepTimer()
    if args.max_train_minutes is not None:
        callbacks = [TimeLimit(args.max_train_minutes), *callbacks]
    if args.stop_at_step is not None:
        callbacks = [StopAtStep(args.stop_at_step), *callbacks]
    trainer = ListwiseTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=heldout,
                              processing_class=tokenizer,
                              data_collator=ListwiseCollator(tokenizer.pad_token_id), callbacks=[timer, *callbacks],
                              loss_fn=None if args.loss == "none" else build_loss(args.loss, args.importance_alpha,
                                                                                  args.loss_normalize),
                              ranking_loss=None if args.ranking_loss is None else IdentifierRankingLoss(args.ranking_loss),
                              ranking_loss_weight=args.ranking_loss_weight, head_loss=head_loss,
                              head_loss_weight=args.head_loss_weight, relevance_ids=relevance_ids)
    checkpoint = resolve_checkpoint(args)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    elapsed = time.perf_counter() - start
    trainer.save_model(args.output_dir)  # adapter or full model, plus the tokenizer
    if trainer.is_world_process_zero():
        write_recommended_settings(args)
    tokens = trainer.accelerator.reduce(torch.tensor(float(trainer.tokens_seen), device=args.device), "sum").item()
    steps = timer.times[1:] or timer.times
    metrics = {"world_size": trainer.accelerator.num_processes, "distributed_type": str(trainer.accelerator.distributed_type),
               "global_step": trainer.state.global_step, "max_steps": trainer.state.max_steps, "resumed_from": checkpoint, "train_loss": result.training_loss,
               "seconds": round(elapsed, 3), "steps_timed": len(timer.times),
               "first_step_s": round(timer.times[0], 3) if timer.times else None,
               "step_s_mean_after_first": round(sum(steps) / len(steps), 3) if steps else None,
               "tokens_seen": int(tokens), "tokens_per_s": round(tokens / sum(timer.times), 1) if timer.times else None,
               "peak_memory_mb_rank0": round(_peak_memory_mb(), 1), "loss": args.loss, "use_lora": args.use_lora,
               "log_history": trainer.state.log_history}
    if trainer.is_world_process_zero():
        path = Path(args.metrics_file or Path(args.output_dir) / "train_metrics.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=1))
    # Drop the DeepSpeed engine / DDP wrapper (they hold process-group handles) before teardown.
    trainer.accelerator.free_memory()
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """``rerank train CONFIG.yaml [--field value ...]`` (see the module docstring)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        metrics = train(args)
    except BaseException:
        shutdown_distributed(barrier=False)
        raise
    shutdown_distributed()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in metrics.items() if k != "log_history"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
