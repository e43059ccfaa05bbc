"""Prefill-then-step model sessions over token ids.

A session owns the KV cache of one batch of prompts. ``prefill`` consumes the prompts and returns
the next-token logits of each row; ``step`` feeds one token per row and returns the next logits.
The unpruned ``DenseSession`` is the reference; the pruned engine implements the same protocol so
decoding never needs to know which one it talks to.

Sessions with ``multi_token_step`` take ``[B, L]`` tokens per step; those with ``ragged_step`` also
take per-row ``lengths`` (row b's real tokens are ``tokens[b, :lengths[b]]``, the rest is right
padding). Padding is appended to the cache but masked for good, so no later query ever sees it:
batched jump-forward decoding feeds each row only its own queued tokens this way.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class PrefillInfo:
    """What a prefill cost: wall time, prompt tokens, and how much of the full work was computed."""

    seconds: float = 0.0
    prompt_tokens: int = 0
    kept_tokens: int = 0
    computed_fraction: float = 1.0
    extra: dict = field(default_factory=dict)


class Session(Protocol):
    """One batch of prompts' model state.

    ``positions`` holds, per row, the original position of the LAST token fed so far (after
    ``prefill``: the last prompt token; each ``step`` of L tokens adds L, or ``lengths[b]`` for row b
    of a ragged step, padding excluded); the next token goes to ``positions + 1``. None before
    ``prefill``, and once ``score_tree`` has consumed the session.
    """

    positions: torch.Tensor | None

    def prefill(
        self, prompts: Sequence[Sequence[int]], prunable: Sequence[Sequence[bool]] | None = None
    ) -> torch.Tensor:
        """Run the prompts; return ``[B, vocab]`` logits for the token after each prompt."""

    def step(self, tokens: torch.Tensor, lengths: Sequence[int] | None = None) -> torch.Tensor:
        """Feed ``[B]`` token ids (one per row); return ``[B, vocab]`` next-token logits.

        ``[B, L]`` tokens need ``multi_token_step``; ``lengths`` (real tokens per row, right padded)
        need ``ragged_step``. Rows of length 0 advance nothing and get meaningless logits.
        """

    @property
    def info(self) -> PrefillInfo: ...


def cache_kwarg(model) -> str:
    """Name of the KV-cache argument: ``cache`` in transformers >= 5.x, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ragged_lengths(lengths: Sequence[int] | None, batch: int, width: int) -> list[int] | None:
    """Check per-row step lengths; None when there are none or every row fills the step.

    Returning None for full rows lets sessions keep their cheaper unpadded path (no mask, last-column
    logits) whenever a ragged step happens to need no padding.
    """
    if lengths is None:
        return None
    lengths = [int(n) for n in lengths]
    if len(lengths) != batch or any(not 0 <= n <= width for n in lengths):
        raise ValueError(f"lengths must give 0..{width} real tokens for each of {batch} rows, got {lengths}")
    return None if all(n == width for n in lengths) else lengths


def step_tokens(
    tokens: torch.Tensor, lengths: Sequence[int] | None, device: torch.device
) -> tuple[torch.Tensor, int, int, list[int] | None]:
    """A step's ``[B]`` or ``[B, L]`` tokens as ``[B, L]`` on ``device``, with B, L and the checked ragged lengths."""
    tokens = tokens.to(device)
    if tokens.dim() == 1:
        tokens = tokens.view(-1, 1)
    batch, width = tokens.shape
    return tokens, batch, width, ragged_lengths(lengths, batch, width)


