"""Reading a list longer than one prompt with a per-passage scorer (``scoring="head"``).

Chunks merged by score (``long_list="chunks"``), or chunks plus a final prompt over their leaders
(``"tournament"``). What is chosen (which passages share a prompt, who leads, how the final order and
scores are formed) is :mod:`rerank.long_lists`; this module asks a reranker to read the prompts those
choices need, through :meth:`~rerank.Reranker.rank_windows` (batched, memoised, calibrated per kind of
prompt), and puts the answers together. ``on_call(j, ranking)`` hears of every prompt read for list ``j``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rerank.long_lists import chunk_members, final_prompt_order, reread_top, tournament_leaders, tournament_order
from rerank.ranking import Window, WindowRanking

if TYPE_CHECKING:
    from rerank.reranker import Reranker

OnCall = Callable[[int, WindowRanking], None]
# Per-passage scores prompt by prompt, and the list's passage indices in the order chunks lay end to end.
ChunkReads = tuple[list[list[float]], list[int]]
# A list's order (best first) and its per-passage scores.
Ranked = tuple[list[int], list[float]]


def by_passage(flat: Sequence[int], values: Sequence[float]) -> list[float]:
    """Values given in the order chunks lay end to end (``flat[k]`` is the passage of position k),
    put back in passage order."""
    out = [0.0] * len(flat)
    for k, value in zip(flat, values):
        out[k] = value
    return out


def read_chunks(reranker: Reranker, windows: Sequence[Window], on_call: OnCall) -> list[ChunkReads]:
    """Per-passage scores of each window, prompt by prompt (``RerankerConfig.chunk_layout``), with the
    window's passage indices in the order the chunks lay end to end (what a flat index names)."""
    size = reranker.config.window_size
    members = [chunk_members(len(w.passages), size, reranker.config.chunk_layout) for w in windows]
    pieces = [(j, m) for j, per_window in enumerate(members) for m in per_window]
    budget = reranker.config.chunk_passage_tokens
    scored = reranker.rank_windows(
        [
            Window(query=windows[j].query, passages=[windows[j].passages[k] for k in m], passage_tokens=budget)
            for j, m in pieces
        ],
        prompt_kind="chunk",
    )
    chunks: list[list[list[float]]] = [[] for _ in windows]
    for (j, _), r in zip(pieces, scored):
        chunks[j].append(r.scores)
        on_call(j, r)
    return [(c, [k for m in per_window for k in m]) for c, per_window in zip(chunks, members)]


def rank_by_chunks(reranker: Reranker, windows: Sequence[Window], on_call: OnCall) -> list[Ranked]:
    """Order and per-passage scores of each window from its chunks' scores alone."""
    out = []
    for chunks, flat in read_chunks(reranker, windows, on_call):
        scores = by_passage(flat, [s for chunk in chunks for s in chunk])
        out.append((sorted(range(len(scores)), key=lambda k: (-scores[k], k)), scores))
    return out


def rank_by_tournament(reranker: Reranker, windows: Sequence[Window], on_call: OnCall) -> list[Ranked]:
    """Chunks, then one final prompt per window over its chunks' leaders (:mod:`rerank.long_lists`)."""
    size = reranker.config.window_size
    scored = read_chunks(reranker, windows, on_call)
    # Interleaved prompts hold the same mix of first-stage ranks: their raw scores compare.
    comparable = reranker.calibration is not None or reranker.config.chunk_layout == "interleaved"
    deep = reranker.config.deep_leaders
    leaders = [tournament_leaders(c, size, comparable, deep) for c, _ in scored]
    finalists = [
        final_prompt_order(chunks, picked, flat, reranker.config.final_order)
        for (chunks, flat), picked in zip(scored, leaders)
    ]
    # Leaders that are exactly the first chunk were just read in that prompt: no final prompt.
    todo = [j for j, picked in enumerate(leaders) if picked != list(range(len(scored[j][0][0])))]
    finals = dict(
        zip(
            todo,
            reranker.rank_windows(
                [Window(query=windows[j].query, passages=[windows[j].passages[k] for k in finalists[j]]) for j in todo],
                prompt_kind="final",
            ),
        )
    )
    out = []
    for j, (chunk_scores, flat) in enumerate(scored):
        if j in finals:
            on_call(j, finals[j])
            final_of = dict(zip(finalists[j], finals[j].scores))
            final_scores = [final_of[flat[k]] for k in leaders[j]]
        else:
            final_scores = chunk_scores[0]
        order, flat_scores = tournament_order(
            chunk_scores, size, final_scores, comparable, deep, reranker.config.final_chunk_weight
        )
        out.append(([flat[k] for k in order], by_passage(flat, flat_scores)))
    if reranker.config.final_reread is not None:
        out = reread_tops(reranker, windows, out, reranker.config.final_reread, on_call)
    return out


def reread_tops(
    reranker: Reranker, windows: Sequence[Window], ranked: Sequence[Ranked], k: int, on_call: OnCall
) -> list[Ranked]:
    """Each window's best ``k`` read once more, alone in one prompt in first-stage order
    (``RerankerConfig.final_reread``), and ordered by that read (:func:`rerank.long_lists.reread_top`)."""
    heads = [sorted(order[:k]) for order, _ in ranked]
    again = reranker.rank_windows(
        [Window(query=w.query, passages=[w.passages[i] for i in head]) for w, head in zip(windows, heads)],
        prompt_kind="final",
    )
    out = []
    for j, ((order, scores), head, r) in enumerate(zip(ranked, heads, again)):
        on_call(j, r)
        out.append(reread_top(order, scores, dict(zip(head, r.scores))))
    return out
