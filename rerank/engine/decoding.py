"""Constrained decoding of permutations, and a tolerant parser for free text.

The constraint works on the *text* each token adds, not on token ids, so it holds for any
tokenizer: a token is allowed when appending its text keeps the answer a prefix of
``[a] > [b] > ...`` with every identifier in ``1..N`` and none repeated. Only tokens whose text is
made of ``[]0-9 >`` can ever qualify; they are found once per tokenizer, so a step costs a scan
over a few hundred short strings.

When the tokenizer writes each identifier piece (``[k]`` first, `` > [k]`` after) with tokens that
do not straddle pieces, which holds for common BPE and SentencePiece tokenizers, decoding follows
the *canonical* token sequences instead (:class:`CanonicalConstraint`): exactly the tokens training
targets use, organised in a trie. Many steps then have a single legal token (``]``, `` >``, `` [``)
which the engine feeds without asking the model ("jump-forward"), so a permutation needs about half
the forward passes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from rerank.prompting.identifiers import NUMBERS, SEPARATOR, IdentifierFormat


def _token_texts(tokenizer, ids: IdentifierFormat = NUMBERS) -> dict[int, str]:
    """Text each vocabulary token adds after a neutral anchor, for tokens drawn from the grammar's alphabet."""
    alphabet = set("[] >") | ids.characters
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
        piece = text[len(anchor) :]
        if piece and set(piece) <= alphabet:
            texts[tok_id] = piece
    return texts


class TokenTable:
    """The grammar-relevant tokens of one tokenizer (computed once, reused by every query).

    ``items`` are (token id, text) pairs usable by the text-level constraint; ``canonical`` holds the
    canonical identifier pieces when the tokenizer allows them. ``ids`` is the identifier format
    (numbers by default, letters for FIRST).
    """

    def __init__(self, tokenizer, ids: IdentifierFormat = NUMBERS):
        self.ids = ids
        self.items: list[tuple[int, str]] = sorted(_token_texts(tokenizer, ids).items())
        if not self.items:
            raise ValueError(
                f"tokenizer has no tokens for '[', {ids.kind} characters and ']'; cannot constrain rankings"
            )
        self.texts = dict(self.items)
        self.canonical = CanonicalPieces(tokenizer, ids)

    @classmethod
    def for_tokenizer(cls, tokenizer, ids: IdentifierFormat = NUMBERS) -> TokenTable:
        # Stored on the tokenizer itself so it lives and dies with it (one table per identifier format).
        tables = getattr(tokenizer, "_lazyrank_token_tables", None)
        if tables is None:
            tables = {}
            tokenizer._lazyrank_token_tables = tables
        if ids.kind not in tables:
            tables[ids.kind] = cls(tokenizer, ids)
        return tables[ids.kind]

    def constraint(self, num: int, stop_after: int | None = None, canonical: bool = True):
        """A fresh constraint for ``num`` identifiers: canonical tokens when possible, else text-level."""
        self.ids.check_count(num)
        if canonical and self.canonical.available:
            return CanonicalConstraint(self.canonical, num, stop_after)
        return TextConstraint(num, stop_after, ids=self.ids, table=self)


# Grammar states
_OPEN, _DIGITS, _SEP = 0, 1, 2


@dataclass
class PermutationConstraint:
    """Character-level state machine for ``[a] > [b] > ...`` over identifiers ``1..num``.

    ``stop_after`` ends the answer after that many identifiers (top-k decoding); by default all
    ``num`` identifiers must appear. ``done`` turns True exactly when the last one is closed.
    ``ids`` spells the identifiers (numbers by default, letters ``[A]..`` for FIRST).

    Example:
        >>> c = PermutationConstraint(3)
        >>> all(c.feed(ch) for ch in "[2] > [3] > [1]")
        True
        >>> c.emitted, c.done
        ([2, 3, 1], True)
    """

    num: int
    stop_after: int | None = None
    ids: IdentifierFormat = NUMBERS
    emitted: list[int] = field(default_factory=list)
    state: int = _OPEN
    digits: str = ""
    sep_pos: int = 0
    _prefixes: Counter = field(default_factory=Counter, repr=False)
    _labels: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.num < 1:
            raise ValueError(f"num must be >= 1, got {self.num}")
        self.ids.check_count(self.num)
        if self.stop_after is None:
            self.stop_after = self.num
        if not 1 <= self.stop_after <= self.num:
            raise ValueError(f"stop_after must be in [1, {self.num}], got {self.stop_after}")
        # Prefix counts of the labels still available: a character is legal only while some
        # remaining label starts with what is inside the open bracket.
        for k in range(1, self.num + 1):
            s = self.ids.label(k)
            self._labels[s] = k
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
                if ch in self.ids.characters:
                    digits += ch
                    if self._prefixes[digits] == 0:
                        return False
                elif ch == "]":
                    k = self._labels.get(digits)
                    if k is None or k in self.emitted:
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
                    k = self._labels[self.digits]
                    self.emitted.append(k)
                    s = self.digits
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


