"""Greedy constrained decoding of permutations over a prefilled session."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from ..decoding import CanonicalConstraint, TokenTable
from .session import PrefillInfo, Session, _sync


@dataclass
class DecodeOutput:
    """Per row: the identifiers emitted (1-based, in order) and the tokens generated."""

    identifiers: list[list[int]]
    generated_tokens: list[int]
    prefill: PrefillInfo
    decode_seconds: float
    constraint_seconds: float
    forward_passes: int = 0


def rank_prompts(session: Session, prompts: Sequence[Sequence[int]], num_passages: Sequence[int],
                 table: TokenTable, *, top_k: Sequence[int | None] | None = None,
                 prunable: Sequence[Sequence[bool]] | None = None, jump_forward: bool = True) -> DecodeOutput:
    """Prefill ``prompts`` and greedily decode a valid ranking for each.

    Row ``i`` emits exactly ``min(top_k[i], num_passages[i])`` distinct identifiers from
    ``1..num_passages[i]`` (all of them when ``top_k`` is None), whatever the model prefers: only
    tokens the constraint accepts are ever chosen. Decoding ends when every row's ranking is
    complete, so no end-of-turn token is generated.

    With one prompt, a canonical constraint and a session that takes several tokens per step,
    tokens that are the only legal choice are not decided by the model: they are queued and fed
    together with the next decided token's forward pass (jump-forward). The result equals
    token-by-token greedy decoding; only the number of forward passes drops.
    """
    if len(prompts) != len(num_passages):
        raise ValueError("prompts and num_passages must have the same length")
    top_k = list(top_k) if top_k is not None else [None] * len(prompts)
    constraints = [table.constraint(n, None if k is None else max(1, min(k, n)))
                   for n, k in zip(num_passages, top_k)]
    logits = session.prefill(prompts, prunable)
    generated = [0] * len(prompts)
    constraint_seconds = 0.0
    start = time.perf_counter()
    jump = (jump_forward and len(prompts) == 1 and getattr(session, "multi_token_step", False)
            and isinstance(constraints[0], CanonicalConstraint))
    forward_passes = 0
    if jump:
        constraint, pending = constraints[0], []
        while not constraint.done:
            tick = time.perf_counter()
            allowed = constraint.allowed()
            constraint_seconds += time.perf_counter() - tick
            if len(allowed) == 1:
                best = allowed[0]
            else:
                if pending:
                    logits = session.step(torch.tensor([pending], dtype=torch.long))
                    forward_passes += 1
                    pending = []
                best = _pick(logits[0], allowed)
            tick = time.perf_counter()
            constraint.advance(best)
            constraint_seconds += time.perf_counter() - tick
            pending.append(best)
            generated[0] += 1
    else:
        while True:
            next_tokens = torch.zeros(len(prompts), dtype=torch.long)
            active = False
            for row, constraint in enumerate(constraints):
                if constraint.done:
                    continue
                tick = time.perf_counter()
                allowed = constraint.allowed()
                constraint_seconds += time.perf_counter() - tick
                if not allowed:  # unreachable for a sane tokenizer: single-character tokens always exist
                    raise RuntimeError(f"no token can continue the ranking in row {row}")
                best = _pick(logits[row], allowed)
                tick = time.perf_counter()
                constraint.advance(best)
                constraint_seconds += time.perf_counter() - tick
                next_tokens[row] = best
                generated[row] += 1
                active = True
            if not active or all(c.done for c in constraints):
                break
            logits = session.step(next_tokens)
            forward_passes += 1
    _sync(logits.device)
    return DecodeOutput(identifiers=[c.emitted for c in constraints], generated_tokens=generated,
                        prefill=session.info, decode_seconds=time.perf_counter() - start,
                        constraint_seconds=constraint_seconds, forward_passes=forward_passes)


def _pick(row_logits: torch.Tensor, allowed: list[int]) -> int:
    """Greedy choice among the allowed tokens."""
    if len(allowed) == 1:
        return allowed[0]
    index = torch.tensor(allowed, dtype=torch.long, device=row_logits.device)
    return allowed[int(row_logits.index_select(0, index).argmax())]
