"""Constrained decoding of permutations, and a tolerant parser for free text.

The constraint works on the *text* each token adds, not on token ids, so it holds for any
tokenizer: a token is allowed when appending its text keeps the answer a prefix of
``[a] > [b] > ...`` with every identifier in ``1..N`` and none repeated. Only tokens whose text is
made of ``[]0-9 >`` can ever qualify; they are found once per tokenizer, so a step costs a scan
over a few hundred short strings.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

_ALPHABET = set("[]0123456789 >")
SEPARATOR = " > "


def _token_texts(tokenizer) -> dict[int, str]:
    """Text each vocabulary token adds after a neutral anchor, for tokens drawn from the grammar's alphabet."""
    anchor_ids = tokenizer("a", add_special_tokens=False)["input_ids"][-1:]
    anchor = tokenizer.decode(anchor_ids)
    special = set(tokenizer.all_special_ids)
    vocab_size = len(tokenizer)
    pairs = [anchor_ids + [i] for i in range(vocab_size)]
    decoded = tokenizer.batch_decode(pairs, clean_up_tokenization_spaces=False)
    texts = {}
    for tok_id, text in enumerate(decoded):
        if tok_id in special or not text.startswith(anchor):
            continue
        piece = text[len(anchor):]
        if piece and set(piece) <= _ALPHABET:
            texts[tok_id] = piece
    return texts


class TokenTable:
    """The grammar-relevant tokens of one tokenizer (computed once, reused by every query)."""

    def __init__(self, tokenizer):
        self.items: list[tuple[int, str]] = sorted(_token_texts(tokenizer).items())
        if not self.items:
            raise ValueError("tokenizer has no tokens for '[', digits and ']'; cannot constrain rankings")

    @classmethod
    def for_tokenizer(cls, tokenizer) -> "TokenTable":
        # Stored on the tokenizer itself so it lives and dies with it.
        table = getattr(tokenizer, "_lazyrank_token_table", None)
        if table is None:
            table = cls(tokenizer)
            tokenizer._lazyrank_token_table = table
        return table


# Grammar states
_OPEN, _DIGITS, _SEP = 0, 1, 2


@dataclass
class PermutationConstraint:
    """Character-level state machine for ``[a] > [b] > ...`` over identifiers ``1..num``.

    ``stop_after`` ends the answer after that many identifiers (top-k decoding); by default all
    ``num`` identifiers must appear. ``done`` turns True exactly when the last one is closed.

    Example:
        >>> c = PermutationConstraint(3)
        >>> all(c.feed(ch) for ch in "[2] > [3] > [1]")
        True
        >>> c.emitted, c.done
        ([2, 3, 1], True)
    """

    num: int
    stop_after: int | None = None
    emitted: list[int] = field(default_factory=list)
    state: int = _OPEN
    digits: str = ""
    sep_pos: int = 0
    _prefixes: Counter = field(default_factory=Counter, repr=False)

    def __post_init__(self):
        if self.num < 1:
            raise ValueError(f"num must be >= 1, got {self.num}")
        if self.stop_after is None:
            self.stop_after = self.num
        if not 1 <= self.stop_after <= self.num:
            raise ValueError(f"stop_after must be in [1, {self.num}], got {self.stop_after}")
        for k in range(1, self.num + 1):
            s = str(k)
            for j in range(1, len(s) + 1):
                self._prefixes[s[:j]] += 1

    @property
    def done(self) -> bool:
        return len(self.emitted) >= self.stop_after

    def _accepts(self, text: str) -> bool:
        """Would appending ``text`` keep the answer valid? (no state change)"""
        state, digits, sep_pos = self.state, self.digits, self.sep_pos
        count = len(self.emitted)
        for ch in text:
            if count >= self.stop_after:
                return False
            if state == _OPEN:
                if ch != "[":
                    return False
                state, digits = _DIGITS, ""
            elif state == _DIGITS:
                if ch.isdigit():
                    digits += ch
                    if digits[0] == "0" or self._prefixes[digits] == 0:
                        return False
                elif ch == "]":
                    if not digits or int(digits) > self.num or int(digits) in self.emitted or self._prefixes[digits] == 0:
                        return False
                    count += 1
                    state, sep_pos = _SEP, 0
                else:
                    return False
            else:  # inside " > "
                if ch != SEPARATOR[sep_pos]:
                    return False
                sep_pos += 1
                if sep_pos == len(SEPARATOR):
                    state = _OPEN
        return True

    def feed(self, text: str) -> bool:
        """Advance over ``text``; returns False (state unchanged) if it would break the grammar."""
        if not self._accepts(text):
            return False
        for ch in text:
            if self.state == _OPEN:
                self.state, self.digits = _DIGITS, ""
            elif self.state == _DIGITS:
                if ch == "]":
                    k = int(self.digits)
                    self.emitted.append(k)
                    s = str(k)
                    for j in range(1, len(s) + 1):
                        self._prefixes[s[:j]] -= 1
                    self.state, self.sep_pos = _SEP, 0
                else:
                    self.digits += ch
            else:
                self.sep_pos += 1
                if self.sep_pos == len(SEPARATOR):
                    self.state = _OPEN
        return True

    def allowed(self, table: TokenTable) -> list[int]:
        """Token ids that may come next."""
        if self.done:
            return []
        return [tok for tok, text in table.items if self._accepts(text)]


def parse_ranking(text: str, num: int) -> list[int]:
    """Tolerantly parse model or API output into a full 0-based permutation of ``range(num)``.

    Unknown and repeated identifiers are dropped; missing ones are appended in first-stage order.

    Example:
        >>> parse_ranking("[3] > [1] > [3] > [9]", 4)
        [2, 0, 1, 3]
    """
    seen: list[int] = []
    for match in re.finditer(r"\[(\d+)\]", text):
        k = int(match.group(1)) - 1
        if 0 <= k < num and k not in seen:
            seen.append(k)
    return complete_order(seen, num)


def complete_order(prefix: Iterable[int], num: int) -> list[int]:
    """Append the indices missing from ``prefix`` in their original (first-stage) order."""
    head = list(dict.fromkeys(prefix))
    rest = set(head)
    return head + [i for i in range(num) if i not in rest]


def is_permutation(order: Sequence[int], num: int) -> bool:
    return len(order) == num and sorted(order) == list(range(num))
