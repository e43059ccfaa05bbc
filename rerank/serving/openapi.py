"""The OpenAPI description of ``rerank serve`` (``GET /openapi.json``) and its ``/docs`` page.

The document is OpenAPI 3.0.3 (what the Swagger UI shipped by the ``swagger-ui-bundle`` package
renders); schemas use only keywords JSON Schema validators read alike (type, properties, required,
items, enum, anyOf, bounds), so a client or test can validate answers with any of them. ``/docs``
is Swagger UI served from that package's files: no CDN, works offline.
"""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document", "docs_page", "swagger_asset", "SWAGGER_ASSETS", "ERROR_KINDS"]

# Every error_type the server answers (see docs/serving.md).
ERROR_KINDS = [
    "validation",
    "empty",
    "invalid_json",
    "payload_too_large",
    "timeout",
    "unauthorized",
    "overloaded",
    "unavailable",
    "unhealthy",
    "backend",
    "internal",
    "not_found",
    "method_not_allowed",
    "http",
]

# The two files /docs loads; nothing else of the package is served.
SWAGGER_ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "application/javascript; charset=utf-8",
}

_ERRORS = {
    "400": "Empty document list or a body that is not JSON (nested too deeply included)",
    "401": "Missing or wrong API key (only when the server has one)",
    "408": "The request body did not arrive within body_timeout",
    "413": "Body over max_request_bytes",
    "422": "A field is missing or invalid; the message names it (an empty query, a query over "
    "max_query_tokens, a lone surrogate, too many documents)",
    "429": "Too many requests outstanding (max_concurrent)",
    "500": "The model failed on this request's batch",
    "503": "Shutting down",
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _schemas(max_documents: int, max_query_tokens: int) -> dict[str, Any]:
    query = {
        "type": "string",
        "minLength": 1,
        "description": f"The search query: not blank, at most {max_query_tokens} tokens of the model (else 422).",
    }
    flag = {"type": "boolean", "description": "null or absent = false."}
    return {
        "CohereRerankRequest": {
            "type": "object",
            "required": ["query", "documents"],
            "description": "Cohere v1/v2 and Jina. Fields these APIs define but that do not apply here "
            "(max_chunks_per_doc, max_tokens_per_doc, priority, ...) are accepted and ignored.",
            "properties": {
                "model": {"type": "string", "description": "Accepted and ignored: the server runs one model."},
                "query": query,
                "documents": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": max_documents,
                    "items": {
                        "anyOf": [{"type": "string"}, {"type": "object", "properties": {"text": {"type": "string"}}}]
                    },
                    "description": "Strings or objects with a 'text' field (or the rank_fields).",
                },
                "top_n": {"type": "integer", "minimum": 0, "description": "0, null or absent = every document."},
                "return_documents": flag,
                "rank_fields": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Rank object documents on these fields, in this order.",
                },
            },
        },
        "TeiRerankRequest": {
            "type": "object",
            "required": ["query", "texts"],
            "description": "Hugging Face text-embeddings-inference (POST /rerank with 'texts'); "
            "truncate and truncation_direction are accepted and ignored.",
            "properties": {
                "query": query,
                "texts": {"type": "array", "minItems": 1, "maxItems": max_documents, "items": {"type": "string"}},
                "raw_scores": flag,
                "return_text": flag,
            },
        },
        "CohereRerankResult": {
            "type": "object",
            "required": ["index", "relevance_score"],
            "additionalProperties": False,
            "properties": {
                "index": {"type": "integer", "minimum": 0, "description": "Position in the request's documents."},
                "relevance_score": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 1,
                    "description": "Monotone in rank, best first.",
                },
                "document": {
                    "type": "object",
                    "description": "The document as sent (a string becomes {'text'}); only with return_documents.",
                },
            },
        },
        "CohereRerankResponse": {
            "type": "object",
            "required": ["id", "model", "results", "meta", "usage"],
            "properties": {
                "id": {"type": "string"},
                "model": {"type": "string"},
                "results": {"type": "array", "items": _ref("CohereRerankResult"), "description": "Best first."},
                "meta": {
                    "type": "object",
                    "required": ["api_version", "billed_units", "tokens"],
                    "properties": {
                        "api_version": {
                            "type": "object",
                            "required": ["version"],
                            "properties": {"version": {"type": "string", "enum": ["1", "2"]}},
                        },
                        "billed_units": {"type": "object", "properties": {"search_units": {"type": "integer"}}},
                        "tokens": {
                            "type": "object",
                            "required": ["input_tokens", "output_tokens"],
                            "properties": {
                                "input_tokens": {"type": "integer", "minimum": 0},
                                "output_tokens": {"type": "integer", "minimum": 0},
                            },
                        },
                    },
                },
                "usage": {
                    "type": "object",
                    "required": ["total_tokens", "prompt_tokens"],
                    "properties": {
                        "total_tokens": {"type": "integer", "minimum": 0},
                        "prompt_tokens": {"type": "integer", "minimum": 0},
                    },
                },
            },
        },
        "TeiRerankResponse": {
            "type": "array",
            "description": "Best first.",
            "items": {
                "type": "object",
                "required": ["index", "score"],
                "additionalProperties": False,
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "score": {
                        "type": "number",
                        "description": "Relevance in [0, 1], or the model's score with raw_scores.",
                    },
                    "text": {"type": "string", "description": "Only with return_text."},
                },
            },
        },
        "Error": {
            "type": "object",
            "required": ["error", "error_type", "detail"],
            "additionalProperties": False,
            "properties": {
                "error": {"type": "string", "description": "What is wrong, naming the field."},
                "error_type": {"type": "string", "enum": ERROR_KINDS},
                "detail": {"type": "string", "description": "The same message (FastAPI-style clients)."},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string", "enum": ["ok"]}},
        },
        "Info": {
            "type": "object",
            "required": ["model", "version", "scoring", "limits", "auth", "endpoints"],
            "properties": {
                "model": {"type": "string"},
                "version": {"type": "string"},
                "scoring": {"type": "string"},
                "limits": {"type": "object"},
                "auth": {"type": "boolean"},
                "endpoints": {"type": "array", "items": {"type": "string"}},
            },
        },
    }


