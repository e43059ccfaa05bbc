"""Reranker API on a tiny random model with the real tokenizer: invariants and bad input."""

import pytest
import torch

from rerank import Reranker, RerankerConfig
from rerank.engine import DenseSession, rank_prompts
from rerank.prompting.identifiers import is_permutation
from rerank.prompting.prompts import encode_prompt
from rerank.ranking import Window, sliding_orders, window_starts

DOCS = [f"passage number {i} about topic {i % 3}" for i in range(12)]


def test_full_ranking_is_a_permutation_with_stats(tiny_reranker):
    res = tiny_reranker.rerank("topic 1", DOCS)
    assert is_permutation(res.order, len(DOCS))
    assert res.ranked_by_model == len(DOCS)
    s = res.stats
    assert s.llm_calls == 1 and s.strategy == "full" and s.fallback is None
    assert s.prompt_tokens > 12 * 5
    # 12 identifiers: "[k]" pieces, separators; at least one token per identifier and separator
    assert s.generated_tokens >= 2 * 12 - 1
    assert s.prefill_seconds > 0 and s.decode_seconds > 0
    scores = res.scores
    assert [scores[i] for i in res.order] == sorted(scores, reverse=True)


def test_constrained_decode_matches_masked_greedy(tiny_model, tokenizer):
    """The decode loop picks the arg-max of the logits restricted to allowed tokens."""
    from rerank.engine.decoding import TokenTable

    table = TokenTable.for_tokenizer(tokenizer)
    enc = encode_prompt(tokenizer, "q", DOCS[:11], 20)
    out = rank_prompts(DenseSession(tiny_model, tokenizer.pad_token_id), [enc.input_ids], [11], table)
    # replay token by token with the model's own full forward (no cache, no jump-forward)
    ids = list(enc.input_ids)
    c = table.constraint(11)
    with torch.inference_mode():
        while not c.done:
            logits = tiny_model(torch.tensor([ids])).logits[0, -1]
            allowed = c.allowed()
            best = allowed[int(logits[allowed].argmax())]
            c.advance(best)
            ids.append(best)
    assert out.identifiers[0] == c.emitted
    assert out.generated_tokens[0] == len(ids) - len(enc.input_ids)


def test_jump_forward_equals_token_by_token_with_fewer_passes(tiny_model, tokenizer):
    from rerank.engine.decoding import TokenTable

    table = TokenTable.for_tokenizer(tokenizer)
    enc = encode_prompt(tokenizer, "q", DOCS, 20)
    runs = [
        rank_prompts(DenseSession(tiny_model, tokenizer.pad_token_id), [enc.input_ids], [12], table, jump_forward=jump)
        for jump in (True, False)
    ]
    assert runs[0].identifiers == runs[1].identifiers
    assert runs[0].generated_tokens == runs[1].generated_tokens
    assert runs[1].forward_passes == runs[1].generated_tokens[0] - 1
    # per identifier " >" and " [" (and "]" after a digit that closes no other id) are forced
    assert runs[0].forward_passes < 0.6 * runs[1].forward_passes


def test_top_k_decodes_k_and_keeps_first_stage_order(tiny_reranker):
    full = tiny_reranker.rerank("topic 2", DOCS)
    res = tiny_reranker.rerank("topic 2", DOCS, top_k=3)
    assert res.ranked_by_model == 3
    assert res.order[:3] == full.order[:3]  # greedy prefix is the same
    head = set(res.order[:3])
    assert res.order[3:] == [i for i in range(len(DOCS)) if i not in head]
    assert res.stats.generated_tokens < full.stats.generated_tokens
    assert all(res.scores[i] > 0 for i in res.order[:3])
    assert all(res.scores[i] <= 0 for i in res.order[3:])


def test_rank_returns_sentence_transformers_shape(tiny_reranker):
    out = tiny_reranker.rank("topic 0", DOCS, top_k=4, return_documents=True)
    assert len(out) == 4
    assert set(out[0]) == {"corpus_id", "score", "text"}
    assert out[0]["text"] == DOCS[out[0]["corpus_id"]]
    assert [o["score"] for o in out] == sorted((o["score"] for o in out), reverse=True)


