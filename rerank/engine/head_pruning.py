"""Pruned prefill for head scoring: every passage keeps its own end, bodies thin out layer by layer.

Head scoring (:mod:`rerank.engine.passage_head`) reads relevance at each passage's end, so the
LazyLLM rule "keep what the last token attends to" would starve every passage but the last. Here
each passage end is a *reader*: before a scheduled layer, a body token's importance is the attention
its OWN passage's end pays it (computed for the reader rows only, :func:`reader_attention`), and the
least important body tokens stop being computed from that layer on. Structure tokens (template,
instruction, query, identifiers) and every passage end are never pruned; survivors keep their
original RoPE positions and run through the model's own sdpa / flash kernels with the causal flag.

Two budgets (``PruningConfig.budget``): ``"global"`` keeps the best ``keep_ratio`` of all body
tokens, comparing tokens across passages by their attention relative to their passage's mean (raw
attention from different readers is not on one scale); ``"per_passage"`` keeps each passage's best
``keep_ratio`` of its own tokens, so no passage loses more than the others.

What happens to a pruned token (``PruningConfig.pruned_tokens``): ``"drop"`` removes it from every
later layer, as LazyLLM does, so the readers lose it as context too; ``"freeze"`` stops its state at
the layer that prunes it and keeps it as context: each later layer projects keys and values from the
frozen state (two small products, no query, output projection or MLP) and the survivors attend to
them through the layer's own attention module, with an explicit causal mask over original
positions. The survivors' queries over all keys are what each layer still pays for.

Tokens after the last passage end (the closing instruction) cannot influence any readout in a
causal model, so they are not computed at all.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch

from rerank.config import PruningConfig
from rerank.engine.passage_head import HeadScores, relevance_from_logits
from rerank.engine.pruning import UnsupportedModelError, _causal_lm, check_supported, layer_schedule, unsupported_reason
from rerank.engine.session import PrefillInfo, _sync
from rerank.engine.token_importance import reader_attention, rope, select_survivors


def _owners(length: int, readers: Sequence[int], prunable: torch.Tensor) -> torch.Tensor:
    """Per token, the index of the reader whose passage body holds it (``-1`` for protected tokens).

    A body token belongs to the first reader after it: passage k's body ends right before its end.
    """
    reads = torch.tensor(list(readers), dtype=torch.long)
    owner = torch.searchsorted(reads, torch.arange(length), right=False)
    return torch.where(prunable & (owner < len(readers)), owner, torch.full_like(owner, -1))


@torch.inference_mode()
def score_positions_pruned(
    model,
    prompts: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    prunable: Sequence[Sequence[bool]],
    yes_id: int,
    no_id: int,
    config: PruningConfig,
) -> HeadScores:
    """Head scores (``logit yes - logit no`` at each ``positions`` entry) from a pruned prefill.

    ``prunable[b][t]`` marks passage-body tokens (:meth:`PromptEncoding.prunable_mask`); the
    read positions must be protected. Prompts run one at a time (survivor sets differ per prompt).

    Example:
        >>> enc = encode_prompt(tok, "bees", docs, 100)                                   # doctest: +SKIP
        >>> out = score_positions_pruned(lm, [enc.input_ids], [enc.passage_end_positions()],
        ...                              [enc.prunable_mask()], yes, no, PruningConfig.from_spec("head"))
        >>> out.prefill.computed_fraction                                                 # doctest: +SKIP
        0.42
    """
    reason = unsupported_reason(model, config)
    if reason is not None and config.allow_unsupported_fallback:
        # The dense readout needs the pad id this function does not take (HeadScorer reads dense itself),
        # so no "running unpruned" fallback here, nor its warning.
        raise UnsupportedModelError(f"{reason}: read these prompts with passage_head.score_positions instead")
    check_supported(model, config)
    config.check_head_scoring()
    if not (len(prompts) == len(positions) == len(prunable)):
        raise ValueError(
            f"prompts ({len(prompts)}), positions ({len(positions)}) and prunable ({len(prunable)}) "
            "must have the same length"
        )
    start = time.perf_counter()
    lm = _causal_lm(model)
    schedule = layer_schedule(config, len(lm.model.layers))
    device = next(model.parameters()).device
    scores, computed, kept = [], 0, []
    for row, (prompt, reads, mask) in enumerate(zip(prompts, positions, prunable)):
        if len(mask) != len(prompt):
            raise ValueError(f"prunable[{row}] has {len(mask)} flags for {len(prompt)} prompt tokens")
        if not reads:
            scores.append([])
            kept.append(0)
            continue
        if list(reads) != sorted(set(reads)) or reads[0] < 0 or reads[-1] >= len(prompt):
            raise ValueError(f"positions[{row}] must be increasing and lie in [0, {len(prompt)}), got {list(reads)}")
        if any(mask[p] for p in reads):
            raise ValueError(f"positions[{row}] include prunable tokens: a read position must be protected")
        row_scores, layer_tokens = score_row_pruned(lm, prompt, reads, mask, yes_id, no_id, schedule, config)
        scores.append(row_scores.cpu().tolist())
        computed += sum(layer_tokens)
        kept.append(layer_tokens[-1])
    _sync(device)
    total = sum(len(p) for p in prompts)
    info = PrefillInfo(
        seconds=time.perf_counter() - start,
        prompt_tokens=total,
        kept_tokens=sum(kept),
        computed_fraction=computed / (len(lm.model.layers) * max(1, total)),
        extra={
            "kept_tokens_per_row": kept,
            "budget": config.budget,
            "schedule": {str(k): v for k, v in sorted(schedule.items())},
        },
    )
    return HeadScores(scores, info)


def score_row_pruned(
    lm,
    prompt: Sequence[int] | torch.Tensor,
    reads: Sequence[int],
    mask: Sequence[bool] | torch.Tensor,
    yes_id: int,
    no_id: int,
    schedule: dict[int, float],
    config: PruningConfig,
) -> tuple[torch.Tensor, list[int]]:
    """One prompt's pruned forward up to its last read position: ``[R]`` scores and per-layer token counts.

    ``lm`` is the bare causal LM (LoRA layers may be injected). Differentiable where autograd is
    on: training with pruning in the loop (``head_pruning``, :mod:`rerank.training.objectives.passage_head`)
    back-propagates through the survivors' states; which tokens survive is a discrete choice made
    without gradients.
    """
    inner = lm.model
    device = inner.embed_tokens.weight.device
    length = reads[-1] + 1  # nothing after the last readout can change it (causal attention)
    ids = torch.as_tensor(prompt[:length], dtype=torch.long, device=device)[None]
    body = torch.as_tensor(mask[:length], dtype=torch.bool).cpu()
    owner = _owners(length, reads, body).to(device)
    candidate = body.to(device)
    is_reader = torch.zeros(length, dtype=torch.bool, device=device)
    is_reader[list(reads)] = True
    # Each passage's quota counts its ORIGINAL body, as keep_ratios do for the global budget.
    sizes = torch.bincount(owner[candidate], minlength=len(reads))
    initial = int(candidate.sum())
    hidden = inner.embed_tokens(ids)
    pos = torch.arange(length, device=device)
    cos, sin = inner.rotary_emb(hidden, pos[None])
    layer_tokens = []
    frozen: _FrozenTokens | None = None
    for index, layer in enumerate(inner.layers):
        ratio = schedule.get(index)
        if ratio is not None and int(candidate.sum()) > math.ceil(ratio * initial):
            readers = is_reader.nonzero().squeeze(1)
            with torch.no_grad():  # the choice of survivors is discrete: no gradient flows through it
                attention = reader_attention(layer.self_attn, layer.input_layernorm(hidden), cos, sin, readers)
            own = attention[owner.clamp(min=0), torch.arange(owner.numel(), device=device)]
            if config.budget == "per_passage":
                quotas = torch.ceil(ratio * sizes.float()).long()
                keep = select_survivors(own, candidate, owner.clamp(min=0), 0, "token", quotas=quotas)
            else:
                keep = select_survivors(
                    _relative_to_passage(own, owner, candidate, len(reads)),
                    candidate,
                    owner,
                    math.ceil(ratio * initial),
                    "token",
                )
            if config.pruned_tokens == "freeze":
                dropped = torch.ones(pos.numel(), dtype=torch.bool, device=device)
                dropped[keep] = False
                frozen = _FrozenTokens.add(frozen, hidden[:, dropped], pos[dropped], cos[:, dropped], sin[:, dropped])
            hidden, pos, cos, sin = hidden[:, keep], pos[keep], cos[:, keep], sin[:, keep]
            candidate, owner, is_reader = candidate[keep], owner[keep], is_reader[keep]
        if frozen is None:
            hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin), use_cache=False)
        else:
            hidden = layer(
                hidden,
                attention_mask=frozen.mask(pos),
                position_embeddings=(cos, sin),
                cache=frozen.context(layer),
                use_cache=True,
            )
        layer_tokens.append(pos.numel())
    picked = inner.norm(hidden[0, is_reader])
    return relevance_from_logits(lm.lm_head(picked), yes_id, no_id), layer_tokens


def _relative_to_passage(own: torch.Tensor, owner: torch.Tensor, candidate: torch.Tensor, readers: int) -> torch.Tensor:
    """Each body token's attention over its passage's mean over surviving body tokens (1 = average).

    Readers spread their attention over different key sets, so raw values are not comparable
    across passages; relative to the passage mean they are.
    """
    group = owner.clamp(min=0)
    sums = torch.zeros(readers, dtype=own.dtype, device=own.device).index_add_(0, group[candidate], own[candidate])
    counts = torch.bincount(group[candidate], minlength=readers).clamp(min=1)
    return own / (sums / counts).clamp(min=1e-12)[group]


class _FrozenTokens:
    """Pruned tokens kept as context (``pruned_tokens="freeze"``): states fixed where each was pruned."""

    def __init__(self, hidden: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        self.hidden, self.pos, self.cos, self.sin = hidden, pos, cos, sin

    @classmethod
    def add(cls, frozen, hidden, pos, cos, sin) -> _FrozenTokens:
        if frozen is None:
            return cls(hidden, pos, cos, sin)
        return cls(
            torch.cat([frozen.hidden, hidden], dim=1),
            torch.cat([frozen.pos, pos]),
            torch.cat([frozen.cos, cos], dim=1),
            torch.cat([frozen.sin, sin], dim=1),
        )

    def mask(self, pos: torch.Tensor) -> torch.Tensor:
        """``[1, 1, computed, frozen + computed]`` booleans: each computed query sees the keys at or before
        its original position, the frozen ones first (the order :class:`_ContextKeys` hands them over)."""
        keys = torch.cat([self.pos, pos])
        return (keys[None, :] <= pos[:, None])[None, None]

    def context(self, layer) -> _ContextKeys:
        """This layer's keys and values of the frozen tokens, projected from their frozen states."""
        attn = layer.self_attn
        normed = layer.input_layernorm(self.hidden)
        shape = (1, normed.shape[1], -1, attn.head_dim)
        keys = attn.k_proj(normed).view(shape)
        if hasattr(attn, "k_norm"):  # Qwen3 normalises each head before RoPE
            keys = attn.k_norm(keys)
        keys = rope(keys.transpose(1, 2), self.cos, self.sin)
        values = attn.v_proj(normed).view(shape).transpose(1, 2)
        return _ContextKeys(keys, values)


class _ContextKeys:
    """Stands in for a KV cache for one layer call: prepends the frozen tokens' keys and values to the
    computed ones, so the layer's own attention module (and kernel) reads both."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys, self.values = keys, values

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, **kwargs):
        return torch.cat([self.keys, keys], dim=2), torch.cat([self.values, values], dim=2)
