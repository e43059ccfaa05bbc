"""Pruned prefill (LazyLLM-style) on tiny random models with the real tokenizer."""

from __future__ import annotations

import math

import pytest
import torch

from rerank import PruningConfig, Reranker, RerankerConfig
from rerank.engine.pruning import PrunedSession, UnsupportedModelError, check_supported, layer_schedule
from rerank.engine.session import DenseSession
from rerank.engine.token_importance import last_rows_attention, passage_groups, select_survivors
from rerank.prompting.prompts import encode_prompt

DOCS = [
    f"passage {i}: the {['llama', 'rope', 'river', 'engine'][i % 4]} has {i} legs and lives near water"
    for i in range(9)
]
KEEP_ALL = PruningConfig(layer_fractions=[0.3, 0.6], keep_ratios=[1.0, 1.0])
SCHEDULES = [
    PruningConfig(),
    PruningConfig(layer_fractions=[0.25], keep_ratios=[0.05]),
    PruningConfig(layer_fractions=[0.2, 0.5, 0.8], keep_ratios=[0.6, 0.3, 0.1], score_window=5),
    PruningConfig(layer_fractions=[0.3, 0.7], keep_ratios=[0.5, 0.2], granularity="passage"),
]


@pytest.fixture(scope="module")
def enc(tokenizer):
    return encode_prompt(tokenizer, "which animal has legs", DOCS, 30)


@pytest.fixture(scope="module")
def enc_short(tokenizer):
    return encode_prompt(tokenizer, "rope", DOCS[:4], 12)


def _forward_logits(model, ids):
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[:, -1].float()


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize(
    "config", [KEEP_ALL, PruningConfig(layer_fractions=[0.5], keep_ratios=[1.0], granularity="passage", score_window=4)]
)
def test_keep_everything_matches_model_forward(tiny_model, tokenizer, enc, config):
    session = PrunedSession(tiny_model, tokenizer.pad_token_id, config)
    logits = session.prefill([enc.input_ids], [enc.prunable_mask()])
    torch.testing.assert_close(logits, _forward_logits(tiny_model, enc.input_ids), atol=1e-4, rtol=0)
    assert session.info.computed_fraction == 1.0
    assert session.info.kept_tokens == len(enc.input_ids)


def test_keep_everything_decodes_like_dense_batched(tiny_model, tokenizer, enc, enc_short):
    prompts = [enc.input_ids, enc_short.input_ids]
    masks = [enc.prunable_mask(), enc_short.prunable_mask()]
    pruned, dense = (
        PrunedSession(tiny_model, tokenizer.pad_token_id, KEEP_ALL),
        DenseSession(tiny_model, tokenizer.pad_token_id),
    )
    a, b = pruned.prefill(prompts, masks), dense.prefill(prompts, masks)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    # One Session convention: ``positions`` is each row's last filled position, in both engines.
    assert pruned.positions.tolist() == dense.positions.tolist() == [len(p) - 1 for p in prompts]
    for step in range(1, 5):
        tokens = b.argmax(-1)
        a, b = pruned.step(tokens), dense.step(tokens)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
        assert pruned.positions.tolist() == dense.positions.tolist() == [len(p) - 1 + step for p in prompts]


def test_keep_everything_gives_identical_permutation(tiny_model, tokenizer):
    dense = Reranker(tiny_model, tokenizer, RerankerConfig(max_passage_tokens=20))
    pruned = Reranker(tiny_model, tokenizer, RerankerConfig(max_passage_tokens=20, pruning=KEEP_ALL))
    queries = ["which animal has legs", "rope", "a river near water"]
    docs = [DOCS, DOCS[:5], DOCS[2:9]]
    for want, got in zip(dense.rerank_batch(queries, docs), pruned.rerank_batch(queries, docs)):
        assert got.order == want.order
        assert got.stats.computed_fraction == 1.0 and got.stats.kept_tokens == got.stats.prompt_tokens


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "mistral"])
def test_other_families_keep_everything(tokenizer, enc_short, model_type):
    import transformers

    torch.manual_seed(0)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=4096,
        attn_implementation="sdpa",
    )
    if model_type == "qwen2":
        config = transformers.Qwen2Config(**common)
    elif model_type == "qwen3":
        config = transformers.Qwen3Config(**common)
    else:
        config = transformers.MistralConfig(sliding_window=None, **common)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    session = PrunedSession(model, tokenizer.pad_token_id, KEEP_ALL)
    logits = session.prefill([enc_short.input_ids], [enc_short.prunable_mask()])
    torch.testing.assert_close(logits, _forward_logits(model, enc_short.input_ids), atol=1e-4, rtol=0)
    pruned = PrunedSession(model, tokenizer.pad_token_id, PruningConfig(layer_fractions=[0.4], keep_ratios=[0.3]))
    pruned.prefill([enc_short.input_ids], [enc_short.prunable_mask()])
    assert pruned.info.computed_fraction < 1.0


