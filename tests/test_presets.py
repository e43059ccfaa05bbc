"""Prompt presets: token-exact against rank_llm 0.25.7 where it covers them, hand-written strings
from shared/docs/PRESETS.md otherwise; letter identifiers end to end; spans after ftfy."""

from __future__ import annotations

import copy
import importlib
import os
import random
import re
import sys
import types

import pytest
import torch
from support import make_tiny_llama

from rerank import Reranker, RerankerConfig
from rerank.engine import DenseSession
from rerank.engine.decoding import PermutationConstraint, TokenTable
from rerank.engine.single_pass import score_identifiers
from rerank.prompting.identifiers import LETTERS, NUMBERS, is_permutation, parse_ranking
from rerank.prompting.presets import PRESETS, PromptPreset, get_preset
from rerank.prompting.prompts import encode_prompt, encode_target, fix_text_keeping_spans

ftfy = pytest.importorskip("ftfy", reason="ftfy is a dependency of the published-reranker presets")

# HuggingFaceH4/zephyr-7b-beta's chat template (RankZephyr and FIRST ship it).
ZEPHYR_JINJA = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
# A template with no system turn (the word never appears): FIRST then prepends the system message.
NO_SYSTEM_JINJA = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}<assistant>"

RANK_LLM_SYS = "You are RankLLM, an intelligent assistant that can rank passages based on their relevancy to the query"
PAPER_POST = (
    "Search Query: {q}.\nRank the {n} passages above based on their relevance to the search query. All the "
    "passages should be included and listed using identifiers, in descending order of relevance. The "
    "output format should be [] > [], e.g., {ex}, Only respond with the ranking results, do not say any "
    "word or explain."
)


@pytest.fixture(scope="module")
def zephyr_tok(tokenizer):
    """The local tokenizer carrying Zephyr's chat template and ``</s>`` as its end-of-sequence text."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = ZEPHYR_JINJA
    tok.eos_token = "</s>"
    return tok


@pytest.fixture(scope="module")
def plain_tok(tokenizer):
    """The local tokenizer without a chat template (presets fall back to their format strings)."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    return tok


def bodies(enc, tokenizer) -> list[str]:
    return [tokenizer.decode(enc.input_ids[s:e]).strip() for s, e in enc.passage_spans]


def lines_in_text(text: str, labels: list[str]) -> list[str]:
    """Passage bodies as rendered, read back from the text: what follows ``[k] `` up to the line end."""
    out = []
    for label in labels:
        match = re.search(r"(?:^|\n|>)\[" + re.escape(label) + r"\] (.*?)(?:</s>|<\|im_end\|>|\n|$)", text)
        assert match, label
        out.append(match.group(1).strip())
    return out


# ------------------------------------------------------------------ registry and config
def test_registry_and_unknown_names():
    assert {"lazyrank", "rank_zephyr", "rank_vicuna", "rank_llm_v2", "first", "rank_mistral100", "rank_gpt"} <= set(
        PRESETS
    )
    assert get_preset(None) is PRESETS["lazyrank"]
    with pytest.raises(ValueError, match="known presets: .*rank_zephyr"):
        get_preset("rankzephyr")
    with pytest.raises(ValueError, match="known presets"):
        RerankerConfig(prompt="zephyr")
    with pytest.raises(ValueError, match="at most 26"):
        RerankerConfig(prompt="first", window_size=30, stride=10)
    assert RerankerConfig(prompt="first").prompt == "first"
    with pytest.raises(ValueError, match="multi_turn"):
        PromptPreset(
            name="x",
            checkpoints="",
            system=None,
            prefix="",
            passage="[{id}] {text}",
            post="",
            example="",
            multi_turn=True,
        )


