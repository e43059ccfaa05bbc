"""Jump-forward decoding and single-pass scoring on top of a pruned prefill."""

import pytest
import torch

from rerank import PruningConfig, Reranker, RerankerConfig
from rerank.engine import DenseSession, rank_prompts
from rerank.engine.pruning import PrunedSession
from rerank.engine.single_pass import score_identifiers
from rerank.prompting.prompts import encode_prompt

KEEP_ALL = PruningConfig(layer_fractions=[0.3, 0.6], keep_ratios=[1.0, 1.0])
PRUNE = PruningConfig(layer_fractions=[0.25, 0.5], keep_ratios=[0.5, 0.2])
DOCS = [f"passage {i} talks about subject {i % 4} in some detail here" for i in range(12)]


@pytest.fixture(scope="module")
def encs(tokenizer):
    return [encode_prompt(tokenizer, "subject 2", DOCS, 30), encode_prompt(tokenizer, "subject 1", DOCS[:5], 30)]


def test_multi_token_step_equals_single_steps_after_pruning(tiny_model, tokenizer, encs):
    enc = encs[0]
    a = PrunedSession(tiny_model, tokenizer.pad_token_id, PRUNE)
    a.prefill([enc.input_ids], [enc.prunable_mask()])
    got = a.step(torch.tensor([[7, 8, 9]]))
    b = PrunedSession(tiny_model, tokenizer.pad_token_id, PRUNE)
    b.prefill([enc.input_ids], [enc.prunable_mask()])
    for tok in (7, 8):
        b.step(torch.tensor([tok]))
    want = b.step(torch.tensor([9]))
    assert torch.allclose(got, want, atol=1e-4)
    assert [layer.keys.shape[2] for layer in a.cache.layers] == [layer.keys.shape[2] for layer in b.cache.layers]


def test_pruned_jump_forward_equals_token_by_token(tiny_model, tokenizer, encs):
    from rerank.engine.decoding import TokenTable

    table = TokenTable.for_tokenizer(tokenizer)
    enc = encs[0]
    runs = [
        rank_prompts(
            PrunedSession(tiny_model, tokenizer.pad_token_id, PRUNE),
            [enc.input_ids],
            [12],
            table,
            prunable=[enc.prunable_mask()],
            jump_forward=jump,
        )
        for jump in (True, False)
    ]
    assert runs[0].identifiers == runs[1].identifiers
    assert runs[0].forward_passes < runs[1].forward_passes


@pytest.mark.parametrize("batch", [1, 2])
def test_pruned_single_pass_keep_all_equals_dense(tiny_model, tokenizer, encs, batch):
    from rerank.engine.decoding import TokenTable

    table = TokenTable.for_tokenizer(tokenizer)
    chosen = encs[:batch]
    ids, nums, masks = (
        [e.input_ids for e in chosen],
        [e.num_passages for e in chosen],
        [e.prunable_mask() for e in chosen],
    )
    dense = score_identifiers(DenseSession(tiny_model, tokenizer.pad_token_id), ids, nums, table)
    pruned = score_identifiers(PrunedSession(tiny_model, tokenizer.pad_token_id, KEEP_ALL), ids, nums, table, masks)
    for d, p in zip(dense.scores, pruned.scores):
        assert p == pytest.approx(d, abs=1e-4)


def test_pruned_single_pass_batch_equals_rows(tiny_model, tokenizer, encs):
    from rerank.engine.decoding import TokenTable

    table = TokenTable.for_tokenizer(tokenizer)
    both = score_identifiers(
        PrunedSession(tiny_model, tokenizer.pad_token_id, PRUNE),
        [e.input_ids for e in encs],
        [e.num_passages for e in encs],
        table,
        [e.prunable_mask() for e in encs],
    )
    for row, enc in enumerate(encs):
        alone = score_identifiers(
            PrunedSession(tiny_model, tokenizer.pad_token_id, PRUNE),
            [enc.input_ids],
            [enc.num_passages],
            table,
            [enc.prunable_mask()],
        )
        assert both.scores[row] == pytest.approx(alone.scores[0], abs=1e-4)


def test_reranker_single_pass_with_pruning(tiny_model, tokenizer):
    rr = Reranker(
        tiny_model, tokenizer, RerankerConfig(scoring="single_pass", pruning=PruningConfig(), max_passage_tokens=30)
    )
    res = rr.rerank("subject 3", DOCS)
    assert sorted(res.order) == list(range(12))
    assert res.stats.computed_fraction < 1.0 and res.stats.generated_tokens == 0


def test_pruned_batched_jump_forward_equals_token_by_token(tiny_model, tokenizer, encs):
    """Two prompts of different lengths and passage counts: rows queue different numbers of forced
    tokens, so jump-forward needs ragged steps over the merged, left-padded pruned caches."""
    from rerank.engine.decoding import TokenTable

    table = TokenTable.for_tokenizer(tokenizer)
    ids, nums, masks = [e.input_ids for e in encs], [e.num_passages for e in encs], [e.prunable_mask() for e in encs]
    runs = [
        rank_prompts(
            PrunedSession(tiny_model, tokenizer.pad_token_id, PRUNE),
            ids,
            nums,
            table,
            top_k=[None, 4],
            prunable=masks,
            jump_forward=jump,
        )
        for jump in (True, False)
    ]
    assert runs[0].identifiers == runs[1].identifiers
    assert [len(r) for r in runs[0].identifiers] == [12, 4]
    assert runs[0].forward_passes < runs[1].forward_passes


def test_unpruned_fallback_session_jumps_in_batches(tokenizer, encs):
    """On a model the pruned prefill cannot run (eager attention), the fallback dense session still
    takes ragged steps, so batched jump-forward stays on and exact."""
    from support import make_tiny_llama

    from rerank.engine.decoding import TokenTable
    from rerank.engine.generate import can_jump_forward

    model = make_tiny_llama(len(tokenizer), layers=2, seed=3)
    model.set_attn_implementation("eager")
    config = PruningConfig(allow_unsupported_fallback=True)
    table = TokenTable.for_tokenizer(tokenizer)
    ids, nums = [e.input_ids for e in encs], [e.num_passages for e in encs]
    session = PrunedSession(model, tokenizer.pad_token_id, config)
    assert session._dense is not None and can_jump_forward(session, [table.constraint(n) for n in nums])
    jump = rank_prompts(session, ids, nums, table)
    plain = rank_prompts(DenseSession(model, tokenizer.pad_token_id), ids, nums, table, jump_forward=False)
    assert jump.identifiers == plain.identifiers and jump.forward_passes < plain.forward_passes
