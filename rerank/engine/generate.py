"""Greedy constrained decoding of permutations over a prefilled session."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rerank.engine.decoding import CanonicalConstraint, TokenTable
from rerank.engine.session import PrefillInfo, Session, _sync


@dataclass
class DecodeOutput:
    """Per row: the identifiers emitted (1-based, in order) and the tokens generated."""

    identifiers: list[list[int]]
    generated_tokens: list[int]
    prefill: PrefillInfo
    decode_seconds: float
    constraint_seconds: float
    forward_passes: int = 0


def rank_prompts(
    session: Session,
    prompts: Sequence[Sequence[int]],
    num_passages: Sequence[int],
    table: TokenTable,
    *,
    top_k: Sequence[int | None] | None = None,
    prunable: Sequence[Sequence[bool]] | None = None,
    jump_forward: bool = True,
) -> DecodeOutput:
    """Prefill ``prompts`` and greedily decode a valid ranking for each.

    Row ``i`` emits exactly ``min(top_k[i], num_passages[i])`` distinct identifiers from
    ``1..num_passages[i]`` (all of them when ``top_k`` is None), whatever the model prefers: only
    tokens the constraint accepts are ever chosen. Decoding ends when every row's ranking is
    complete, so no end-of-turn token is generated.

    Jump-forward: under a canonical constraint, tokens that are the only legal choice are not decided
    by the model; each row queues them and feeds them together with its next decided token in one
    forward pass. Rows queue different numbers of tokens, so a batch needs a session with
    ``ragged_step`` (right-padded steps with per-row lengths); one prompt needs only
    ``multi_token_step``. Otherwise (or with ``jump_forward=False``) every row feeds one token per
    pass. Either way the result equals token-by-token greedy decoding; only the number of forward
    passes drops.
    """
    if len(prompts) != len(num_passages):
        raise ValueError("prompts and num_passages must have the same length")
    top_k = list(top_k) if top_k is not None else [None] * len(prompts)
    constraints = [table.constraint(n, None if k is None else max(1, min(k, n))) for n, k in zip(num_passages, top_k)]
    logits = session.prefill(prompts, prunable)
    tally = _Tally(generated=[0] * len(prompts))
    start = time.perf_counter()
    if can_jump_forward(session, constraints, jump_forward):
        logits = _decode_jump_forward(session, logits, constraints, tally)
    else:
        logits = _decode_token_by_token(session, logits, constraints, tally)
    _sync(logits.device)
    return DecodeOutput(
        identifiers=[c.emitted for c in constraints],
        generated_tokens=tally.generated,
        prefill=session.info,
        decode_seconds=time.perf_counter() - start,
        constraint_seconds=tally.constraint_seconds,
        forward_passes=tally.forward_passes,
    )


@dataclass
class _Tally:
    """Decode counters shared by both loops."""

    generated: list[int]
    constraint_seconds: float = 0.0
    forward_passes: int = 0


def can_jump_forward(session: Session, constraints: Sequence[object], requested: bool = True) -> bool:
    """Whether jump-forward decoding applies: asked for, canonical constraints (their forced tokens
    are known in advance), and a session that can feed what the rows queue: several tokens for one
    row, or per-row counts (``ragged_step``) for a batch."""
    if not requested or not constraints or not all(isinstance(c, CanonicalConstraint) for c in constraints):
        return False
    if not getattr(session, "multi_token_step", False):
        return False
    return len(constraints) == 1 or bool(getattr(session, "ragged_step", False))


def _allowed(constraint, tally: _Tally, row: int) -> list[int]:
    tick = time.perf_counter()
    allowed = constraint.allowed()
    tally.constraint_seconds += time.perf_counter() - tick
    if not allowed:  # unreachable for a sane tokenizer: single-character tokens always exist
        raise RuntimeError(f"no token can continue the ranking in row {row}")
    return allowed


def _advance(constraint, token: int, tally: _Tally, row: int) -> None:
    tick = time.perf_counter()
    constraint.advance(token)
    tally.constraint_seconds += time.perf_counter() - tick
    tally.generated[row] += 1


def _decode_token_by_token(session: Session, logits: torch.Tensor, constraints: list, tally: _Tally) -> torch.Tensor:
    """Every unfinished row decides and feeds one token per forward pass; finished rows feed a filler."""
    while True:
        next_tokens = torch.zeros(len(constraints), dtype=torch.long)
        for row, constraint in enumerate(constraints):
            if constraint.done:
                continue
            best = _pick(logits[row], _allowed(constraint, tally, row))
            _advance(constraint, best, tally, row)
            next_tokens[row] = best
        if all(c.done for c in constraints):
            return logits
        logits = session.step(next_tokens)
        tally.forward_passes += 1


def _decode_jump_forward(session: Session, logits: torch.Tensor, constraints: list, tally: _Tally) -> torch.Tensor:
    """Each pass feeds every unfinished row the tokens it queued since its last pass.

    A row queues forced tokens freely but can decide a token only from logits that have seen its
    whole queue, i.e. once per pass (right after it). So between passes each row decides at most
    once, then queues the forced tokens after that decision, and waits at its next real choice.
    """
    pending: list[list[int]] = [[] for _ in constraints]
    waiting: list[list[int] | None] = [None] * len(constraints)  # allowed tokens a row stopped at
    while True:
        for row, constraint in enumerate(constraints):
            waiting[row] = _queue_row(constraint, pending[row], logits[row], waiting[row], tally, row)
        if all(c.done for c in constraints):
            # Tokens queued after a row's last decision need no logits: they are never fed.
            return logits
        # A finished row feeds nothing (length 0); its logits are no longer read.
        lengths = [0 if c.done else len(q) for c, q in zip(constraints, pending)]
        logits = _feed(session, pending, lengths)
        tally.forward_passes += 1
        for queue in pending:
            queue.clear()


def _queue_row(
    constraint, pending: list[int], row_logits: torch.Tensor, allowed: list[int] | None, tally: _Tally, row: int
) -> list[int] | None:
    """Advance one row as far as its logits allow; returns the choice it waits at (None when done).

    ``allowed`` is the choice the row stopped at before the last pass (saves recomputing it).
    ``pending`` is empty exactly when ``row_logits`` follow the row's last token, the one state in
    which the model may decide.
    """
    while not constraint.done:
        if allowed is None:
            allowed = _allowed(constraint, tally, row)
        if len(allowed) > 1:
            if pending:
                return allowed
            best = _pick(row_logits, allowed)
        else:
            best = allowed[0]
        _advance(constraint, best, tally, row)
        pending.append(best)
        allowed = None
    return None


def _feed(session: Session, pending: list[list[int]], lengths: list[int]) -> torch.Tensor:
    """One forward pass over each row's first ``lengths[row]`` queued tokens, right-padded to one width."""
    width = max(lengths)
    # The pad id is arbitrary: the session masks padding, and an unpadded step sends no lengths.
    rows = [queue[:n] + [0] * (width - n) for queue, n in zip(pending, lengths)]
    tokens = torch.tensor(rows, dtype=torch.long)
    if all(n == width for n in lengths):
        return session.step(tokens)  # no padding: sessions without ragged_step take this too
    return session.step(tokens, lengths)


def _pick(row_logits: torch.Tensor, allowed: list[int]) -> int:
    """Greedy choice among the allowed tokens."""
    if len(allowed) == 1:
        return allowed[0]
    index = torch.tensor(allowed, dtype=torch.long, device=row_logits.device)
    return allowed[int(row_logits.index_select(0, index).argmax())]