# ------------------------------------------------------------------ hand-written strings (PRESETS.md)
def test_rank_zephyr_exact_with_template_and_fallback(zephyr_tok, plain_tok):
    q, docs = "what is [1] rope", ["Title: Content:  a [2] b  ", "c"]
    user = (
        "I will provide you with 2 passages, each indicated by a numerical identifier []. Rank the passages "
        "based on their relevance to the search query: what is [1] rope.\n\n"  # query not rewritten
        "[1] a (2) b\n[2] c\n" + PAPER_POST.format(q="what is [1] rope", n=2, ex="[2] > [1]")
    )
    want = f"<|system|>\n{RANK_LLM_SYS}</s>\n<|user|>\n{user}</s>\n<|assistant|>\n"
    for tok in (zephyr_tok, plain_tok):  # Zephyr's jinja template and the FastChat format string agree
        enc = encode_prompt(tok, q, docs, preset="rank_zephyr")
        assert enc.text == want
        assert bodies(enc, tok) == ["a (2) b", "c"]


def test_rank_vicuna_exact_even_with_a_chat_template(tokenizer, plain_tok):
    sys_msg = (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions."
    )
    user = (
        "I will provide you with 1 passages, each indicated by a numerical identifier []. Rank the passages "
        "based on their relevance to the search query: q.\n\n[1] only one\n"
        + PAPER_POST.format(q="q", n=1, ex="[4] > [2]")
    )
    for tok in (tokenizer, plain_tok):
        enc = encode_prompt(tok, "q", ["only   one"], preset="rank_vicuna")
        assert enc.text == f"{sys_msg} USER: {user} ASSISTANT:"
        assert bodies(enc, tok) == ["only one"]
    assert encode_target(tokenizer, [0], "rank_vicuna")[-1] == tokenizer.eos_token_id


def test_rank_mistral100_exact(tokenizer):
    long = " ".join(f"w{i}" for i in range(150))
    enc = encode_prompt(tokenizer, "  q [7] ", [long, "x"], preset="rank_mistral100")
    user = (
        "I will provide you with 2 passages, each indicated by a numerical identifier []. Rank the passages "
        "based on their relevance to the search query: q (7).\n\n"  # stripped and rewritten
        "[1] " + " ".join(f"w{i}" for i in range(100)) + "\n[2] x\n" + PAPER_POST.format(q="q (7)", n=2, ex="[2] > [1]")
    )
    assert enc.text == f"[INST] {RANK_LLM_SYS}.\n{user} [/INST]"
    assert enc.truncated_passages == 1
    assert bodies(enc, tokenizer)[0].split()[-1] == "w99"


