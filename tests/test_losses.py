"""ImportanceAwareLoss: weights, rank derivation for two different tokenizers, hand-computed losses."""

from __future__ import annotations

import math

import pytest
import torch

from rerank.prompting.prompts import encode_target, format_ranking
from rerank.training.losses import (
    IGNORE_INDEX,
    ImportanceAwareLoss,
    LMLoss,
    build_loss,
    rank_weights,
    target_with_ranks,
)


@pytest.fixture(scope="module")
def word_tokenizer():
    """A second, very different tokenizer: whole numbers are ONE token, the separator's space is its own token."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, "[": 2, "]": 3, " >": 4, " ": 5}
    for n in range(1, 31):
        vocab[str(n)] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\d+| >|\[|\]|\s|[^\s\[\]\d>]+"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")


def test_rank_weights_match_the_formula():
    w = rank_weights(torch.tensor([1, 2, 10, 100, 0]), alpha=0.5)
    # 1 + 1/log2(r+1): r=1 -> 2, r=2 -> 1 + 1/1.58496 = 1.63093, r=10 -> 1 + 1/3.45943 = 1.28906,
    # r=100 -> 1 + 1/6.65821 = 1.15019; rank 0 (separator / end) -> alpha
    assert w.tolist() == pytest.approx([2.0, 1.63093, 1.28906, 1.15019, 0.5], abs=1e-5)


def test_ranks_for_smollm2_tokens(tokenizer):
    ids, ranks = target_with_ranks(tokenizer, [1, 0])
    assert ids == encode_target(tokenizer, [1, 0])
    pieces = [tokenizer.decode([i]) for i in ids]
    assert pieces == ["[", "2", "]", " >", " [", "1", "]", "<|im_end|>"]
    # the merged " [" spells part of identifier 2's bracket -> rank 2; " >" and the end token -> 0
    assert ranks == [1, 1, 1, 0, 2, 2, 2, 0]


def test_ranks_for_smollm2_multidigit(tokenizer):
    order = [11, 2, 0, 9, 1, 3, 4, 5, 6, 7, 8, 10]  # "[12] > [3] > [1] > [10] > ..."
    ids, ranks = target_with_ranks(tokenizer, order)
    assert ids == encode_target(tokenizer, order)
    pieces = [tokenizer.decode([i]) for i in ids]
    assert pieces[:4] == ["[", "1", "2", "]"] and ranks[:4] == [1, 1, 1, 1]
    assert pieces[13:17] == [" [", "1", "0", "]"] and ranks[13:17] == [4, 4, 4, 4]
    assert ranks.count(0) == len(order)  # 11 separators + the end token
    # every rank appears, in output order, on the tokens of its identifier
    assert [r for i, r in enumerate(ranks) if r and (i == 0 or ranks[i - 1] != r)] == list(range(1, 13))


def test_ranks_for_word_level_tokenizer(word_tokenizer):
    ids, ranks = target_with_ranks(word_tokenizer, [11, 2])  # "[12] > [3]"
    pieces = word_tokenizer.convert_ids_to_tokens(ids)
    assert pieces == ["[", "12", "]", " >", " ", "[", "3", "]", "<eos>"]
    assert ranks == [1, 1, 1, 0, 0, 2, 2, 2, 0]  # the lone space belongs to the separator here
    assert ids[:-1] == word_tokenizer(format_ranking([11, 2]), add_special_tokens=False)["input_ids"]


def _uniform_case(tokenizer, order, vocab):
    """Prompt of 2 tokens + response; all-zero logits make every token cost log(vocab)."""
    ids, ranks = target_with_ranks(tokenizer, order)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX] + ids])
    rank_ids = torch.tensor([[0, 0] + ranks])
    logits = torch.zeros(1, labels.size(1), vocab)
    return logits, labels, rank_ids


def test_loss_hand_computed_smollm2(tokenizer):
    logits, labels, rank_ids = _uniform_case(tokenizer, [1, 0], vocab=len(tokenizer))
    log_v = math.log(len(tokenizer))
    # weights 2,2,2,1,1.63093,1.63093,1.63093,1 -> sum 12.89279 over 8 response tokens
    expected = 12.89279 / 8 * log_v
    assert ImportanceAwareLoss()(logits, labels, rank_ids).item() == pytest.approx(expected, rel=1e-5)
    # normalised by the weight sum, a uniform NLL stays exactly log V; plain LM loss too
    assert ImportanceAwareLoss(normalize="weights")(logits, labels, rank_ids).item() == pytest.approx(log_v, rel=1e-6)
    assert LMLoss()(logits, labels, rank_ids).item() == pytest.approx(log_v, rel=1e-6)
    # alpha = 0.5 halves the two rank-0 tokens: (12.89279 - 1) / 8
    assert ImportanceAwareLoss(alpha=0.5)(logits, labels, rank_ids).item() == pytest.approx(
        11.89279 / 8 * log_v, rel=1e-5
    )


def test_loss_hand_computed_word_level(word_tokenizer):
    logits, labels, rank_ids = _uniform_case(word_tokenizer, [11, 2], vocab=len(word_tokenizer))
    log_v = math.log(len(word_tokenizer))
    # 9 tokens: ranks 1,1,1,0,0,2,2,2,0 -> weights 3*2 + 3*1 + 3*1.63093 = 13.89279
    assert ImportanceAwareLoss()(logits, labels, rank_ids).item() == pytest.approx(13.89279 / 9 * log_v, rel=1e-5)


def test_loss_hand_computed_nonuniform():
    # vocab 2; position t predicts labels[t+1]. Logits [0, ln 3] give p(0)=1/4, p(1)=3/4.
    logits = torch.tensor([[[0.0, math.log(3.0)]] * 4])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0, 1]])  # response tokens at t=1..3: nll ln(4/3), ln 4, ln(4/3)
    rank_ids = torch.tensor([[0, 1, 0, 2]])  # weights 2, 1 (alpha), 1.63093
    a, b = math.log(4 / 3), math.log(4)  # 0.287682, 1.386294
    expected = (2 * a + 1 * b + 1.630930 * a) / 3  # = (0.575364 + 1.386294 + 0.469193) / 3 = 0.810283
    assert ImportanceAwareLoss()(logits, labels, rank_ids).item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.810283, abs=1e-6)
    assert ImportanceAwareLoss(normalize="weights")(logits, labels, rank_ids).item() == pytest.approx(
        (2 * a + b + 1.630930 * a) / 4.630930, rel=1e-5
    )


def test_padding_and_prompt_are_ignored():
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor(
        [[IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX], [IGNORE_INDEX, 3, 4, IGNORE_INDEX, IGNORE_INDEX]]
    )
    ranks = torch.tensor([[0, 0, 1, 0, 0], [0, 1, 0, 0, 0]])
    loss = ImportanceAwareLoss()(logits, labels, ranks)
    # changing logits that predict ignored positions must not change the loss
    changed = logits.clone()
    changed[0, 0] += 5.0  # predicts labels[0,1] = -100
    changed[1, 3:] -= 3.0  # predict padding
    assert ImportanceAwareLoss()(changed, labels, ranks).item() == pytest.approx(loss.item(), rel=1e-6)


def test_lm_loss_equals_the_models_own_loss(tiny_model):
    torch.manual_seed(0)
    ids = torch.randint(5, 200, (2, 12))
    labels = ids.clone()
    labels[:, :7] = IGNORE_INDEX
    with torch.no_grad():
        out = tiny_model(input_ids=ids, labels=labels)
    ours = LMLoss()(out.logits, labels)
    assert ours.item() == pytest.approx(out.loss.item(), rel=1e-5)


def test_gradient_and_builder():
    logits = torch.randn(1, 4, 5, requires_grad=True)
    loss = build_loss("importance", alpha=1.0)(
        logits, torch.tensor([[IGNORE_INDEX, 1, 2, 3]]), torch.tensor([[0, 1, 0, 2]])
    )
    loss.backward()
    assert logits.grad[0, 3].abs().sum() == 0  # the last position predicts nothing
    assert logits.grad[0, :3].abs().sum() > 0
    assert isinstance(build_loss("lm"), LMLoss)
    with pytest.raises(ValueError):
        build_loss("focal")
    with pytest.raises(ValueError):
        ImportanceAwareLoss(normalize="mean")
    with pytest.raises(ValueError):
        ImportanceAwareLoss()(logits, torch.tensor([[IGNORE_INDEX, 1, 2, 3]]))
