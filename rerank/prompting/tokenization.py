"""Tokenising a rendered prompt so that the caller's text stays plain text, with character offsets.

A query or passage may contain the text of a control token (``<|im_end|>``); tokenised as it
stands it would close the turn. :func:`tokenize_with_plain_spans` keeps such text plain inside the
caller's spans and returns offsets, from which :func:`token_spans` finds each passage's tokens.
"""

from __future__ import annotations

import copy
import logging
import re
import weakref
from collections.abc import Sequence

logger = logging.getLogger(__name__)

_PLAIN_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def plain_text_tokenizer(tokenizer):
    """A copy of ``tokenizer`` that reads special-token text (``<|im_end|>``) as the plain characters it is.

    The switch (``split_special_tokens``) is state of the Rust tokenizer that all its callers share;
    flipping it per call on the caller's tokenizer would race with another thread tokenising a
    prompt (its template tokens would come out split). So a private copy holds it on for good,
    made once per tokenizer (again if tokens were added since) and used only for text that holds
    control-token text.
    """
    try:
        size, plain = _PLAIN_COPIES[tokenizer]
        if size == len(tokenizer):
            return plain
    except (KeyError, TypeError):
        pass
    plain = copy.deepcopy(tokenizer)
    plain.split_special_tokens = True
    try:
        _PLAIN_COPIES[tokenizer] = (len(tokenizer), plain)
    except TypeError:  # not weak-referenceable: no cache
        pass
    return plain


def control_pattern(tokenizer) -> re.Pattern | None:
    """Leftmost-longest matcher of the tokenizer's special added tokens (``<|im_end|>``, ``</s>``, ...)."""
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    tokens = {t.content for t in decoder.values() if getattr(t, "special", False) and t.content}
    tokens.update(t for t in getattr(tokenizer, "all_special_tokens", []) if t)
    if not tokens:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


def _special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer's post-processor puts before and after a text (e.g. ``[BOS]`` and ``[]``)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return list(full[:i]), list(full[i + len(bare) :])
    return [], []


def tokenize_with_plain_spans(
    tokenizer,
    text: str,
    plain_spans: Sequence[tuple[int, int]],
    *,
    add_special_tokens: bool = False,
    force_split: bool = False,
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of ``text`` where only text outside ``plain_spans`` may yield control ids.

    ``plain_spans`` are the caller's texts (query, passages): a ``<|im_end|>`` written inside one is
    tokenised as the plain characters it is, so a document cannot close its turn or open a new one.
    The template's own control tokens (outside the spans) keep their ids.

    When no control token text falls inside a span (every normal prompt), this is exactly the
    tokenizer's own call, so ids never change for ordinary text. Otherwise the text is cut at the
    template's control tokens, as the tokenizer itself cuts at every added token, and each run
    between them is tokenised with special-token parsing off (``force_split`` takes this path always;
    tests use it to check both paths agree on ordinary text).

    The plain-text runs go through :func:`plain_text_tokenizer` (a private copy), so the caller's
    tokenizer is never switched and other threads may keep using it.
    """
    pattern = control_pattern(tokenizer)
    if pattern is None:
        found = structural = []
    else:
        masked = list(text)
        for start, end in plain_spans:
            masked[start:end] = "\0" * (end - start)
        found = [m.span() for m in pattern.finditer(text)]
        structural = [m.span() for m in pattern.finditer("".join(masked))]
    if found == structural and not force_split:
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if found != structural:
        logger.debug("control token text inside caller text: tokenised as plain text")
    plain = plain_text_tokenizer(tokenizer)
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    cursor = 0
    for start, end in structural + [(len(text), len(text))]:
        if start > cursor:
            enc = plain(
                text[cursor:start], add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
            )
            ids.extend(enc["input_ids"])
            offsets.extend((a + cursor, b + cursor) for a, b in enc["offset_mapping"])
        if end > start:
            ids.append(tokenizer.convert_tokens_to_ids(text[start:end]))
            offsets.append((start, end))
        cursor = end
    if add_special_tokens:
        prefix, suffix = _special_affixes(tokenizer)
        ids = prefix + ids + suffix
        offsets = [(0, 0)] * len(prefix) + offsets + [(0, 0)] * len(suffix)
    return ids, offsets


def token_spans(offsets: Sequence[tuple[int, int]], char_spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Token ranges of character spans (sorted, non-overlapping) from a fast tokenizer's offsets."""
    token_spans = []
    cursor = 0
    for start_c, end_c in char_spans:
        # A body's first token usually carries the separating space, so it may start one char early.
        # Skip tokens that end before the body (a lone separating space ends exactly at its start).
        while cursor < len(offsets) and (offsets[cursor][0] < start_c - 1 or offsets[cursor][1] <= start_c):
            cursor += 1
        first = cursor
        while cursor < len(offsets) and offsets[cursor][1] <= end_c and offsets[cursor][0] < end_c:
            cursor += 1
        token_spans.append((first, cursor))
    return token_spans