def test_first_letters_and_system_placement(zephyr_tok, tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = NO_SYSTEM_JINJA
    docs = ["see [A] and [3]", "b", "c"]
    user = (
        "I will provide you with 3 passages, each indicated by a alphabetical identifier []. Rank the passages "
        "based on their relevance to the search query: q [B].\n\n"
        "[A] see (A) and [3]\n[B] b\n[C] c\n" + PAPER_POST.format(q="q [B]", n=3, ex="[B] > [A]")
    )
    with_system = encode_prompt(zephyr_tok, "q [B]", docs, preset="first")
    assert with_system.text == f"<|system|>\n{RANK_LLM_SYS}</s>\n<|user|>\n{user}</s>\n<|assistant|>\n"
    prepended = encode_prompt(tok, "q [B]", docs, preset="first")
    assert prepended.text == f"<user>{RANK_LLM_SYS}\n {user}</s><assistant>"
    for enc, t in ((with_system, zephyr_tok), (prepended, tok)):
        assert bodies(enc, t) == ["see (A) and [3]", "b", "c"]
    assert tokenizer.decode(encode_target(tokenizer, [1, 0, 2], "first")) == "[B] > [A] > [C]<|im_end|>"


def test_letters_refuse_more_than_26(tokenizer):
    docs = [f"d{i}" for i in range(27)]
    enc = encode_prompt(tokenizer, "q", docs[:26], preset="first")
    assert "[Z] d25\n" in enc.text
    with pytest.raises(ValueError, match="at most 26"):
        encode_prompt(tokenizer, "q", docs, preset="first")
    with pytest.raises(ValueError, match="at most 26"):
        LETTERS.label(27)


def test_rank_gpt_multi_turn(tokenizer):
    enc = encode_prompt(tokenizer, "q [1]", ["Title: Content: a [2]", "b " * 400], preset="rank_gpt")
    messages = [
        {
            "role": "system",
            "content": "You are RankGPT, an intelligent assistant that can rank passages based on "
            "their relevancy to the query.",
        },
        {
            "role": "user",
            "content": "I will provide you with 2 passages, each indicated by number identifier []. \n"
            "Rank the passages based on their relevance to query: q [1].",
        },
        {"role": "assistant", "content": "Okay, please provide the passages."},
        {"role": "user", "content": "[1] a [2]"},  # no rewriting in RankGPT
        {"role": "assistant", "content": "Received passage [1]."},
        {"role": "user", "content": "[2] " + " ".join(["b"] * 300)},  # 300 words
        {"role": "assistant", "content": "Received passage [2]."},
        {
            "role": "user",
            "content": "Search Query: q [1]. \nRank the 2 passages above based on their relevance to the "
            "search query. The passages should be listed in descending order using identifiers. "
            "The most relevant passages should be listed first. The output format should be "
            "[] > [], e.g., [1] > [2]. Only response the ranking results, do not say any word "
            "or explain.",
        },
    ]
    assert enc.text == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert bodies(enc, tokenizer) == ["a [2]", " ".join(["b"] * 300)]


# ------------------------------------------------------------------ ftfy keeps spans
@pytest.mark.parametrize("text_first", ["<|user|>\n", "USER: "])  # with and without a '<' before the passages
def test_fix_text_keeping_spans_equals_fix_text_of_the_whole(text_first):
    bodies_in = ["“curly” ＦＵＬＬ ﬁne", "caf\u00c3\u00a9 mojibake", "a &amp; b", "x\r\ny", "plain"]
    text, spans = text_first, []
    for i, b in enumerate(bodies_in, 1):
        text += f"[{i}] "
        spans.append((len(text), len(text) + len(b)))
        text += b + "\n"
    text += "Search &lt;Query&gt;\n"
    fixed, moved = fix_text_keeping_spans(text, spans)
    assert fixed == ftfy.fix_text(text)
    got = [fixed[s:e] for s, e in moved]
    assert got[0] == '"curly" FULL fine' and got[1] == "café mojibake" and got[4] == "plain"
    assert got[3] == "x\ny"
    # HTML unescaping is ftfy's only cross-line state: off once a line holds '<'.
    assert got[2] == ("a &amp; b" if text_first.startswith("<") else "a & b")


# ------------------------------------------------------------------ rank_llm 0.25.7 reference
def _import_rank_llm():
    """rank_llm's prompt code without its heavy dependencies.

    ``rank_llm/rerank/__init__.py`` and ``.../listwise/__init__.py`` import vllm, torch, openai and
    dotenv; the package modules are replaced by empty ones pointing at the real folders (their
    ``__init__`` is skipped), and an empty ``vllm`` (with the three names rank_listwise_os_llm
    annotates with) is present only while importing, so no other test ever sees a fake vllm.
    """
    rank_llm = pytest.importorskip("rank_llm", reason="rank_llm not installed (scripts/setup.sh installs it --no-deps)")
    root = os.path.dirname(rank_llm.__file__)
    added = []

    def stub(name, **attrs):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            sys.modules[name] = module
            added.append(name)

    stub("vllm", RequestOutput=object, SamplingParams=object, LLM=object)
    stub("vllm.outputs", RequestOutput=object)
    stub("rank_llm.rerank", __path__=[os.path.join(root, "rerank")])
    stub("rank_llm.rerank.listwise", __path__=[os.path.join(root, "rerank", "listwise")])
    try:
        single = importlib.import_module("rank_llm.rerank.listwise.singleturn_listwise_inference_handler")
        os_llm = importlib.import_module("rank_llm.rerank.listwise.rank_listwise_os_llm")
        data = importlib.import_module("rank_llm.data")
        import yaml

        templates = {
            name: yaml.safe_load(open(os.path.join(root, "rerank", "prompt_templates", f"{name}.yaml")))
            for name in ("rank_zephyr_template", "rank_zephyr_alpha_template")
        }
    except Exception as err:  # pragma: no cover - depends on the installed rank_llm
        pytest.skip(f"rank_llm 0.25.7 prompt code cannot be imported without its heavy deps: {err!r}")
    finally:
        for name in ("vllm", "vllm.outputs"):
            if name in added:
                sys.modules.pop(name)
    return single, os_llm, data, templates


@pytest.fixture(scope="module")
def rank_llm_ref():
    return _import_rank_llm()


def reference_prompt(rank_llm_ref, tok, query, docs, use_alpha=False, context=4096):
    """rank_llm's own RankListwiseOSLLM.create_prompt (truncation, shrink loop, chat template, fix_text)."""
    single, os_llm, data, templates = rank_llm_ref
    handler = single.SingleTurnListwiseInferenceHandler(
        templates["rank_zephyr_alpha_template" if use_alpha else "rank_zephyr_template"]
    )
    result = data.Result(
        query=data.Query(text=query, qid="q1"),
        candidates=[data.Candidate(docid=str(i), score=-float(i), doc=doc) for i, doc in enumerate(docs)],
    )
    n = len(docs)
    # create_prompt needs only these attributes of the vLLM-backed reranker.
    fake = types.SimpleNamespace(
        _inference_handler=handler,
        _tokenizer=tok,
        _use_alpha=use_alpha,
        _num_few_shot_examples=0,
        _examples=[],
        _is_thinking=False,
        _window_size=n,
        _output_token_estimate=None,
    )
    fake.max_tokens = lambda: context
    fake.num_output_tokens = lambda w=None: os_llm.RankListwiseOSLLM.num_output_tokens(fake, w)
    fake.get_num_tokens = lambda p: os_llm.RankListwiseOSLLM.get_num_tokens(fake, p)
    prompt, _ = os_llm.RankListwiseOSLLM.create_prompt(fake, result, 0, n)
    return prompt


def as_text(doc: dict) -> str:
    """Our string for a rank_llm doc: ``Title: {t} Content: {text}`` when titled (as rank_llm builds it)."""
    from rerank.data.rank_llm_files import document_text

    return document_text(doc)


WORDS = "alpha beta gamma [3] delta “quoted” ＦＵＬＬ ﬁsh café &amp; <b>bold</b> [A] x\ty".split(" ")


def _random_docs(rng, n, max_words):
    docs = []
    for i in range(n):
        text = "  " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, max_words))) + " \n"
        docs.append({"contents": text} if i % 3 else {"title": f"T{i} [2]", "text": text})
    return docs


