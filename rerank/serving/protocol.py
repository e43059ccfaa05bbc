"""The wire formats of ``rerank serve``: request validation and response bodies (no HTTP here).

Two dialects (see ``docs/serving.md``):

* Cohere / Jina (``/v1/rerank``, ``/v2/rerank``, ``/rerank`` with ``documents``):
  ``{model?, query, documents: [str | {"text", ...}], top_n?, return_documents?, rank_fields?}`` ->
  ``{id, model, results: [{index, relevance_score, document?}], meta, usage}``, best first.
* Hugging Face TEI (``/rerank`` with ``texts``):
  ``{query, texts: [str], raw_scores?, return_text?}`` -> ``[{index, score, text?}]``, best first.

Fields these servers accept but that do not apply here (``max_chunks_per_doc``,
``max_tokens_per_doc``, ``priority``, ``truncate``, ...) are accepted and ignored, so unchanged
clients keep working.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from rerank.results import RankingResult
from rerank.serving.scores import relevance_scores

__all__ = ["ApiError", "RerankRequest", "parse_request", "cohere_response", "tei_response"]


class ApiError(Exception):
    """An error answered as ``{"error": message, "error_type": kind}`` with HTTP ``status``."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message

    def body(self) -> dict:
        # "detail" repeats the message for clients that read FastAPI-style errors (LlamaIndex's JinaRerank).
        return {"error": self.message, "error_type": self.kind, "detail": self.message}


def _invalid(message: str) -> ApiError:
    return ApiError(422, "validation", message)


@dataclass
class RerankRequest:
    """A validated rerank request."""

    query: str
    texts: list[str]
    dialect: str = "cohere"  # "cohere" (also Jina) or "tei"
    top_n: int | None = None  # None = all documents
    return_documents: bool = False
    raw_scores: bool = False  # TEI only: the model's scores instead of [0, 1] relevance
    model: str | None = None
    echo: list[dict] = field(default_factory=list)  # what "document" repeats, per input document

    @property
    def returned(self) -> int:
        """How many results the answer carries."""
        return len(self.texts) if self.top_n is None else min(self.top_n, len(self.texts))


