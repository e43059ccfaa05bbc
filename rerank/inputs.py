"""Checks of the public API's arguments: a wrong type or value is refused with its name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def check_query(query: Any, name: str = "query") -> str:
    if not isinstance(query, str):
        raise TypeError(f"{name} must be a str, got {type(query).__name__}")
    return query


def check_documents(documents: Any, name: str = "documents") -> list[str]:
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise TypeError(f"{name} must be a list of str, got {type(documents).__name__}")
    for i, doc in enumerate(documents):
        if not isinstance(doc, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(doc).__name__}")
    return list(documents)


def check_batch(queries: Any, documents: Any) -> tuple[list[str], list[list[str]]]:
    """Validate parallel lists of queries and document lists (batch entry points)."""
    if isinstance(queries, str) or not isinstance(queries, Sequence):
        raise TypeError(f"queries must be a list of str, got {type(queries).__name__}")
    if isinstance(documents, str) or not isinstance(documents, Sequence):
        raise TypeError(f"documents must be a list of lists of str, got {type(documents).__name__}")
    if len(queries) != len(documents):
        raise ValueError(f"queries ({len(queries)}) and documents ({len(documents)}) must have the same length")
    return (
        [check_query(q, f"queries[{i}]") for i, q in enumerate(queries)],
        [check_documents(d, f"documents[{i}]") for i, d in enumerate(documents)],
    )


def check_top_k(top_k: Any) -> int | None:
    if top_k is None:
        return None
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    return top_k
