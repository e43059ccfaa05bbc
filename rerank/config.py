"""Configuration dataclasses (help text per field, validated on construction)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from rerank.long_lists import CHUNK_LAYOUTS, FINAL_ORDERS
from rerank.prompting.presets import get_preset
from rerank.scorers import SCORINGS

STRATEGIES = ("full", "sliding")
OVERFLOW_POLICIES = ("sliding", "error")
LONG_LIST_METHODS = ("one_prompt", "chunks", "tournament", "sliding")


@dataclass
class PruningConfig:
    """LazyLLM-style prefill pruning schedule (see docs/design.md section 5 and ``rerank.engine.pruning``).

    Before layer ``round(layer_fractions[i] * num_layers)`` (0.1 of 30 layers = layer 3) the
    surviving prunable tokens (passage bodies) are scored by the attention the last ``score_window``
    prompt tokens pay them, and only ``keep_ratios[i]`` of the ORIGINAL prunable count survive into
    that layer and all later ones. Protected tokens (template, instruction, query, identifiers,
    closing instruction, last token) always survive.

    The default (keep 50% / 25% / 10% of passage tokens from 10% / 33% / 67% of the depth, token
    granularity, the last prompt token scoring) was chosen by measurement on TREC DL19 with
    SmolLM2-135M at N = 50 (``eval/bench_pruning.py``, 43 queries): 3.1x faster prefill on CPU, 0.40
    of the full token-layers computed, top-10 overlap with the unpruned ranking 0.99, nDCG@10
    unchanged (+0.1 points). Gentler 70/40/20 gave 2.3x, harsher 30/15/5 4.0x.

    Example:
        >>> PruningConfig(layer_fractions=[0.1, 0.5], keep_ratios=[0.5, 0.2]).keep_ratios
        [0.5, 0.2]
    """

    layer_fractions: list[float] = field(
        default_factory=lambda: [0.1, 0.33, 0.67],
        metadata={
            "help": (
                "Depths (fractions of the layer count, strictly increasing, in (0,1)) before which pruning happens; "
                "rounded to a layer index."
            )
        },
    )
    keep_ratios: list[float] = field(
        default_factory=lambda: [0.5, 0.25, 0.1],
        metadata={
            "help": (
                "Fraction of the prompt's prunable tokens kept from each depth on; in (0,1], non-increasing. 1.0 "
                "everywhere = exact unpruned result."
            )
        },
    )
    granularity: str = field(
        default="token",
        metadata={
            "help": (
                "'token' keeps the best single tokens; 'passage' keeps or drops whole passage bodies (ranked by mean "
                "token score, up to the same token budget)."
            )
        },
    )
    budget: str = field(
        default="global",
        metadata={
            "help": (
                "'global': one budget over all passage-body tokens; 'per_passage': each passage keeps keep_ratio of "
                "its own body tokens (token granularity only)."
            )
        },
    )
    pruned_tokens: str = field(
        default="drop",
        metadata={
            "help": (
                "'drop': later layers neither compute a pruned token nor attend to it (LazyLLM); 'freeze': its state "
                "stops at the layer that prunes it and later layers still attend to it (keys and values projected "
                "from that state, no MLP), so every reader keeps its whole context. 'freeze' is for scoring='head' "
                "and needs sdpa attention."
            )
        },
    )
    score_window: int = field(
        default=1,
        metadata={
            "help": "How many final prompt tokens' attention rows score the candidates (averaged over rows and heads)."
        },
    )
    protect_structure: bool = field(
        default=True,
        metadata={
            "help": "Never prune template, instruction, query or identifiers; off = every token but the last competes."
        },
    )
    allow_unsupported_fallback: bool = field(
        default=False,
        metadata={
            "help": (
                "On an unsupported model (architecture, eager attention, sliding window), run unpruned with a "
                "warning instead of raising."
            )
        },
    )

    def __post_init__(self):
        if len(self.layer_fractions) != len(self.keep_ratios):
            raise ValueError(
                f"layer_fractions ({len(self.layer_fractions)}) and keep_ratios "
                f"({len(self.keep_ratios)}) must have the same length"
            )
        if not self.layer_fractions:
            raise ValueError("layer_fractions must not be empty (use pruning=None for no pruning)")
        if any(not 0.0 < f < 1.0 for f in self.layer_fractions):
            raise ValueError(f"layer_fractions must lie in (0, 1), got {self.layer_fractions}")
        if list(self.layer_fractions) != sorted(set(self.layer_fractions)):
            raise ValueError(f"layer_fractions must be strictly increasing, got {self.layer_fractions}")
        if any(not 0.0 < r <= 1.0 for r in self.keep_ratios):
            raise ValueError(f"keep_ratios must lie in (0, 1], got {self.keep_ratios}")
        if any(b > a for a, b in zip(self.keep_ratios, self.keep_ratios[1:])):
            raise ValueError(f"keep_ratios must be non-increasing, got {self.keep_ratios}")
        if self.granularity not in ("token", "passage"):
            raise ValueError(f"granularity must be 'token' or 'passage', got {self.granularity!r}")
        if self.budget not in ("global", "per_passage"):
            raise ValueError(f"budget must be 'global' or 'per_passage', got {self.budget!r}")
        if self.budget == "per_passage" and self.granularity != "token":
            raise ValueError(
                "budget='per_passage' keeps a share of each passage's tokens: it needs granularity='token'"
            )
        if self.score_window < 1:
            raise ValueError(f"score_window must be >= 1, got {self.score_window}")
        if self.pruned_tokens not in ("drop", "freeze"):
            raise ValueError(f"pruned_tokens must be 'drop' or 'freeze', got {self.pruned_tokens!r}")

    def check_head_scoring(self) -> None:
        """Refuse a schedule that would drop what head scoring reads (passage ends, query), naming why."""
        if not self.protect_structure:
            raise ValueError(
                "scoring='head' reads every passage's end and the query: pruning with "
                "protect_structure=False could drop them; keep protect_structure=True"
            )
        if self.granularity != "token":
            raise ValueError(
                "scoring='head' scores every passage: granularity='passage' would drop whole passage "
                "bodies and leave their ends reading nothing; use granularity='token'"
            )

    def check_cached_decoding(self) -> None:
        """Refuse a mode that the pruned KV caches of the identifier scorings and generation lack."""
        if self.pruned_tokens != "drop":
            raise ValueError(
                f"pruned_tokens={self.pruned_tokens!r} is implemented for scoring='head' only; "
                "the identifier scorings and generation prune with pruned_tokens='drop'"
            )

    @classmethod
    def from_spec(cls, spec: str) -> PruningConfig:
        """A schedule from a preset name (``"default"``, ``"fast"``, ``"late"``) or ``"depth:keep,..."`` pairs,
        optionally followed by ``+freeze`` (``pruned_tokens="freeze"``).

        This is the form command lines and YAML files take (``rerank eval --pruning fast``).

        Example:
            >>> PruningConfig.from_spec("0.1:0.5,0.5:0.2").keep_ratios
            [0.5, 0.2]
            >>> PruningConfig.from_spec("fast").layer_fractions
            [0.04, 0.2, 0.5]
            >>> PruningConfig.from_spec("late+freeze").pruned_tokens
            'freeze'
        """
        if not isinstance(spec, str):
            raise TypeError(f"pruning spec must be a str, got {type(spec).__name__}")
        if spec.endswith(FREEZE_SUFFIX):
            return replace(cls.from_spec(spec[: -len(FREEZE_SUFFIX)]), pruned_tokens="freeze")
        if spec in PRUNING_PRESETS:
            return cls(**PRUNING_PRESETS[spec])
        try:
            pairs = [tuple(float(x) for x in part.split(":")) for part in spec.split(",")]
            fractions, keeps = zip(*pairs)
            if any(len(p) != 2 for p in pairs):
                raise ValueError
        except ValueError:
            raise ValueError(
                f"pruning spec must be one of {sorted(PRUNING_PRESETS)} or depth:keep pairs like "
                f"'0.1:0.5,0.33:0.25', got {spec!r}"
            ) from None
        return cls(layer_fractions=list(fractions), keep_ratios=list(keeps))


def pruning_tag(pruning: PruningConfig | None) -> str | None:
    """A stable text naming a schedule's every field (None for the dense prefill): what tells readouts apart.

    >>> pruning_tag(PruningConfig.from_spec("late")) == pruning_tag(PruningConfig.from_spec("0.5:0.5,0.75:0.25"))
    True
    """
    if pruning is None:
        return None
    fields = asdict(pruning)
    if fields["pruned_tokens"] == "drop":
        del fields["pruned_tokens"]  # the tags written before the field existed stay valid
    return json.dumps(fields, sort_keys=True)


def readout_tag(pruning: PruningConfig | None, precision: str | None) -> str | None:
    """What tells one reading of a prompt from another: the schedule (:func:`pruning_tag`) and a CPU
    precision other than fp32. None for the dense fp32 (or GPU) read, the key memos always had.

    >>> readout_tag(None, "fp32") is None, readout_tag(None, "bf16")
    (True, 'precision=bf16')
    """
    parts = [pruning_tag(pruning), None if precision in (None, "fp32") else f"precision={precision}"]
    return "|".join(p for p in parts if p) or None


def _as_schedule(name: str, value, specs: bool) -> PruningConfig | None:
    """A config field's schedule as a :class:`PruningConfig`: one already, its fields as a dict, None, or
    (with ``specs``) a :meth:`PruningConfig.from_spec` string; anything else is refused by ``name``."""
    if value is None or isinstance(value, PruningConfig):
        return value
    if isinstance(value, dict):
        return PruningConfig(**value)
    if specs and isinstance(value, str):
        # "none" names the dense read where None means "not given" (from_pretrained, YAML, --setting).
        return None if value == "none" else PruningConfig.from_spec(value)
    kinds = "a PruningConfig, a dict, a spec string or None" if specs else "a PruningConfig, a dict or None"
    raise TypeError(f"{name} must be {kinds}, got {type(value).__name__}")


# A spec suffix: the schedule with pruned_tokens="freeze" ("late+freeze").
FREEZE_SUFFIX = "+freeze"

# Named schedules for command lines. "fast" trades the last bit of prefill fidelity for speed where
# only the first identifier's distribution matters (scoring="single_pass"); see the README table.
PRUNING_PRESETS: dict[str, dict] = {
    "default": {},
    "fast": {"layer_fractions": [0.04, 0.2, 0.5], "keep_ratios": [0.2, 0.08, 0.03]},
    # Pruning from half the depth only: what head scoring tolerates best (docs/benchmarks.md).
    "late": {"layer_fractions": [0.5, 0.75], "keep_ratios": [0.5, 0.25]},
}


@dataclass
class RerankerConfig:
    """How a :class:`~rerank.Reranker` ranks."""

    # model, device and dtype are a record of what Reranker.from_pretrained loaded; Reranker itself
    # ranks with the model object it is given and never reads them.
    model: str | None = field(
        default=None,
        metadata={
            "help": (
                "Record only: the model from_pretrained loaded (path or hub id; None = the default). Reranker(model, "
                "tokenizer, config) ignores it."
            )
        },
    )
    device: str | None = field(
        default=None,
        metadata={
            "help": (
                "Record only: the device from_pretrained was asked for (None = cuda if available else cpu). Reranker "
                "ignores it."
            )
        },
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "help": (
                "Record only: the dtype from_pretrained was asked for (float32 | bfloat16 | float16; None = bf16 on "
                "GPU, fp32 on CPU). Reranker ignores it."
            )
        },
    )
    precision: str | None = field(
        default=None,
        metadata={
            "help": (
                "Record only: the CPU precision from_pretrained ran the model in (fp32 | bf16 | int8, "
                "rerank.precision); None on GPU or with an explicit dtype."
            )
        },
    )
    strategy: str = field(
        default="full", metadata={"help": "'full': all passages in one prompt; 'sliding': back-to-front windows."}
    )
    window_size: int = field(default=20, metadata={"help": "Passages per window for the sliding strategy."})
    stride: int = field(default=10, metadata={"help": "Step between sliding windows."})
    num_passes: int = field(
        default=1, metadata={"help": "Sliding passes over the list (each fixes the next `stride` ranks better)."}
    )
    max_passage_tokens: int | None = field(
        default=100,
        metadata={"help": "Token budget per passage (same in training, labelling and inference); None = no cut."},
    )
    on_overflow: str = field(
        default="sliding",
        metadata={
            "help": (
                "When a full prompt exceeds the context: 'sliding' falls back to windows (noted in stats), 'error' "
                "raises."
            )
        },
    )
    batch_size: int = field(default=4, metadata={"help": "Prompts decoded together by rank_batch."})
    max_context: int | None = field(
        default=None, metadata={"help": "Override of the model's context length (tokens) used for the overflow check."}
    )
    pruning: PruningConfig | None = field(
        default=None, metadata={"help": "Prefill pruning schedule; None = exact unpruned prefill."}
    )
    chunk_pruning: PruningConfig | None = field(
        default=None,
        metadata={
            "help": (
                "long_list='chunks' or 'tournament' (scoring='head'): the pruning schedule of the chunk prompts only "
                "(a PruningConfig, its fields as a dict, or a PruningConfig.from_spec name such as 'fast'); the "
                "final prompt keeps `pruning`. A tournament's chunks only choose its leaders, and pruning keeps a "
                "prompt's best set far better than their order. None (or 'none', which overrides a model folder's "
                "recommendation in from_pretrained) = chunks read like every other prompt."
            )
        },
    )
    scoring: str = field(
        default="generate",
        metadata={
            "help": (
                "'generate': decode the permutation; 'single_pass': order by log P(first identifier = [k]) from one "
                "prefill; 'head': order by the relevance each passage's end token reads out (logit yes - no), from "
                "one prefill (needs a model trained for it)."
            )
        },
    )
    long_list: str = field(
        default="one_prompt",
        metadata={
            "help": (
                "How a per-passage scorer (scoring='head') ranks more than window_size passages (rerank.long_lists): "
                "'one_prompt' reads them all in one prompt when it fits the context (else 'chunks'); 'chunks' scores "
                "consecutive prompts of window_size and merges by score; 'tournament' adds one final prompt over "
                "the chunks' leaders; 'sliding' runs back-to-front windows of window_size with step stride. "
                "RankingStats.fallback names the method used."
            )
        },
    )
    chunk_layout: str = field(
        default="consecutive",
        metadata={
            "help": (
                "How long_list='chunks' and 'tournament' split a list into prompts (rerank.long_lists): "
                "'consecutive' (first-stage ranks 1-20, 21-40, ...) or 'interleaved' (prompt c of k holds ranks "
                "c, c+k, c+2k, ...: every prompt holds the same mix of strong and weak candidates, so raw scores "
                "compare across prompts)."
            )
        },
    )
    deep_leaders: int | None = field(
        default=None,
        metadata={
            "help": (
                "long_list='tournament': how many of the final prompt's window_size leaders come from beyond the "
                "first chunk (the others are the first chunk's best); None = all chunks compete alike."
            )
        },
    )
    final_order: str = field(
        default="first_stage",
        metadata={
            "help": (
                "long_list='tournament': the order the final prompt reads its leaders in: 'first_stage' (the "
                "retriever's) or 'chunk_score' (best chunk score first: the model's own read of every passage, "
                "so the head's position prior follows it instead of the retriever's)."
            )
        },
    )
    final_chunk_weight: float = field(
        default=0.0,
        metadata={
            "help": (
                "long_list='tournament': weight w of a leader's own chunk score in its final score, "
                "(1 - w) * final + w * chunk: the two reads of the same passage averaged (0 = the final prompt "
                "alone). On calibrated probabilities, or raw scores with chunk_layout='interleaved'."
            )
        },
    )
    final_reread: int | None = field(
        default=None,
        metadata={
            "help": (
                "long_list='tournament': read the final prompt's best k once more, alone in one prompt (in "
                "first-stage order), and order them by that read (one short prompt more); None = off."
            )
        },
    )
    chunk_passage_tokens: int | None = field(
        default=None,
        metadata={
            "help": (
                "long_list='chunks' or 'tournament': cut each passage of the chunk prompts to this many tokens "
                "(the final prompt keeps max_passage_tokens); None = chunks read passages like every other prompt."
            )
        },
    )
    first_stage_weight: float = field(
        default=0.0,
        metadata={
            "help": (
                "Fuse the model's ranking with the input (first-stage) order by weighted reciprocal-rank fusion "
                "(rerank.fusion): 0 = the model alone, 1 = the input order. Scores become the fused values "
                "(score_kind 'fused')."
            )
        },
    )
    prompt: str = field(
        default="lazyrank",
        metadata={
            "help": (
                "Prompt preset (rerank.prompting.presets.PRESETS): 'lazyrank' (default, LazyRank models) or the "
                "exact prompt of a published checkpoint: 'rank_zephyr', 'rank_vicuna', 'rank_llm_v2', 'first' and "
                "'first_mistral' (letters, at most 26 passages per window), 'rank_mistral100', 'rank_gpt'. "
                "Word-budget presets ignore max_passage_tokens."
            )
        },
    )

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        if self.long_list not in LONG_LIST_METHODS:
            raise ValueError(f"long_list must be one of {LONG_LIST_METHODS}, got {self.long_list!r}")
        if self.chunk_layout not in CHUNK_LAYOUTS:
            raise ValueError(f"chunk_layout must be one of {CHUNK_LAYOUTS}, got {self.chunk_layout!r}")
        if self.final_order not in FINAL_ORDERS:
            raise ValueError(f"final_order must be one of {FINAL_ORDERS}, got {self.final_order!r}")
        weight = self.final_chunk_weight
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not 0.0 <= weight <= 1.0:
            raise ValueError(f"final_chunk_weight must be a number in [0, 1], got {self.final_chunk_weight!r}")
        if self.final_reread is not None and (
            not isinstance(self.final_reread, int)
            or isinstance(self.final_reread, bool)
            or not 2 <= self.final_reread <= self.window_size
        ):
            raise ValueError(
                f"final_reread must be None or an integer from 2 to window_size ({self.window_size}), "
                f"got {self.final_reread!r}"
            )
        if self.chunk_layout == "interleaved" and self.deep_leaders is not None:
            raise ValueError(
                "deep_leaders seeds the final prompt with the first consecutive chunk: it needs "
                "chunk_layout='consecutive'"
            )
        if self.deep_leaders is not None and (
            not isinstance(self.deep_leaders, int) or isinstance(self.deep_leaders, bool) or self.deep_leaders < 0
        ):
            raise ValueError(f"deep_leaders must be a non-negative integer or None, got {self.deep_leaders!r}")
        if self.deep_leaders is not None and self.deep_leaders > self.window_size:
            raise ValueError(f"deep_leaders ({self.deep_leaders}) must not exceed window_size ({self.window_size})")
        if self.on_overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"on_overflow must be one of {OVERFLOW_POLICIES}, got {self.on_overflow!r}")
        for name in ("window_size", "stride", "num_passes", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.stride > self.window_size:
            raise ValueError(f"stride ({self.stride}) must not exceed window_size ({self.window_size})")
        if self.max_passage_tokens is not None and (
            not isinstance(self.max_passage_tokens, int) or self.max_passage_tokens < 1
        ):
            raise ValueError(f"max_passage_tokens must be a positive integer or None, got {self.max_passage_tokens!r}")
        self.pruning = _as_schedule("pruning", self.pruning, specs=False)
        self.chunk_pruning = _as_schedule("chunk_pruning", self.chunk_pruning, specs=True)
        if self.chunk_passage_tokens is not None and (
            not isinstance(self.chunk_passage_tokens, int)
            or isinstance(self.chunk_passage_tokens, bool)
            or self.chunk_passage_tokens < 1
        ):
            raise ValueError(
                f"chunk_passage_tokens must be a positive integer or None, got {self.chunk_passage_tokens!r}"
            )
        preset = get_preset(self.prompt) if isinstance(self.prompt, str) else None
        if preset is None:
            raise TypeError(f"prompt must be a preset name (str), got {type(self.prompt).__name__}")
        limit = preset.ids.max_count
        if limit is not None and self.window_size > limit:
            raise ValueError(
                f"prompt={self.prompt!r} uses {preset.identifiers} identifiers (at most {limit} "
                f"passages per window), got window_size={self.window_size}"
            )
        from rerank.fusion import check_weight

        self.first_stage_weight = check_weight(self.first_stage_weight)
