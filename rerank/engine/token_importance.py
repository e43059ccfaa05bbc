"""Token importance for pruned prefill: the attention a few final query rows pay each key.

Only the last ``window`` query rows are formed, so the cost is ``O(heads x window x tokens x
head_dim)``; the ``tokens x tokens`` attention map is never built. Grouped-query attention is handled
by folding the query heads of one key/value group together instead of repeating the keys.
"""

from __future__ import annotations

import math

import torch


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on ``[B, heads, S, d]`` with ``cos``/``sin`` of shape ``[B, S, d]``."""
    # Imported here so `import rerank` does not load transformers' model code.
    from transformers.models.llama.modeling_llama import rotate_half

    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def _rotated_qk(
    attn: torch.nn.Module, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated queries of the survivors at ``rows`` and keys of all survivors, one sequence.

    Returns ``q`` as ``[kv_heads, group * R, d]`` (query head h reads kv head h // group, the layout
    ``repeat_kv`` produces, so each group's rows are folded together) and ``k`` as ``[kv_heads, S, d]``.
    """
    if normed.shape[0] != 1:
        raise ValueError("token importance is computed one sequence at a time")
    seq, head_dim = normed.shape[1], attn.head_dim
    q = attn.q_proj(normed[:, rows]).view(1, rows.numel(), -1, head_dim)
    k = attn.k_proj(normed).view(1, seq, -1, head_dim)
    if hasattr(attn, "q_norm"):  # Qwen3 normalises each head before RoPE
        q, k = attn.q_norm(q), attn.k_norm(k)
    q = rope(q.transpose(1, 2), cos[:, rows], sin[:, rows])
    k = rope(k.transpose(1, 2), cos, sin)
    heads, kv_heads = q.shape[1], k.shape[1]
    q = q.reshape(kv_heads, (heads // kv_heads) * rows.numel(), head_dim)
    return q, k[0]


def _causal_softmax(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, scale: float) -> torch.Tensor:
    """``[kv_heads, group * R, S]`` attention of the folded query rows; row j sees keys up to ``rows[j]``."""
    logits = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    group = q.shape[1] // rows.numel()
    future = torch.arange(k.shape[1], device=k.device)[None, :] > rows.repeat(group)[:, None]
    return logits.masked_fill(future, float("-inf")).softmax(dim=-1)


def _scale(attn: torch.nn.Module) -> float:
    return getattr(attn, "scaling", 1.0 / math.sqrt(attn.head_dim))


def last_rows_attention(
    attn: torch.nn.Module, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, window: int
) -> torch.Tensor:
    """Mean attention the last ``window`` rows pay every key, averaged over heads and rows.

    Args:
        attn: the layer's attention module (Llama / Mistral / Qwen2 / Qwen3 layout: ``q_proj``,
            ``k_proj``, optional per-head ``q_norm``/``k_norm``, ``head_dim``, ``scaling``).
        normed: the layer's input after its input norm, ``[1, S, hidden]`` (survivors only).
        cos, sin: rotary embeddings of the survivors' original positions, ``[1, S, head_dim]``.
        window: how many final rows score (clipped to ``S``).

    Returns:
        ``[S]`` float32 scores; each row's softmax sums to one, so the scores sum to one.
    """
    seq = normed.shape[1]
    window = max(1, min(window, seq))
    rows = torch.arange(seq - window, seq, device=normed.device)
    q, k = _rotated_qk(attn, normed, cos, sin, rows)
    return _causal_softmax(q, k, rows, _scale(attn)).mean(dim=(0, 1))


def reader_attention(
    attn: torch.nn.Module, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, readers: torch.Tensor
) -> torch.Tensor:
    """Per reader row, the attention it pays every key (mean over heads), causal.

    Head scoring reads relevance at each passage's end, so each passage end is a reader: its row
    says which tokens its own readout draws on. Only the ``R`` reader rows are formed (``O(heads x R
    x S x d)``); no ``S x S`` map is built.

    Args:
        readers: ``[R]`` survivor indices of the reading rows, ascending.

    Returns:
        ``[R, S]`` float32; row r sums to one over keys ``<= readers[r]`` and is zero after it.
    """
    q, k = _rotated_qk(attn, normed, cos, sin, readers)
    probs = _causal_softmax(q, k, readers, _scale(attn))  # [kv, group * R, S]
    kv_heads, folded, seq = probs.shape
    return probs.view(kv_heads, folded // readers.numel(), readers.numel(), seq).mean(dim=(0, 1))


def passage_groups(prunable: torch.Tensor) -> torch.Tensor:
    """Group id per token: each maximal run of prunable tokens (one passage body) shares an id.

    Tokens outside runs get their own singleton ids, so every token belongs to exactly one group.
    """
    starts = torch.ones_like(prunable)
    starts[1:] = ~(prunable[1:] & prunable[:-1])
    return starts.long().cumsum(0) - 1


def select_survivors(
    scores: torch.Tensor,
    candidate: torch.Tensor,
    groups: torch.Tensor,
    budget: int,
    granularity: str,
    quotas: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indices (ascending) of the tokens to keep.

    Non-candidates always stay. Among candidates, ``token`` granularity keeps the ``budget`` best
    tokens; ``passage`` granularity ranks groups by their mean token score and keeps whole groups,
    best first, until at least ``budget`` candidate tokens are kept (a mean, not a sum, so long
    passages do not win by length alone and the token budget stays comparable to token mode).
    With ``quotas`` (per group id, how many of its candidates may stay) each group keeps its own
    best ``quotas[group]`` tokens instead and ``budget`` is not used: a budget per passage.
    """
    n = scores.shape[0]
    cand_idx = candidate.nonzero().squeeze(1)
    if quotas is not None:
        return _select_per_group(scores, candidate, groups, quotas)
    if cand_idx.numel() <= budget:
        return torch.arange(n, device=scores.device)
    keep = ~candidate
    if granularity == "token":
        best = scores[cand_idx].topk(budget).indices
        keep[cand_idx[best]] = True
    else:
        g = groups[cand_idx]
        uniq, inverse = g.unique(return_inverse=True)
        sums = torch.zeros(len(uniq), dtype=scores.dtype, device=scores.device).index_add_(0, inverse, scores[cand_idx])
        sizes = torch.zeros(len(uniq), dtype=torch.long, device=scores.device).index_add_(
            0, inverse, torch.ones_like(inverse)
        )
        order = (sums / sizes).argsort(descending=True)
        before = sizes[order].cumsum(0) - sizes[order]
        chosen = torch.zeros(len(uniq), dtype=torch.bool, device=scores.device)
        chosen[order[before < budget]] = True
        keep[cand_idx[chosen[inverse]]] = True
    return keep.nonzero().squeeze(1)


def _select_per_group(
    scores: torch.Tensor, candidate: torch.Tensor, groups: torch.Tensor, quotas: torch.Tensor
) -> torch.Tensor:
    """Keep each group's best ``quotas[group]`` candidates (and every non-candidate)."""
    cand_idx = candidate.nonzero().squeeze(1)
    keep = ~candidate
    if cand_idx.numel():
        # Best first, then stably by group: within a group the order stays best first, so a token's
        # rank in its group is its offset from the group's first entry.
        by_score = scores[cand_idx].argsort(descending=True, stable=True)
        g = groups[cand_idx][by_score]
        by_group = g.argsort(stable=True)
        sorted_groups = g[by_group]
        rank = torch.arange(sorted_groups.numel(), device=scores.device) - torch.searchsorted(
            sorted_groups, sorted_groups
        )
        chosen = cand_idx[by_score[by_group]][rank < quotas[sorted_groups]]
        keep[chosen] = True
    return keep.nonzero().squeeze(1)