@pytest.mark.parametrize("case", ["edge", "one", "twenty_long", "hundred", "shrink", "letters"])
def test_rank_llm_v2_token_exact(case, rank_llm_ref, zephyr_tok):
    rng = random.Random(case)
    query = "what is [1] the “best” ＦＵＬＬ query"
    use_alpha, context = False, 4096
    if case == "edge":
        docs = [
            {"contents": "see [3] and [12] “curly” ＦＵＬＬ ﬁne &amp; <tag>"},
            {"title": "", "text": "no title"},
            {"title": "Title", "segment": "  spaced\r\ntext  "},
            {"contents": ""},
        ]
    elif case == "one":
        docs = [{"contents": " ".join(["w"] * 7000)}]  # one passage: budget 6000 words
    elif case == "twenty_long":
        docs = _random_docs(rng, 20, 400)  # over the 300-word budget
    elif case == "hundred":
        docs = _random_docs(rng, 100, 80)  # 60 words each, over 4096 -> shrinks
    elif case == "shrink":
        docs, context = _random_docs(rng, 10, 300), 1500
    else:
        docs, use_alpha = _random_docs(rng, 20, 40), True  # FirstMistral's alphabetical template
    preset = "first_mistral" if use_alpha else "rank_llm_v2"
    want = reference_prompt(rank_llm_ref, zephyr_tok, query, docs, use_alpha, context)
    enc = encode_prompt(zephyr_tok, query, [as_text(d) for d in docs], preset=preset, max_tokens=context)
    assert enc.text == want
    assert enc.input_ids == zephyr_tok(want)["input_ids"]
    labels = [(LETTERS if use_alpha else NUMBERS).label(k) for k in range(1, len(docs) + 1)]
    assert bodies(enc, zephyr_tok) == lines_in_text(enc.text, labels)
    if case in ("hundred", "shrink"):
        unshrunk = encode_prompt(zephyr_tok, query, [as_text(d) for d in docs], preset=preset)
        assert len(unshrunk.input_ids) > context >= len(enc.input_ids)  # the shrink rule actually ran


