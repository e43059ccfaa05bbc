"""Batched jump-forward decoding: ragged (right-padded, per-row length) steps and the decode loop."""

import pytest
import torch

from rerank import PruningConfig
from rerank.engine import DenseSession, rank_prompts
from rerank.engine.decoding import TokenTable
from rerank.engine.generate import can_jump_forward
from rerank.engine.pruning import PrunedSession
from rerank.prompting.prompts import encode_prompt

PRUNE = PruningConfig(layer_fractions=[0.25, 0.5], keep_ratios=[0.5, 0.2])
DOCS = [f"passage {i} talks about subject {i % 4} in some detail here" for i in range(12)]
# Different prompt lengths (left padding at prefill) and passage counts (different queued lengths).
QUERIES = [("subject 2", 12), ("subject 1", 5), ("subject 3 and more words", 9), ("subject 0", 11)]


def make_session(kind: str, model, pad_id: int):
    return DenseSession(model, pad_id) if kind == "dense" else PrunedSession(model, pad_id, PRUNE)


@pytest.fixture(scope="module")
def table(tokenizer):
    return TokenTable.for_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def encs(tokenizer):
    return [encode_prompt(tokenizer, q, DOCS[:n], 30) for q, n in QUERIES]


class Spy:
    """Forwards to a session and records the lengths of every step (None: unpadded)."""

    def __init__(self, inner, ragged: bool = True):
        self.inner = inner
        self.multi_token_step = inner.multi_token_step
        if ragged:
            self.ragged_step = inner.ragged_step
        self.steps: list[tuple[int, list[int] | None]] = []

    def prefill(self, prompts, prunable=None):
        return self.inner.prefill(prompts, prunable)

    def step(self, tokens, lengths=None):
        width = 1 if tokens.dim() == 1 else tokens.shape[1]
        self.steps.append((width, None if lengths is None else list(lengths)))
        return self.inner.step(tokens) if lengths is None else self.inner.step(tokens, lengths)

    @property
    def info(self):
        return self.inner.info


@pytest.mark.parametrize("kind", ["dense", "pruned"])
def test_ragged_steps_equal_unpadded_rows_and_padding_stays_hidden(tiny_model, tokenizer, encs, kind):
    """Each row of ragged steps gets the logits of the same real tokens fed alone; later steps too,
    so the padding left in the cache is never attended to."""
    chosen = encs[:3]
    prompts, masks = [e.input_ids for e in chosen], [e.prunable_mask() for e in chosen]
    # (tokens, lengths) per step; row 2 feeds nothing in the third step, everyone one token in the last.
    steps = [
        ([[7, 8, 9], [5, 0, 0], [11, 12, 0]], [3, 1, 2]),
        ([[13], [14], [15]], None),
        ([[16, 17], [18, 19], [0, 0]], [2, 2, 0]),
        ([[20], [21], [22]], None),
    ]
    batch = make_session(kind, tiny_model, tokenizer.pad_token_id)
    batch.prefill(prompts, masks)
    got = [batch.step(torch.tensor(t), n) for t, n in steps]
    for row, (prompt, mask) in enumerate(zip(prompts, masks)):
        alone = make_session(kind, tiny_model, tokenizer.pad_token_id)
        alone.prefill([prompt], [mask])
        for index, (tokens, lengths) in enumerate(steps):
            real = tokens[row][: lengths[row]] if lengths is not None else tokens[row]
            if not real:
                continue
            want = alone.step(torch.tensor([real]))
            torch.testing.assert_close(got[index][row : row + 1], want, atol=1e-4, rtol=0)
        assert int(batch.positions[row]) == int(alone.positions[0])


