"""Single-pass identifier scoring equals teacher-forced log-probabilities, for two tokenizers."""

import pytest
import torch
from support import make_tiny_llama

from rerank import Reranker, RerankerConfig
from rerank.engine import DenseSession
from rerank.engine.decoding import TokenTable
from rerank.engine.single_pass import score_identifiers
from rerank.prompting.identifiers import is_permutation
from rerank.prompting.prompts import encode_prompt


@pytest.fixture(scope="module")
def number_tokenizer():
    """A word-level tokenizer where whole numbers are single tokens (unlike SmolLM2's digits)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "<pad>", "<eos>", "[", "]", ">", "(", ")", ".", ",", ":", "doc", "q", "a", "b"]
    vocab = {w: i for i, w in enumerate(words + [str(i) for i in range(1, 31)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="<pad>", eos_token="<eos>")


def teacher_forced(model, prompt, seq):
    ids = list(prompt) + list(seq)
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    start = len(prompt)
    return sum(float(logp[start - 1 + j, ids[start + j]]) for j in range(len(seq)))


@pytest.mark.parametrize("which", ["digits", "numbers"])
def test_batched_tree_scores_equal_teacher_forcing(which, tokenizer, tiny_model, number_tokenizer):
    tok, model = (
        (tokenizer, tiny_model) if which == "digits" else (number_tokenizer, make_tiny_llama(len(number_tokenizer)))
    )
    table = TokenTable.for_tokenizer(tok)
    assert table.canonical.available
    first, _ = table.canonical.pieces(12)
    if which == "numbers":
        assert len(first[12]) == 3  # "[", "12", "]"
    else:
        assert len(first[12]) == 4  # "[", "1", "2", "]"
    encs = [
        encode_prompt(tok, "q a", [f"doc {i} a b" for i in range(12)], 20),
        encode_prompt(tok, "q", ["doc a", "doc b", "a b"], 20),
    ]  # shorter: left-padded in the batch
    out = score_identifiers(DenseSession(model, tok.pad_token_id), [e.input_ids for e in encs], [12, 3], table)
    for row, enc in enumerate(encs):
        want = [teacher_forced(model, enc.input_ids, first[k]) for k in range(1, enc.num_passages + 1)]
        assert out.scores[row] == pytest.approx(want, abs=1e-4)
    # one tree pass: the tree holds each shared prefix once ("[" and "1" for 1, 10, 11, 12)
    assert out.tree_tokens[0] < sum(len(first[k]) for k in range(1, 13))


def test_single_pass_reranker_orders_by_score(tiny_model, tokenizer):
    rr = Reranker(tiny_model, tokenizer, RerankerConfig(scoring="single_pass"))
    docs = [f"passage {i}" for i in range(15)]
    res = rr.rerank("query", docs)
    assert is_permutation(res.order, 15)
    assert [res.scores[i] for i in res.order] == sorted(res.scores, reverse=True)
    assert all(s < 0 for s in res.scores)  # log-probabilities
    assert res.stats.generated_tokens == 0 and res.stats.llm_calls == 1
    top = rr.rank("query", docs, top_k=3)
    assert [t["corpus_id"] for t in top] == res.order[:3]
    batch = rr.rerank_batch(["query", "other"], [docs, docs[:4]])
    assert batch[0].order == res.order
    assert batch[0].scores == pytest.approx(res.scores, abs=1e-4)


def test_single_pass_sliding_uses_the_same_primitive(tiny_model, tokenizer):
    rr = Reranker(
        tiny_model, tokenizer, RerankerConfig(scoring="single_pass", strategy="sliding", window_size=6, stride=3)
    )
    res = rr.rerank("query", [f"passage {i}" for i in range(12)])
    assert is_permutation(res.order, 12) and res.stats.llm_calls == 3


def test_scoring_validated():
    with pytest.raises(ValueError, match="scoring"):
        RerankerConfig(scoring="logits")