def test_batch_equals_single(tiny_reranker):
    queries = ["topic 0", "something else entirely", "topic 2"]
    docs = [DOCS, DOCS[:5], DOCS[3:10]]
    batched = tiny_reranker.rerank_batch(queries, docs)
    for q, d, b in zip(queries, docs, batched):
        assert tiny_reranker.rerank(q, d).order == b.order


def test_sliding_is_the_models_own_window_rankings_back_to_front(tiny_model, tokenizer):
    """Windows smaller than the list (12 passages, window 4, stride 2: 5 calls). The model is
    deterministic, so the sliding result must equal ranking each window's passages, back to front,
    as a full ranking of just those passages and writing that order back into the list."""
    full = Reranker(tiny_model, tokenizer, RerankerConfig(strategy="full"))
    sliding = Reranker(tiny_model, tokenizer, RerankerConfig(strategy="sliding", window_size=4, stride=2))
    res = sliding.rerank("topic 1", DOCS)
    order, starts = list(range(len(DOCS))), window_starts(len(DOCS), 4, 2)
    for start in starts:
        ids = order[start : start + 4]
        window_order = full.rerank("topic 1", [DOCS[i] for i in ids]).order
        order[start : start + 4] = [ids[k] for k in window_order]
    assert res.order == order and res.stats.llm_calls == len(starts) == 5
    assert order != list(range(len(DOCS)))  # the windows did reorder: the comparison is not vacuous
    # A window as large as the list is the one-call case: exactly the full ranking.
    whole = Reranker(tiny_model, tokenizer, RerankerConfig(strategy="sliding", window_size=12, stride=6))
    assert whole.rerank("topic 1", DOCS).order == full.rerank("topic 1", DOCS).order


def test_sliding_window_schedule_and_calls(tiny_model, tokenizer):
    rr = Reranker(tiny_model, tokenizer, RerankerConfig(strategy="sliding", window_size=4, stride=2))
    res = rr.rerank("topic 1", DOCS)
    assert is_permutation(res.order, 12)
    assert res.stats.llm_calls == len(window_starts(12, 4, 2)) == 5
    rr2 = Reranker(tiny_model, tokenizer, RerankerConfig(strategy="sliding", window_size=4, stride=2, num_passes=2))
    assert rr2.rerank("topic 1", DOCS).stats.llm_calls == 10


class LargestFirstRanker:
    """Oracle that ranks a window by the number written in each passage, largest first."""

    def rank_windows(self, windows):
        from rerank.ranking import WindowRanking

        return [
            WindowRanking(
                order=sorted(range(len(w.passages)), key=lambda i: -int(w.passages[i])), ranked=len(w.passages)
            )
            for w in windows
        ]


def test_one_sliding_pass_fixes_the_top_stride():
    orders = sliding_orders(LargestFirstRanker(), [Window("q", [str(i) for i in range(10)])], window_size=4, stride=2)
    assert orders[0][:2] == [9, 8]  # like one bubble-sort pass: the best `stride` reach the top
    assert orders[0][2:] != sorted(orders[0][2:], reverse=True)  # the rest is not fully sorted by one pass
    full = sliding_orders(
        LargestFirstRanker(), [Window("q", [str(i) for i in range(10)])], window_size=4, stride=2, num_passes=5
    )
    assert full[0] == list(range(9, -1, -1))


def test_overflow_falls_back_to_sliding_or_raises(tiny_model, tokenizer):
    docs = [" ".join(["long"] * 60) + f" {i}" for i in range(10)]
    rr = Reranker(
        tiny_model, tokenizer, RerankerConfig(max_context=500, window_size=4, stride=2, max_passage_tokens=60)
    )
    res = rr.rerank("q", docs)
    assert res.stats.fallback == "sliding" and res.stats.llm_calls > 1
    assert is_permutation(res.order, 10)
    strict = Reranker(tiny_model, tokenizer, RerankerConfig(max_context=500, on_overflow="error"))
    with pytest.raises(ValueError, match="context"):
        strict.rerank("q", docs)


