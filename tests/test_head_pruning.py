"""Pruned prefill for head scoring: passage ends read, bodies pruned by their own end's attention."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from rerank import PruningConfig, Reranker, RerankerConfig
from rerank.engine.head_pruning import _owners, score_positions_pruned
from rerank.engine.passage_head import score_positions
from rerank.engine.token_importance import reader_attention, select_survivors
from rerank.prompting.prompts import encode_prompt, relevance_token_ids

DOCS = [
    f"passage {i}: the {['llama', 'rope', 'river', 'engine'][i % 4]} has {i} legs and lives near water"
    for i in range(7)
]


@pytest.fixture(scope="module")
def enc(tokenizer):
    return encode_prompt(tokenizer, "which animal has legs", DOCS, 30)


def test_reader_attention_matches_explicit_softmax(tiny_model):
    torch.manual_seed(3)
    attn = tiny_model.model.layers[2].self_attn
    seq = 19
    hidden = torch.randn(1, seq, tiny_model.config.hidden_size)
    positions = torch.tensor(sorted(torch.randperm(50)[:seq].tolist()))[None]  # gapped, like survivors
    cos, sin = tiny_model.model.rotary_emb(hidden, positions)
    readers = torch.tensor([4, 9, 18])
    with torch.inference_mode():
        got = reader_attention(attn, hidden, cos, sin, readers)
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

        q = attn.q_proj(hidden).view(1, seq, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(hidden).view(1, seq, -1, attn.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        full = (q @ repeat_kv(k, attn.num_key_value_groups).transpose(-1, -2)) * attn.scaling
        full = full.masked_fill(torch.ones(seq, seq, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        want = full[0, :, readers].mean(dim=0)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert got.sum(dim=1).tolist() == pytest.approx([1.0] * 3, abs=1e-5)
    assert got[0, 5:].abs().max().item() == 0.0  # causal: reader 0 (index 4) sees nothing after it


def test_per_passage_quotas_keep_each_groups_best():
    # Two passages (groups 0 and 1) of 3 and 4 body tokens, protected tokens around them.
    candidate = torch.tensor([False, True, True, True, False, True, True, True, True, False])
    groups = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    scores = torch.tensor([0.0, 0.2, 0.9, 0.1, 0.0, 0.3, 0.05, 0.8, 0.4, 0.0])
    keep = select_survivors(scores, candidate, groups, 0, "token", quotas=torch.tensor([1, 2]))
    # Group 0 keeps its best (index 2), group 1 its best two (7, then 8); protected 0, 4, 9 stay.
    assert keep.tolist() == [0, 2, 4, 7, 8, 9]


def test_owners_map_body_tokens_to_the_next_reader():
    prunable = torch.tensor([False, True, True, False, False, True, False])
    assert _owners(7, [3, 6], prunable).tolist() == [-1, 0, 0, -1, -1, 1, -1]


def test_keep_everything_equals_the_dense_readout(tiny_model, tokenizer, enc):
    """A schedule keeping every token is the exact dense head score (the tail after the last
    passage end is never computed: a causal readout cannot depend on it)."""
    yes, no = relevance_token_ids(tokenizer)
    dense = score_positions(tiny_model, [enc.input_ids], [enc.passage_end_positions()], yes, no, tokenizer.pad_token_id)
    keep_all = PruningConfig(layer_fractions=[0.3, 0.6], keep_ratios=[1.0, 1.0])
    pruned = score_positions_pruned(
        tiny_model, [enc.input_ids], [enc.passage_end_positions()], [enc.prunable_mask()], yes, no, keep_all
    )
    assert pruned.scores[0] == pytest.approx(dense.scores[0], abs=1e-4)
    tail = len(enc.input_ids) - 1 - enc.passage_end_positions()[-1]
    assert pruned.prefill.computed_fraction == pytest.approx(1 - tail / len(enc.input_ids))


@pytest.mark.parametrize("budget", ["global", "per_passage"])
def test_pruned_token_counts_follow_the_budget(tiny_model, tokenizer, enc, budget):
    yes, no = relevance_token_ids(tokenizer)
    config = PruningConfig(layer_fractions=[0.25, 0.5], keep_ratios=[0.5, 0.2], budget=budget)
    out = score_positions_pruned(
        tiny_model, [enc.input_ids], [enc.passage_end_positions()], [enc.prunable_mask()], yes, no, config
    )
    assert len(out.scores[0]) == len(DOCS) and all(math.isfinite(s) for s in out.scores[0])
    length = enc.passage_end_positions()[-1] + 1
    sizes = [end - start for start, end in enc.passage_spans]
    protected = length - sum(sizes)
    if budget == "global":
        want_last = protected + math.ceil(0.2 * sum(sizes))
    else:
        want_last = protected + sum(math.ceil(0.2 * n) for n in sizes)
    assert out.prefill.kept_tokens == want_last
    assert out.prefill.computed_fraction < 0.6


def test_reranker_runs_head_scoring_pruned_in_batches(tiny_model, tokenizer):
    config = RerankerConfig(scoring="head", pruning=PruningConfig(), batch_size=2)
    rr = Reranker(tiny_model, tokenizer, config)
    results = rr.rerank_batch(["which animal has legs", "rope"], [DOCS, DOCS[:3]])
    for res, docs in zip(results, (DOCS, DOCS[:3])):
        assert sorted(res.order) == list(range(len(docs)))
        assert res.order == sorted(range(len(docs)), key=lambda i: (-res.scores[i], i))
        assert res.stats.computed_fraction < 1.0 and res.score_kind == "head_logit"


@pytest.mark.parametrize(
    "kwargs, word", [(dict(protect_structure=False), "protect_structure"), (dict(granularity="passage"), "granularity")]
)
def test_head_scoring_refuses_schedules_that_drop_what_it_reads(tiny_model, tokenizer, kwargs, word):
    with pytest.raises(ValueError, match=word):
        Reranker(tiny_model, tokenizer, RerankerConfig(scoring="head", pruning=PruningConfig(**kwargs)))


def test_per_passage_budget_needs_token_granularity():
    with pytest.raises(ValueError, match="granularity='token'"):
        PruningConfig(budget="per_passage", granularity="passage")
    with pytest.raises(ValueError, match="budget"):
        PruningConfig(budget="everywhere")


def test_chunk_pruning_prunes_a_tournaments_chunks_and_reads_its_final_prompt_dense(tiny_model, tokenizer):
    from rerank.ranking import Window

    docs = DOCS + [f"passage {i}: a {['bee', 'cat'][i % 2]} sleeps by the river at night" for i in range(7, 11)]
    query = "which animal has legs"
    chunked = dict(scoring="head", window_size=4, stride=2, long_list="tournament", chunk_layout="interleaved")
    rr = Reranker(tiny_model, tokenizer, RerankerConfig(**chunked, chunk_pruning="0.25:0.5,0.5:0.2"))
    assert rr.config.chunk_pruning == PruningConfig(layer_fractions=[0.25, 0.5], keep_ratios=[0.5, 0.2])
    rr.window_memo = {}
    got = rr.rerank(query, docs)
    assert got.stats.llm_calls == 3 + 1 and got.stats.computed_fraction < 1.0
    # Three chunk readouts filed under the schedule, one dense final readout: the memo holds what was read.
    pruned = [k for k in rr.window_memo if len(k) == 3]
    dense = [k for k in rr.window_memo if len(k) == 2]
    assert len(pruned) == 3 and len(dense) == 1
    # The chunk readouts are the pruned engine's; the final readout is exactly the dense reranker's.
    plain = Reranker(tiny_model, tokenizer, RerankerConfig(**chunked))
    schedule = rr.config.chunk_pruning
    for members in ([0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]):  # interleaved chunks of 11 passages
        window = Window(query=query, passages=[docs[i] for i in members])
        alone = plain.read_windows([window], schedule)[0]
        assert alone.computed_fraction < 1.0
        memo = rr.window_memo[(tuple(rr.encode(window).input_ids), None, pruned[0][2])]
        assert memo.scores == pytest.approx(alone.scores, abs=1e-5)
    (final_key,) = dense
    final_ids = list(final_key[0])
    final = Window(query=query, passages=[docs[i] for i in sorted(got.order[:4])])
    assert list(plain.encode(final).input_ids) == final_ids  # read in first-stage order
    dense_final = plain.read_windows([final])[0]
    assert rr.window_memo[final_key].scores == pytest.approx(dense_final.scores, abs=1e-5)
    assert rr.window_memo[final_key].computed_fraction == 1.0


def test_chunk_pruning_is_refused_where_nothing_is_read_in_chunks(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="scoring='generate' reads no chunks"):
        Reranker(tiny_model, tokenizer, RerankerConfig(chunk_pruning="fast"))
    with pytest.raises(ValueError, match="pruning spec must be one of"):
        RerankerConfig(scoring="head", chunk_pruning="fastest")
    with pytest.raises(TypeError, match="chunk_pruning must be"):
        RerankerConfig(scoring="head", chunk_pruning=0.5)
    with pytest.raises(ValueError, match="granularity"):
        Reranker(tiny_model, tokenizer, RerankerConfig(scoring="head", chunk_pruning={"granularity": "passage"}))


def test_disk_memo_keeps_dense_keys_and_files_pruned_reads_apart(tmp_path):
    import hashlib

    from rerank.data.window_memo import DiskMemo
    from rerank.ranking import WindowRanking

    memo = DiskMemo(tmp_path / "memo.jsonl")
    memo[((5, 6, 7), None)] = WindowRanking(order=[0], ranked=1, scores=[1.0])
    memo[((5, 6, 7), None, "late")] = WindowRanking(order=[0], ranked=1, scores=[2.0])
    # The dense key is the one memos were always written with.
    assert hashlib.sha1(b"None:5,6,7").hexdigest() in dict.keys(memo)
    again = DiskMemo(tmp_path / "memo.jsonl", read_only=True)
    assert again[((5, 6, 7), None)].scores == [1.0] and again[((5, 6, 7), None, "late")].scores == [2.0]


def test_frozen_tokens_stay_context_with_the_state_they_had_when_pruned(tiny_model, tokenizer, enc, monkeypatch):
    """pruned_tokens='freeze' equals the dense model in which each pruned token's state is put back,
    after every later layer, to what it was when pruned: the survivors attend to frozen keys and values."""
    import rerank.engine.head_pruning as head_pruning
    from rerank.engine.passage_head import relevance_from_logits

    reads = enc.passage_end_positions()
    length = reads[-1] + 1
    body = torch.tensor(enc.prunable_mask()[:length])
    odd_body = body & (torch.arange(length) % 2 == 1)

    def keep_even_body(scores, candidate, groups, budget, granularity, quotas=None):
        # One pruning stage, so survivor indices are still original positions here.
        return (~odd_body).nonzero().squeeze(1)

    monkeypatch.setattr(head_pruning, "select_survivors", keep_even_body)
    yes, no = relevance_token_ids(tokenizer)
    config = PruningConfig(layer_fractions=[0.5], keep_ratios=[0.5], pruned_tokens="freeze")
    got = score_positions_pruned(tiny_model, [enc.input_ids], [reads], [enc.prunable_mask()], yes, no, config)

    inner = tiny_model.model
    with torch.inference_mode():
        hidden = inner.embed_tokens(torch.tensor([enc.input_ids[:length]]))
        cos, sin = inner.rotary_emb(hidden, torch.arange(length)[None])
        frozen = None
        for index, layer in enumerate(inner.layers):
            if index == 2:  # round(0.5 * 4 layers)
                frozen = hidden[:, odd_body].clone()
            hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin))
            if frozen is not None:
                hidden[:, odd_body] = frozen
        want = relevance_from_logits(tiny_model.lm_head(inner.norm(hidden[0, reads])), yes, no)
    assert got.scores[0] == pytest.approx(want.tolist(), abs=1e-4)
    dropped = score_positions_pruned(
        tiny_model, [enc.input_ids], [reads], [enc.prunable_mask()], yes, no, replace(config, pruned_tokens="drop")
    )
    # Same tokens computed (the budget counts the computed ones), different context.
    assert dropped.prefill.computed_fraction == pytest.approx(got.prefill.computed_fraction)
    assert max(abs(a - b) for a, b in zip(dropped.scores[0], got.scores[0])) > 1e-3


def test_freeze_is_a_head_scoring_mode_named_by_spec_and_tag(tiny_model, tokenizer):
    from rerank.config import pruning_tag

    frozen = PruningConfig.from_spec("late+freeze")
    assert frozen == replace(PruningConfig.from_spec("late"), pruned_tokens="freeze")
    # Tags of dropping schedules are those written before pruned_tokens existed (memo keys stay valid).
    assert "pruned_tokens" not in pruning_tag(PruningConfig.from_spec("late"))
    assert pruning_tag(frozen) != pruning_tag(PruningConfig.from_spec("late"))
    with pytest.raises(ValueError, match="pruned_tokens must be"):
        PruningConfig(pruned_tokens="skip")
    with pytest.raises(ValueError, match="scoring='head' only"):
        Reranker(tiny_model, tokenizer, RerankerConfig(scoring="generate", pruning=frozen))
    rr = Reranker(tiny_model, tokenizer, RerankerConfig(scoring="head", pruning=frozen))
    got = rr.rerank("which animal has legs", DOCS)
    assert sorted(got.order) == list(range(len(DOCS))) and got.stats.computed_fraction < 1.0


def test_freeze_needs_sdpa_and_an_unsupported_model_reads_dense_when_asked(tokenizer):
    from support import make_tiny_llama

    from rerank.engine.pruning import UnsupportedModelError, unsupported_reason

    flash = make_tiny_llama(len(tokenizer), layers=2)
    flash.config._attn_implementation = "flash_attention_2"  # not run: only its reason is read
    assert unsupported_reason(flash, PruningConfig.from_spec("late")) is None
    assert "needs attn_implementation='sdpa'" in unsupported_reason(flash, PruningConfig.from_spec("late+freeze"))
    with pytest.raises(UnsupportedModelError, match="sdpa"):
        Reranker(flash, tokenizer, RerankerConfig(scoring="head", pruning=PruningConfig.from_spec("late+freeze")))

    eager = make_tiny_llama(len(tokenizer), layers=2)
    eager.config._attn_implementation = "eager"
    fallback = replace(PruningConfig.from_spec("late+freeze"), allow_unsupported_fallback=True)
    pruned = Reranker(eager, tokenizer, RerankerConfig(scoring="head", pruning=fallback)).rerank("legs", DOCS)
    dense = Reranker(eager, tokenizer, RerankerConfig(scoring="head")).rerank("legs", DOCS)
    assert pruned.scores == pytest.approx(dense.scores, abs=1e-5) and pruned.stats.computed_fraction == 1.0
    enc = encode_prompt(tokenizer, "legs", DOCS, 30)
    with pytest.raises(UnsupportedModelError, match="score_positions instead"):  # the engine call has no pad id
        score_positions_pruned(
            eager, [enc.input_ids], [enc.passage_end_positions()], [enc.prunable_mask()], 1, 2, fallback
        )


def test_a_folders_chunk_pruning_is_taken_unless_none_is_asked(tmp_path, tokenizer):
    import json

    from support import make_tiny_llama

    folder = tmp_path / "model"
    make_tiny_llama(len(tokenizer), seed=4).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    frozen = {"layer_fractions": [0.5], "keep_ratios": [0.3], "pruned_tokens": "freeze"}
    settings = {"scoring": "head", "long_list": "tournament", "chunk_pruning": frozen}
    (folder / "lazyrank.json").write_text(json.dumps({"reranker": settings}))
    shipped = Reranker.from_pretrained(str(folder), calibration=False, precision="fp32", window_size=4, stride=4)
    assert shipped.config.chunk_pruning == PruningConfig(**frozen)
    got = shipped.rerank("which animal has legs", DOCS)
    assert sorted(got.order) == list(range(len(DOCS))) and got.stats.computed_fraction < 1.0
    dense = Reranker.from_pretrained(str(folder), calibration=False, precision="fp32", chunk_pruning="none")
    assert dense.config.chunk_pruning is None
