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
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from rerank.batching import BatcherClosedError, BatcherConfig, DynamicBatcher, QueueFullError
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
    api_key: Optional[str] = field(default=None, metadata={"help": "If set, every route but /health and /metrics needs 'Authorization: Bearer <key>' (else 401)."})
    max_request_bytes: int = field(default=2_000_000, metadata={"help": "Largest request body in bytes (else 413)."})
    max_documents: int = field(default=1000, metadata={"help": "Most documents in one request (else 422)."})
    max_concurrent: int = field(default=512, metadata={"help": "Most requests outstanding at once, queued or being ranked (else 429)."})
    max_batch_size: Optional[int] = field(default=None, metadata={"help": "Most requests ranked in one batched model call; None = the reranker's batch_size; 1 = no dynamic batching."})
    max_wait_ms: float = field(default=5.0, metadata={"help": "How long a request waits for others to share its batch (ms)."})
    max_query_tokens: int = field(default=512, metadata={"help": "Longest query in the model's tokens (else 422 naming query): the query enters the prompt twice and is never cut."})
    body_timeout: float = field(default=30.0, metadata={"help": "Seconds a request body may take to arrive in full (else 408)."})

    def __post_init__(self):
        for name in ("max_request_bytes", "max_documents", "max_concurrent", "max_query_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.body_timeout, bool) or not isinstance(self.body_timeout, (int, float)) \
                or not self.body_timeout > 0 or self.body_timeout == float("inf"):
            raise ValueError(f"body_timeout must be a positive number of seconds, got {self.body_timeout!r}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ValueError("api_key must be a non-empty string or None")
        # The batching fields are checked by BatcherConfig.
        self.batcher_config()

    def batcher_config(self) -> BatcherConfig:
        return BatcherConfig(max_batch_size=self.max_batch_size, max_wait_ms=self.max_wait_ms,
                             max_pending=self.max_concurrent)


class _Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

    def __init__(self, batcher: DynamicBatcher):
        prom = _require("prometheus_client")
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter("lazyrank_requests", "HTTP requests answered, by route and status",
                                     ["route", "status"], registry=r)
        self.errors = prom.Counter("lazyrank_errors", "Failed requests by error kind", ["kind"], registry=r)
        self.queue_depth = prom.Gauge("lazyrank_queue_depth", "Requests waiting for the model worker", registry=r)
        self.queue_depth.set_function(lambda: batcher.queued)
        self.in_flight = prom.Gauge("lazyrank_requests_in_flight", "Requests queued or being ranked", registry=r)
        self.in_flight.set_function(lambda: batcher.pending)
        self.batch_size = prom.Histogram("lazyrank_batch_size", "Requests per batched model call",
                                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.batch_seconds = prom.Histogram("lazyrank_batch_seconds", "Seconds per batched model call", registry=r)
        self.latency = prom.Histogram("lazyrank_request_latency_seconds", "Rerank request latency (s)", ["route"],
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                      registry=r)
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


def create_app(reranker: Any, config: ServerConfig | None = None, *, info: dict | None = None):
    """A Starlette app serving ``reranker``; ``info`` adds fields to ``GET /info``.

    The batcher is at ``app.state.batcher``; it is closed (queued requests finished) on shutdown.
    """
    _require("starlette")
    from starlette import responses
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.routing import Route

    config = config or ServerConfig()
    scoring = getattr(reranker.config, "scoring", "generate")
    metrics_holder: dict[str, _Metrics] = {}
    batcher = DynamicBatcher(reranker, config.batcher_config(),
                             on_batch=lambda n, s: metrics_holder["m"].on_batch(n, s))
    metrics = _Metrics(batcher)
    metrics_holder["m"] = metrics

    def check_auth(request: Request) -> None:
        if config.api_key is None:
            return  # clients always send some Bearer token; any is accepted
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise ApiError(401, "unauthorized", "missing or invalid API key (send 'Authorization: Bearer <key>')")

    async def read_body(request: Request) -> bytes:
        limit = config.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, "payload_too_large", f"request body of {declared} bytes > limit of {limit} bytes")
        body = bytearray()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.body_timeout
        chunks = request.stream().__aiter__()
        while True:  # chunked bodies are counted as they arrive; a stalled one is cut at the deadline
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), max(0.0, deadline - loop.time()))
            except StopAsyncIteration:
                return bytes(body)
            except asyncio.TimeoutError:
                raise ApiError(408, "timeout", f"request body not received in full within {config.body_timeout:g} s "
                                               f"({len(body)} bytes arrived)") from None
            body += chunk
            if len(body) > limit:
                raise ApiError(413, "payload_too_large", f"request body over the limit of {limit} bytes")

    async def read_json(request: Request) -> Any:
        body = await read_body(request)
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
        except RecursionError:
            raise ApiError(400, "invalid_json", "the request body is not valid JSON: nested too deeply") from None
        except ValueError as exc:  # e.g. an integer of more digits than Python converts
            raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None

    tokenizer = getattr(reranker, "tokenizer", None)
    if tokenizer is not None:
        from rerank.prompting.prompts import plain_text_tokenizer

        # a private copy: the worker thread keeps using the reranker's own to tokenise prompts
        tokenizer = plain_text_tokenizer(tokenizer)

    def query_tokens(query: str) -> int:
        if tokenizer is None:  # a ranker without a tokenizer: UTF-8 bytes bound byte-level BPE tokens
            return len(query.encode("utf-8"))
        return len(tokenizer(query, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    async def check_query_budget(query: str) -> None:
        # A long query is tokenised off the event loop (2 MB take seconds).
        count = query_tokens(query) if len(query) <= 4096 else await asyncio.to_thread(query_tokens, query)
        if count > config.max_query_tokens:
            raise ApiError(422, "validation", f"query is {count} tokens, over the budget of "
                                              f"{config.max_query_tokens} tokens (max_query_tokens)")

    async def rerank_route(request: Request):
        route = request.url.path
        start = time.perf_counter()
        try:
            check_auth(request)
            req = parse_request(await read_json(request), path=route, max_documents=config.max_documents)
            await check_query_budget(req.query)
            top_k = model_top_k(scoring, req.returned) if req.top_n is not None else None
            try:
                future = batcher.submit(req.query, req.texts, top_k)
            except QueueFullError as exc:
                raise ApiError(429, "overloaded", f"model is overloaded: {exc}") from None
            except BatcherClosedError as exc:
                raise ApiError(503, "unavailable", str(exc)) from None
            try:
                result = await asyncio.wrap_future(future)
            except Exception as exc:  # one batch failed: only these requests get 500
                logger.exception("ranking failed")
                raise ApiError(500, "backend", f"ranking failed: {type(exc).__name__}: {exc}") from None
            metrics.prompt_tokens.inc(result.stats.prompt_tokens)
            metrics.documents.inc(len(req.texts))
            if req.dialect == "tei":
                response = responses.JSONResponse(tei_response(req, result))
            else:
                version = "2" if route.startswith("/v2") else "1"
                response = responses.JSONResponse(cohere_response(req, result, model_name=config.model_name,
                                                                  api_version=version))
        except ApiError as exc:
            metrics.errors.labels(exc.kind).inc()
            response = _error(exc, responses)
        except Exception as exc:  # a bug of ours: still one JSON answer, counted like any other
            logger.exception("unexpected error on %s", route)
            metrics.errors.labels("internal").inc()
            response = _error(ApiError(500, "internal", f"{type(exc).__name__}: {exc}"), responses)
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - start)
        return response

    async def health(request: Request):
        if batcher.closed:
            return _error(ApiError(503, "unhealthy", "shutting down"), responses)
        return responses.JSONResponse({"status": "ok"})

    async def info_route(request: Request):
        try:
            check_auth(request)
        except ApiError as exc:
            metrics.errors.labels(exc.kind).inc()
            return _error(exc, responses)
        rc = reranker.config
        pruning = getattr(rc, "pruning", None)
        from rerank import __version__

        body = {
            "model": config.model_name,
            "version": __version__,
            "scoring": scoring,
            "strategy": getattr(rc, "strategy", None),
            "pruning": asdict(pruning) if pruning is not None else None,
            "max_passage_tokens": getattr(rc, "max_passage_tokens", None),
            "max_context": getattr(reranker, "max_context", None),
            "limits": {"max_documents": config.max_documents, "max_request_bytes": config.max_request_bytes,
                       "max_concurrent": config.max_concurrent, "max_batch_size": batcher.max_batch_size,
                       "max_wait_ms": config.max_wait_ms, "max_query_tokens": config.max_query_tokens,
                       "body_timeout": config.body_timeout},
            "auth": config.api_key is not None,
            "endpoints": list(RERANK_ROUTES),
            "relevance_score": "rank-derived 1 - r/N, or softmax of the model's scores over the request; "
                               "monotone in rank, in [0, 1]",
        }
        body.update(info or {})
        return responses.JSONResponse(body)

    async def metrics_route(request: Request):
        data, content_type = metrics.render()
        return responses.Response(data, headers={"Content-Type": content_type})

    from rerank import __version__ as lazyrank_version

    schema = openapi_document(version=lazyrank_version, max_documents=config.max_documents,
                              max_query_tokens=config.max_query_tokens, secured=config.api_key is not None)

    async def openapi_route(request: Request):
        return responses.JSONResponse(schema)

    async def docs_route(request: Request):
        return responses.HTMLResponse(docs_page())

    async def docs_asset(request: Request):
        name = request.path_params["name"]
        try:
            path = swagger_asset(name)
        except ImportError as exc:
            return _error(ApiError(404, "not_found", str(exc)), responses)
        if path is None:
            return _error(ApiError(404, "not_found", f"no asset {name!r}"), responses)
        return responses.Response(path.read_bytes(), media_type=SWAGGER_ASSETS[name],
                                  headers={"Cache-Control": "public, max-age=86400"})

    async def http_error(request: Request, exc: HTTPException):
        kinds = {404: "not_found", 405: "method_not_allowed"}
        return _error(ApiError(exc.status_code, kinds.get(exc.status_code, "http"), str(exc.detail)), responses)

    async def internal_error(request: Request, exc: Exception):
        metrics.errors.labels("internal").inc()
        return _error(ApiError(500, "internal", f"{type(exc).__name__}: {exc}"), responses)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        yield
        # The server has stopped taking connections and in-flight requests are done (uvicorn
        # drains them first); close() finishes anything still queued and stops the worker.
        await asyncio.to_thread(batcher.close, True, 60.0)

    routes = [Route(path, rerank_route, methods=["POST"]) for path in RERANK_ROUTES]
    routes += [Route("/health", health, methods=["GET"]), Route("/info", info_route, methods=["GET"]),
               Route("/metrics", metrics_route, methods=["GET"]), Route("/openapi.json", openapi_route, methods=["GET"]),
               Route("/docs", docs_route, methods=["GET"]), Route("/docs/assets/{name}", docs_asset, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: internal_error})
    app.state.batcher = batcher
    app.state.config = config
    app.state.metrics = metrics
    return app
