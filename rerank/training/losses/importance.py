"""The importance-aware listwise loss (docs/design.md section 4).

For a response ``[a] > [b] > ... <end>`` the causal-LM negative log-likelihood of every response
token is weighted by how much its position in the ranking matters::

    L = - sum_i w_i * log p(y_i | x, y_<i) / D
    w_i = 1 + 1 / log2(r_i + 1)   if token i spells the identifier at output rank r_i (1-based)
    w_i = alpha                   for separators and the end-of-turn token
    D   = number of response tokens (default) or sum_i w_i (``normalize="weights"``)

so r=1 -> 2.0, r=2 -> 1.631, r=10 -> 1.289, r=100 -> 1.150. The rank of each token is not found
from token ids (the reference code hard-codes one tokenizer's ``>`` id): it comes from the label's
text structure through :func:`target_with_ranks`, which works for any tokenizer, and the loss
receives it as a ``rank_ids`` tensor aligned with ``labels`` (0 = separator/end, r >= 1 = rank).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rerank.prompting.identifiers import SEPARATOR as SEPARATOR_TEXT
from rerank.prompting.prompts import end_of_turn_ids, format_ranking

IGNORE_INDEX = -100


def rank_weights(rank_ids: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Per-token weights: ``1 + 1/log2(r+1)`` where ``rank_ids = r >= 1``, ``alpha`` where it is 0."""
    ranks = rank_ids.to(torch.float32)
    ident = 1.0 + 1.0 / torch.log2(ranks.clamp(min=1.0) + 1.0)
    return torch.where(rank_ids > 0, ident, torch.full_like(ranks, float(alpha)))


def _char_ranks(order: Sequence[int]) -> np.ndarray:
    """Rank (1-based) of the identifier each character of ``format_ranking(order)`` belongs to; 0 on separators."""
    num = len(order)
    ident_len = np.array([len(str(i + 1)) + 2 for i in order], dtype=np.int64)  # "[" digits "]"
    seg_len = np.zeros(2 * num - 1, dtype=np.int64)
    seg_rank = np.zeros(2 * num - 1, dtype=np.int64)
    seg_len[0::2] = ident_len
    seg_len[1::2] = len(SEPARATOR_TEXT)
    seg_rank[0::2] = np.arange(1, num + 1)
    return np.repeat(seg_rank, seg_len)


def _token_offsets(tokenizer, text: str, ids: list[int]) -> np.ndarray:
    """Character span of each token, from the fast tokenizer's offsets or by cumulative decoding."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    # Slow tokenizers: the end of token i is the length of the decoded prefix ids[: i + 1].
    ends = np.array([len(tokenizer.decode(ids[: i + 1], clean_up_tokenization_spaces=False)) for i in range(len(ids))])
    starts = np.concatenate([[0], ends[:-1]])
    return np.stack([starts, ends], axis=1)


def target_with_ranks(tokenizer, order: Sequence[int]) -> tuple[list[int], list[int]]:
    """Response token ids for ``order`` (exactly :func:`rerank.prompting.prompts.encode_target`) and each token's rank.

    A token gets the rank of the first identifier ``[k]`` whose characters it overlaps (a token that
    also covers separator text, e.g. SmolLM2's `` [``, still spells part of the identifier); tokens
    made only of separator text, and the end-of-turn tokens, get 0 (weight ``alpha``).

    Example (SmolLM2 tokenizer):
        >>> target_with_ranks(tok, [1, 0])     # doctest: +SKIP
        ([75, 34, 77, 2986, 933, 33, 77, 2], [1, 1, 1, 0, 2, 2, 2, 0])
    """
    if len(order) == 0:
        raise ValueError("cannot build a target for an empty ranking")
    text = format_ranking(order)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    char_rank = _char_ranks(order)
    if len(char_rank) != len(text):  # the text layout is format_ranking's; a mismatch is a bug
        raise AssertionError("format_ranking layout changed; update _char_ranks")
    offsets = _token_offsets(tokenizer, text, ids)
    if len(offsets) != len(ids):
        raise AssertionError("offsets and ids disagree in length")
    # First identifier character at or after each position (len(text) if none), found in one pass.
    is_ident = char_rank > 0
    positions = np.where(is_ident, np.arange(len(text)), len(text))
    next_ident = np.minimum.accumulate(positions[::-1])[::-1]
    next_ident = np.append(next_ident, len(text))
    starts = np.clip(offsets[:, 0], 0, len(text))
    first = next_ident[starts]
    hit = first < offsets[:, 1]
    padded = np.append(char_rank, 0)
    ranks = np.where(hit, padded[first], 0)
    eot = end_of_turn_ids(tokenizer)
    return list(ids) + list(eot), ranks.tolist() + [0] * len(eot)


class ImportanceAwareLoss(nn.Module):
    """Rank-weighted causal-LM loss over response tokens (formula in the module docstring).

    Args:
        alpha: weight of separator and end-of-turn tokens (paper: <= 1; reference code 1.0).
        normalize: ``"tokens"`` divides the weighted sum by the number of response tokens,
            ``"weights"`` by the sum of their weights.

    ``forward(logits [B,T,V], labels [B,T], rank_ids [B,T])``: labels are the input ids with -100
    on prompt and padding; position t predicts ``labels[t+1]`` (the usual causal shift is done here).
    """

    uniform = False

    def __init__(self, alpha: float = 1.0, normalize: str = "tokens"):
        super().__init__()
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if normalize not in ("tokens", "weights"):
            raise ValueError(f"normalize must be 'tokens' or 'weights', got {normalize!r}")
        self.alpha = float(alpha)
        self.normalize = normalize

    def token_weights(self, rank_ids: torch.Tensor) -> torch.Tensor:
        if self.uniform:
            return torch.ones_like(rank_ids, dtype=torch.float32)
        return rank_weights(rank_ids, self.alpha)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, rank_ids: torch.Tensor | None = None) -> torch.Tensor:
        if rank_ids is None:
            if not self.uniform:
                raise ValueError("ImportanceAwareLoss needs rank_ids (see rerank.training.data)")
            rank_ids = torch.zeros_like(labels)
        logits = logits[:, :-1, :]
        targets = labels[:, 1:]
        ranks = rank_ids[:, 1:]
        mask = targets != IGNORE_INDEX
        # Cross-entropy in fp32 for stability under bf16 autocast; ignored positions give 0.
        nll = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        ).view_as(targets)
        weights = self.token_weights(ranks).to(nll.dtype) * mask
        total = (weights * nll).sum()
        denom = weights.sum() if self.normalize == "weights" else mask.sum().to(nll.dtype)
        return total / denom.clamp(min=1e-8)


class LMLoss(ImportanceAwareLoss):
    """Plain causal-LM loss over response tokens (every weight 1), for the ablation."""

    uniform = True

    def __init__(self):
        super().__init__(alpha=1.0, normalize="tokens")
