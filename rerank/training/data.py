"""Training examples from complete labels: prompt (the inference prompt) + ranked target.

Each label becomes one example built with :func:`rerank.prompting.prompts.encode_prompt` (same chat
template, same per-passage token budget as inference) followed by the target ``[a] > [b] > ...``
and end-of-turn. ``labels`` is -100 on the prompt so only response tokens carry loss; ``rank_ids``
gives each response token the output rank of the identifier it spells (0 for separators / end),
which :class:`rerank.training.losses.ImportanceAwareLoss` turns into weights.

Augmentation (deterministic per example and seed, so a resumed run sees the same data):
``shuffle_initial_order`` presents the candidates in a random order (the paper found strong
sensitivity to initial order), ``shuffle_fraction`` does so for a seeded share of the examples only
(the first-stage order stays a useful prior, but not one that decides the answer alone);
``passages_per_example`` keeps the first-stage top-k only.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rerank.labels.records import LabelRecord, read_labels
from rerank.prompting.prompts import encode_prompt, encode_target, end_of_turn_ids
from rerank.training.losses import IGNORE_INDEX, target_with_ranks
from rerank.training.single_pass_data import pack_batch, tree_features

logger = logging.getLogger(__name__)


def check_shuffle(shuffle_initial_order: bool, shuffle_fraction: float) -> None:
    """Refuse a share outside [0, 1], or a share beside ``shuffle_initial_order`` (which shuffles all)."""
    if not 0.0 <= shuffle_fraction <= 1.0:
        raise ValueError(f"shuffle_fraction must be in [0, 1], got {shuffle_fraction}")
    if shuffle_initial_order and shuffle_fraction not in (0.0, 1.0):
        raise ValueError(
            f"shuffle_initial_order shuffles every example; shuffle_fraction={shuffle_fraction} "
            "asks for a share: set one of them"
        )


@dataclass
class ExampleOptions:
    """How label records become token sequences."""

    max_passage_tokens: int | None = 100
    passages_per_example: int | None = None
    shuffle_initial_order: bool = False
    shuffle_fraction: float = 0.0  # share of examples shuffled (shuffle_initial_order = all of them)
    max_seq_length: int | None = None
    seed: int = 0
    identifier_tree: bool = False  # add the first-identifier tree for the single-pass ranking loss
    passage_head: bool = False  # add passage-end positions, label ranks and teacher scores (scoring="head")
    include_target: bool = True  # False: prompt only (a head-only objective reads no response token)
    prompt: str = "lazyrank"  # prompt preset (rerank.prompting.presets): fine-tune a checkpoint on its own prompt

    def __post_init__(self):
        check_shuffle(self.shuffle_initial_order, self.shuffle_fraction)
        if self.passages_per_example is not None and self.passages_per_example < 2:
            raise ValueError(f"passages_per_example must be >= 2 or None, got {self.passages_per_example}")
        if self.identifier_tree and (self.passage_head or not self.include_target):
            raise ValueError(
                "identifier_tree packs the tree after the target: it needs include_target and "
                "cannot be combined with passage_head"
            )
        from rerank.prompting.presets import get_preset

        if get_preset(self.prompt).identifiers != "number":
            # The importance weights are derived from numeric identifiers' text layout.
            raise ValueError(f"prompt={self.prompt!r} uses letter identifiers: training supports numeric presets only")
        if self.max_seq_length is not None and self.max_seq_length < 16:
            raise ValueError(f"max_seq_length must be >= 16 or None, got {self.max_seq_length}")


def encode_example(tokenizer, record: LabelRecord, options: ExampleOptions, index: int = 0) -> dict:
    """Token ids, loss labels and rank ids of one label record."""
    initial = list(record.initial_list)
    if options.passages_per_example is not None:
        initial = initial[: options.passages_per_example]
    if options.shuffle_initial_order or (
        options.shuffle_fraction > 0.0
        and random.Random(f"share:{options.seed}:{index}:{record.qid}").random() < options.shuffle_fraction
    ):
        random.Random(f"{options.seed}:{index}:{record.qid}").shuffle(initial)
    position = {d: i for i, d in enumerate(initial)}
    order = [position[d] for d in record.final_list if d in position]
    prompt = encode_prompt(
        tokenizer,
        record.query,
        [record.passages[d] for d in initial],
        options.max_passage_tokens,
        preset=options.prompt,
    )
    target, ranks = target_with_ranks(tokenizer, order) if options.include_target else ([], [])
    if target and options.prompt != "lazyrank":
        # Same ranking tokens; what ends the answer is the preset's end of turn.
        preset_target = encode_target(tokenizer, order, options.prompt)
        spelled = len(target) - len(end_of_turn_ids(tokenizer))
        if preset_target[:spelled] != target[:spelled]:
            raise AssertionError("preset answer spelling differs from the numeric target layout")
        target, ranks = preset_target, ranks[:spelled] + [0] * (len(preset_target) - spelled)
    input_ids = prompt.input_ids + target
    extra = {}
    if options.identifier_tree:
        extra = tree_features(tokenizer, len(initial), order)
    if options.passage_head:
        passage_ranks = [0] * len(initial)
        for r, index in enumerate(order, start=1):
            passage_ranks[index] = r
        teacher = record.teacher_scores or {}
        extra = {
            "head_positions": prompt.passage_end_positions(),
            "passage_ranks": passage_ranks,
            "teacher_scores": [teacher.get(d, float("nan")) for d in initial],
            # 1 = judged relevant, 0 = not, NaN = the list carries no grades
            "relevance": [float(record.grades[d] > 0) if record.grades else float("nan") for d in initial],
            # passage-body tokens: what a pruned forward (head_pruning) may drop
            "prunable": [int(flag) for flag in prompt.prunable_mask()] + [0] * len(target),
        }
    return {
        "input_ids": input_ids,
        "labels": [IGNORE_INDEX] * len(prompt.input_ids) + target,
        "rank_ids": [0] * len(prompt.input_ids) + ranks,
        "num_passages": len(initial),
        "truncated_passages": prompt.truncated_passages,
        "length": len(input_ids),
        **extra,
    }


def build_dataset(
    tokenizer, train_file: str, options: ExampleOptions, corpus_file: str | None = None, on_invalid: str = "error"
):
    """A ``datasets.Dataset`` of encoded examples (columns: input_ids, labels, rank_ids, length).

    Over-long examples (more than ``max_seq_length`` tokens after the per-passage budget) are
    dropped; truncated passages and dropped examples are counted in one log line.
    """
    import datasets

    records, skipped = read_labels(train_file, corpus_file, on_invalid=on_invalid)
    if not records:
        raise ValueError(f"{train_file}: no usable labels")
    rows = [
        {
            "qid": r.qid,
            "query": r.query,
            "initial_list": r.initial_list,
            "final_list": r.final_list,
            "passages": [r.passages[d] for d in r.initial_list],
            "teacher": [(r.teacher_scores or {}).get(d, float("nan")) for d in r.initial_list],
            "grades": [r.grades[d] for d in r.initial_list] if r.grades else [],  # read_labels grades every passage
        }
        for r in records
    ]
    raw = datasets.Dataset.from_list(rows)

    def encode(row, index):
        teacher = {d: t for d, t in zip(row["initial_list"], row["teacher"]) if t == t}  # NaN = no score
        rec = LabelRecord(
            row["qid"],
            row["query"],
            row["initial_list"],
            row["final_list"],
            dict(zip(row["initial_list"], row["passages"])),
            teacher or None,
            dict(zip(row["initial_list"], row["grades"])) if row["grades"] else None,
        )
        return encode_example(tokenizer, rec, options, index)

    ds = raw.map(encode, with_indices=True, remove_columns=raw.column_names, desc="encoding labels")
    truncated = sum(ds["truncated_passages"])
    too_long = 0
    if options.max_seq_length is not None:
        before = len(ds)
        ds = ds.filter(lambda n: n <= options.max_seq_length, input_columns="length")
        too_long = before - len(ds)
    logger.info(
        "training data: %d examples from %s (%d invalid labels skipped); %d passages cut to %s tokens; "
        "%d examples over max_seq_length=%s dropped",
        len(ds),
        train_file,
        skipped,
        truncated,
        options.max_passage_tokens,
        too_long,
        options.max_seq_length,
    )
    if not len(ds):
        raise ValueError("every example exceeds max_seq_length; raise it or lower max_passage_tokens")
    return ds.remove_columns(["truncated_passages"])


@dataclass
class ListwiseCollator:
    """Right-pads a batch: input_ids with ``pad_token_id``, labels with -100, rank_ids with 0.

    Examples carrying an identifier tree are packed by :func:`rerank.training.single_pass_data.pack_batch`.
    """

    pad_token_id: int

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        if "tree_ids" in features[0]:
            return pack_batch(features, self.pad_token_id)
        width = max(len(f["input_ids"]) for f in features)

        def pad(key: str, value: int) -> torch.Tensor:
            return torch.tensor([list(f[key]) + [value] * (width - len(f[key])) for f in features], dtype=torch.long)

        ids = pad("input_ids", self.pad_token_id)
        mask = torch.tensor(
            [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features], dtype=torch.long
        )
        batch = {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": pad("labels", IGNORE_INDEX),
            "rank_ids": pad("rank_ids", 0),
        }
        if "head_positions" in features[0]:
            passages = max(len(f["head_positions"]) for f in features)

            def pad_list(key: str, value, dtype) -> torch.Tensor:
                return torch.tensor([list(f[key]) + [value] * (passages - len(f[key])) for f in features], dtype=dtype)

            batch.update(
                head_positions=pad_list("head_positions", 0, torch.long),
                passage_ranks=pad_list("passage_ranks", 0, torch.long),
                teacher_scores=pad_list("teacher_scores", float("nan"), torch.float32),
                relevance=pad_list("relevance", float("nan"), torch.float32),
                prunable=pad("prunable", 0),
            )
        return batch
