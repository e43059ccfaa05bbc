"""Single-pass identifier scoring: log P(``[k]``) for every passage from one prefill.

After the prompt, the answer's first identifier is one of ``[1]..[N]``. Their canonical token
sequences form a trie (``[`` then digits then ``]``); all trie nodes are fed in ONE extra forward
pass over the prompt's KV cache with a tree attention mask (each node sees the prompt and its own
ancestors), so every identifier's full log-probability, multi-token or not, comes out of one prefill
plus one small pass, never N separate forwards.

The identifier spelling comes from the :class:`~rerank.engine.decoding.TokenTable` (its ``ids`` format):
a table built with ``LETTERS`` gives the tree of ``[A]..[Z]`` (FIRST), so scoring reads letters
with no separate code path. FIRST itself reads only the letter token after ``[``; here the closing
``]`` adds its (near-zero for a trained model) log-probability too, the same for every passage shape.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rerank.engine.decoding import TokenTable, _Node
from rerank.engine.session import PrefillInfo, Session


@dataclass
class IdentifierScores:
    """Per row, ``scores[row][k - 1] = log P(identifier k is written first | prompt)``."""

    scores: list[list[float]]
    prefill: PrefillInfo
    scoring_seconds: float
    tree_tokens: list[int]


@dataclass
class IdentifierTree:
    """The trie of first identifiers ``[1]..[N]`` as flat breadth-first nodes.

    ``parents[i]`` is node i's parent (-1 below the root), ``depths[i]`` its depth, and
    ``paths[k - 1]`` the nodes spelling identifier k (every node of a path adds one token's
    log-probability to that identifier's score). Identifiers are spelled by ``table.ids``.
    """

    tokens: list[int]
    parents: list[int]
    depths: list[int]
    paths: list[list[int]]

    @classmethod
    def build(cls, table: TokenTable, num_passages: int) -> IdentifierTree:
        tokens, parents, depths, leaves = _flatten(table.canonical.tries(num_passages)[0])
        paths = []
        for k in range(1, num_passages + 1):
            node, path = leaves[k], []
            while node >= 0:
                path.append(node)
                node = parents[node]
            paths.append(path)
        return cls(tokens, parents, depths, paths)


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


def identifier_scores(
    logits: torch.Tensor, edge_source: torch.Tensor, edge_token: torch.Tensor, path_matrix: torch.Tensor
) -> torch.Tensor:
    """``[B, N]`` log P(first identifier = k) from the logits rows that predict each tree node.

    ``edge_source[b, m]`` is the row of ``logits`` predicting node m, ``edge_token[b, m]`` its token,
    ``path_matrix[b, k, m]`` 1 where node m lies on identifier k+1's path. Only the needed rows are
    normalised. Inference and training both score through this function.
    """
    rows = logits.gather(1, edge_source[..., None].expand(-1, -1, logits.size(-1))).float()  # [B, M, V]
    edges = torch.log_softmax(rows, dim=-1).gather(-1, edge_token[..., None]).squeeze(-1)  # [B, M]
    return torch.einsum("bnm,bm->bn", path_matrix.to(edges.dtype), edges)


def score_identifiers(
    session: Session,
    prompts: Sequence[Sequence[int]],
    num_passages: Sequence[int],
    table: TokenTable,
    prunable: Sequence[Sequence[bool]] | None = None,
) -> IdentifierScores:
    """Score every identifier of every prompt with one prefill and one tree pass (consumes the session)."""
    if not table.canonical.available:
        raise ValueError(
            "single-pass scoring needs a tokenizer whose identifier tokens do not merge "
            "across pieces; use scoring='generate' with this model"
        )
    if not hasattr(session, "score_tree"):
        raise NotImplementedError(
            f"{type(session).__name__} cannot score identifier trees yet; use scoring='generate' or pruning=None"
        )
    last_logits = session.prefill(prompts, prunable)
    start = time.perf_counter()
    trees = [IdentifierTree.build(table, n) for n in num_passages]
    batch, width = len(prompts), max(len(t.tokens) for t in trees)
    tokens = torch.zeros((batch, width), dtype=torch.long)
    depths = torch.zeros((batch, width), dtype=torch.long)
    # Row 0 of the scored logits is the last prompt position (it predicts the root's children);
    # node i's children are predicted by row i + 1. Padding nodes read row 0 and lie on no path.
    edge_source = torch.zeros((batch, width), dtype=torch.long)
    path_matrix = torch.zeros((batch, max(num_passages), width))
    # Padding nodes attend only to themselves so no attention row is empty.
    tree_mask = torch.eye(width, dtype=torch.bool).repeat(batch, 1, 1)
    for row, tree in enumerate(trees):
        nodes = len(tree.tokens)
        tokens[row, :nodes] = torch.tensor(tree.tokens)
        depths[row, :nodes] = torch.tensor(tree.depths)
        edge_source[row, :nodes] = torch.tensor(tree.parents) + 1
        for i, parent in enumerate(tree.parents):
            if parent >= 0:
                tree_mask[row, i] |= tree_mask[row, parent]
        for k, path in enumerate(tree.paths):
            path_matrix[row, k, path] = 1.0
    logits = session.score_tree(tokens, depths, tree_mask)  # [B, T, V]
    scored = torch.cat([last_logits[:, None, :].to(logits.dtype), logits], dim=1)
    device = scored.device
    all_scores = identifier_scores(scored, edge_source.to(device), tokens.to(device), path_matrix.to(device))
    rows = all_scores.tolist()  # one transfer (and device sync) for the whole batch
    scores = [rows[row][:n] for row, n in enumerate(num_passages)]
    return IdentifierScores(
        scores=scores,
        prefill=session.info,
        scoring_seconds=time.perf_counter() - start,
        tree_tokens=[len(t.tokens) for t in trees],
    )