@pytest.mark.parametrize("kind", ["dense", "pruned"])
def test_batched_jump_forward_equals_token_by_token(tiny_model, tokenizer, encs, table, kind):
    prompts = [e.input_ids for e in encs]
    nums = [e.num_passages for e in encs]
    masks = [e.prunable_mask() for e in encs]
    top_k = [None, 3, 7, 2]
    spy = Spy(make_session(kind, tiny_model, tokenizer.pad_token_id))
    jump = rank_prompts(spy, prompts, nums, table, top_k=top_k, prunable=masks)
    plain = rank_prompts(
        make_session(kind, tiny_model, tokenizer.pad_token_id),
        prompts,
        nums,
        table,
        top_k=top_k,
        prunable=masks,
        jump_forward=False,
    )
    assert jump.identifiers == plain.identifiers
    assert jump.generated_tokens == plain.generated_tokens
    assert [len(ids) for ids in jump.identifiers] == [12, 3, 7, 2]
    assert plain.forward_passes == max(plain.generated_tokens) - 1
    # Forced " >", " [" and "]" ride along with decided tokens: far fewer passes.
    assert jump.forward_passes < 0.75 * plain.forward_passes
    assert jump.forward_passes == len(spy.steps)
    # The rows really advanced by different amounts in one pass (padding), and several tokens at once.
    assert any(lengths is not None and len(set(lengths)) > 1 for _, lengths in spy.steps)
    assert max(width for width, _ in spy.steps) > 1
    # Each ranking is also what the prompt decodes to on its own, token by token.
    for row in range(len(prompts)):
        alone = rank_prompts(
            make_session(kind, tiny_model, tokenizer.pad_token_id),
            [prompts[row]],
            [nums[row]],
            table,
            top_k=[top_k[row]],
            prunable=[masks[row]],
            jump_forward=False,
        )
        assert alone.identifiers[0] == jump.identifiers[row]


def test_batch_without_ragged_steps_falls_back_to_token_by_token(tiny_model, tokenizer, encs, table):
    """A session that takes several tokens per step but not per-row counts must not be fed padding."""
    prompts, nums = [e.input_ids for e in encs[:2]], [e.num_passages for e in encs[:2]]
    spy = Spy(DenseSession(tiny_model, tokenizer.pad_token_id), ragged=False)
    assert not can_jump_forward(spy, [table.constraint(n) for n in nums])
    out = rank_prompts(spy, prompts, nums, table)
    ref = rank_prompts(DenseSession(tiny_model, tokenizer.pad_token_id), prompts, nums, table, jump_forward=False)
    assert out.identifiers == ref.identifiers and out.forward_passes == ref.forward_passes
    assert all(width == 1 and lengths is None for width, lengths in spy.steps)
    # One prompt needs no padding, so the same session still jumps.
    single = Spy(DenseSession(tiny_model, tokenizer.pad_token_id), ragged=False)
    assert can_jump_forward(single, [table.constraint(nums[0])])
    alone = rank_prompts(single, prompts[:1], nums[:1], table)
    assert alone.identifiers[0] == ref.identifiers[0] and alone.forward_passes < ref.forward_passes


def test_pruned_per_row_caches_decode_token_by_token(tiny_model, tokenizer, encs, table):
    """Per-row caches (the flash-attention layout) cannot take padded steps: batches fall back, exactly."""
    prompts, nums, masks = (
        [e.input_ids for e in encs[:2]],
        [e.num_passages for e in encs[:2]],
        [e.prunable_mask() for e in encs[:2]],
    )
    rows = PrunedSession(tiny_model, tokenizer.pad_token_id, PRUNE)
    rows._masked_batches = False  # what flash attention selects; single-token steps are exact under sdpa too
    assert not rows.ragged_step
    out = rank_prompts(rows, prompts, nums, table, prunable=masks)
    ref = rank_prompts(
        PrunedSession(tiny_model, tokenizer.pad_token_id, PRUNE),
        prompts,
        nums,
        table,
        prunable=masks,
        jump_forward=False,
    )
    assert out.identifiers == ref.identifiers and out.forward_passes == ref.forward_passes
    with pytest.raises(ValueError, match="sdpa"):
        rows.step(torch.tensor([[1], [2]]), [1, 0])


def test_ragged_lengths_are_validated(tiny_model):
    session = DenseSession(tiny_model, 0)
    session.prefill([list(range(5, 20)), list(range(5, 12))])
    with pytest.raises(ValueError, match="lengths"):
        session.step(torch.tensor([[1, 2], [3, 4]]), [3, 1])
    with pytest.raises(ValueError, match="lengths"):
        session.step(torch.tensor([[1, 2], [3, 4]]), [2])
