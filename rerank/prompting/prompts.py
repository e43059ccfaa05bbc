"""The one listwise prompt, shared by inference, labelling and training.

``encode_prompt`` renders the query and passages into the model's chat template and returns token
ids together with the structure the engine needs (which tokens are passage bodies and which are
protected: template, instruction, query, identifiers). ``encode_target`` gives the response tokens
for a ranking, so training sees exactly the prompt inference sees.

Which prompt is rendered is a :class:`~rerank.prompting.presets.PromptPreset` (``preset=...``): LazyRank's own
(the default, unchanged) or the exact prompt of a published reranker (RankZephyr, RankVicuna, rank_llm
0.25.7, FIRST, RankMistral100, RankGPT). Every preset goes through the same code below, so passage
spans (pruning, head scoring) hold for all of them, ``ftfy`` included.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

from rerank.prompting.identifiers import LETTERS, NUMBERS, IdentifierFormat, format_ranking
from rerank.prompting.presets import PromptPreset, get_preset
from rerank.prompting.tokenization import control_pattern, plain_text_tokenizer, token_spans, tokenize_with_plain_spans

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = "You are RankLLM, an intelligent assistant that ranks passages by their relevance to a search query."

_IDENTIFIER_IN_TEXT = re.compile(r"\[(\d+)\]")
_WHITESPACE = re.compile(r"\s+")


def sanitize(text: str) -> str:
    """Rewrite ``[n]`` to ``(n)`` and collapse whitespace, so identifiers stay unambiguous."""
    return _WHITESPACE.sub(" ", _IDENTIFIER_IN_TEXT.sub(r"(\1)", text)).strip()


__all__ = [
    "PromptEncoding",
    "encode_prompt",
    "encode_target",
    "format_ranking",
    "sanitize",
    "truncate_passages",
    "build_messages",
    "render_chat",
    "end_of_turn_ids",
    "relevance_token_ids",
    "fix_text_keeping_spans",
]


def _head(num: int, query: str) -> str:
    return (
        f"I will provide you with {num} passages, each indicated by a numerical identifier []. "
        f"Rank the passages based on their relevance to the search query: {query}.\n"
    )


def _tail(num: int, query: str) -> str:
    return (
        f"Search Query: {query}.\nRank the {num} passages above based on their relevance to the search "
        "query. All the passages should be included and listed using identifiers, in descending order "
        "of relevance. The output format should be [] > [], e.g., [2] > [1]. Only respond with the "
        "ranking results, do not say any word or explain."
    )


@dataclass
class PromptEncoding:
    """A tokenised listwise prompt.

    Attributes:
        input_ids: prompt token ids, chat template included, ending with the assistant prefix.
        passage_spans: per passage, the ``[start, end)`` token range of its body (prunable tokens).
        num_passages: N, the number of identifiers the answer must contain.
        truncated_passages: how many passages were cut to the token budget.
    """

    input_ids: list[int]
    passage_spans: list[tuple[int, int]]
    num_passages: int
    truncated_passages: int = 0
    text: str = field(default="", repr=False)

    def passage_end_positions(self) -> list[int]:
        """Per passage, the first token after its body (the separator before the next identifier).

        ``scoring="head"`` reads each passage's relevance there: the model has seen the query and
        the whole passage, and the token is protected from pruning.
        """
        return [end for _, end in self.passage_spans]

    def prunable_mask(self) -> list[bool]:
        """True for passage-body tokens; everything else is protected from pruning."""
        mask = [False] * len(self.input_ids)
        for start, end in self.passage_spans:
            for i in range(start, end):
                mask[i] = True
        return mask


def truncate_passages(tokenizer, passages: Sequence[str], max_passage_tokens: int | None) -> tuple[list[str], int]:
    """Sanitise passages and cut each to ``max_passage_tokens`` tokens (the same budget everywhere)."""
    cleaned = [sanitize(p) for p in passages]
    if max_passage_tokens is None:
        return cleaned, 0
    # Passages are caller text: counted (and cut) as plain text, a "<|im_end|>" inside one is not a control token.
    pattern = control_pattern(tokenizer)
    if pattern is not None and any(pattern.search(text) for text in cleaned):
        encoded = plain_text_tokenizer(tokenizer)(cleaned, add_special_tokens=False, split_special_tokens=True)
    else:  # no control-token text: the tokenizer's own reading is already plain
        encoded = tokenizer(cleaned, add_special_tokens=False) if cleaned else {"input_ids": []}
    encoded = encoded["input_ids"]
    out, cut = [], 0
    for text, ids in zip(cleaned, encoded):
        if len(ids) > max_passage_tokens:
            text = tokenizer.decode(ids[:max_passage_tokens], skip_special_tokens=True).strip()
            cut += 1
        out.append(text)
    return out, cut


def build_messages(query: str, passages: Sequence[str]) -> tuple[list[dict], list[tuple[int, int]]]:
    """Chat messages for the prompt and the character span of each passage body in the user turn."""
    query = sanitize(query)
    num = len(passages)
    parts = [_head(num, query)]
    offset = len(parts[0])
    spans = []
    for i, passage in enumerate(passages, start=1):
        label = f"[{i}] "
        spans.append((offset + len(label), offset + len(label) + len(passage)))
        line = f"{label}{passage}\n"
        parts.append(line)
        offset += len(line)
    parts.append(_tail(num, query))
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "".join(parts)}]
    return messages, spans


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    # Base models without a template: a plain transcript keeps the same content.
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + ("assistant: " if add_generation_prompt else "")


def encode_prompt(
    tokenizer,
    query: str,
    passages: Sequence[str],
    max_passage_tokens: int | None = None,
    preset: str | PromptPreset | None = None,
    *,
    max_tokens: int | None = None,
    answer_tokens: int | None = None,
) -> PromptEncoding:
    """Tokenise the listwise prompt for ``query`` and ``passages`` (first-stage order).

    Args:
        tokenizer: a fast Hugging Face tokenizer (offsets are needed for the passage spans).
        query, passages: the texts; passages are cleaned and cut as the preset says.
        max_passage_tokens: token budget per passage for token-budget presets (``"lazyrank"``);
            word-budget presets (the published ones) use their own word budget and ignore it.
        preset: a preset name from :data:`rerank.prompting.presets.PRESETS` or a :class:`PromptPreset`
            (None = ``"lazyrank"``, the default prompt, byte-identical to before presets existed).
        max_tokens: the context, for presets with rank_llm's shrink rule: while prompt tokens plus
            the answer length exceed it, the word budget drops by ``max(1, overflow // (n * 4))``
            and the prompt is rebuilt (never below one word).
        answer_tokens: the answer length the caller must reserve when more than rank_llm's
            (``len(encode("[1] > ... > [n]")) - 1``); the reranker passes its own answer budget
            (end-of-turn included) so a shrunk prompt always passes its fit check.

    Raises:
        ValueError: letter identifiers with more than 26 passages; a chat template that alters the
            messages so passages cannot be located.

    Example:
        >>> enc = encode_prompt(tok, "what is rope", ["Rope is ...", "A cable ..."], 100)  # doctest: +SKIP
        >>> enc.num_passages
        2
        >>> encode_prompt(tok, "q", docs, preset="rank_zephyr", max_tokens=4096)  # doctest: +SKIP
    """
    preset = get_preset(preset)
    preset.ids.check_count(len(passages))
    if preset.budget == "tokens":
        return _encode_once(tokenizer, preset, query, passages, max_passage_tokens, None)
    words = preset.word_budget(len(passages))
    enc = _encode_once(tokenizer, preset, query, passages, None, words)
    if preset.shrink_to_fit and max_tokens is not None and passages:
        answer = max(_rank_llm_answer_tokens(tokenizer, len(passages), preset.ids), answer_tokens or 0)
        while len(enc.input_ids) > max_tokens - answer and words > 1:
            overflow = len(enc.input_ids) - max_tokens + answer
            words = max(1, words - max(1, overflow // (len(passages) * 4)))
            enc = _encode_once(tokenizer, preset, query, passages, None, words)
    return enc


def _rank_llm_answer_tokens(tokenizer, num: int, ids: IdentifierFormat) -> int:
    # rank_llm's num_output_tokens: len(tokenizer.encode("[1] > ... > [w]")) - 1 (encode adds BOS).
    return len(tokenizer(format_ranking(range(num), ids))["input_ids"]) - 1


def _rewrite_pattern(kind: str | None) -> re.Pattern | None:
    if kind is None:
        return None
    return NUMBERS.pattern if kind == "numbers" else LETTERS.pattern


def prepare_query(preset: PromptPreset, query: str) -> str:
    """The query as the preset writes it (LazyRank: sanitised; rank_llm 0.25.7: ``[n]`` rewritten)."""
    if preset.collapse_whitespace:
        return sanitize(query)
    if preset.strip_query:
        query = query.strip()
    if preset.rewrite_query and preset.rewrite is not None:
        query = _rewrite_pattern(preset.rewrite).sub(r"(\1)", query)
    return query


def prepare_passages(
    tokenizer, preset: PromptPreset, passages: Sequence[str], max_passage_tokens: int | None, words: int | None
) -> tuple[list[str], int]:
    """Clean and cut passages as ``preset`` does; returns the texts and how many were cut.

    Word presets follow rank_llm: drop an empty ``"Title: Content: "`` header, strip, (0.25.7:
    ``fix_text``), keep the first ``words`` whitespace-separated words, then rewrite identifiers.
    """
    if preset.budget == "tokens":
        return truncate_passages(tokenizer, passages, max_passage_tokens)
    pattern = _rewrite_pattern(preset.rewrite)
    out, cut = [], 0
    for text in passages:
        if preset.drop_empty_title:
            text = text.replace("Title: Content: ", "")
        text = text.strip()
        if preset.fix_passages:
            text = _fix_text(text)
        split = text.split()
        if words is not None and len(split) > words:
            cut += 1
        text = " ".join(split[:words])
        if pattern is not None:
            text = pattern.sub(r"(\1)", text)
        out.append(text)
    return out, cut


def _fix_text(text: str, **kwargs) -> str:
    try:
        from ftfy import fix_text
    except ImportError as err:  # pragma: no cover - ftfy is a dependency, but keep the message clear
        raise ImportError("the published-reranker prompt presets need ftfy: pip install ftfy") from err
    return fix_text(text, **kwargs)


def _format_marking(template: str, values: dict, name: str) -> tuple[str, list[tuple[int, int]]]:
    """``template.format(**values)`` and the character spans where the field ``name`` was written."""
    formatter = string.Formatter()
    out, marks, length = [], [], 0
    for literal, field_name, spec, conversion in formatter.parse(template):
        out.append(literal)
        length += len(literal)
        if field_name is None:
            continue
        value, _ = formatter.get_field(field_name, (), values)
        piece = formatter.format_field(formatter.convert_field(value, conversion), spec or "")
        if field_name == name:
            marks.append((length, length + len(piece)))
        out.append(piece)
        length += len(piece)
    return "".join(out), marks


def _preset_messages(
    preset: PromptPreset, query: str, passages: Sequence[str], system_in_user: bool
) -> tuple[list[dict], list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """Chat messages, per passage ``(message index, start, end)`` of its body in that message, and the
    same triples for every place the query is written (caller text the tokenizer must read as plain text)."""
    ids, num = preset.ids, len(passages)
    fmt = {"num": num, "query": query, "example": preset.example}
    messages: list[dict] = []
    if preset.system and not system_in_user:
        messages.append({"role": "system", "content": preset.system})
    spans: list[tuple[int, int, int]] = []
    query_spans: list[tuple[int, int, int]] = []

    def add_formatted(template: str, offset: int) -> str:
        text, marks = _format_marking(template, fmt, "query")
        # the text lands in the message appended next, ``offset`` characters into it
        query_spans.extend((len(messages), offset + a, offset + b) for a, b in marks)
        return text

    if preset.multi_turn:
        messages.append({"role": "user", "content": add_formatted(preset.prefix, 0)})
        messages.append({"role": "assistant", "content": preset.prefix_reply})
        for i, text in enumerate(passages, start=1):
            head, _, tail = preset.passage.partition("{text}")
            label = head.format(id=ids.label(i))
            messages.append({"role": "user", "content": label + text + tail.format(id=ids.label(i))})
            spans.append((len(messages) - 1, len(label), len(label) + len(text)))
            messages.append({"role": "assistant", "content": preset.passage_reply.format(id=ids.label(i))})
        messages.append({"role": "user", "content": add_formatted(preset.post, 0)})
        return messages, spans, query_spans
    parts = [preset.system + preset.prepend_separator] if (preset.system and system_in_user) else []
    parts.append(add_formatted(preset.prefix, sum(len(p) for p in parts)))
    offset = sum(len(p) for p in parts)
    head, _, tail = preset.passage.partition("{text}")
    for i, text in enumerate(passages, start=1):
        label = head.format(id=ids.label(i))
        line = label + text + tail.format(id=ids.label(i))
        spans.append((len(messages), offset + len(label), offset + len(label) + len(text)))
        parts.append(line)
        offset += len(line)
    parts.append(add_formatted(preset.post, offset))
    messages.append({"role": "user", "content": "".join(parts)})
    return messages, spans, query_spans


def _uses_format(tokenizer, preset: PromptPreset) -> bool:
    return preset.chat_format is not None and (
        preset.chat_format_always or not getattr(tokenizer, "chat_template", None)
    )


def _system_in_user(tokenizer, preset: PromptPreset) -> bool:
    """Whether the system message goes inside the user turn (``prepend``; FIRST's ``auto`` without "system")."""
    if preset.system is None or _uses_format(tokenizer, preset):
        return False
    if preset.system_mode == "prepend":
        return True
    if preset.system_mode == "auto":
        return "system" not in (getattr(tokenizer, "chat_template", None) or "")
    return False


def _render(tokenizer, preset: PromptPreset, messages: list[dict]) -> str:
    if _uses_format(tokenizer, preset):
        if preset.multi_turn:
            raise ValueError(f"preset {preset.name!r}: a chat_format string cannot render a multi-turn prompt")
        user = messages[-1]["content"]
        # Format strings are filled with replace, not str.format, so braces in passages stay text.
        return preset.chat_format.replace("{system}", preset.system or "").replace("{user}", user)
    return render_chat(tokenizer, messages, add_generation_prompt=True)


def _locate(rendered: str, messages: list[dict]) -> list[int]:
    """Start of each message's content in the rendered text, searched in order."""
    starts, cursor = [], 0
    for m in messages:
        at = rendered.find(m["content"], cursor)
        if at < 0:
            raise ValueError("the chat template altered a message; cannot locate passage spans")
        starts.append(at)
        cursor = at + len(m["content"])
    return starts


def fix_text_keeping_spans(text: str, spans: Sequence[tuple[int, int]]) -> tuple[str, list[tuple[int, int]]]:
    """``ftfy.fix_text(text)`` and the character spans moved to the fixed text.

    ``fix_text`` changes lengths (ligatures expand, ``\r\n`` shrinks), so spans cannot be reused.
    ftfy fixes each line on its own, HTML unescaping switched off from the first line holding a
    ``<``; the text is cut at every line end and span boundary, each piece is fixed with its line's
    setting, and the pieces' new lengths move the spans. The joined pieces are checked against
    ``fix_text`` of the whole text, which is what is returned in any case; should a fix ever cross a
    cut (not seen with whitespace-delimited passages), spans are mapped around the changed region.
    """
    fixed_whole = _fix_text(text)
    cuts = {0, len(text)}
    cuts.update(p for span in spans for p in span)
    cuts.update(m.end() for m in re.finditer("\n", text))
    cuts = sorted(cuts)
    first_lt = text.find("<")
    new_at = {0: 0}
    pieces = []
    for a, b in zip(cuts, cuts[1:]):
        line_end = text.find("\n", a)
        line_end = len(text) if line_end < 0 else line_end + 1
        unescape = "auto" if first_lt < 0 or first_lt >= line_end else False
        piece = _fix_text(text[a:b], unescape_html=unescape)
        pieces.append(piece)
        new_at[b] = new_at[a] + len(piece)
    if "".join(pieces) == fixed_whole:
        return fixed_whole, [(new_at[s], new_at[e]) for s, e in spans]
    logger.debug("ftfy fixed across a piece boundary; mapping passage spans around the changed region")
    head = 0
    while head < min(len(text), len(fixed_whole)) and text[head] == fixed_whole[head]:
        head += 1
    tail = 0
    while (
        tail < min(len(text), len(fixed_whole)) - head
        and text[len(text) - 1 - tail] == fixed_whole[len(fixed_whole) - 1 - tail]
    ):
        tail += 1

    def move(p: int) -> int:
        if p <= head:
            return p
        if p >= len(text) - tail:
            return p - len(text) + len(fixed_whole)
        return min(p, len(fixed_whole) - tail)

    return fixed_whole, [(move(s), max(move(s), move(e))) for s, e in spans]


def _encode_once(
    tokenizer,
    preset: PromptPreset,
    query: str,
    passages: Sequence[str],
    max_passage_tokens: int | None,
    words: int | None,
) -> PromptEncoding:
    texts, cut = prepare_passages(tokenizer, preset, passages, max_passage_tokens, words)
    messages, spans, query_spans = _preset_messages(
        preset, prepare_query(preset, query), texts, _system_in_user(tokenizer, preset)
    )
    rendered = _render(tokenizer, preset, messages)
    starts = _locate(rendered, messages)
    char_spans = [(starts[m] + s, starts[m] + e) for m, s, e in spans]
    caller_spans = char_spans + [(starts[m] + s, starts[m] + e) for m, s, e in query_spans]
    if preset.ftfy:
        rendered, caller_spans = fix_text_keeping_spans(rendered, caller_spans)
        char_spans = caller_spans[: len(spans)]
    bos = getattr(tokenizer, "bos_token", None)
    # rank_llm's runs tokenise the rendered text with special tokens (BOS); a template that already
    # writes BOS is not given a second one.
    add_special = preset.add_bos and not (bos and rendered.startswith(bos))
    ids, offsets = tokenize_with_plain_spans(tokenizer, rendered, caller_spans, add_special_tokens=add_special)
    return PromptEncoding(
        input_ids=ids,
        passage_spans=token_spans(offsets, char_spans),
        num_passages=len(passages),
        truncated_passages=cut,
        text=rendered,
    )


# The LM-head readout of ``scoring="head"``: score = logit(yes) - logit(no) at a passage's end.
RELEVANCE_WORDS = (" yes", " no")


def relevance_token_ids(tokenizer) -> tuple[int, int]:
    """Token ids of the ``yes`` / ``no`` readout words (the first token of each, for any tokenizer)."""
    ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in RELEVANCE_WORDS]
    if not all(ids) or ids[0][0] == ids[1][0]:
        raise ValueError(f"tokenizer cannot tell the readout words {RELEVANCE_WORDS} apart")
    return ids[0][0], ids[1][0]


def end_of_turn_ids(tokenizer, preset: str | PromptPreset | None = None) -> list[int]:
    """Token ids the chat template puts after an assistant message (e.g. ``<|im_end|>``).

    A preset rendered with its own chat format string (RankVicuna, RankMistral100) ends with EOS.
    """
    if getattr(tokenizer, "chat_template", None) and not _uses_format(tokenizer, get_preset(preset)):
        marker = "XQZRANKING"
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "u"}, {"role": "assistant", "content": marker}], tokenize=False
        )
        suffix = rendered[rendered.find(marker) + len(marker) :]
        ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
        special = set(tokenizer.all_special_ids)
        for i, tok in enumerate(ids):
            if tok in special:
                return ids[: i + 1]
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has neither a chat template nor an eos token; cannot end the answer")
    return [tokenizer.eos_token_id]


def encode_target(tokenizer, order: Sequence[int], preset: str | PromptPreset | None = None) -> list[int]:
    """Response token ids for a ranking (0-based indices, best first), end-of-turn included.

    ``preset`` picks the identifier spelling (letters for FIRST) and the end-of-turn tokens.
    """
    preset = get_preset(preset)
    text = format_ranking(order, preset.ids)
    return tokenizer(text, add_special_tokens=False)["input_ids"] + end_of_turn_ids(tokenizer, preset)