# ---------------------------------------------------------------- invariants
@pytest.mark.parametrize("config", SCHEDULES)
def test_protected_tokens_survive_and_shapes_match(tiny_model, tokenizer, enc, config):
    session = PrunedSession(tiny_model, tokenizer.pad_token_id, config)
    session.prefill([enc.input_ids], [enc.prunable_mask()])
    mask = torch.tensor(enc.prunable_mask())
    protected = set((~mask).nonzero().squeeze(1).tolist())
    survivors = session.survivors[0]
    assert len(survivors) == len(tiny_model.model.layers)
    previous = set(range(len(enc.input_ids)))
    for index, positions in enumerate(survivors):
        pos = positions.tolist()
        assert pos == sorted(set(pos)), "positions must stay strictly increasing"
        assert protected <= set(pos), "a protected token was pruned"
        assert set(pos) <= previous, "a pruned token came back"
        previous = set(pos)
        layer = session.cache.layers[index]
        assert layer.keys.shape[2] == layer.values.shape[2] == len(pos)
    info = session.info
    assert info.kept_tokens == len(survivors[-1]) == info.extra["kept_tokens_per_row"][0]
    expected = sum(len(p) for p in survivors) / (len(survivors) * len(enc.input_ids))
    assert info.computed_fraction == pytest.approx(expected)
    assert info.computed_fraction < 1.0 and info.seconds > 0


def test_token_budget_is_exact(tiny_model, tokenizer, enc):
    config = PruningConfig(layer_fractions=[0.25, 0.5], keep_ratios=[0.5, 0.2])
    session = PrunedSession(tiny_model, tokenizer.pad_token_id, config)
    session.prefill([enc.input_ids], [enc.prunable_mask()])
    mask = torch.tensor(enc.prunable_mask())
    prunable = int(mask.sum())
    for index, positions in enumerate(session.survivors[0]):
        ratio = 1.0 if index < 1 else (0.5 if index < 2 else 0.2)
        assert int(mask[positions].sum()) == math.ceil(ratio * prunable)


def test_passage_granularity_keeps_whole_passages(tiny_model, tokenizer, enc):
    config = PruningConfig(layer_fractions=[0.25, 0.75], keep_ratios=[0.6, 0.3], granularity="passage")
    session = PrunedSession(tiny_model, tokenizer.pad_token_id, config)
    session.prefill([enc.input_ids], [enc.prunable_mask()])
    final = set(session.survivors[0][-1].tolist())
    kept_passages = 0
    for start, end in enc.passage_spans:
        inside = [t in final for t in range(start, end)]
        assert all(inside) or not any(inside), "a passage was cut in half"
        kept_passages += all(inside)
    assert 0 < kept_passages < len(enc.passage_spans)


def test_without_structure_protection_everything_but_last_competes(tiny_model, tokenizer, enc):
    config = PruningConfig(layer_fractions=[0.25], keep_ratios=[0.1], protect_structure=False)
    session = PrunedSession(tiny_model, tokenizer.pad_token_id, config)
    session.prefill([enc.input_ids], [enc.prunable_mask()])
    final = session.survivors[0][-1].tolist()
    assert final[-1] == len(enc.input_ids) - 1
    assert len(final) == math.ceil(0.1 * (len(enc.input_ids) - 1)) + 1


def test_batched_decode_matches_row_by_row(tiny_model, tokenizer, enc, enc_short):
    config = PruningConfig(layer_fractions=[0.25, 0.5], keep_ratios=[0.5, 0.2])
    prompts, masks = [enc.input_ids, enc_short.input_ids], [enc.prunable_mask(), enc_short.prunable_mask()]
    batch = PrunedSession(tiny_model, tokenizer.pad_token_id, config)
    logits = batch.prefill(prompts, masks)
    assert batch.info.extra["kept_tokens_per_row"] == [len(s[-1]) for s in batch.survivors]
    singles = [PrunedSession(tiny_model, tokenizer.pad_token_id, config) for _ in prompts]
    single_logits = [s.prefill([p], [m]) for s, p, m in zip(singles, prompts, masks)]
    for row in range(2):
        torch.testing.assert_close(logits[row : row + 1], single_logits[row], atol=1e-4, rtol=0)
    for _ in range(3):
        tokens = logits.argmax(-1)
        logits = batch.step(tokens)
        for row, s in enumerate(singles):
            torch.testing.assert_close(logits[row : row + 1], s.step(tokens[row : row + 1]), atol=1e-4, rtol=0)