class DenseSession:
    """The model's own forward with a ``DynamicCache``; rows are left-padded to one length.

    ``step`` accepts several tokens per row (``multi_token_step``), which jump-forward decoding uses,
    and a different number per row (``ragged_step``): padding goes into the cache with a 0 in
    ``attention_mask``, which every later step passes on, so it stays invisible.

    Example:
        >>> s = DenseSession(model, pad_token_id=tok.pad_token_id)   # doctest: +SKIP
        >>> logits = s.prefill([ids_a, ids_b]); logits = s.step(logits.argmax(-1))
    """

    multi_token_step = True
    ragged_step = True

    def __init__(self, model, pad_token_id: int):
        self.model = model
        self.pad_token_id = pad_token_id
        self.device = next(model.parameters()).device
        self._info = PrefillInfo()
        self.cache = None
        self.attention_mask: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.padded = False
        self._cache_kw = cache_kwarg(model)

    @property
    def info(self) -> PrefillInfo:
        return self._info

    @torch.inference_mode()
    def prefill(self, prompts, prunable=None) -> torch.Tensor:
        from transformers import DynamicCache

        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("prefill needs at least one non-empty prompt")
        start = time.perf_counter()
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = DynamicCache(config=self.model.config)
        # Padding never changes after prefill, so decode steps reuse this instead of rescanning the mask.
        self.padded = bool((mask == 0).any())
        out = self.model(
            input_ids=ids,
            attention_mask=mask if self.padded else None,
            position_ids=positions,
            use_cache=True,
            **{self._cache_kw: self.cache},
            logits_to_keep=1,
        )
        self.attention_mask = mask
        self.positions = positions[:, -1]
        logits = out.logits[:, -1, :].float()
        _sync(self.device)
        tokens = sum(len(p) for p in prompts)
        self._info = PrefillInfo(seconds=time.perf_counter() - start, prompt_tokens=tokens, kept_tokens=tokens)
        return logits

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, lengths: Sequence[int] | None = None) -> torch.Tensor:
        """Feed ``[B]`` tokens, or ``[B, L]`` (L tokens per row, for jump-forward decoding).

        With ``lengths``, row b's real tokens are ``tokens[b, :lengths[b]]``; the padding after them
        is masked now and in every later step, and the logits are those after row b's last real
        token (meaningless for a row of length 0).
        """
        if self.cache is None:
            raise RuntimeError("step() called before prefill()")
        tokens, batch, width, ragged = step_tokens(tokens, lengths, self.device)
        offsets = torch.arange(1, width + 1, device=self.device)
        # Padding gets positions too (it must have some); they are never seen, so any value works.
        positions = self.positions.view(-1, 1) + offsets
        if ragged is None:
            new_mask, keep = torch.ones_like(tokens), 1
            self.positions = positions[:, -1]
        else:
            count = torch.tensor(ragged, dtype=torch.long, device=self.device)
            new_mask = (offsets <= count.view(-1, 1)).long()
            keep = (count - 1).clamp(min=0).view(-1, 1)  # per row: the column of its last real token
            self.positions = self.positions + count
            # From now on the cache holds padding in the middle: every step must pass the mask.
            self.padded = True
        self.attention_mask = torch.cat([self.attention_mask, new_mask], dim=1)
        out = self.model(
            input_ids=tokens,
            attention_mask=self.attention_mask if self.padded else None,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=keep,
            **{self._cache_kw: self.cache},
        )
        return out.logits[:, -1, :].float()

    @torch.inference_mode()
    def score_tree(self, tokens: torch.Tensor, depths: torch.Tensor, tree_mask: torch.Tensor) -> torch.Tensor:
        """Feed a token tree after the prompt in one pass; returns ``[B, T, vocab]`` logits.

        ``depths[b, i]`` is node i's depth below the prompt (position = last prompt position + 1 +
        depth); ``tree_mask[b, i, j]`` says node i may attend to node j (its ancestors and itself).
        The tree is appended to the cache, so the session cannot decode afterwards.
        """
        if self.cache is None:
            raise RuntimeError("score_tree() called before prefill()")
        tokens, depths, tree_mask = tokens.to(self.device), depths.to(self.device), tree_mask.to(self.device)
        positions = self.positions.view(-1, 1) + 1 + depths
        prefix = self.attention_mask.bool()[:, None, :].expand(-1, tokens.shape[1], -1)
        mask = torch.cat([prefix, tree_mask], dim=-1)[:, None]  # [B, 1, T, S + T]
        out = self.model(
            input_ids=tokens,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_kw: self.cache},
        )
        self.cache = None
        self.positions = None  # the tree now sits in the cache: no decoding after it
        return out.logits
