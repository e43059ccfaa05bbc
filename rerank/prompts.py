"""The one listwise prompt, shared by inference, labelling and training.

``encode_prompt`` renders the query and passages into the model's chat template and returns token
ids together with the structure the engine needs (which tokens are passage bodies and which are
protected: template, instruction, query, identifiers). ``encode_target`` gives the response tokens
for a ranking, so training sees exactly the prompt inference sees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

SYSTEM_PROMPT = (
    "You are RankLLM, an intelligent assistant that ranks passages by their relevance to a search query."
)

_IDENTIFIER_IN_TEXT = re.compile(r"\[(\d+)\]")
_WHITESPACE = re.compile(r"\s+")


def sanitize(text: str) -> str:
    """Rewrite ``[n]`` to ``(n)`` and collapse whitespace, so identifiers stay unambiguous."""
    return _WHITESPACE.sub(" ", _IDENTIFIER_IN_TEXT.sub(r"(\1)", text)).strip()


def format_ranking(order: Sequence[int]) -> str:
    """Ranking text for 0-based passage indices, best first: ``[3] > [1] > [2]``."""
    return " > ".join(f"[{i + 1}]" for i in order)


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
    encoded = tokenizer(cleaned, add_special_tokens=False)["input_ids"] if cleaned else []
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


def encode_prompt(tokenizer, query: str, passages: Sequence[str], max_passage_tokens: int | None = None) -> PromptEncoding:
    """Tokenise the listwise prompt for ``query`` and ``passages`` (first-stage order).

    Example:
        >>> enc = encode_prompt(tok, "what is rope", ["Rope is ...", "A cable ..."], 100)  # doctest: +SKIP
        >>> enc.num_passages
        2
    """
    texts, cut = truncate_passages(tokenizer, passages, max_passage_tokens)
    messages, char_spans = build_messages(query, texts)
    rendered = render_chat(tokenizer, messages, add_generation_prompt=True)
    user_start = rendered.find(messages[1]["content"])
    if user_start < 0:
        raise ValueError("the chat template altered the user message; cannot locate passage spans")
    enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    token_spans = []
    cursor = 0
    for start_c, end_c in char_spans:
        start_c += user_start
        end_c += user_start
        # A body's first token usually carries the separating space, so it may start one char early.
        # Skip tokens that end before the body (a lone separating space ends exactly at its start).
        while cursor < len(ids) and (offsets[cursor][0] < start_c - 1 or offsets[cursor][1] <= start_c):
            cursor += 1
        first = cursor
        while cursor < len(ids) and offsets[cursor][1] <= end_c and offsets[cursor][0] < end_c:
            cursor += 1
        token_spans.append((first, cursor))
    return PromptEncoding(input_ids=list(ids), passage_spans=token_spans, num_passages=len(passages),
                          truncated_passages=cut, text=rendered)


# The LM-head readout of ``scoring="head"``: score = logit(yes) - logit(no) at a passage's end.
RELEVANCE_WORDS = (" yes", " no")


def relevance_token_ids(tokenizer) -> tuple[int, int]:
    """Token ids of the ``yes`` / ``no`` readout words (the first token of each, for any tokenizer)."""
    ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in RELEVANCE_WORDS]
    if not all(ids) or ids[0][0] == ids[1][0]:
        raise ValueError(f"tokenizer cannot tell the readout words {RELEVANCE_WORDS} apart")
    return ids[0][0], ids[1][0]


def end_of_turn_ids(tokenizer) -> list[int]:
    """Token ids the chat template puts after an assistant message (e.g. ``<|im_end|>``)."""
    if getattr(tokenizer, "chat_template", None):
        marker = "XQZRANKING"
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "u"}, {"role": "assistant", "content": marker}], tokenize=False)
        suffix = rendered[rendered.find(marker) + len(marker):]
        ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
        special = set(tokenizer.all_special_ids)
        for i, tok in enumerate(ids):
            if tok in special:
                return ids[: i + 1]
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has neither a chat template nor an eos token; cannot end the answer")
    return [tokenizer.eos_token_id]


def encode_target(tokenizer, order: Sequence[int]) -> list[int]:
    """Response token ids for a ranking (0-based indices, best first), end-of-turn included."""
    return tokenizer(format_ranking(order), add_special_tokens=False)["input_ids"] + end_of_turn_ids(tokenizer)
