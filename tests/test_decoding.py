"""Constrained permutation decoding and the tolerant parser."""

import random

import pytest

from rerank.engine.decoding import PermutationConstraint, TokenTable
from rerank.prompting.identifiers import complete_order, is_permutation, parse_ranking


def test_constraint_accepts_canonical_and_rejects_invalid():
    c = PermutationConstraint(12)
    assert c.feed("[12] > [")
    assert not c.feed("12")  # already emitted
    assert not c.feed("13")  # out of range
    assert not c.feed("0")  # leading zero
    assert not c.feed("]")  # empty identifier
    assert c.feed("1")
    assert c.feed("]")  # [1] is fine
    assert c.emitted == [12, 1]
    assert not c.feed(">")  # separator must be " > "
    assert c.feed(" > [")


def test_prefix_of_a_remaining_identifier_only():
    c = PermutationConstraint(12)
    for k in (10, 11, 12):
        assert c.feed(f"[{k}] > ")
    c.feed("[")
    assert c.feed("1")  # [1] still open
    assert not c.feed("0")  # [10] used up
    assert c.feed("]")


def test_stop_after_top_k():
    c = PermutationConstraint(5, stop_after=2)
    assert c.feed("[3] > [5]")
    assert c.done
    assert not c.feed(" > ")


def test_random_walks_always_give_permutations(tokenizer):
    """Whatever the scores, picking any allowed token ends in a full permutation."""
    table = TokenTable.for_tokenizer(tokenizer)
    texts = dict(table.items)
    rng = random.Random(0)
    for n in (1, 2, 9, 10, 11, 23, 100):
        c = PermutationConstraint(n)
        steps = 0
        while not c.done:
            allowed = c.allowed(table)
            assert allowed, f"dead end at n={n} after {c.emitted}"
            assert c.feed(texts[rng.choice(allowed)])
            steps += 1
        assert is_permutation([k - 1 for k in c.emitted], n)
        assert c.allowed(table) == []


def test_allowed_tokens_include_single_characters(tokenizer):
    table = TokenTable.for_tokenizer(tokenizer)
    texts = {t for _, t in table.items}
    assert {"[", "]", "1", " >", " ["} <= texts


def test_parse_ranking_tolerates_garbage():
    assert parse_ranking("[2] > [2] > [7] > junk [1]", 3) == [1, 0, 2]
    assert parse_ranking("", 3) == [0, 1, 2]
    assert parse_ranking("I think [3] is best", 4) == [2, 0, 1, 3]


def test_complete_order():
    assert complete_order([3, 1, 3], 5) == [3, 1, 0, 2, 4]


def test_constraint_validates_arguments():
    with pytest.raises(ValueError, match="num"):
        PermutationConstraint(0)
    with pytest.raises(ValueError, match="stop_after"):
        PermutationConstraint(3, stop_after=4)


def test_canonical_pieces_follow_training_targets(tokenizer):
    """Canonical pieces concatenate to exactly the tokens encode_target trains on."""
    from rerank.prompting.prompts import encode_target

    table = TokenTable.for_tokenizer(tokenizer)
    assert table.canonical.available
    order = [11, 0, 9, 99, 4]
    first, after = table.canonical.pieces(100)
    ids = list(first[order[0] + 1])
    for k in order[1:]:
        ids += after[k + 1]
    assert ids == encode_target(tokenizer, order)[:-1]  # minus the end-of-turn token


def test_canonical_random_walks_give_permutations_and_forced_steps(tokenizer):
    table = TokenTable.for_tokenizer(tokenizer)
    rng = random.Random(1)
    for n in (1, 2, 10, 11, 100):
        c = table.constraint(n)
        forced = 0
        while not c.done:
            allowed = c.allowed()
            assert allowed, f"dead end at n={n}"
            forced += len(allowed) == 1
            assert c.advance(rng.choice(allowed))
        assert is_permutation([k - 1 for k in c.emitted], n)
        assert not c.advance(allowed[0])
        if n >= 10:
            assert forced >= 2 * (n - 1)  # " >" and " [" of every separator
    c = table.constraint(5, stop_after=2)
    while not c.done:
        c.advance(c.allowed()[0])
    assert len(c.emitted) == 2 and c.allowed() == []


def test_text_constraint_fallback_advances_by_token(tokenizer):
    table = TokenTable.for_tokenizer(tokenizer)
    c = table.constraint(3, canonical=False)
    ids = tokenizer("[2] > [3] > [1]", add_special_tokens=False)["input_ids"]
    assert all(c.advance(t) for t in ids)
    assert c.done and c.emitted == [2, 3, 1]
