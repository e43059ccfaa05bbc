"""Prompt presets: the exact prompts published listwise rerankers were trained on, as data.

A checkpoint loses quality with any prompt but its own, so each preset records, field by field, what
its project's code renders (castorini/rank_llm c5a94df for the paper-era RankZephyr / RankVicuna
prompt and 0.25.7 for the current template, gangiswag/llm-reranker 2d7cba4 for FIRST,
RUC-NLPIR/fullrank 8395a7a for RankMistral100, sunnweiwei/RankGPT 0d62bc3): system message and how
it is sent, instruction texts, passage line, example answer, identifier kind, the passage budget and
its cleaning, the ``[n]`` -> ``(n)`` rewrite, ``ftfy.fix_text`` and the chat format used when the
tokenizer has no chat template. :func:`rerank.prompting.prompts.encode_prompt` renders any preset; there is no
per-model prompt code.

Example:
    >>> get_preset("rank_zephyr").example
    '[2] > [1]'
    >>> get_preset("first").identifiers
    'letter'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rerank.prompting.identifiers import IdentifierFormat, identifier_format

# System messages, verbatim (the period matters: RankZephyr has none, RankMistral100 has one).
RANK_LLM_SYSTEM = (
    "You are RankLLM, an intelligent assistant that can rank passages based on their relevancy to the query"
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions."
)
RANK_GPT_SYSTEM = (
    "You are RankGPT, an intelligent assistant that can rank passages based on their relevancy to the query."
)

# FastChat conversation formats (what the paper-era checkpoints were trained and run with).
ZEPHYR_FORMAT = "<|system|>\n{system}</s>\n<|user|>\n{user}</s>\n<|assistant|>\n"
VICUNA_FORMAT = "{system} USER: {user} ASSISTANT:"
MISTRAL_FORMAT = "[INST] {system}\n{user} [/INST]"

_PAPER_PREFIX = (
    "I will provide you with {num} passages, each indicated by a numerical identifier []. "
    "Rank the passages based on their relevance to the search query: {query}.\n\n"
)
_PAPER_POST = (
    "Search Query: {query}.\nRank the {num} passages above based on their relevance to the search "
    "query. All the passages should be included and listed using identifiers, in descending order "
    "of relevance. The output format should be [] > [], e.g., {example}, Only respond with the "
    "ranking results, do not say any word or explain."
)


@dataclass(frozen=True)
class PromptPreset:
    """One listwise prompt, described as data.

    Texts are ``str.format`` templates: ``prefix`` and ``post`` take ``{num}``, ``{query}`` and
    ``{example}``; ``passage`` takes ``{id}`` (the label: ``3`` or ``C``) and ``{text}``.

    Attributes:
        name: registry key (``prompt="..."``).
        checkpoints: the published checkpoints this preset reproduces (documentation).
        system: system message, or None for none.
        system_mode: how the system message reaches the chat template: ``"role"`` (a system turn),
            ``"prepend"`` (``system + prepend_separator + user`` in the user turn), ``"auto"``
            (FIRST: a system turn when the chat template mentions "system", else prepended).
        prefix, passage, post, example: the user-turn texts (see above).
        identifiers: ``"number"`` (``[1]``) or ``"letter"`` (``[A]``, at most 26 passages).
        budget: ``"tokens"`` (cut to ``max_passage_tokens`` tokens, LazyRank) or ``"words"`` (cut to
            the first ``words`` whitespace-separated words, rank_llm / RankGPT).
        words: the word budget; with ``words_window_scale`` it is ``int(words * scale / n)`` for
            ``n`` passages (rank_llm 0.25.7: ``300 * (20 / window)``).
        shrink_to_fit: rank_llm's rule when the prompt is over the context minus the answer: the word
            budget drops by ``max(1, overflow // (n * 4))`` and the prompt is rebuilt.
        rewrite: which bracketed identifiers inside passages become parenthesised (``[3]`` ->
            ``(3)``, ``[A]`` -> ``(A)``), so the model never reads a fake identifier; None = none.
        rewrite_query: apply the same rewrite to the query. strip_query: strip it first.
        collapse_whitespace: LazyRank's sanitiser (whitespace runs -> one space) on query and passages.
        drop_empty_title: remove ``"Title: Content: "`` (an untitled document's header) from passages.
        fix_passages: ``ftfy.fix_text`` each passage before cutting (rank_llm 0.25.7).
        ftfy: ``ftfy.fix_text`` the whole rendered prompt (rank_llm, FIRST, RankMistral100).
        chat_format: format string with ``{system}`` and ``{user}`` used when the tokenizer has no
            chat template (None = LazyRank's plain ``role: content`` transcript).
        chat_format_always: use ``chat_format`` even when the tokenizer has a chat template (FastChat
            formats that differ from the checkpoints' own templates: Vicuna, Mistral).
        multi_turn: RankGPT's conversation (one user turn per passage, acknowledged by the assistant).
        prefix_reply, passage_reply: the assistant turns of ``multi_turn`` (``passage_reply`` takes ``{id}``).
        add_bos: tokenise the rendered text with the tokenizer's special tokens (BOS), as rank_llm's
            vLLM / FastChat runs do; skipped when the text already starts with the BOS token.
    """

    name: str
    checkpoints: str
    system: str | None
    prefix: str
    passage: str
    post: str
    example: str
    system_mode: Literal["role", "prepend", "auto"] = "role"
    prepend_separator: str = "\n "
    identifiers: Literal["number", "letter"] = "number"
    budget: Literal["tokens", "words"] = "words"
    words: int = 300
    words_window_scale: int | None = None
    shrink_to_fit: bool = False
    rewrite: Literal["numbers", "letters"] | None = "numbers"
    rewrite_query: bool = False
    strip_query: bool = False
    collapse_whitespace: bool = False
    drop_empty_title: bool = True
    fix_passages: bool = False
    ftfy: bool = True
    chat_format: str | None = None
    chat_format_always: bool = False
    multi_turn: bool = False
    prefix_reply: str | None = None
    passage_reply: str | None = None
    add_bos: bool = True

    def __post_init__(self):
        identifier_format(self.identifiers)  # validates the kind
        if self.system_mode not in ("role", "prepend", "auto"):
            raise ValueError(f"system_mode must be 'role', 'prepend' or 'auto', got {self.system_mode!r}")
        if self.budget not in ("tokens", "words"):
            raise ValueError(f"budget must be 'tokens' or 'words', got {self.budget!r}")
        if self.rewrite not in (None, "numbers", "letters"):
            raise ValueError(f"rewrite must be None, 'numbers' or 'letters', got {self.rewrite!r}")
        if self.multi_turn and (self.prefix_reply is None or self.passage_reply is None):
            raise ValueError("a multi_turn preset needs prefix_reply and passage_reply")
        if self.multi_turn and self.chat_format is not None:
            raise ValueError("a multi_turn preset is rendered by the chat template; it cannot have a chat_format")
        if self.chat_format_always and self.chat_format is None:
            raise ValueError("chat_format_always needs a chat_format")

    @property
    def ids(self) -> IdentifierFormat:
        """The identifier format (numbers or letters) answers and constraints use."""
        return identifier_format(self.identifiers)

    def word_budget(self, num: int) -> int:
        """Initial word budget per passage for a prompt of ``num`` passages."""
        if self.words_window_scale is None:
            return self.words
        # rank_llm: max_length = 300 * (20 / window), cut with int(max_length).
        return int(self.words * self.words_window_scale / max(1, num))


PRESETS: dict[str, PromptPreset] = {
    # LazyRank's own prompt (the default): token budget, sanitised query and passages, no ftfy.
    "lazyrank": PromptPreset(
        name="lazyrank",
        checkpoints="LazyRank models (the packaged default and models trained with this toolkit)",
        system="You are RankLLM, an intelligent assistant that ranks passages by their relevance to a search query.",
        prefix=(
            "I will provide you with {num} passages, each indicated by a numerical identifier []. "
            "Rank the passages based on their relevance to the search query: {query}.\n"
        ),
        passage="[{id}] {text}\n",
        post=(
            "Search Query: {query}.\nRank the {num} passages above based on their relevance to the search "
            "query. All the passages should be included and listed using identifiers, in descending order "
            "of relevance. The output format should be [] > [], e.g., {example}. Only respond with the "
            "ranking results, do not say any word or explain."
        ),
        example="[2] > [1]",
        budget="tokens",
        rewrite="numbers",
        rewrite_query=True,
        collapse_whitespace=True,
        drop_empty_title=False,
        ftfy=False,
        add_bos=False,
    ),
    # rank_llm paper era (c5a94df), RankZephyr: variable_passages -> example [2] > [1].
    "rank_zephyr": PromptPreset(
        name="rank_zephyr",
        checkpoints="castorini/rank_zephyr_7b_v1_full (paper-era rank_llm prompt)",
        system=RANK_LLM_SYSTEM,
        prefix=_PAPER_PREFIX,
        passage="[{id}] {text}\n",
        post=_PAPER_POST,
        example="[2] > [1]",
        shrink_to_fit=True,
        chat_format=ZEPHYR_FORMAT,
    ),
    # RankVicuna: FastChat vicuna_v1.1 (one space before ASSISTANT:, as from 2024), example [4] > [2].
    "rank_vicuna": PromptPreset(
        name="rank_vicuna",
        checkpoints="castorini/rank_vicuna_7b_v1 (paper-era rank_llm prompt)",
        system=VICUNA_SYSTEM,
        prefix=_PAPER_PREFIX,
        passage="[{id}] {text}\n",
        post=_PAPER_POST,
        example="[4] > [2]",
        shrink_to_fit=True,
        chat_format=VICUNA_FORMAT,
        chat_format_always=True,
    ),
    # rank_llm 0.25.7 (rank_zephyr_template.yaml): no blank line after the prefix, "Answer concisely".
    "rank_llm_v2": PromptPreset(
        name="rank_llm_v2",
        checkpoints="rank_llm 0.25.7 numeric template (RankZephyr / RankVicuna as rank_llm runs them today)",
        system=RANK_LLM_SYSTEM,
        prefix=(
            "I will provide you with {num} passages, each indicated by a numerical identifier []. "
            "Rank the passages based on their relevance to the search query: {query}.\n"
        ),
        passage="[{id}] {text}\n",
        post=(
            "Search Query: {query}.\nRank the {num} passages above based on their relevance to the search "
            "query. All the passages should be included and listed using identifiers, in descending order "
            "of relevance. The output format should be [] > [], e.g., {example}, Answer concisely and "
            "directly and only respond with the ranking results, do not say any word or explain."
        ),
        example="[2] > [1]",
        words=300,
        words_window_scale=20,
        shrink_to_fit=True,
        rewrite_query=True,
        drop_empty_title=False,
        fix_passages=True,
        chat_format=VICUNA_FORMAT,
    ),
    # FIRST (gangiswag/llm-reranker 2d7cba4): letters, "a alphabetical" kept verbatim.
    "first": PromptPreset(
        name="first",
        checkpoints="rryisthebest/First_Model (FIRST, Zephyr-7B-beta base)",
        system=RANK_LLM_SYSTEM,
        system_mode="auto",
        prefix=(
            "I will provide you with {num} passages, each indicated by a alphabetical identifier []. "
            "Rank the passages based on their relevance to the search query: {query}.\n\n"
        ),
        passage="[{id}] {text}\n",
        post=_PAPER_POST,
        example="[B] > [A]",
        identifiers="letter",
        rewrite="letters",
        shrink_to_fit=True,
        chat_format=ZEPHYR_FORMAT,
    ),
    # rank_llm 0.25.7 letters (rank_zephyr_alpha_template.yaml), FirstMistral: "an alphabetical";
    # rank_llm still rewrites bracketed numbers (not letters) in passages and query.
    "first_mistral": PromptPreset(
        name="first_mistral",
        checkpoints="FirstMistral (rank_llm 0.25.7 alphabetical template, Mistral-7B-Instruct-v0.3 base)",
        system=RANK_LLM_SYSTEM,
        prefix=(
            "I will provide you with {num} passages, each indicated by an alphabetical identifier []. "
            "Rank the passages based on their relevance to the search query: {query}.\n"
        ),
        passage="[{id}] {text}\n",
        post=(
            "Search Query: {query}.\nRank the {num} passages above based on their relevance to the search "
            "query. All the passages should be included and listed using identifiers, in descending order "
            "of relevance. The output format should be [] > [], e.g., {example}, Answer concisely and "
            "directly and only respond with the ranking results, do not say any word or explain."
        ),
        example="[B] > [A]",
        identifiers="letter",
        words=300,
        words_window_scale=20,
        shrink_to_fit=True,
        rewrite_query=True,
        drop_empty_title=False,
        fix_passages=True,
        chat_format=VICUNA_FORMAT,
    ),
    # RankMistral100 (RUC-NLPIR/fullrank 8395a7a): 100 passages, 100 words, FastChat "mistral".
    "rank_mistral100": PromptPreset(
        name="rank_mistral100",
        checkpoints="RankMistral100 (RUC-NLPIR/fullrank, Mistral-7B-Instruct base)",
        system=RANK_LLM_SYSTEM + ".",
        prefix=_PAPER_PREFIX,
        passage="[{id}] {text}\n",
        post=_PAPER_POST,
        example="[2] > [1]",
        words=100,
        rewrite_query=True,
        strip_query=True,
        chat_format=MISTRAL_FORMAT,
        chat_format_always=True,
    ),
    # RankGPT (sunnweiwei/RankGPT 0d62bc3): multi-turn, no rewriting, no ftfy.
    "rank_gpt": PromptPreset(
        name="rank_gpt",
        checkpoints="RankGPT prompt (API models; distilled checkpoints trained on it)",
        system=RANK_GPT_SYSTEM,
        prefix=(
            "I will provide you with {num} passages, each indicated by number identifier []. \n"
            "Rank the passages based on their relevance to query: {query}."
        ),
        passage="[{id}] {text}",
        post=(
            "Search Query: {query}. \nRank the {num} passages above based on their relevance to the search "
            "query. The passages should be listed in descending order using identifiers. The most relevant "
            "passages should be listed first. The output format should be [] > [], e.g., {example}. Only "
            "response the ranking results, do not say any word or explain."
        ),
        example="[1] > [2]",
        rewrite=None,
        ftfy=False,
        multi_turn=True,
        prefix_reply="Okay, please provide the passages.",
        passage_reply="Received passage [{id}].",
    ),
}

DEFAULT_PRESET = "lazyrank"


def get_preset(preset: str | PromptPreset | None) -> PromptPreset:
    """The preset named ``preset`` (None = the default ``"lazyrank"``); a :class:`PromptPreset` passes through.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if preset is None:
        return PRESETS[DEFAULT_PRESET]
    if isinstance(preset, PromptPreset):
        return preset
    if not isinstance(preset, str):
        raise TypeError(f"prompt must be a preset name or a PromptPreset, got {type(preset).__name__}")
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown prompt preset {preset!r}; known presets: {sorted(PRESETS)}") from None