def _rerank_operation(summary: str, request: dict, answer: dict, secured: bool) -> dict:
    responses = {"200": _json(answer, "Documents best first, cut to top_n")}
    responses.update({code: _json(_ref("Error"), text) for code, text in _ERRORS.items() if secured or code != "401"})
    op = {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
        "responses": responses,
    }
    if secured:
        op["security"] = [{"bearer": []}]
    return op


def openapi_document(*, version: str, max_documents: int, max_query_tokens: int, secured: bool) -> dict:
    """The OpenAPI 3.0.3 document of the server's routes, bodies and error shape."""
    cohere = _rerank_operation(
        "Rerank (Cohere / Jina shape)", _ref("CohereRerankRequest"), _ref("CohereRerankResponse"), secured
    )
    either = _rerank_operation(
        "Rerank: Cohere/Jina shape with 'documents', TEI's with 'texts'",
        {"anyOf": [_ref("CohereRerankRequest"), _ref("TeiRerankRequest")]},
        {"anyOf": [_ref("CohereRerankResponse"), _ref("TeiRerankResponse")]},
        secured,
    )
    info_op: dict = {"summary": "Model, settings and limits", "responses": {"200": _json(_ref("Info"), "Settings")}}
    if secured:
        info_op["security"] = [{"bearer": []}]
        info_op["responses"]["401"] = _json(_ref("Error"), _ERRORS["401"])
    doc = {
        "openapi": "3.0.3",
        "info": {
            "title": "LazyRank rerank API",
            "version": version,
            "description": "Listwise LLM reranking with the Cohere, Jina and TEI rerank wire formats.",
        },
        "paths": {
            "/v1/rerank": {"post": cohere},
            "/v2/rerank": {"post": cohere},
            "/rerank": {"post": either},
            "/health": {
                "get": {
                    "summary": "Liveness (public)",
                    "responses": {
                        "200": _json(_ref("Health"), "Serving"),
                        "503": _json(_ref("Error"), "Shutting down"),
                    },
                }
            },
            "/info": {"get": info_op},
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (public)",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {"schemas": _schemas(max_documents, max_query_tokens)},
    }
    if secured:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc


def docs_page(title: str = "LazyRank rerank API") -> str:
    """Swagger UI over ``/openapi.json``, loading its two files from ``/docs/assets/`` (no CDN)."""
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({{url: "/openapi.json", dom_id: "#swagger-ui"}});</script>
</body>
</html>
"""


def swagger_asset(name: str):
    """Path of a Swagger UI file from the ``swagger-ui-bundle`` package (None for a name not served)."""
    if name not in SWAGGER_ASSETS:
        return None
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError as exc:
        raise ImportError("the /docs page needs swagger-ui-bundle: pip install 'lazyrank[serve]'") from exc
    return swagger_ui_path / name
