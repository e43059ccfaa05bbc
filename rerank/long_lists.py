"""Lists longer than one prompt, for scorers that read one score per passage (``scoring="head"``).

The ways to rank more than ``window_size`` passages (``RerankerConfig.long_list``), compared in
docs/benchmarks.md (``eval/depth_methods.py``):

* ``one_prompt``: all of them in one prompt when it fits the context, else ``chunks``.
* ``chunks``: consecutive prompts of ``window_size`` passages, every passage ordered by its own score.
  One prompt per chunk, but a score is read relative to the passages sharing its prompt, so chunks of
  weak passages promote their best one.
* ``tournament``: the chunks, then one final prompt over ``window_size`` leaders. With calibrated
  scores (:mod:`rerank.calibration`, comparable across prompts) the leaders are the best of the whole
  list by probability; without, they are taken round-robin (the best of every chunk, then the second
  best, ...). With ``deep_leaders=k`` the final prompt is seeded by the first-stage: the first
  chunk's best ``window_size - k`` meet the best ``k`` of the later chunks. The final prompt decides
  the top of the list; the others follow. One prompt more than ``chunks``. The final prompt reads
  its leaders in first-stage order, or with ``final_order="chunk_score"`` best chunk score first
  (:func:`final_prompt_order`). With ``final_chunk_weight`` a leader's final score blends in its
  chunk score (:func:`tournament_order`). With ``final_reread=k`` the final prompt's best ``k`` are
  read once more, alone in one prompt, and ordered by that read (:func:`reread_top`).
* ``chunk_layout="interleaved"`` (for ``chunks`` and ``tournament``): chunk ``c`` of ``k`` holds the
  first-stage ranks ``c, c + k, c + 2k, ...`` instead of a consecutive run, so every prompt holds the
  same mix of strong and weak candidates and a passage's score, read relative to its prompt-mates,
  means the same in every prompt: chunks then merge by score without calibration.
* ``sliding``: back-to-front windows of ``window_size`` with step ``stride`` (RankGPT's scheme), each
  window ordered by score; the best passages are carried to the front. About twice the prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

CHUNK_LAYOUTS = ("consecutive", "interleaved")
FINAL_ORDERS = ("first_stage", "chunk_score")


def chunk_members(num_passages: int, size: int, layout: str = "consecutive") -> list[list[int]]:
    """The passages (first-stage indices, in first-stage order) of each prompt of at most ``size``.

    >>> chunk_members(5, 2)
    [[0, 1], [2, 3], [4]]
    >>> chunk_members(5, 2, "interleaved")
    [[0, 3], [1, 4], [2]]
    """
    if layout not in CHUNK_LAYOUTS:
        raise ValueError(f"chunk layout must be one of {CHUNK_LAYOUTS}, got {layout!r}")
    if layout == "consecutive":
        return [list(range(o, min(o + size, num_passages))) for o in range(0, num_passages, size)]
    count = -(-num_passages // size)  # as many prompts as consecutive chunks, each one rank in `count`
    return [list(range(c, num_passages, count)) for c in range(count)]


def round_robin(chunk_scores: Sequence[Sequence[float]]) -> list[tuple[int, int]]:
    """Every passage as ``(chunk, index in chunk)``: the best of each chunk in chunk order, then the
    second best of each, and so on (ties keep first-stage order).

    >>> round_robin([[0.1, 0.9], [0.5, 0.2, 0.7]])
    [(0, 1), (1, 2), (0, 0), (1, 0), (1, 1)]
    """
    ranked = [sorted(range(len(s)), key=lambda i: (-s[i], i)) for s in chunk_scores]
    out = []
    for depth in range(max((len(r) for r in ranked), default=0)):
        out += [(c, r[depth]) for c, r in enumerate(ranked) if depth < len(r)]
    return out


def _contest(
    chunk_scores: Sequence[Sequence[float]], size: int, comparable: bool, deep_leaders: int | None = None
) -> list[int]:
    """Every passage (index into the chunks laid end to end), best contender first: by score when
    scores are comparable across prompts (calibrated probabilities, interleaved chunks), else
    round-robin over the chunks. With ``deep_leaders`` the first ``size`` contenders are the first
    chunk's best ``size - deep_leaders`` and the best ``deep_leaders`` of the later chunks (fewer if a
    side runs short)."""
    if comparable:
        flat = [s for chunk in chunk_scores for s in chunk]
        contest = sorted(range(len(flat)), key=lambda k: (-flat[k], k))
    else:
        starts = [0]
        for chunk in chunk_scores:
            starts.append(starts[-1] + len(chunk))
        contest = [starts[c] + i for c, i in round_robin(chunk_scores)]
    if deep_leaders is None or len(chunk_scores) < 2:
        return contest
    first_size = len(chunk_scores[0])
    first = [k for k in contest if k < first_size]
    deep = [k for k in contest if k >= first_size]
    take_deep = min(deep_leaders, len(deep), size)
    take_first = min(size - take_deep, len(first))
    take_deep = min(size - take_first, len(deep))
    leaders = first[:take_first] + deep[:take_deep]
    chosen = set(leaders)
    return leaders + [k for k in contest if k not in chosen]


def tournament_leaders(
    chunk_scores: Sequence[Sequence[float]], size: int, comparable: bool = False, deep_leaders: int | None = None
) -> list[int]:
    """The ``size`` passages (indices into the chunks laid end to end, ascending) that go to the final
    prompt. With ``comparable`` scores (calibrated probabilities) the best ``size`` of the whole list,
    so a chunk of strong passages sends more of them; otherwise round-robin over the chunks.

    >>> tournament_leaders([[0.1, 0.9], [0.5, 0.2]], 2)
    [1, 2]
    >>> tournament_leaders([[0.1, 0.9], [0.5, 0.2]], 2, comparable=True)
    [1, 2]
    >>> tournament_leaders([[0.6, 0.9], [0.5, 0.2]], 2, comparable=True)
    [0, 1]
    >>> tournament_leaders([[0.6, 0.9], [0.5, 0.2]], 2, comparable=True, deep_leaders=1)  # seeded
    [1, 2]
    """
    return sorted(_contest(chunk_scores, size, comparable, deep_leaders)[:size])


def final_prompt_order(
    chunk_scores: Sequence[Sequence[float]],
    leaders: Sequence[int],
    positions: Sequence[int],
    final_order: str = "first_stage",
) -> list[int]:
    """The leaders' first-stage positions in the order the final prompt reads them.

    ``leaders`` index the chunks laid end to end; ``positions[k]`` is that passage's first-stage
    position. ``"first_stage"`` reads them in the retriever's order; ``"chunk_score"`` best chunk
    score first (ties in first-stage order). The head reads a passage's place in its prompt as much
    as its text, so the order is the prior the final prompt starts from.

    >>> chunks, positions = [[0.1, 0.9], [0.95, 0.2]], [0, 2, 1, 3]  # interleaved: ranks 0, 2 | 1, 3
    >>> final_prompt_order(chunks, [1, 2], positions)
    [1, 2]
    >>> final_prompt_order(chunks, [1, 2], positions, "chunk_score")
    [1, 2]
    >>> final_prompt_order(chunks, [0, 1], positions, "chunk_score")
    [2, 0]
    """
    if final_order not in FINAL_ORDERS:
        raise ValueError(f"final_order must be one of {FINAL_ORDERS}, got {final_order!r}")
    if final_order == "first_stage":
        return sorted(positions[k] for k in leaders)
    flat = [s for chunk in chunk_scores for s in chunk]
    return [positions[k] for k in sorted(leaders, key=lambda k: (-flat[k], positions[k]))]


def tournament_order(
    chunk_scores: Sequence[Sequence[float]],
    size: int,
    final_scores: Sequence[float],
    comparable: bool = False,
    deep_leaders: int | None = None,
    chunk_weight: float = 0.0,
) -> tuple[list[int], list[float]]:
    """Order and scores of a list scored in chunks of ``size`` whose leaders
    (:func:`tournament_leaders`) the final prompt scored ``final_scores`` (one each, in leader order).

    The leaders come first, by their final scores; the others follow by score when ``comparable``,
    else in round-robin order. Scores never increase down the order: a passage keeps its own score,
    capped at the score of the passage ranked just above it (the final prompt outranks the chunks).
    With ``chunk_weight`` w a leader's final score is ``(1 - w) * final + w * chunk``: both reads of
    the same passage, in different company, averaged like an ensemble of two prompts.

    >>> tournament_order([[0.1, 0.9], [0.5, 0.2]], 2, [0.3, 0.8])
    ([2, 1, 0, 3], [0.1, 0.3, 0.8, 0.1])
    >>> tournament_order([[0.1, 0.9], [0.5, 0.2]], 2, [0.3, 0.8], chunk_weight=0.5)  # 0.6 vs 0.65
    ([2, 1, 0, 3], [0.1, 0.6, 0.65, 0.1])
    """
    if not 0.0 <= chunk_weight <= 1.0:
        raise ValueError(f"chunk_weight must be in [0, 1], got {chunk_weight!r}")
    contest = _contest(chunk_scores, size, comparable, deep_leaders)
    leaders = sorted(contest[:size])
    if len(final_scores) != len(leaders):
        raise ValueError(f"expected {len(leaders)} final scores (one per leader), got {len(final_scores)}")
    own = dict(enumerate(s for chunk in chunk_scores for s in chunk))
    own.update((k, (1.0 - chunk_weight) * f + chunk_weight * own[k]) for k, f in zip(leaders, final_scores))
    order = sorted(leaders, key=lambda k: (-own[k], k)) + contest[size:]
    return order, _capped(order, own)


def reread_top(
    order: Sequence[int], scores: Sequence[float], reread: dict[int, float]
) -> tuple[list[int], list[float]]:
    """``order`` (passage indices, best first) with its head, the passages of ``reread``, ordered by the
    scores of one more prompt over them alone (ties by passage index, the first-stage order); the
    others follow as they were. Scores (one per passage) never increase down the new order: each is
    capped at the score of the passage ranked just above it.

    >>> reread_top([2, 0, 1, 3], [0.6, 0.2, 0.9, 0.1], {2: 0.5, 0: 0.7})
    ([0, 2, 1, 3], [0.7, 0.2, 0.5, 0.1])
    """
    head = list(order[: len(reread)])
    if sorted(head) != sorted(reread):
        raise ValueError(f"the re-read passages {sorted(reread)} are not the head of the order {head}")
    own = dict(enumerate(scores))
    own.update(reread)
    new_order = sorted(head, key=lambda k: (-own[k], k)) + list(order[len(reread) :])
    return new_order, _capped(new_order, own)


def _capped(order: Sequence[int], own: dict[int, float]) -> list[float]:
    """Scores by index that never increase down ``order``: each passage keeps its own score, capped at
    the score of the passage ranked just above it (a later stage outranks an earlier one)."""
    scores = [0.0] * len(order)
    cap = float("inf")
    for index in order:
        cap = min(cap, own[index])
        scores[index] = cap
    return scores