def _check_text(text: str, name: str) -> None:
    """422 for text no tokenizer can read: a lone UTF-16 surrogate (JSON ``"\\ud800"``) is not Unicode text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _invalid(
            f"{name} holds a lone surrogate {text[exc.start]!r} at character {exc.start}: not valid Unicode text"
        ) from None


def _optional_bool(payload: dict, name: str) -> bool:
    value = payload.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _invalid(f"{name} must be a boolean, got {type(value).__name__}")
    return value


def _document_text(doc: dict, i: int, rank_fields: list[str] | None) -> str:
    if rank_fields:
        # Cohere's rank_fields: rank on these fields, in this order.
        parts = [f"{name}: {doc[name]}" for name in rank_fields if doc.get(name) is not None]
        if not parts:
            raise _invalid(f"documents[{i}] has none of the rank_fields {rank_fields}")
        return "\n".join(parts)
    text = doc.get("text")
    if not isinstance(text, str):
        raise _invalid(f"documents[{i}] must be a string or an object with a string 'text' field")
    return text


def parse_request(payload: Any, *, path: str, max_documents: int) -> RerankRequest:
    """Validate a decoded JSON body; raises :class:`ApiError` (422 naming the field, 400 when empty)."""
    if not isinstance(payload, dict):
        raise _invalid(f"the request body must be a JSON object, got {type(payload).__name__}")
    tei = path.rstrip("/") == "/rerank" and "texts" in payload and "documents" not in payload
    query = payload.get("query")
    if query is None:
        raise _invalid("query is required")
    if not isinstance(query, str):
        raise _invalid(f"query must be a string, got {type(query).__name__}")
    if not query.strip():
        raise _invalid("query must not be empty")
    _check_text(query, "query")
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise _invalid(f"model must be a string, got {type(model).__name__}")
    name = "texts" if tei else "documents"
    docs = payload.get(name)
    if docs is None:
        raise _invalid(f"{name} is required")
    if not isinstance(docs, list):
        raise _invalid(f"{name} must be a list, got {type(docs).__name__}")
    if not docs:
        raise ApiError(400, "empty", f"{name} must not be empty")
    if len(docs) > max_documents:
        # TEI's wording, so its clients recognise it.
        raise _invalid(f"{name}: batch size {len(docs)} > maximum allowed batch size {max_documents}")

    if tei:
        for i, text in enumerate(docs):
            if not isinstance(text, str):
                raise _invalid(f"texts[{i}] must be a string, got {type(text).__name__}")
            _check_text(text, f"texts[{i}]")
        return RerankRequest(
            query=query,
            texts=list(docs),
            dialect="tei",
            model=model,
            return_documents=_optional_bool(payload, "return_text"),
            raw_scores=_optional_bool(payload, "raw_scores"),
            echo=[{"text": t} for t in docs],
        )

    rank_fields = payload.get("rank_fields")
    if rank_fields is not None and (
        not isinstance(rank_fields, list) or not all(isinstance(f, str) for f in rank_fields)
    ):
        raise _invalid("rank_fields must be a list of strings")
    texts: list[str] = []
    echo: list[dict] = []
    for i, doc in enumerate(docs):
        if isinstance(doc, str):
            texts.append(doc)
            echo.append({"text": doc})
        elif isinstance(doc, dict):
            texts.append(_document_text(doc, i, rank_fields))
            echo.append(doc)  # Cohere v1 echoes object documents with their extra fields
        else:
            raise _invalid(
                f"documents[{i}] must be a string or an object with a string 'text' field, got {type(doc).__name__}"
            )
        _check_text(texts[-1], f"documents[{i}]")
    top_n = payload.get("top_n")
    if top_n is not None:
        if not isinstance(top_n, int) or isinstance(top_n, bool):
            raise _invalid(f"top_n must be an integer, got {type(top_n).__name__}")
        if top_n < 0:
            raise _invalid(f"top_n must be >= 0, got {top_n}")
    return RerankRequest(
        query=query,
        texts=texts,
        dialect="cohere",
        model=model,
        top_n=top_n or None,  # missing, null and 0 all mean "every document"
        return_documents=_optional_bool(payload, "return_documents"),
        echo=echo,
    )


def _finite(value: float) -> float:
    # JSON has no infinities; a -inf log-probability is reported as the lowest float.
    if math.isnan(value):
        return -1.7976931348623157e308
    return max(-1.7976931348623157e308, min(1.7976931348623157e308, value))


def cohere_response(request: RerankRequest, result: RankingResult, *, model_name: str, api_version: str) -> dict:
    """The Cohere/Jina answer: results best first, cut to ``top_n``."""
    relevance = relevance_scores(result)
    results = []
    for index in result.order[: request.returned]:
        item: dict = {"index": index, "relevance_score": relevance[index]}
        if request.return_documents:
            item["document"] = request.echo[index]
        results.append(item)
    prompt_tokens = int(result.stats.prompt_tokens)
    generated = int(result.stats.generated_tokens)
    return {
        "id": str(uuid.uuid4()),
        "model": model_name,
        "results": results,
        "meta": {
            "api_version": {"version": api_version},
            "billed_units": {"search_units": 1},
            "tokens": {"input_tokens": prompt_tokens, "output_tokens": generated},
        },
        "usage": {"total_tokens": prompt_tokens + generated, "prompt_tokens": prompt_tokens},
    }


def tei_response(request: RerankRequest, result: RankingResult) -> list[dict]:
    """TEI's answer: a bare array of ``{index, score, text?}``, best first."""
    scores = [_finite(float(s)) for s in result.scores] if request.raw_scores else relevance_scores(result)
    out = []
    for index in result.order[: request.returned]:
        item: dict = {"index": index, "score": scores[index]}
        if request.return_documents:
            item["text"] = request.texts[index]
        out.append(item)
    return out
