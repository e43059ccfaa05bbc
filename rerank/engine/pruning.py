"""LazyLLM-style dynamic token pruning of the prefill (docs/design.md section 5).

:class:`PrunedSession` runs the model's own decoder layers in a loop, keeping a shrinking set of
surviving prompt positions. Before each scheduled layer it scores the survivors by the attention the
last ``score_window`` prompt tokens pay them (computed from those query rows and the layer's keys
only) and keeps the best of the prunable (passage-body) tokens; protected tokens always survive.
Survivors keep their original positions for RoPE, the layers' attention runs through the model's
own sdpa / flash kernels with the causal flag (survivors stay in original order, so a square causal
mask is right), and the final norm and ``lm_head`` run on the last position only.

Each layer's KV cache holds that layer's survivors. Decoding continues at the next original
position; a single-token query attends to every cached key of its layer, which is exactly the
pruned model's causal attention. Ragged steps (per-row token counts, for batched jump-forward
decoding) right-pad the new tokens and add the padding to the per-layer masks as blocked keys, so
it stays in the caches but no later query sees it.

Batches: prompts are prefilled one at a time (survivor sets differ per row, and a padded pruned
batch would need per-layer ``T x T`` masks). For decoding the rows' caches are merged, left-padded
per layer, with an explicit per-layer padding mask under sdpa; under flash attention (no 4-D
masks) rows decode one at a time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from rerank.config import PruningConfig
from rerank.engine.session import DenseSession, PrefillInfo, _sync, step_tokens
from rerank.engine.token_importance import last_rows_attention, passage_groups, select_survivors

logger = logging.getLogger(__name__)

# Model families whose decoder layout (embed_tokens / layers / norm / rotary_emb, q/k projections)
# the pruned prefill and token importance are written against.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


class UnsupportedModelError(ValueError):
    """The model cannot run the pruned prefill (architecture, attention kernel or sliding window)."""


def _causal_lm(model):
    """The bare ``*ForCausalLM`` under optional PEFT wrappers (LoRA layers stay injected in it)."""
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def unsupported_reason(model, schedule: PruningConfig | None = None) -> str | None:
    """Why ``model`` cannot be pruned (under ``schedule``, when given), or None when it can."""
    lm = _causal_lm(model)
    config = getattr(lm, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    inner = getattr(lm, "model", None)
    for name in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(inner, name):
            return f"{type(lm).__name__}.model has no {name!r}; expected the Llama module layout"
    if not hasattr(lm, "lm_head"):
        return f"{type(lm).__name__} has no lm_head"
    attn = getattr(config, "_attn_implementation", None) or "eager"
    if attn != "sdpa" and "flash" not in attn:
        # Eager attention has no causal flag: a pruned prefill would need an explicit T x T mask.
        return f"attention implementation {attn!r} is not supported; load the model with attn_implementation='sdpa'"
    if schedule is not None and schedule.pruned_tokens == "freeze" and attn != "sdpa":
        # Frozen and computed keys meet under an explicit mask, which flash kernels do not take.
        return f"pruned_tokens='freeze' needs attn_implementation='sdpa'; the model runs {attn!r}"
    layer_types = getattr(config, "layer_types", None) or []
    window = getattr(config, "sliding_window", None)
    if "sliding_attention" in layer_types or (
        model_type == "mistral" and window is not None and window < getattr(config, "max_position_embeddings", 0)
    ):
        return f"sliding-window attention (window {window}) is not supported by the pruned prefill"
    return None


def check_supported(model, config: PruningConfig) -> bool:
    """Validate that ``model`` can run pruned prefill under ``config``.

    Returns True when it can. When it cannot, raises :class:`UnsupportedModelError`, unless
    ``config.allow_unsupported_fallback`` is set: then it logs a warning and returns False, and
    :class:`PrunedSession` runs the exact unpruned prefill instead.
    """
    if not isinstance(config, PruningConfig):
        raise TypeError(f"pruning config must be a PruningConfig, got {type(config).__name__}")
    reason = unsupported_reason(model, config)
    if reason is None:
        return True
    if config.allow_unsupported_fallback:
        logger.warning("pruned prefill unavailable (%s); running unpruned as allow_unsupported_fallback asks", reason)
        return False
    raise UnsupportedModelError(
        f"{reason}. Set PruningConfig(allow_unsupported_fallback=True) to run unpruned instead, or pruning=None."
    )


def layer_schedule(config: PruningConfig, num_layers: int) -> dict[int, float]:
    """Map each pruning layer index to the keep ratio in force from that layer on.

    ``fraction * num_layers`` is rounded (0.1 of 30 layers -> layer 3); stages that land on the same
    layer of a shallow model merge, the smaller ratio winning.
    """
    schedule: dict[int, float] = {}
    for fraction, ratio in zip(config.layer_fractions, config.keep_ratios):
        index = min(num_layers - 1, max(0, round(fraction * num_layers)))
        schedule[index] = min(ratio, schedule.get(index, 1.0))
    return schedule


@dataclass
class RowPrefill:
    """One prompt's pruned prefill: per-layer survivors (original positions) and caches."""

    logits: torch.Tensor
    survivors: list[torch.Tensor]
    cache: object
    length: int
    scoring_seconds: float = 0.0
    layer_tokens: list[int] = field(default_factory=list)