@dataclass
class TextConstraint(PermutationConstraint):
    """:class:`PermutationConstraint` bound to a :class:`TokenTable`, advancing by token id."""

    table: TokenTable | None = field(default=None, repr=False)

    def allowed(self, table: TokenTable | None = None) -> list[int]:
        return super().allowed(table or self.table)

    def advance(self, token: int) -> bool:
        text = self.table.texts.get(token)
        return text is not None and self.feed(text)


class _Node:
    __slots__ = ("children", "count", "leaf")

    def __init__(self):
        self.children: dict[int, _Node] = {}
        self.count = 0  # identifiers still available below this node
        self.leaf: int | None = None


def _build_trie(pieces: dict[int, tuple[int, ...]]) -> _Node:
    root = _Node()
    for k, seq in pieces.items():
        node = root
        node.count += 1
        for tok in seq:
            node = node.children.setdefault(tok, _Node())
            node.count += 1
        if node.children or node.leaf is not None:
            raise ValueError("identifier pieces are not prefix-free")
        node.leaf = k
    for node in _walk(root):
        if node.leaf is not None and node.children:
            raise ValueError("identifier pieces are not prefix-free")
    return root


def _walk(node: _Node):
    yield node
    for child in node.children.values():
        yield from _walk(child)


class CanonicalPieces:
    """Token sequences of ``[k]`` (answer start) and `` > [k]`` (after an identifier) for one tokenizer.

    ``available`` is False when the tokenizer merges across piece boundaries; callers then use the
    text-level :class:`PermutationConstraint`. ``ids`` spells ``k`` (numbers, or letters for FIRST).
    """

    def __init__(self, tokenizer, ids: IdentifierFormat = NUMBERS):
        self.tokenizer = tokenizer
        self.ids = ids
        self._first: dict[int, tuple[int, ...]] = {}
        self._after: dict[int, tuple[int, ...]] = {}
        self._tries: dict[int, tuple[_Node, _Node, dict, dict]] = {}
        self.available = True
        try:
            self.pieces(12)
        except ValueError:
            self.available = False

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def pieces(self, num: int) -> tuple[dict[int, tuple[int, ...]], dict[int, tuple[int, ...]]]:
        self.ids.check_count(num)
        for k in range(1, num + 1):
            if k in self._first:
                continue
            b = self.ids.bracket
            first = self._encode(b(k))
            other = 2 if k == 1 else 1
            head = self._encode(b(other))
            pair = self._encode(f"{b(other)}{SEPARATOR}{b(k)}")
            if pair[: len(head)] != head or len(pair) == len(head):
                raise ValueError(f"tokenizer merges across the boundary before identifier {k}")
            self._first[k], self._after[k] = tuple(first), tuple(pair[len(head) :])
        return ({k: self._first[k] for k in range(1, num + 1)}, {k: self._after[k] for k in range(1, num + 1)})

    def tries(self, num: int) -> tuple[_Node, _Node, dict, dict]:
        """Tries of the first and following pieces for ``1..num``, with the pieces themselves."""
        if num not in self._tries:
            first, after = self.pieces(num)
            self._tries[num] = (_build_trie(first), _build_trie(after), first, after)
        return self._tries[num]


class CanonicalConstraint:
    """Token-level constraint over the canonical tokens of ``[a] > [b] > ...``.

    Same contract as :class:`PermutationConstraint` (``allowed``, ``done``, ``emitted``) but it
    advances by token id with :meth:`advance`. Counts on trie nodes are copied per constraint so
    emitted identifiers disappear from the choices.
    """

    def __init__(self, pieces: CanonicalPieces, num: int, stop_after: int | None = None):
        if num < 1:
            raise ValueError(f"num must be >= 1, got {num}")
        self.num = num
        self.stop_after = num if stop_after is None else stop_after
        if not 1 <= self.stop_after <= num:
            raise ValueError(f"stop_after must be in [1, {num}], got {self.stop_after}")
        self.first, self.after, self._first_seq, self._after_seq = pieces.tries(num)
        self.used: dict[int, int] = {}  # id(node) -> identifiers already taken below it
        self.emitted: list[int] = []
        self.node = self.first

    @property
    def done(self) -> bool:
        return len(self.emitted) >= self.stop_after

    def _left(self, node: _Node) -> int:
        return node.count - self.used.get(id(node), 0)

    def allowed(self, table=None) -> list[int]:
        if self.done:
            return []
        return [tok for tok, child in self.node.children.items() if self._left(child) > 0]

    def advance(self, token: int) -> bool:
        child = self.node.children.get(token)
        if self.done or child is None or self._left(child) <= 0:
            return False
        self.node = child
        if child.leaf is not None:
            k = child.leaf
            self.emitted.append(k)
            # Mark k used along its path in both tries, so neither form offers it again.
            for root, seq in ((self.first, self._first_seq[k]), (self.after, self._after_seq[k])):
                node = root
                self.used[id(node)] = self.used.get(id(node), 0) + 1
                for tok in seq:
                    node = node.children[tok]
                    self.used[id(node)] = self.used.get(id(node), 0) + 1
            self.node = self.after
        return True
