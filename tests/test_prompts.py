"""The shared prompt: content, sanitising, token budget, passage spans."""

from rerank.prompting.prompts import (
    PromptEncoding,
    encode_prompt,
    encode_target,
    end_of_turn_ids,
    format_ranking,
    sanitize,
    truncate_passages,
)


def test_sanitize_rewrites_identifiers_and_whitespace():
    assert sanitize("see [3] and [12]\n\tok") == "see (3) and (12) ok"
    assert sanitize("[x] stays") == "[x] stays"


def test_format_ranking_is_one_based():
    assert format_ranking([2, 0, 1]) == "[3] > [1] > [2]"


def test_prompt_contains_every_passage_once_and_instructions(tokenizer):
    passages = ["alpha passage", "beta [2] passage", "gamma"]
    enc = encode_prompt(tokenizer, "what is [1] alpha", passages, max_passage_tokens=50)
    text = enc.text
    assert "I will provide you with 3 passages" in text
    assert "[1] alpha passage\n[2] beta (2) passage\n[3] gamma\n" in text
    assert "Search Query: what is (1) alpha." in text
    assert text.endswith("<|im_start|>assistant\n")
    assert enc.num_passages == 3


def test_passage_spans_cover_exactly_the_bodies(tokenizer):
    passages = ["first body text here", "second one", "a third passage body"]
    enc = encode_prompt(tokenizer, "q", passages, max_passage_tokens=None)
    for (start, end), body in zip(enc.passage_spans, passages):
        assert tokenizer.decode(enc.input_ids[start:end]).strip() == body
    mask = enc.prunable_mask()
    assert sum(mask) == sum(e - s for s, e in enc.passage_spans)
    # identifiers and the final assistant prefix are never prunable
    assert not mask[-1]


def test_token_budget_is_in_tokens(tokenizer):
    long = " ".join(["word"] * 500)
    texts, cut = truncate_passages(tokenizer, [long, "short"], 10)
    assert cut == 1
    assert len(tokenizer(texts[0], add_special_tokens=False)["input_ids"]) <= 10
    assert texts[1] == "short"


def test_target_ends_with_end_of_turn(tokenizer):
    ids = encode_target(tokenizer, [1, 0])
    assert tokenizer.decode(ids) == "[2] > [1]<|im_end|>"
    assert end_of_turn_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_empty_passage_and_unicode(tokenizer):
    enc = encode_prompt(tokenizer, "café ☕", ["", "naïve résumé 日本語"], 20)
    assert isinstance(enc, PromptEncoding)
    assert enc.passage_spans[0][0] == enc.passage_spans[0][1]  # empty body: empty span
    start, end = enc.passage_spans[1]
    assert "日本語" in tokenizer.decode(enc.input_ids[start:end])
