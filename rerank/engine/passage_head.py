"""Relevance read at each passage's end, from one prefill of the listwise prompt (``scoring="head"``).

Every passage of the prompt is followed by a protected separator token (the newline before the
next identifier). At that position a causal LM has read the instruction with the query and the
passage itself (and the passages before it), so its final hidden state is a natural place to read
that passage's relevance: score_k = logit(``yes``) - logit(``no``) of the LM head at passage k's end.
A trained model learns this (``rerank train --objective head``); no new parameters are needed, so the
model stays a plain causal LM (or a LoRA adapter), and all N scores come from ONE forward pass with
no decoding at all. The design is close to jina-reranker-v3's "last but not late" interaction,
with the LM head as the readout.

The engine works on token ids: callers give the prompts and, per prompt, the positions to read.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from rerank.engine.session import PrefillInfo, _sync


@dataclass
class HeadScores:
    """Per prompt, one score per requested position; plus what the prefill cost."""

    scores: list[list[float]]
    prefill: PrefillInfo = field(default_factory=PrefillInfo)


def _causal_lm_parts(model):
    """(decoder stack, lm_head) of a causal LM (a merged or plain transformers model)."""
    base = getattr(model, "model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if base is None or head is None:
        raise ValueError(
            f"{type(model).__name__} has no .model decoder stack / output embeddings: "
            "head scoring needs a transformers causal LM"
        )
    return base, head


def relevance_from_logits(logits: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """``logit[yes] - logit[no]`` over the last dimension (shared by inference and training)."""
    return logits[..., yes_id].float() - logits[..., no_id].float()


@torch.inference_mode()
def score_positions(
    model,
    prompts: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    yes_id: int,
    no_id: int,
    pad_token_id: int,
) -> HeadScores:
    """Prefill ``prompts`` (left-padded batch) and read ``yes - no`` at each row's ``positions``.

    Only the requested positions are projected to the vocabulary (a handful per passage list),
    so no ``[batch, length, vocab]`` tensor is built.

    Example:
        >>> out = score_positions(lm, [ids], [[40, 95, 150]], yes_id=9805, no_id=787, pad_token_id=0)  # doctest: +SKIP
        >>> len(out.scores[0])
        3
    """
    if len(prompts) != len(positions):
        raise ValueError(f"prompts ({len(prompts)}) and positions ({len(positions)}) must have the same length")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("score_positions needs at least one non-empty prompt")
    for row, (prompt, pos) in enumerate(zip(prompts, positions)):
        if any(not 0 <= p < len(prompt) for p in pos):
            raise ValueError(f"positions[{row}] must lie in [0, {len(prompt)}), got {list(pos)}")
    start = time.perf_counter()
    device = next(model.parameters()).device
    base, lm_head = _causal_lm_parts(model)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    padded = bool((mask == 0).any())
    ids, mask = ids.to(device), mask.to(device)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = base(
        input_ids=ids, attention_mask=mask if padded else None, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    rows = torch.cat([torch.full((len(p),), r, dtype=torch.long) for r, p in enumerate(positions)])
    cols = torch.cat(
        [torch.tensor([width - len(prompts[r]) + q for q in p], dtype=torch.long) for r, p in enumerate(positions)]
    )
    picked = hidden[rows.to(device), cols.to(device)]  # [total positions, hidden]
    flat = relevance_from_logits(lm_head(picked), yes_id, no_id).cpu().tolist()
    _sync(device)
    out, cursor = [], 0
    for p in positions:
        out.append(flat[cursor : cursor + len(p)])
        cursor += len(p)
    tokens = sum(len(p) for p in prompts)
    return HeadScores(out, PrefillInfo(seconds=time.perf_counter() - start, prompt_tokens=tokens, kept_tokens=tokens))