class PrunedSession:
    """A :class:`~rerank.engine.session.Session` whose prefill prunes passage tokens layer by layer.

    Example:
        >>> s = PrunedSession(model, tok.pad_token_id, PruningConfig())        # doctest: +SKIP
        >>> logits = s.prefill([enc.input_ids], [enc.prunable_mask()])         # doctest: +SKIP
        >>> s.info.computed_fraction                                           # doctest: +SKIP
        0.41

    Attributes after ``prefill``:
        survivors: per row, per layer, the ``[n]`` original positions that layer computed.
        cache: the ``DynamicCache`` used by ``step`` (per-row caches under flash attention, B > 1).
    """

    def __init__(self, model, pad_token_id: int, config: PruningConfig):
        config.check_cached_decoding()
        self.model = model
        self.config = config
        self.pad_token_id = pad_token_id
        self.lm = _causal_lm(model)
        self.device = next(model.parameters()).device
        self._dense: DenseSession | None = None
        if unsupported_reason(model) is not None:
            if not config.allow_unsupported_fallback:
                check_supported(model, config)  # raises with the reason
            # The fallback was asked for (Reranker.__init__ already warned once): run unpruned.
            self._dense = DenseSession(model, pad_token_id)
            return
        self.layers = self.lm.model.layers
        self.schedule = layer_schedule(config, len(self.layers))
        attn = self.lm.config._attn_implementation
        self._masked_batches = attn == "sdpa"
        self._info = PrefillInfo()
        self.survivors: list[list[torch.Tensor]] = []
        self.cache = None
        self._row_caches: list | None = None
        self._masks: list[torch.Tensor | None] = []
        self._last_positions: torch.Tensor | None = None  # read through ``positions``

    @property
    def info(self) -> PrefillInfo:
        return self._dense.info if self._dense is not None else self._info

    @property
    def positions(self) -> torch.Tensor | None:
        """Per row, the original position of the last token fed (the :class:`Session` convention,
        as in ``DenseSession``): pruned tokens keep their slots, so decoding goes on at ``positions + 1``."""
        return self._dense.positions if self._dense is not None else self._last_positions

    # ------------------------------------------------------------------ prefill
    @torch.inference_mode()
    def prefill(
        self, prompts: Sequence[Sequence[int]], prunable: Sequence[Sequence[bool]] | None = None
    ) -> torch.Tensor:
        """Pruned prefill of each prompt; ``[B, vocab]`` float logits for the next token.

        ``prunable[b][t]`` marks passage-body tokens (:meth:`PromptEncoding.prunable_mask`); None
        means nothing is prunable under ``protect_structure`` (everything but the last token
        competes when it is off).
        """
        if self._dense is not None:
            logits = self._dense.prefill(prompts, prunable)
            self._dense.info.extra.setdefault("fallback", "unpruned")
            self._dense.info.extra.setdefault("kept_tokens_per_row", [len(p) for p in prompts])
            return logits
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("prefill needs at least one non-empty prompt")
        if prunable is not None and (
            len(prunable) != len(prompts) or any(len(m) != len(p) for m, p in zip(prunable, prompts))
        ):
            raise ValueError("prunable must give one flag per prompt token")
        start = time.perf_counter()
        rows = [self._prefill_row(p, None if prunable is None else prunable[b]) for b, p in enumerate(prompts)]
        self._build_decode_state(rows)
        logits = torch.cat([r.logits for r in rows], dim=0)
        _sync(self.device)
        num_layers = len(self.layers)
        total = sum(r.length for r in rows)
        computed = sum(sum(r.layer_tokens) for r in rows)
        kept = [r.layer_tokens[-1] for r in rows]
        self.survivors = [r.survivors for r in rows]
        self._info = PrefillInfo(
            seconds=time.perf_counter() - start,
            prompt_tokens=total,
            kept_tokens=sum(kept),
            computed_fraction=computed / (num_layers * total),
            extra={
                "kept_tokens_per_row": kept,
                "layer_tokens_per_row": [r.layer_tokens for r in rows],
                "scoring_seconds": sum(r.scoring_seconds for r in rows),
                "schedule": {str(k): v for k, v in sorted(self.schedule.items())},
            },
        )
        return logits

    def _candidates(self, length: int, mask: Sequence[bool] | None) -> torch.Tensor:
        if self.config.protect_structure:
            cand = torch.zeros(length, dtype=torch.bool) if mask is None else torch.tensor(list(mask), dtype=torch.bool)
        else:
            cand = torch.ones(length, dtype=torch.bool)
        cand[-1] = False  # the token whose logits we want is never pruned
        return cand.to(self.device)

    def _prefill_row(self, prompt: Sequence[int], mask: Sequence[bool] | None) -> RowPrefill:
        from transformers import DynamicCache

        inner = self.lm.model
        length = len(prompt)
        ids = torch.tensor([list(prompt)], dtype=torch.long, device=self.device)
        hidden = inner.embed_tokens(ids)
        positions = torch.arange(length, device=self.device)
        candidate = self._candidates(length, mask)
        prunable_runs = (
            torch.tensor(list(mask), dtype=torch.bool, device=self.device)
            if mask is not None
            else torch.zeros(length, dtype=torch.bool, device=self.device)
        )
        groups = passage_groups(prunable_runs)
        initial = int(candidate.sum())
        sizes = (
            torch.bincount(groups[candidate], minlength=int(groups.max()) + 1)
            if self.config.budget == "per_passage"
            else None
        )
        cos, sin = inner.rotary_emb(hidden, positions[None])
        cache = DynamicCache(config=self.lm.config)
        survivors, layer_tokens = [], []
        scoring = 0.0
        for index, layer in enumerate(self.layers):
            ratio = self.schedule.get(index)
            if ratio is not None:
                budget = math.ceil(ratio * initial)
                if int(candidate.sum()) > budget:
                    tick = time.perf_counter()
                    scores = last_rows_attention(
                        layer.self_attn, layer.input_layernorm(hidden), cos, sin, self.config.score_window
                    )
                    quotas = None if sizes is None else torch.ceil(ratio * sizes.float()).long()
                    keep = select_survivors(scores, candidate, groups, budget, self.config.granularity, quotas)
                    hidden, positions = hidden[:, keep], positions[keep]
                    candidate, groups = candidate[keep], groups[keep]
                    cos, sin = cos[:, keep], sin[:, keep]
                    scoring += time.perf_counter() - tick
            hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin), cache=cache, use_cache=True)
            survivors.append(positions)
            layer_tokens.append(positions.numel())
        last = inner.norm(hidden[:, -1:])
        logits = self.lm.lm_head(last)[:, -1].float()
        return RowPrefill(
            logits=logits,
            survivors=survivors,
            cache=cache,
            length=length,
            scoring_seconds=scoring,
            layer_tokens=layer_tokens,
        )

    # ------------------------------------------------------------------ decode state
    def _make_cache(self, keys: list[torch.Tensor], values: list[torch.Tensor]):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.lm.config)
        for index, (k, v) in enumerate(zip(keys, values)):
            cache.update(k, v, index)
        return cache

    def _build_decode_state(self, rows: list[RowPrefill]) -> None:
        self._last_positions = torch.tensor([r.length - 1 for r in rows], dtype=torch.long, device=self.device)
        self._row_caches = None
        self._masks = [None] * len(self.layers)
        if len(rows) == 1:
            self.cache = rows[0].cache
            return
        if not self._masked_batches:
            self.cache = None
            self._row_caches = [r.cache for r in rows]
            return
        keys, values, masks = [], [], []
        for index in range(len(self.layers)):
            row_keys = [r.cache.layers[index].keys for r in rows]
            row_values = [r.cache.layers[index].values for r in rows]
            counts = [k.shape[2] for k in row_keys]
            width = max(counts)
            _, heads, _, dim = row_keys[0].shape
            k = row_keys[0].new_zeros((len(rows), heads, width, dim))
            v = row_values[0].new_zeros((len(rows), heads, width, row_values[0].shape[3]))
            # Additive mask (sdpa takes it as is): left padding gets the dtype's minimum.
            mask = torch.zeros((len(rows), 1, 1, width), dtype=k.dtype, device=self.device)
            for b, n in enumerate(counts):
                k[b, :, width - n :] = row_keys[b][0]
                v[b, :, width - n :] = row_values[b][0]
                mask[b, ..., : width - n] = torch.finfo(k.dtype).min
            keys.append(k)
            values.append(v)
            masks.append(mask if min(counts) < width else None)
        self.cache = self._make_cache(keys, values)
        self._masks = masks

    # ------------------------------------------------------------------ decode
    @property
    def multi_token_step(self) -> bool:
        """Several tokens per step (jump-forward decoding) need explicit masks: sdpa only."""
        return self._dense is not None or self._masked_batches

    @property
    def ragged_step(self) -> bool:
        """Per-row token counts in one step: padding is hidden by the per-layer masks, so sdpa only
        (per-row flash caches take one token per step)."""
        return self._dense is not None or self._masked_batches

    def _decode(
        self,
        cache,
        masks: list[torch.Tensor | None],
        tokens: torch.Tensor,
        positions: torch.Tensor,
        new_mask: torch.Tensor | None = None,
        all_logits: bool = False,
        lengths: Sequence[int] | None = None,
    ):
        """Run ``[B, L]`` new tokens over per-layer survivor caches.

        ``masks`` are the persistent per-layer padding masks (``[B, 1, 1, keys]`` additive, or None).
        ``new_mask[b, i, j]`` says new token i may see new token j (default: causal); every new token
        sees all cached survivors of its row. ``lengths`` (ragged steps) marks ``tokens[b, lengths[b]:]``
        as padding: no token sees it, the grown masks block it for later steps, and the logits are
        taken after each row's last real token.
        """
        inner = self.lm.model
        batch, width = tokens.shape
        hidden = inner.embed_tokens(tokens)
        cos, sin = inner.rotary_emb(hidden, positions)
        if new_mask is None and width > 1:
            new_mask = torch.ones(width, width, dtype=torch.bool, device=self.device).tril().expand(batch, -1, -1)
        blocked = torch.finfo(hidden.dtype).min
        real = (
            None
            if lengths is None
            else torch.arange(width, device=self.device) < torch.tensor(lengths, device=self.device).view(-1, 1)
        )
        # Additive mask of the new keys, kept in the grown masks so padding stays blocked for good.
        new_keys = None if real is None else torch.where(real, 0.0, blocked).to(hidden.dtype)[:, None, None, :]
        if real is not None and new_mask is not None:
            # Combined as booleans: adding two blocked values would overflow to -inf.
            new_mask = new_mask & real[:, None, :]
        grown = []
        for index, (layer, mask) in enumerate(zip(self.layers, masks)):
            cached = cache.layers[index].keys.shape[2]
            if mask is None and new_keys is None:
                attn_mask = None
            else:
                prefix = mask if mask is not None else hidden.new_zeros((batch, 1, 1, cached))
                added = new_keys if new_keys is not None else hidden.new_zeros((batch, 1, 1, width))
                attn_mask = torch.cat([prefix, added], dim=-1)
            grown.append(attn_mask)
            if new_mask is not None:
                prefix = mask if mask is not None else hidden.new_zeros((batch, 1, 1, cached))
                block = torch.where(new_mask, 0.0, blocked).to(hidden.dtype)[:, None]
                attn_mask = torch.cat([prefix.expand(batch, 1, width, cached), block], dim=-1)
            hidden = layer(
                hidden, attention_mask=attn_mask, position_embeddings=(cos, sin), cache=cache, use_cache=True
            )
        if all_logits:
            head_in = hidden
        elif lengths is None:
            head_in = hidden[:, -1:]
        else:
            # Each row's last real token (column 0 for an empty row, whose logits nobody reads).
            last = (torch.tensor(lengths, device=self.device) - 1).clamp(min=0)
            head_in = hidden[torch.arange(batch, device=self.device), last][:, None]
        logits = self.lm.lm_head(inner.norm(head_in)).float()
        return (logits if all_logits else logits[:, -1]), grown

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, lengths: Sequence[int] | None = None) -> torch.Tensor:
        """Feed ``[B]`` tokens (or ``[B, L]`` under sdpa) at the next original positions; ``[B, vocab]`` logits.

        ``lengths`` (sdpa only) gives each row's real token count, as in ``DenseSession.step``.
        """
        if self._dense is not None:
            return self._dense.step(tokens, lengths)
        if self._last_positions is None:
            raise RuntimeError("step() called before prefill()")
        tokens, batch, width, ragged = step_tokens(tokens, lengths, self.device)
        positions = self._last_positions.view(-1, 1) + torch.arange(1, width + 1, device=self.device)
        if self._row_caches is not None:
            if width > 1 or ragged is not None:
                raise ValueError("several or ragged tokens per step need sdpa attention in pruned mode")
            out = [
                self._decode(c, [None] * len(self.layers), tokens[b : b + 1], positions[b : b + 1])[0]
                for b, c in enumerate(self._row_caches)
            ]
            logits = torch.cat(out, dim=0)
        else:
            logits, self._masks = self._decode(self.cache, self._masks, tokens, positions, lengths=ragged)
        if ragged is None:
            self._last_positions = positions[:, -1]
        else:
            self._last_positions = self._last_positions + torch.tensor(ragged, device=self.device)
        return logits

    @torch.inference_mode()
    def score_tree(self, tokens: torch.Tensor, depths: torch.Tensor, tree_mask: torch.Tensor) -> torch.Tensor:
        """Single-pass identifier scoring over the pruned caches (see ``DenseSession.score_tree``)."""
        if self._dense is not None:
            return self._dense.score_tree(tokens, depths, tree_mask)
        if self._last_positions is None:
            raise RuntimeError("score_tree() called before prefill()")
        if self._row_caches is not None:
            raise NotImplementedError("single-pass scoring in pruned mode needs sdpa attention")
        tokens, depths, tree_mask = tokens.to(self.device), depths.to(self.device), tree_mask.to(self.device)
        positions = self._last_positions.view(-1, 1) + 1 + depths
        logits, _ = self._decode(self.cache, self._masks, tokens, positions, new_mask=tree_mask, all_logits=True)
        self._last_positions = None  # the tree now sits in the cache: no decoding after it
        return logits
