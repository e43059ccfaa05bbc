"""Fine-tune a listwise reranker on complete labels (``rerank train``).

A thin :class:`transformers.Trainer` subclass whose ``compute_loss`` calls the selected objective
(:mod:`rerank.training.objectives`) and logs the terms it returns; the arguments (:mod:`rerank.training.arguments`)
come from a YAML file with command-line overrides. accelerate, DeepSpeed (ZeRO-2/3) and peft do the
rest::

    python -m rerank.training.train configs/train/default-cpu.yaml --max_steps 3
    accelerate launch --config_file configs/accelerate/cpu_zero3.yaml -m rerank.training.train \\
        configs/train/default-cpu.yaml --output_dir runs/x --max_steps 5

On a machine without CUDA the script trains on CPU by itself (``use_cpu`` plus
``ACCELERATE_USE_CPU`` for DDP; gloo as the DeepSpeed backend), so the same accelerate configs
and code paths as on GPUs run with 2 CPU processes. The output folder (a LoRA adapter or a full
model, with the tokenizer) loads with ``Reranker.from_pretrained(output_dir)``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, set_seed
from transformers.trainer_utils import get_last_checkpoint

from rerank.data.resume import check_same_settings, save_settings
from rerank.distributed import shutdown_process_groups
from rerank.models import RECOMMENDED_SETTINGS_FILE, load_for_training
from rerank.training.arguments import LazyRankTrainingArguments, TrainConfig, parse_args
from rerank.training.data import ExampleOptions, ListwiseCollator, build_dataset
from rerank.training.objectives import Objective

logger = logging.getLogger(__name__)

TRAIN_SETTINGS_FILE = "train_settings.json"  # in output_dir: what a resumed run must not change

__all__ = ["ListwiseTrainer", "TrainConfig", "load_model", "main", "parse_args", "split_heldout", "train"]


class ListwiseTrainer(Trainer):
    """Trainer whose loss is a training objective (:mod:`rerank.training.objectives`), with its terms logged apart."""

    def __init__(self, *args, objective: Objective, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = objective
        # Our loss is a per-micro-batch mean: let the Trainer divide it by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self.tokens_seen = 0
        self._term_sums: dict[str, float] = {}
        self._term_batches = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        num_tokens = inputs.pop("num_tokens", None)  # packed batches carry a 4-D mask: count tokens apart
        if model.training:
            self.tokens_seen += int(num_tokens.sum()) if num_tokens is not None else int(inputs["attention_mask"].sum())
        result = self.objective(model, inputs)
        if model.training and result.terms:
            for name, value in result.terms.items():
                self._term_sums[name] = self._term_sums.get(name, 0.0) + value
            self._term_batches += 1
        return (result.loss, result.outputs) if return_outputs else result.loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Adds each objective term's mean over the micro-batches since the last log."""
        if "loss" in logs and self._term_batches:
            for name, total in self._term_sums.items():
                logs[name] = round(total / self._term_batches, 4)
            self._term_sums, self._term_batches = {}, 0
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
            logging.getLogger(__name__).info(
                "max_train_minutes=%s reached at step %d: stopping", self.seconds / 60, state.global_step
            )
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


# ---------------------------------------------------------------------------------------------- setup
def resolve_checkpoint(args: LazyRankTrainingArguments) -> str | None:
    """``resume_from_checkpoint``: a path, or 'auto'/'last'/'true' = the newest checkpoint in output_dir (if any)."""
    value = args.resume_from_checkpoint
    if value is None or str(value).lower() in ("false", "no", "none", ""):
        return None
    if str(value).lower() in ("auto", "last", "true"):
        last = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
        if last is None:
            logger.info("no checkpoint in %s: starting from scratch", args.output_dir)
        return last
    if not os.path.isdir(value):
        raise FileNotFoundError(f"resume_from_checkpoint={value} is not a folder")
    return value


def run_settings(config: TrainConfig) -> dict:
    """What a resumed run must share with the run it continues: the labels and the objective."""
    return {"train_file": str(Path(config.args.train_file).resolve()), **config.objective.settings()}


def check_resume(config: TrainConfig, checkpoint: str | None) -> None:
    """Refuse to resume a run on other labels or another objective (naming what changed); record this run's."""
    path = Path(config.args.output_dir) / TRAIN_SETTINGS_FILE
    if checkpoint is not None:
        check_same_settings(
            path,
            run_settings(config),
            what=f"{config.args.output_dir} (resuming {checkpoint})",
            advice="train into a new output_dir, or resume with the same train_file and objective",
        )
    if config.args.process_index == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_settings(path, run_settings(config))


