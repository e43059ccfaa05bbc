"""The ASGI app behind ``rerank serve`` (Starlette): Cohere/Jina/TEI rerank routes, health, info, metrics.

Routes (see ``docs/serving.md``):

* ``POST /v1/rerank``, ``/v2/rerank``, ``/rerank``: the Cohere/Jina shape; ``/rerank`` with ``texts``
  answers in TEI's dialect.
* ``GET /health`` (public), ``GET /metrics`` (public, Prometheus text), ``GET /info``.
* ``GET /openapi.json`` and ``GET /docs`` (public): the OpenAPI document and Swagger UI over it.

Every request is ranked through one :class:`~rerank.batching.DynamicBatcher`, so the model
runs on its worker thread and never on the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from rerank import __version__
from rerank.batching import BatcherClosedError, BatcherConfig, DynamicBatcher, QueueFullError
from rerank.prompting.tokenization import plain_text_tokenizer
from rerank.serving.openapi import SWAGGER_ASSETS, docs_page, openapi_document, swagger_asset
from rerank.serving.protocol import ApiError, cohere_response, parse_request, tei_response
from rerank.serving.scores import model_top_k

logger = logging.getLogger(__name__)

__all__ = ["ServerConfig", "create_app", "RERANK_ROUTES"]

RERANK_ROUTES = ("/v1/rerank", "/v2/rerank", "/rerank")
PUBLIC_ROUTES = ("/health", "/metrics", "/openapi.json", "/docs")
_EXTRA = "pip install 'lazyrank[serve]'"


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"rerank serve needs {module.split('.')[0]}: {_EXTRA}") from exc


@dataclass
class ServerConfig:
    """Limits, authentication and batching of the rerank server."""

    model_name: str = field(default="lazyrank", metadata={"help": "Model name reported in answers and /info."})
    api_key: str | None = field(
        default=None,
        metadata={
            "help": "If set, every route but /health and /metrics needs 'Authorization: Bearer <key>' (else 401)."
        },
    )
    max_request_bytes: int = field(default=2_000_000, metadata={"help": "Largest request body in bytes (else 413)."})
    max_documents: int = field(default=1000, metadata={"help": "Most documents in one request (else 422)."})
    max_concurrent: int = field(
        default=512, metadata={"help": "Most requests outstanding at once, queued or being ranked (else 429)."}
    )
    max_batch_size: int | None = field(
        default=None,
        metadata={
            "help": (
                "Most requests ranked in one batched model call; None = the reranker's batch_size; 1 = no dynamic "
                "batching."
            )
        },
    )
    max_wait_ms: float = field(
        default=5.0, metadata={"help": "How long a request waits for others to share its batch (ms)."}
    )
    max_query_tokens: int = field(
        default=512,
        metadata={
            "help": (
                "Longest query in the model's tokens (else 422 naming query): the query enters the prompt twice and "
                "is never cut."
            )
        },
    )
    body_timeout: float = field(
        default=30.0, metadata={"help": "Seconds a request body may take to arrive in full (else 408)."}
    )

    def __post_init__(self):
        for name in ("max_request_bytes", "max_documents", "max_concurrent", "max_query_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if (
            isinstance(self.body_timeout, bool)
            or not isinstance(self.body_timeout, (int, float))
            or not self.body_timeout > 0
            or self.body_timeout == float("inf")
        ):
            raise ValueError(f"body_timeout must be a positive number of seconds, got {self.body_timeout!r}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ValueError("api_key must be a non-empty string or None")
        # The batching fields are checked by BatcherConfig.
        self.batcher_config()

    def batcher_config(self) -> BatcherConfig:
        return BatcherConfig(
            max_batch_size=self.max_batch_size, max_wait_ms=self.max_wait_ms, max_pending=self.max_concurrent
        )


class _Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

    def __init__(self, batcher: DynamicBatcher):
        prom = _require("prometheus_client")
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter(
            "lazyrank_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=r
        )
        self.errors = prom.Counter("lazyrank_errors", "Failed requests by error kind", ["kind"], registry=r)
        self.queue_depth = prom.Gauge("lazyrank_queue_depth", "Requests waiting for the model worker", registry=r)
        self.queue_depth.set_function(lambda: batcher.queued)
        self.in_flight = prom.Gauge("lazyrank_requests_in_flight", "Requests queued or being ranked", registry=r)
        self.in_flight.set_function(lambda: batcher.pending)
        self.batch_size = prom.Histogram(
            "lazyrank_batch_size",
            "Requests per batched model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.batch_seconds = prom.Histogram("lazyrank_batch_seconds", "Seconds per batched model call", registry=r)
        self.latency = prom.Histogram(
            "lazyrank_request_latency_seconds",
            "Rerank request latency (s)",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.prompt_tokens = prom.Counter("lazyrank_prompt_tokens", "Prompt tokens read by the model", registry=r)
        self.documents = prom.Counter("lazyrank_documents", "Documents ranked", registry=r)
        self._prom = prom

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST


def _error(exc: ApiError, responses: Any):
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    if exc.status == 408:
        headers["Connection"] = "close"  # the rest of the body may still come: the connection is not reusable
    return responses.JSONResponse(exc.body(), status_code=exc.status, headers=headers or None)


async def _read_body(request: Any, limit: int, timeout: float) -> bytes:
    """The request body, refused over ``limit`` bytes (413) or when not in full within ``timeout`` s (408)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"request body of {declared} bytes > limit of {limit} bytes")
    body = bytearray()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    chunks = request.stream().__aiter__()
    while True:  # chunked bodies are counted as they arrive; a stalled one is cut at the deadline
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), max(0.0, deadline - loop.time()))
        except StopAsyncIteration:
            return bytes(body)
        except asyncio.TimeoutError:
            raise ApiError(
                408, "timeout", f"request body not received in full within {timeout:g} s ({len(body)} bytes arrived)"
            ) from None
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "payload_too_large", f"request body over the limit of {limit} bytes")


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the request body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None