def test_decode_continues_at_next_original_position(tiny_model, tokenizer, enc):
    """Pruning before layer 0 gives every layer the same survivors: the result must equal the model run
    on just those tokens at their original positions, prefill and the next decode step alike."""
    config = PruningConfig(layer_fractions=[0.01], keep_ratios=[0.3])
    session = PrunedSession(tiny_model, tokenizer.pad_token_id, config)
    logits = session.prefill([enc.input_ids], [enc.prunable_mask()])
    kept = session.survivors[0][0]
    ids = torch.tensor(enc.input_ids)[kept][None]
    next_token = logits.argmax(-1)
    with torch.inference_mode():
        # An explicit mask keeps transformers from reading gapped positions as packed sequences.
        out = tiny_model(
            input_ids=torch.cat([ids, next_token[None]], dim=1),
            attention_mask=torch.ones(1, ids.shape[1] + 1, dtype=torch.long),
            position_ids=torch.cat([kept, torch.tensor([len(enc.input_ids)])])[None],
        )
    torch.testing.assert_close(logits, out.logits[:, -2].float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(session.step(next_token), out.logits[:, -1].float(), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- scoring
def test_last_rows_attention_matches_explicit_softmax(tiny_model):
    torch.manual_seed(1)
    layer = tiny_model.model.layers[1]
    attn = layer.self_attn
    seq, window = 23, 4
    hidden = torch.randn(1, seq, tiny_model.config.hidden_size)
    positions = torch.tensor(sorted(torch.randperm(60)[:seq].tolist()))[None]  # gapped, like survivors
    cos, sin = tiny_model.model.rotary_emb(hidden, positions)
    with torch.inference_mode():
        got = last_rows_attention(attn, hidden, cos, sin, window)
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

        q = attn.q_proj(hidden).view(1, seq, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(hidden).view(1, seq, -1, attn.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k = repeat_kv(k, attn.num_key_value_groups)
        full = (q @ k.transpose(-1, -2)) * attn.scaling
        full = full.masked_fill(torch.ones(seq, seq, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        want = full[:, :, -window:].mean(dim=(0, 1, 2))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert got.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_select_survivors_passage_groups():
    prunable = torch.tensor([False, True, True, False, True, True, True, False, True, False])
    groups = passage_groups(prunable)
    assert groups[1] == groups[2] and groups[4] == groups[5] == groups[6] and groups[1] != groups[4]
    scores = torch.tensor([0.0, 0.1, 0.1, 0.0, 0.5, 0.4, 0.6, 0.0, 0.05, 0.0])
    keep = select_survivors(scores, prunable, groups, 3, "passage").tolist()
    assert keep == [0, 3, 4, 5, 6, 7, 9]
    keep = select_survivors(scores, prunable, groups, 2, "token").tolist()
    assert keep == [0, 3, 4, 6, 7, 9]


def test_layer_schedule_rounds_and_merges():
    assert layer_schedule(PruningConfig(), 30) == {3: 0.5, 10: 0.25, 20: 0.1}
    merged = layer_schedule(PruningConfig(layer_fractions=[0.1, 0.12], keep_ratios=[0.5, 0.3]), 4)
    assert merged == {0: 0.3}


# ---------------------------------------------------------------- configuration and support
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(layer_fractions=[0.0], keep_ratios=[0.5]),
        dict(layer_fractions=[1.0], keep_ratios=[0.5]),
        dict(layer_fractions=[0.5, 0.2], keep_ratios=[0.5, 0.3]),
        dict(layer_fractions=[0.2, 0.2], keep_ratios=[0.5, 0.3]),
        dict(layer_fractions=[0.2], keep_ratios=[0.0]),
        dict(layer_fractions=[0.2], keep_ratios=[1.5]),
        dict(layer_fractions=[0.2, 0.5], keep_ratios=[0.3, 0.5]),
        dict(layer_fractions=[0.2], keep_ratios=[0.3, 0.2]),
        dict(layer_fractions=[], keep_ratios=[]),
        dict(granularity="sentence"),
        dict(score_window=0),
    ],
)
def test_bad_configs_raise(kwargs):
    with pytest.raises(ValueError):
        PruningConfig(**kwargs)


def test_from_spec_presets_and_pairs():
    assert PruningConfig.from_spec("default") == PruningConfig()
    fast = PruningConfig.from_spec("fast")
    assert fast.layer_fractions == [0.04, 0.2, 0.5] and fast.keep_ratios == [0.2, 0.08, 0.03]
    assert PruningConfig.from_spec("0.2:0.5, 0.6:0.1") == PruningConfig(
        layer_fractions=[0.2, 0.6], keep_ratios=[0.5, 0.1]
    )
    for bad in ("quick", "0.2", "0.2:0.5:0.1", "a:b", ""):
        with pytest.raises(ValueError, match="pruning spec"):
            PruningConfig.from_spec(bad)
    with pytest.raises(ValueError, match="non-increasing"):  # parsed, then validated like any config
        PruningConfig.from_spec("0.2:0.1,0.6:0.5")
    with pytest.raises(TypeError):
        PruningConfig.from_spec(0.5)


@pytest.fixture(scope="module")
def unsupported_models(tokenizer):
    from support import make_tiny_llama
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=2048)
    ).eval()
    eager = make_tiny_llama(len(tokenizer), layers=2)
    eager.config._attn_implementation = "eager"
    return {"gpt2": gpt2, "eager-llama": eager}


@pytest.mark.parametrize("name", ["gpt2", "eager-llama"])
def test_unsupported_model_raises_unless_fallback_asked(unsupported_models, tokenizer, enc_short, name):
    model = unsupported_models[name]
    with pytest.raises(UnsupportedModelError):
        check_supported(model, PruningConfig())
    with pytest.raises(UnsupportedModelError):
        Reranker(model, tokenizer, RerankerConfig(pruning=PruningConfig()))
    fallback = PruningConfig(allow_unsupported_fallback=True)
    assert check_supported(model, fallback) is False
    session = PrunedSession(model, tokenizer.pad_token_id, fallback)
    logits = session.prefill([enc_short.input_ids], [enc_short.prunable_mask()])
    torch.testing.assert_close(logits, _forward_logits(model, enc_short.input_ids), atol=1e-4, rtol=0)
    assert session.info.computed_fraction == 1.0 and session.info.extra["fallback"] == "unpruned"
    assert session.positions.tolist() == [len(enc_short.input_ids) - 1]  # the same convention when unpruned
    rr = Reranker(model, tokenizer, RerankerConfig(pruning=fallback, max_passage_tokens=12))
    assert sorted(rr.rerank("rope", DOCS[:4]).order) == [0, 1, 2, 3]


def test_reranker_stats_with_default_pruning(tiny_model, tokenizer):
    rr = Reranker(tiny_model, tokenizer, RerankerConfig(pruning=PruningConfig(), max_passage_tokens=30))
    res = rr.rerank("which animal has legs", DOCS, top_k=3)
    s = res.stats
    assert sorted(res.order) == list(range(len(DOCS))) and res.ranked_by_model == 3
    assert 0 < s.computed_fraction < 1.0
    assert 0 < s.kept_tokens < s.prompt_tokens
    assert s.prefill_seconds > 0


def _log_probs_before_and_after_bracket(session, enc, bracket: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token log-probabilities over the whole vocabulary: after the prompt (the answer's first
    token, nearly always ``[``) and after feeding ``[`` (the first identifier's digit, which decides
    the ranking)."""
    first = session.prefill([enc.input_ids], [enc.prunable_mask()]).log_softmax(-1)
    digit = session.step(torch.tensor([bracket])).log_softmax(-1)
    return first, digit


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> float:
    """KL(p || q) in nats, from log-probabilities."""
    return float((p_log.exp() * (p_log - q_log)).sum())


@pytest.fixture(scope="module")
def base_reranker(default_model_dir):
    """The raw SmolLM2-135M-Instruct the default schedule was tuned on (not whatever the default reranker
    becomes), so the bounds below keep their meaning."""
    return Reranker.from_pretrained(str(default_model_dir))


@pytest.mark.model
def test_real_model_pruning_keeps_the_next_token_distribution_close(base_reranker):
    """Keep-everything pruning reproduces the dense distribution over the WHOLE vocabulary; the default
    schedule changes it (it really prunes) but stays within KL < 0.1 nats, at the first answer token
    and at the identifier digit after ``[`` (measured on this prompt: ~0.03 and ~0.02; the 'fast'
    preset gives ~0.06 and ~0.08). Comparing only the arg-max of the first token checks nothing:
    it is ``[`` whatever the passages say."""
    from rerank.ranking import Window

    rr = base_reranker
    docs = [
        f"{t} is a topic discussed in passage {i}, which says little else of note."
        for i, t in enumerate(["rope", "llamas", "rivers", "engines", "the moon", "bread", "chess", "volcanoes"] * 3)
    ]
    enc = rr.encode(Window(query="how are volcanoes formed", passages=docs))
    bracket = rr.tokenizer.convert_tokens_to_ids("[")
    pad = rr.tokenizer.pad_token_id
    dense = _log_probs_before_and_after_bracket(DenseSession(rr.model, pad), enc, bracket)
    kept = _log_probs_before_and_after_bracket(PrunedSession(rr.model, pad, KEEP_ALL), enc, bracket)
    pruned_session = PrunedSession(rr.model, pad, PruningConfig())
    pruned = _log_probs_before_and_after_bracket(pruned_session, enc, bracket)
    assert pruned_session.info.computed_fraction < 0.7
    for want, same, close in zip(dense, kept, pruned):
        assert float((want - same).abs().max()) < 1e-4
        assert 1e-4 < _kl(want, close) < 0.1