# ------------------------------------------------------------------ spans for every preset
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_spans_cover_bodies_for_every_preset(name, zephyr_tok):
    docs = ["first [2] “body” ＦＵＬＬ", "Title: T Content: second ﬁne", "x " * 2000, ""]  # over every budget
    enc = encode_prompt(zephyr_tok, "q", docs, 20, preset=name)
    ids = get_preset(name).ids
    labels = [ids.label(k) for k in range(1, 5)]
    assert bodies(enc, zephyr_tok) == lines_in_text(enc.text, labels)
    assert enc.passage_spans[3][0] == enc.passage_spans[3][1]  # empty body: empty span
    assert enc.truncated_passages == 1


# ------------------------------------------------------------------ letters: decoding and scoring
def test_parse_letters():
    assert parse_ranking("[B] > [A]", 3, LETTERS) == [1, 0, 2]
    assert parse_ranking("[C] > [C] > [Z] > [a] > [A]", 3, LETTERS) == [2, 0, 1]
    assert parse_ranking("[2] > [1]", 2, LETTERS) == [0, 1]  # numbers are not letters


def test_letter_constraints_always_give_permutations(tokenizer):
    table = TokenTable.for_tokenizer(tokenizer, LETTERS)
    assert table is TokenTable.for_tokenizer(tokenizer, LETTERS) and table is not TokenTable.for_tokenizer(tokenizer)
    rng = random.Random(0)
    for n in (1, 2, 20, 26):
        for canonical in (True, False):
            c = table.constraint(n, canonical=canonical)
            while not c.done:
                allowed = c.allowed()
                assert allowed, f"dead end at n={n}"
                assert c.advance(rng.choice(allowed))
            assert is_permutation([k - 1 for k in c.emitted], n)
    c = PermutationConstraint(3, ids=LETTERS)
    assert not c.feed("[D]") and not c.feed("[1]") and c.feed("[C] > [A]")
    assert not c.feed(" > [A]") and c.feed(" > [B]") and c.done
    with pytest.raises(ValueError, match="at most 26"):
        table.constraint(27)


def test_first_reranker_random_model_gives_permutations(tiny_model, tokenizer):
    docs = [f"passage {i} about [A] things" for i in range(30)]
    rr = Reranker(tiny_model, tokenizer, RerankerConfig(prompt="first", batch_size=2))
    assert rr.table.ids is LETTERS
    res = rr.rerank("query", docs[:20])
    assert is_permutation(res.order, 20)
    # 30 passages cannot be lettered in one prompt: the full strategy falls back to windows of 20.
    res = rr.rerank("query", docs)
    assert is_permutation(res.order, 30) and res.stats.fallback == "sliding"
    single = Reranker(tiny_model, tokenizer, RerankerConfig(prompt="first", scoring="single_pass"))
    res = single.rerank("query", docs[:20])
    assert is_permutation(res.order, 20)


def teacher_forced(model, prompt, seq):
    ids = list(prompt) + list(seq)
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return sum(float(logp[len(prompt) - 1 + j, ids[len(prompt) + j]]) for j in range(len(seq)))


def test_single_pass_reads_letters(tokenizer):
    model = make_tiny_llama(len(tokenizer), layers=2, seed=3)
    table = TokenTable.for_tokenizer(tokenizer, LETTERS)
    assert table.canonical.available
    enc = encode_prompt(tokenizer, "q", [f"doc {i}" for i in range(22)], preset="first")
    out = score_identifiers(DenseSession(model, tokenizer.pad_token_id), [enc.input_ids], [22], table)
    first, _ = table.canonical.pieces(22)
    assert tokenizer.decode(list(first[2])) == "[B]"
    want = [teacher_forced(model, enc.input_ids, first[k]) for k in range(1, 23)]
    assert out.scores[0] == pytest.approx(want, abs=1e-4)


