"""Training the single-pass identifier scores next to the LM objective, in ONE forward pass.

Each example is packed as ``prompt + target + tree``: the tree holds the canonical tokens of every
first identifier ``[k]`` (the same trie :func:`rerank.engine.single_pass.score_identifiers` uses
at inference). A 4-D mask lets prompt and target attend causally as usual, and lets each tree node
see the prompt and its own ancestors only, never the target; tree nodes take positions
``prompt_length + depth``. So the target's LM loss is exactly the unpacked one, and the logits at
the last prompt position and at the tree nodes give ``log P([k] | prompt)`` for every passage,
which :class:`rerank.training.losses.identifier_ranking.IdentifierRankingLoss` compares with the label
(scored by :func:`rerank.engine.single_pass.identifier_scores`, the same function inference uses).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rerank.engine.decoding import TokenTable
from rerank.engine.single_pass import IdentifierTree


def tree_features(tokenizer, num_passages: int, order: Sequence[int]) -> dict:
    """Per-example tree columns: node tokens, parents, depths, each passage's path, label ranks."""
    table = TokenTable.for_tokenizer(tokenizer)
    if not table.canonical.available:
        raise ValueError(
            "the identifier ranking loss needs a tokenizer whose identifier tokens do not merge across pieces"
        )
    tree = IdentifierTree.build(table, num_passages)
    ranks = [0] * num_passages
    for r, index in enumerate(order, start=1):
        ranks[index] = r
    return {
        "tree_ids": tree.tokens,
        "tree_parents": tree.parents,
        "tree_depths": tree.depths,
        "tree_paths": tree.paths,
        "passage_ranks": ranks,
    }


def pack_batch(features: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``prompt + target + tree`` batch with its 4-D mask, positions and scoring indices.

    Returns ``input_ids``, ``attention_mask`` (bool ``[B, 1, L, L]``), ``position_ids``, ``labels``,
    ``rank_ids`` (tree and padding ignored), ``edge_source`` / ``edge_token`` (``[B, M]``: the
    position whose logits predict each tree node, and the node's token), ``path_matrix``
    (``[B, N, M]``: 1 where node m lies on passage k's path), ``passage_ranks`` (``[B, N]``, 0 = pad)
    and ``num_tokens`` (``[B]``, real tokens per row, for throughput accounting).
    """
    from rerank.training.losses import IGNORE_INDEX

    batch = len(features)
    lengths = [len(f["input_ids"]) + len(f["tree_ids"]) for f in features]
    width = max(lengths)
    max_nodes = max(len(f["tree_ids"]) for f in features)
    max_passages = max(len(f["passage_ranks"]) for f in features)
    ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    rank_ids = torch.zeros((batch, width), dtype=torch.long)
    positions = torch.zeros((batch, width), dtype=torch.long)
    # Every row may see itself, so padded rows never have an empty softmax.
    mask = torch.eye(width, dtype=torch.bool).repeat(batch, 1, 1)
    edge_source = torch.zeros((batch, max_nodes), dtype=torch.long)
    edge_token = torch.zeros((batch, max_nodes), dtype=torch.long)
    path_matrix = torch.zeros((batch, max_passages, max_nodes))
    passage_ranks = torch.zeros((batch, max_passages), dtype=torch.long)
    for b, f in enumerate(features):
        seq = len(f["input_ids"])
        prompt = next(i for i, lab in enumerate(f["labels"]) if lab != IGNORE_INDEX)
        nodes = len(f["tree_ids"])
        ids[b, :seq] = torch.tensor(f["input_ids"])
        ids[b, seq : seq + nodes] = torch.tensor(f["tree_ids"])
        labels[b, :seq] = torch.tensor(f["labels"])
        rank_ids[b, :seq] = torch.tensor(f["rank_ids"])
        positions[b, :seq] = torch.arange(seq)
        positions[b, seq : seq + nodes] = prompt + torch.tensor(f["tree_depths"])
        mask[b, :seq, :seq] = torch.ones(seq, seq, dtype=torch.bool).tril()
        for i, parent in enumerate(f["tree_parents"]):
            row = seq + i
            mask[b, row, :prompt] = True
            if parent >= 0:
                mask[b, row, seq : seq + nodes] |= mask[b, seq + parent, seq : seq + nodes]
            edge_source[b, i] = prompt - 1 if parent < 0 else seq + parent
        edge_token[b, :nodes] = torch.tensor(f["tree_ids"])
        for k, path in enumerate(f["tree_paths"]):
            path_matrix[b, k, path] = 1.0
        passage_ranks[b, : len(f["passage_ranks"])] = torch.tensor(f["passage_ranks"])
    return {
        "input_ids": ids,
        "attention_mask": mask[:, None],
        "position_ids": positions,
        "labels": labels,
        "rank_ids": rank_ids,
        "edge_source": edge_source,
        "edge_token": edge_token,
        "path_matrix": path_matrix,
        "passage_ranks": passage_ranks,
        "num_tokens": torch.tensor(lengths, dtype=torch.long),
    }
