"""Passage identifiers: how ``[k]`` is spelled (numbers or letters), ranking text, and its tolerant parser.

Prompts, training targets, labelling teachers and the decoding constraints all spell and read
identifiers through these definitions; they work on text, not on token ids.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

SEPARATOR = " > "


@dataclass(frozen=True)
class IdentifierFormat:
    """How passage identifiers are spelled inside ``[...]``: numbers ``[1]..[N]`` or letters ``[A]..[Z]``.

    One object parametrises every identifier-aware piece (ranking text, parser, constrained decoding,
    canonical pieces, the single-pass identifier tree) instead of a copy of each per format. Letters
    (FIRST) stop at ``[Z]``: rank_llm and FIRST spell identifier k as ``chr(64 + k)``, which past 26
    leaves the alphabet (``[[]``), so more than 26 passages are refused with a clear error.

    Example:
        >>> LETTERS.label(2), LETTERS.index("B"), NUMBERS.label(12)
        ('B', 2, '12')
    """

    kind: Literal["number", "letter"]

    def __post_init__(self):
        if self.kind not in ("number", "letter"):
            raise ValueError(f"identifier kind must be 'number' or 'letter', got {self.kind!r}")

    @property
    def max_count(self) -> int | None:
        """Most identifiers this format can spell (None = unbounded)."""
        return 26 if self.kind == "letter" else None

    @cached_property  # read per character by the constraint: built once
    def characters(self) -> frozenset[str]:
        """Characters that may appear inside the brackets."""
        return frozenset("0123456789" if self.kind == "number" else "ABCDEFGHIJKLMNOPQRSTUVWXYZ")

    @cached_property
    def pattern(self) -> re.Pattern:
        """Regex of one bracketed identifier, the label in group 1."""
        return re.compile(r"\[(\d+)\]" if self.kind == "number" else r"\[([A-Z])\]")

    def check_count(self, num: int) -> None:
        """Raise ValueError when ``num`` passages cannot all get an identifier."""
        if self.max_count is not None and num > self.max_count:
            raise ValueError(
                f"{self.kind} identifiers [A]..[Z] allow at most {self.max_count} passages per prompt, "
                f"got {num}; use a window_size of at most {self.max_count}"
            )

    def label(self, k: int) -> str:
        """Text inside the brackets for 1-based identifier ``k``."""
        if k < 1:
            raise ValueError(f"identifiers are 1-based, got {k}")
        if self.kind == "number":
            return str(k)
        self.check_count(k)
        return chr(ord("A") + k - 1)

    def index(self, label: str) -> int | None:
        """1-based identifier of a label, or None when it is not one (``"0"``, ``"007"``, ``"AB"``)."""
        if self.kind == "number":
            return int(label) if label.isdigit() and label[0] != "0" else None
        return ord(label) - ord("A") + 1 if len(label) == 1 and "A" <= label <= "Z" else None

    def bracket(self, k: int) -> str:
        """``[k]`` spelled in this format."""
        return f"[{self.label(k)}]"


NUMBERS = IdentifierFormat("number")
LETTERS = IdentifierFormat("letter")


def identifier_format(kind: str | IdentifierFormat) -> IdentifierFormat:
    """The format for ``"number"``/``"letter"`` (or an :class:`IdentifierFormat`, returned as is)."""
    if isinstance(kind, IdentifierFormat):
        return kind
    if kind == "number":
        return NUMBERS
    if kind == "letter":
        return LETTERS
    raise ValueError(f"identifier kind must be 'number' or 'letter', got {kind!r}")


def format_ranking(order: Sequence[int], ids: IdentifierFormat = NUMBERS) -> str:
    """Ranking text for 0-based passage indices, best first: ``[3] > [1] > [2]`` (or ``[C] > [A] > [B]``)."""
    return SEPARATOR.join(ids.bracket(i + 1) for i in order)


def parse_ranking(text: str, num: int, ids: IdentifierFormat = NUMBERS) -> list[int]:
    """Tolerantly parse model or API output into a full 0-based permutation of ``range(num)``.

    Unknown and repeated identifiers are dropped; missing ones are appended in first-stage order.
    ``ids=LETTERS`` reads ``[B] > [A]`` (FIRST).

    Example:
        >>> parse_ranking("[3] > [1] > [3] > [9]", 4)
        [2, 0, 1, 3]
        >>> parse_ranking("[B] > [A]", 3, LETTERS)
        [1, 0, 2]
    """
    seen: list[int] = []
    for match in ids.pattern.finditer(text):
        k = ids.index(match.group(1))
        if k is None:
            continue
        k -= 1
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
