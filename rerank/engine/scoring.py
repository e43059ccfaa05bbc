"""Token importance for pruned prefill: the attention a few final query rows pay each key.

Only the last ``window`` query rows are formed, so the cost is ``O(heads x window x tokens x
head_dim)``; the ``tokens x tokens`` attention map is never built. Grouped-query attention is handled
by folding the query heads of one key/value group together instead of repeating the keys.
"""

from __future__ import annotations

import math

import torch


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on ``[B, heads, S, d]`` with ``cos``/``sin`` of shape ``[B, S, d]``."""
    # Imported here so `import rerank` does not load transformers' model code.
    from transformers.models.llama.modeling_llama import rotate_half

    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def last_rows_attention(attn: torch.nn.Module, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                        window: int) -> torch.Tensor:
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
    if normed.shape[0] != 1:
        raise ValueError("last_rows_attention scores one sequence at a time")
    seq = normed.shape[1]
    window = max(1, min(window, seq))
    head_dim = attn.head_dim
    q = attn.q_proj(normed[:, -window:]).view(1, window, -1, head_dim)
    k = attn.k_proj(normed).view(1, seq, -1, head_dim)
    if hasattr(attn, "q_norm"):  # Qwen3 normalises each head before RoPE
        q, k = attn.q_norm(q), attn.k_norm(k)
    q = _rope(q.transpose(1, 2), cos[:, -window:], sin[:, -window:])
    k = _rope(k.transpose(1, 2), cos, sin)
    heads, kv_heads = q.shape[1], k.shape[1]
    group = heads // kv_heads
    # Query head h reads kv head h // group (the layout repeat_kv produces): fold each group's rows.
    q = q.reshape(1, kv_heads, group * window, head_dim)
    logits = torch.matmul(q, k.transpose(-1, -2)).float() * getattr(attn, "scaling", 1.0 / math.sqrt(head_dim))
    if window > 1:
        # Row j of the window sits at survivor index seq - window + j and must not see later keys.
        rows = torch.arange(seq - window, seq, device=normed.device).repeat(group)
        future = torch.arange(seq, device=normed.device)[None, :] > rows[:, None]
        logits = logits.masked_fill(future, float("-inf"))
    return logits.softmax(dim=-1).mean(dim=(0, 1, 2))


def passage_groups(prunable: torch.Tensor) -> torch.Tensor:
    """Group id per token: each maximal run of prunable tokens (one passage body) shares an id.

    Tokens outside runs get their own singleton ids, so every token belongs to exactly one group.
    """
    starts = torch.ones_like(prunable)
    starts[1:] = ~(prunable[1:] & prunable[:-1])
    return starts.long().cumsum(0) - 1


def select_survivors(scores: torch.Tensor, candidate: torch.Tensor, groups: torch.Tensor, budget: int,
                     granularity: str) -> torch.Tensor:
    """Indices (ascending) of the tokens to keep.

    Non-candidates always stay. Among candidates, ``token`` granularity keeps the ``budget`` best
    tokens; ``passage`` granularity ranks groups by their mean token score and keeps whole groups,
    best first, until at least ``budget`` candidate tokens are kept (a mean, not a sum, so long
    passages do not win by length alone and the token budget stays comparable to token mode).
    """
    n = scores.shape[0]
    cand_idx = candidate.nonzero().squeeze(1)
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
            0, inverse, torch.ones_like(inverse))
        order = (sums / sizes).argsort(descending=True)
        before = sizes[order].cumsum(0) - sizes[order]
        chosen = torch.zeros(len(uniq), dtype=torch.bool, device=scores.device)
        chosen[order[before < budget]] = True
        keep[cand_idx[chosen[inverse]]] = True
    return keep.nonzero().squeeze(1)