def test_reranker_uses_the_configured_preset(tiny_model, tokenizer):
    from rerank.ranking import Window

    rr = Reranker(tiny_model, tokenizer, RerankerConfig(prompt="rank_zephyr"))
    enc = rr.encode(Window(query="q", passages=["a", "b"]))
    assert "e.g., [2] > [1], Only respond" in enc.text and "\n\n[1] a\n[2] b\n" in enc.text
    assert rr.answer_budget(2) == len(encode_target(tokenizer, [0, 1], "rank_zephyr"))


def test_bos_added_once(plain_tok):
    """Word-budget presets tokenise with BOS (as rank_llm's runs do), never twice, spans unchanged."""
    import dataclasses

    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(plain_tok)
    bos = "<|endoftext|>"
    tok.bos_token = bos
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))]
    )
    docs = ["first body", "second [1] body"]
    enc = encode_prompt(tok, "q", docs, preset="rank_vicuna")
    assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids[1] != tok.bos_token_id
    assert bodies(enc, tok) == ["first body", "second (1) body"]
    own_bos = dataclasses.replace(PRESETS["rank_vicuna"], chat_format=bos + "{system} USER: {user} ASSISTANT:")
    enc = encode_prompt(tok, "q", docs, preset=own_bos)
    assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids[1] != tok.bos_token_id
    assert bodies(enc, tok) == ["first body", "second (1) body"]
    lazy = encode_prompt(tok, "q", docs, 20)  # the LazyRank prompt never adds special tokens
    assert lazy.input_ids[0] != tok.bos_token_id


def test_reranker_shrinks_windows_to_the_context(tiny_model, tokenizer):
    """rank_llm's shrink rule inside the engine: long passages, a small context, every window fits."""
    from rerank.ranking import Window

    docs = [" ".join(f"w{i}x{j}" for j in range(200)) for i in range(8)]
    config = RerankerConfig(prompt="rank_zephyr", strategy="sliding", window_size=5, stride=3, max_context=700)
    rr = Reranker(tiny_model, tokenizer, config)
    res = rr.rerank("query", docs)
    assert is_permutation(res.order, 8)
    enc = rr.encode(Window(query="query", passages=docs[:5]))
    assert len(enc.input_ids) + rr.answer_budget(5) <= 700 and enc.truncated_passages == 5


def test_training_examples_use_the_preset_prompt_and_its_answer(tokenizer):
    """A numeric preset trains on exactly the prompt inference renders for it, and on its answer."""
    from rerank.labels import LabelRecord
    from rerank.prompting.prompts import encode_prompt, encode_target
    from rerank.training.data import ExampleOptions, encode_example

    rec = LabelRecord(
        qid="q",
        query="bees warm",
        initial_list=["a", "b", "c"],
        final_list=["c", "a", "b"],
        passages={"a": "paris", "b": "rope", "c": "bees keep warm"},
    )
    plain = encode_example(tokenizer, rec, ExampleOptions())
    ex = encode_example(tokenizer, rec, ExampleOptions(prompt="rank_mistral100"))
    prompt = encode_prompt(tokenizer, "bees warm", ["paris", "rope", "bees keep warm"], 100, preset="rank_mistral100")
    assert ex["input_ids"][: len(prompt.input_ids)] == prompt.input_ids != plain["input_ids"][: len(prompt.input_ids)]
    target = ex["input_ids"][len(prompt.input_ids) :]
    assert target == encode_target(tokenizer, [2, 0, 1], "rank_mistral100")
    assert ex["labels"][len(prompt.input_ids) :] == target and set(ex["labels"][: len(prompt.input_ids)]) == {-100}
    assert ex["rank_ids"][-len(target) :] == plain["rank_ids"][-len(target) :]  # [3] first: rank 1, ...
    with pytest.raises(ValueError, match="letter identifiers"):
        ExampleOptions(prompt="first")


def test_label_config_refuses_an_unknown_preset(tmp_path):
    from rerank.labels import LabelConfig

    with pytest.raises(ValueError, match="rank_nonsense"):
        LabelConfig(input=str(tmp_path), output=str(tmp_path / "x.jsonl"), teacher="qrels", prompt="rank_nonsense")
