"""Greedy constrained decoding of permutations over a prefilled session."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from ..decoding import PermutationConstraint, TokenTable
from .session import PrefillInfo, Session, _sync


@dataclass
class DecodeOutput:
    """Per row: the identifiers emitted (1-based, in order) and the tokens generated."""

    identifiers: list[list[int]]
    generated_tokens: list[int]
    prefill: PrefillInfo
    decode_seconds: float
    constraint_seconds: float


def rank_prompts(session: Session, prompts: Sequence[Sequence[int]], num_passages: Sequence[int],
                 table: TokenTable, *, top_k: Sequence[int | None] | None = None,
                 prunable: Sequence[Sequence[bool]] | None = None) -> DecodeOutput:
    """Prefill ``prompts`` and greedily decode a valid ranking for each.

    Row ``i`` emits exactly ``min(top_k[i], num_passages[i])`` distinct identifiers from
    ``1..num_passages[i]`` (all of them when ``top_k`` is None), whatever the model prefers: only
    tokens the :class:`PermutationConstraint` accepts are ever chosen. Decoding ends when every
    row's ranking is complete, so no end-of-turn token is generated.
    """
    if len(prompts) != len(num_passages):
        raise ValueError("prompts and num_passages must have the same length")
    top_k = list(top_k) if top_k is not None else [None] * len(prompts)
    constraints = [PermutationConstraint(n, None if k is None else max(1, min(k, n)))
                   for n, k in zip(num_passages, top_k)]
    logits = session.prefill(prompts, prunable)
    generated = [0] * len(prompts)
    constraint_seconds = 0.0
    start = time.perf_counter()
    texts = dict(table.items)
    while True:
        tick = time.perf_counter()
        next_tokens = torch.zeros(len(prompts), dtype=torch.long)
        active = False
        for row, constraint in enumerate(constraints):
            if constraint.done:
                continue
            allowed = constraint.allowed(table)
            if not allowed:  # unreachable for a sane tokenizer: single-character tokens always exist
                raise RuntimeError(f"no token can continue the ranking in row {row}; tokenizer lacks '[', ']' or digits")
            constraint_seconds += time.perf_counter() - tick
            index = torch.tensor(allowed, dtype=torch.long, device=logits.device)
            best = allowed[int(logits[row].index_select(0, index).argmax())]
            tick = time.perf_counter()
            constraint.feed(texts[best])
            constraint_seconds += time.perf_counter() - tick
            next_tokens[row] = best
            generated[row] += 1
            active = True
        if not active or all(c.done for c in constraints):
            break
        logits = session.step(next_tokens)
    _sync(logits.device)
    return DecodeOutput(identifiers=[c.emitted for c in constraints], generated_tokens=generated,
                        prefill=session.info, decode_seconds=time.perf_counter() - start,
                        constraint_seconds=constraint_seconds)
