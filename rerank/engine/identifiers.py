"""Single-pass identifier scoring: log P(``[k]``) for every passage from one prefill.

After the prompt, the answer's first identifier is one of ``[1]..[N]``. Their canonical token
sequences form a trie (``[`` then digits then ``]``); all trie nodes are fed in ONE extra forward
pass over the prompt's KV cache with a tree attention mask (each node sees the prompt and its own
ancestors), so every identifier's full log-probability, multi-token or not, comes out of one prefill
plus one small pass, never N separate forwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from ..decoding import TokenTable, _Node
from .session import PrefillInfo, Session, _sync


@dataclass
class IdentifierScores:
    """Per row, ``scores[row][k - 1] = log P(identifier k is written first | prompt)``."""

    scores: list[list[float]]
    prefill: PrefillInfo
    scoring_seconds: float
    tree_tokens: list[int]


def _flatten(root: _Node) -> tuple[list[int], list[int], list[int], dict[int, int]]:
    """Breadth-first nodes below ``root``: tokens, parent indices (-1 = root), depths, leaf -> node."""
    tokens, parents, depths, leaves = [], [], [], {}
    frontier = [(root, -1, 0)]
    while frontier:
        nxt = []
        for node, index, depth in frontier:
            for tok, child in node.children.items():
                tokens.append(tok)
                parents.append(index)
                depths.append(depth)
                me = len(tokens) - 1
                if child.leaf is not None:
                    leaves[child.leaf] = me
                nxt.append((child, me, depth + 1))
        frontier = nxt
    return tokens, parents, depths, leaves


def score_identifiers(session: Session, prompts: Sequence[Sequence[int]], num_passages: Sequence[int],
                      table: TokenTable, prunable: Sequence[Sequence[bool]] | None = None) -> IdentifierScores:
    """Score every identifier of every prompt with one prefill and one tree pass (consumes the session)."""
    if not table.canonical.available:
        raise ValueError("single-pass scoring needs a tokenizer whose identifier tokens do not merge "
                         "across pieces; use scoring='generate' with this model")
    if not hasattr(session, "score_tree"):
        raise NotImplementedError(f"{type(session).__name__} cannot score identifier trees yet; "
                                  "use scoring='generate' or pruning=None")
    last_logits = session.prefill(prompts, prunable)
    start = time.perf_counter()
    trees = [_flatten(table.canonical.tries(n)[0]) for n in num_passages]
    width = max(len(t[0]) for t in trees)
    tokens = torch.zeros((len(prompts), width), dtype=torch.long)
    depths = torch.zeros((len(prompts), width), dtype=torch.long)
    # Padding nodes attend only to themselves so no attention row is empty.
    tree_mask = torch.eye(width, dtype=torch.bool).repeat(len(prompts), 1, 1)
    for row, (toks, parents, deps, _) in enumerate(trees):
        tokens[row, : len(toks)] = torch.tensor(toks)
        depths[row, : len(toks)] = torch.tensor(deps)
        for i, parent in enumerate(parents):
            if parent >= 0:
                tree_mask[row, i] |= tree_mask[row, parent]
    logits = session.score_tree(tokens, depths, tree_mask)          # [B, T, V]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    first = torch.log_softmax(last_logits.float(), dim=-1)           # predicts the root's children
    scores = []
    for row, (toks, parents, _, leaves) in enumerate(trees):
        cum = [0.0] * len(toks)
        for i, (tok, parent) in enumerate(zip(toks, parents)):
            source = first[row] if parent < 0 else logprobs[row, parent]
            cum[i] = (0.0 if parent < 0 else cum[parent]) + float(source[tok])
        scores.append([cum[leaves[k]] for k in range(1, num_passages[row] + 1)])
    _sync(logits.device)
    return IdentifierScores(scores=scores, prefill=session.info, scoring_seconds=time.perf_counter() - start,
                            tree_tokens=[len(t[0]) for t in trees])