def test_edge_inputs(tiny_reranker):
    assert tiny_reranker.rerank("q", []).order == []
    assert tiny_reranker.rank("q", []) == []
    one = tiny_reranker.rerank("q", ["only"])
    assert one.order == [0] and one.stats.llm_calls == 0
    res = tiny_reranker.rerank("q [1]", ["same", "same", "", "日本語 [3] ünïcode", "x " * 3000])
    assert is_permutation(res.order, 5)
    assert res.stats.truncated_passages == 1


@pytest.mark.parametrize(
    "call, exc, name",
    [
        (lambda r: r.rerank(3, ["a"]), TypeError, "query"),
        (lambda r: r.rerank("q", "a single string"), TypeError, "documents"),
        (lambda r: r.rerank("q", ["a", 5]), TypeError, r"documents\[1\]"),
        (lambda r: r.rerank("q", ["a"], top_k=0), ValueError, "top_k"),
        (lambda r: r.rerank_batch(["q"], [["a"], ["b"]]), ValueError, "same length"),
    ],
)
def test_bad_input_names_the_argument(tiny_reranker, call, exc, name):
    with pytest.raises(exc, match=name):
        call(tiny_reranker)


def test_config_validation():
    with pytest.raises(ValueError, match="strategy"):
        RerankerConfig(strategy="bubble")
    with pytest.raises(ValueError, match="stride"):
        RerankerConfig(window_size=5, stride=6)
    with pytest.raises(ValueError, match="max_passage_tokens"):
        RerankerConfig(max_passage_tokens=0)
    with pytest.raises(TypeError, match="pruning"):
        RerankerConfig(pruning=0.5)
    with pytest.raises(TypeError, match="unknown"):
        Reranker.from_pretrained(windowsize=3)


def test_multi_token_step_equals_single_steps_and_full_forward(tiny_model):
    ids = list(range(5, 60))
    multi = DenseSession(tiny_model, 0)
    multi.prefill([ids])
    got = multi.step(torch.tensor([[7, 8, 9]]))
    single = DenseSession(tiny_model, 0)
    single.prefill([ids])
    for tok in (7, 8):
        single.step(torch.tensor([tok]))
    want = single.step(torch.tensor([9]))
    with torch.inference_mode():
        full = tiny_model(torch.tensor([ids + [7, 8, 9]])).logits[0, -1]
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(got[0], full, atol=1e-4)


def test_left_padded_batch_matches_unpadded(tiny_model):
    short, long = list(range(5, 30)), list(range(5, 70))
    batch = DenseSession(tiny_model, 0)
    logits = batch.prefill([short, long])
    step = batch.step(torch.tensor([3, 4]))
    for row, ids, tok in ((0, short, 3), (1, long, 4)):
        alone = DenseSession(tiny_model, 0)
        assert torch.allclose(alone.prefill([ids])[0], logits[row], atol=1e-4)
        assert torch.allclose(alone.step(torch.tensor([tok]))[0], step[row], atol=1e-4)


def test_sliding_top_k_cuts_only_the_last_window(tiny_model, tokenizer):
    rr = Reranker(tiny_model, tokenizer, RerankerConfig(strategy="sliding", window_size=6, stride=3))
    full = rr.rerank("topic 1", DOCS)
    cut = rr.rerank("topic 1", DOCS, top_k=2)
    assert cut.order[:2] == full.order[:2]
    assert is_permutation(cut.order, 12) and cut.ranked_by_model == 2
    assert cut.stats.llm_calls == full.stats.llm_calls
    assert cut.stats.generated_tokens < full.stats.generated_tokens


def test_sliding_windows_carry_docids_to_teachers():
    from rerank.labels.teachers import QrelsTeacher

    qrels = {"q": {"d7": 3, "d2": 1}}
    w = Window("q", [f"text {i}" for i in range(10)], qid="q", docids=[f"d{i}" for i in range(10)])
    order = sliding_orders(QrelsTeacher(qrels), [w], window_size=4, stride=2)[0]
    assert order[:2] == [7, 2]