def load_model(config: TrainConfig):
    """Base model (+ LoRA) and tokenizer; built after the arguments so ZeRO-3 partitions at load time."""
    args, lora = config.args, config.lora
    dtype = torch.bfloat16 if args.bf16 else (torch.float16 if args.fp16 else torch.float32)
    return load_for_training(
        args.model_name_or_path,
        dtype=dtype,
        attn_implementation=args.attn_implementation,
        lora=lora.peft_config if lora.use_lora else None,
        init_adapter=lora.init_adapter,
        gradient_checkpointing=args.gradient_checkpointing,
    )


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


def write_recommended_settings(config: TrainConfig) -> None:
    """``lazyrank.json`` in the output folder: how ``Reranker.from_pretrained(output_dir)`` should rank
    by default (the objective says which scoring mode reads the model it trained)."""
    args = config.args
    scoring = config.objective.scoring
    reranker = {"scoring": scoring} if args.prompt == "lazyrank" else {"scoring": scoring, "prompt": args.prompt}
    settings = {
        "reranker": reranker,
        "max_passage_tokens": args.max_passage_tokens,
        "trained_with": {
            **config.objective.settings(),
            "train_file": args.train_file,
            "shuffle_fraction": 1.0 if args.shuffle_initial_order else args.shuffle_fraction,
            "seed": args.seed,
        },
    }
    if config.objective.name == "head" and config.objective.head.head_pruning is not None:
        # Weights trained with a pruned forward read that schedule best: pruning="recommended" picks it.
        settings["pruning"] = {"schedule": dataclasses.asdict(config.objective.head.pruning_config())}
    path = Path(args.output_dir) / RECOMMENDED_SETTINGS_FILE
    path.write_text(json.dumps(settings, indent=1), encoding="utf-8")


def _callbacks(args: LazyRankTrainingArguments, timer: StepTimer, extra: Sequence[TrainerCallback]) -> list:
    callbacks = [timer]
    if args.stop_at_step is not None:
        callbacks.append(StopAtStep(args.stop_at_step))
    if args.max_train_minutes is not None:
        callbacks.append(TimeLimit(args.max_train_minutes))
    return [*callbacks, *extra]


def _metrics(trainer: ListwiseTrainer, config: TrainConfig, timer: StepTimer, result, checkpoint, elapsed) -> dict:
    args = config.args
    tokens = trainer.accelerator.reduce(torch.tensor(float(trainer.tokens_seen), device=args.device), "sum").item()
    steps = timer.times[1:] or timer.times
    return {
        "world_size": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "resumed_from": checkpoint,
        "train_loss": result.training_loss,
        "seconds": round(elapsed, 3),
        "steps_timed": len(timer.times),
        "first_step_s": round(timer.times[0], 3) if timer.times else None,
        "step_s_mean_after_first": round(sum(steps) / len(steps), 3) if steps else None,
        "tokens_seen": int(tokens),
        "tokens_per_s": round(tokens / sum(timer.times), 1) if timer.times else None,
        "peak_memory_mb_rank0": round(_peak_memory_mb(), 1),
        "objective": config.objective.name,
        "use_lora": config.lora.use_lora,
        "log_history": trainer.state.log_history,
    }


def train(config: TrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> dict:
    """Build data, model, objective and trainer from ``config``, train (resuming if asked), save; returns metrics."""

    args = config.args
    checkpoint = resolve_checkpoint(args)
    check_resume(config, checkpoint)
    set_seed(args.seed)  # LoRA initialisation draws from the global RNG before the Trainer exists
    model, tokenizer = load_model(config)
    objective = config.objective.build(tokenizer)
    options = ExampleOptions(
        max_passage_tokens=args.max_passage_tokens,
        passages_per_example=args.passages_per_example,
        shuffle_initial_order=args.shuffle_initial_order,
        shuffle_fraction=args.shuffle_fraction,
        max_seq_length=args.max_seq_length,
        seed=args.seed,
        prompt=args.prompt,
        **objective.example_options(),
    )
    with args.main_process_first(desc="encoding labels"):
        dataset = build_dataset(tokenizer, args.train_file, options, args.corpus_file, args.on_invalid_labels)
    dataset, heldout = split_heldout(dataset, args.eval_fraction, args.seed)
    timer = StepTimer()
    trainer = ListwiseTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=heldout,
        processing_class=tokenizer,
        data_collator=ListwiseCollator(tokenizer.pad_token_id),
        callbacks=_callbacks(args, timer, callbacks),
        objective=objective,
    )
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    elapsed = time.perf_counter() - start
    trainer.save_model(args.output_dir)  # adapter or full model, plus the tokenizer
    if trainer.is_world_process_zero():
        write_recommended_settings(config)
    metrics = _metrics(trainer, config, timer, result, checkpoint, elapsed)
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
    config = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        metrics = train(config)
    except BaseException:
        shutdown_process_groups(barrier=False)
        raise
    shutdown_process_groups()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in metrics.items() if k != "log_history"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