class _Service:
    """What one app serves from (reranker, batcher, metrics, limits) and its route handlers."""

    def __init__(self, reranker: Any, config: ServerConfig, info: dict | None):
        from starlette import responses

        self.responses = responses
        self.reranker, self.config, self.info = reranker, config, info or {}
        self.scoring = getattr(reranker.config, "scoring", "generate")
        self.batcher = DynamicBatcher(reranker, config.batcher_config(), on_batch=self._on_batch)
        self.metrics = _Metrics(self.batcher)
        tokenizer = getattr(reranker, "tokenizer", None)
        # a private copy: the worker thread keeps using the reranker's own to tokenise prompts
        self.tokenizer = plain_text_tokenizer(tokenizer) if tokenizer is not None else None
        self.schema = openapi_document(
            version=__version__,
            max_documents=config.max_documents,
            max_query_tokens=config.max_query_tokens,
            secured=config.api_key is not None,
        )

    def _on_batch(self, size: int, seconds: float) -> None:
        self.metrics.on_batch(size, seconds)

    def error(self, exc: ApiError):
        return _error(exc, self.responses)

    def check_auth(self, request: Any) -> None:
        if self.config.api_key is None:
            return  # clients always send some Bearer token; any is accepted
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.config.api_key.encode()):
            raise ApiError(401, "unauthorized", "missing or invalid API key (send 'Authorization: Bearer <key>')")

    def query_tokens(self, query: str) -> int:
        if self.tokenizer is None:  # a ranker without a tokenizer: UTF-8 bytes bound byte-level BPE tokens
            return len(query.encode("utf-8"))
        return len(self.tokenizer(query, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    async def check_query_budget(self, query: str) -> None:
        # A long query is tokenised off the event loop (2 MB take seconds).
        count = self.query_tokens(query) if len(query) <= 4096 else await asyncio.to_thread(self.query_tokens, query)
        if count > self.config.max_query_tokens:
            raise ApiError(
                422,
                "validation",
                f"query is {count} tokens, over the budget of {self.config.max_query_tokens} tokens (max_query_tokens)",
            )

    async def rank(self, req: Any):
        """Submit one parsed request to the batcher and wait for its result."""
        top_k = model_top_k(self.scoring, req.returned) if req.top_n is not None else None
        try:
            future = self.batcher.submit(req.query, req.texts, top_k)
        except QueueFullError as exc:
            raise ApiError(429, "overloaded", f"model is overloaded: {exc}") from None
        except BatcherClosedError as exc:
            raise ApiError(503, "unavailable", str(exc)) from None
        try:
            return await asyncio.wrap_future(future)
        except Exception as exc:  # one batch failed: only these requests get 500
            logger.exception("ranking failed")
            raise ApiError(500, "backend", f"ranking failed: {type(exc).__name__}: {exc}") from None

    async def rerank_route(self, request: Any):
        route, start, metrics = request.url.path, time.perf_counter(), self.metrics
        try:
            self.check_auth(request)
            body = _parse_json(await _read_body(request, self.config.max_request_bytes, self.config.body_timeout))
            req = parse_request(body, path=route, max_documents=self.config.max_documents)
            await self.check_query_budget(req.query)
            result = await self.rank(req)
            metrics.prompt_tokens.inc(result.stats.prompt_tokens)
            metrics.documents.inc(len(req.texts))
            if req.dialect == "tei":
                answer = tei_response(req, result)
            else:
                answer = cohere_response(
                    req, result, model_name=self.config.model_name, api_version="2" if route.startswith("/v2") else "1"
                )
            response = self.responses.JSONResponse(answer)
        except ApiError as exc:
            metrics.errors.labels(exc.kind).inc()
            response = self.error(exc)
        except Exception as exc:  # a bug of ours: still one JSON answer, counted like any other
            logger.exception("unexpected error on %s", route)
            metrics.errors.labels("internal").inc()
            response = self.error(ApiError(500, "internal", f"{type(exc).__name__}: {exc}"))
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - start)
        return response

    async def health(self, request: Any):
        if self.batcher.closed:
            return self.error(ApiError(503, "unhealthy", "shutting down"))
        return self.responses.JSONResponse({"status": "ok"})

    async def info_route(self, request: Any):
        try:
            self.check_auth(request)
        except ApiError as exc:
            self.metrics.errors.labels(exc.kind).inc()
            return self.error(exc)
        rc, config = self.reranker.config, self.config
        pruning = getattr(rc, "pruning", None)
        body = {
            "model": config.model_name,
            "version": __version__,
            "scoring": self.scoring,
            "strategy": getattr(rc, "strategy", None),
            "pruning": asdict(pruning) if pruning is not None else None,
            "max_passage_tokens": getattr(rc, "max_passage_tokens", None),
            "max_context": getattr(self.reranker, "max_context", None),
            "limits": {
                "max_documents": config.max_documents,
                "max_request_bytes": config.max_request_bytes,
                "max_concurrent": config.max_concurrent,
                "max_batch_size": self.batcher.max_batch_size,
                "max_wait_ms": config.max_wait_ms,
                "max_query_tokens": config.max_query_tokens,
                "body_timeout": config.body_timeout,
            },
            "auth": config.api_key is not None,
            "endpoints": list(RERANK_ROUTES),
            "relevance_score": "rank-derived 1 - r/N, or softmax of the model's scores over the request; "
            "monotone in rank, in [0, 1]",
        }
        body.update(self.info)
        return self.responses.JSONResponse(body)

    async def metrics_route(self, request: Any):
        data, content_type = self.metrics.render()
        return self.responses.Response(data, headers={"Content-Type": content_type})

    async def openapi_route(self, request: Any):
        return self.responses.JSONResponse(self.schema)

    async def docs_route(self, request: Any):
        return self.responses.HTMLResponse(docs_page())

    async def docs_asset(self, request: Any):
        name = request.path_params["name"]
        try:
            path = swagger_asset(name)
        except ImportError as exc:
            return self.error(ApiError(404, "not_found", str(exc)))
        if path is None:
            return self.error(ApiError(404, "not_found", f"no asset {name!r}"))
        return self.responses.Response(
            path.read_bytes(), media_type=SWAGGER_ASSETS[name], headers={"Cache-Control": "public, max-age=86400"}
        )

    async def http_error(self, request: Any, exc: Any):
        kinds = {404: "not_found", 405: "method_not_allowed"}
        return self.error(ApiError(exc.status_code, kinds.get(exc.status_code, "http"), str(exc.detail)))

    async def internal_error(self, request: Any, exc: Exception):
        self.metrics.errors.labels("internal").inc()
        return self.error(ApiError(500, "internal", f"{type(exc).__name__}: {exc}"))

    @asynccontextmanager
    async def lifespan(self, app: Any):
        yield
        # The server has stopped taking connections and in-flight requests are done (uvicorn
        # drains them first); close() finishes anything still queued and stops the worker.
        await asyncio.to_thread(self.batcher.close, True, 60.0)


def create_app(reranker: Any, config: ServerConfig | None = None, *, info: dict | None = None):
    """A Starlette app serving ``reranker``; ``info`` adds fields to ``GET /info``.

    The batcher is at ``app.state.batcher``; it is closed (queued requests finished) on shutdown.
    """
    _require("starlette")
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    service = _Service(reranker, config or ServerConfig(), info)
    routes = [Route(path, service.rerank_route, methods=["POST"]) for path in RERANK_ROUTES]
    routes += [
        Route(path, handler, methods=["GET"])
        for path, handler in (
            ("/health", service.health),
            ("/info", service.info_route),
            ("/metrics", service.metrics_route),
            ("/openapi.json", service.openapi_route),
            ("/docs", service.docs_route),
            ("/docs/assets/{name}", service.docs_asset),
        )
    ]
    app = Starlette(
        routes=routes,
        lifespan=service.lifespan,
        exception_handlers={HTTPException: service.http_error, Exception: service.internal_error},
    )
    app.state.batcher = service.batcher
    app.state.config = service.config
    app.state.metrics = service.metrics
    return app
