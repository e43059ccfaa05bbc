"""``rerank serve``: a Cohere/Jina/TEI-compatible rerank server on uvicorn.

    rerank serve                                   # default model, 127.0.0.1:8000
    rerank serve --model runs/gpu/lm --scoring single_pass --pruning fast --port 8080 --api_key_file key.txt
    LAZYRANK_API_KEY=... rerank serve --host 0.0.0.0   # the key from the environment (ps never shows it)

Stopping it (Ctrl-C / SIGTERM) is graceful: uvicorn stops accepting connections, lets in-flight
requests finish (up to ``--graceful_timeout`` seconds), then the batcher finishes what is queued.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from rerank.serving.app import ServerConfig, _require, create_app

logger = logging.getLogger(__name__)

__all__ = ["build_parser", "build_reranker", "main", "resolve_api_key", "API_KEY_ENV"]

API_KEY_ENV = "LAZYRANK_API_KEY"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``rerank serve``."""
    from rerank.config import SCORINGS, STRATEGIES

    defaults = ServerConfig()
    p = argparse.ArgumentParser(
        prog="rerank serve",
        description="Serve a LazyRank reranker over HTTP (Cohere /v1/rerank and /v2/rerank, Jina, TEI /rerank).",
    )
    m = p.add_argument_group("model")
    m.add_argument(
        "--model",
        default=None,
        help="model path or hub id (default: the shipped reranker; 'base' = raw SmolLM2-135M-Instruct)",
    )
    m.add_argument(
        "--model_name", default=None, help="name reported in answers and /info (default: --model or 'lazyrank')"
    )
    m.add_argument(
        "--scoring",
        default=None,
        choices=SCORINGS,
        help="default: what the model recommends (head for the shipped reranker, one forward pass per "
        "request), else single_pass; generate decodes the permutation",
    )
    m.add_argument("--strategy", default="full", choices=STRATEGIES, help="full ranking or sliding windows")
    m.add_argument(
        "--pruning",
        default=None,
        help=(
            "prefill pruning: 'recommended' (the model folder's schedule and its tuned weights), a preset "
            "('default', 'fast') or 'depth:keep,...' pairs"
        ),
    )
    m.add_argument("--max_passage_tokens", type=_positive_int, default=100, help="token budget per passage")
    m.add_argument("--batch_size", type=_positive_int, default=8, help="prompts per forward pass")
    m.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    m.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16")
    m.add_argument(
        "--precision",
        default=None,
        choices=["auto", "fp32", "bf16", "int8"],
        help="CPU precision (rerank.precision; default auto: bf16 linear layers where native, else fp32)",
    )
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (0 = any free port)")
    s.add_argument(
        "--api_key_file",
        default=None,
        help=f"file holding the key every route but /health and /metrics requires ('Authorization: Bearer "
        f"KEY'); else ${API_KEY_ENV} if set",
    )
    s.add_argument(
        "--api_key",
        default=None,
        help=f"the key itself (visible to every user through ps: prefer --api_key_file or ${API_KEY_ENV})",
    )
    s.add_argument(
        "--max_request_bytes", type=_positive_int, default=defaults.max_request_bytes, help="largest body (413 above)"
    )
    s.add_argument(
        "--max_documents",
        type=_positive_int,
        default=defaults.max_documents,
        help="most documents per request (422 above)",
    )
    s.add_argument(
        "--max_concurrent",
        type=_positive_int,
        default=defaults.max_concurrent,
        help="most requests outstanding (429 above)",
    )
    s.add_argument(
        "--max_batch_size",
        type=_positive_int,
        default=None,
        help="most requests per batched model call (default: --batch_size; 1 = no dynamic batching)",
    )
    s.add_argument(
        "--max_wait_ms", type=float, default=defaults.max_wait_ms, help="how long a request waits for batch mates"
    )
    s.add_argument(
        "--max_query_tokens",
        type=_positive_int,
        default=defaults.max_query_tokens,
        help="longest query in model tokens (422 above; the query is never cut)",
    )
    s.add_argument(
        "--body_timeout",
        type=_positive_float,
        default=defaults.body_timeout,
        help="seconds a request body may take to arrive (408 after)",
    )
    s.add_argument(
        "--header_timeout",
        type=_positive_float,
        default=10.0,
        help="seconds a connection may take to send a request's headers (then it is closed)",
    )
    s.add_argument(
        "--max_connections",
        type=_positive_int,
        default=1024,
        help="most open connections; requests on connections beyond it are answered 503",
    )
    s.add_argument("--graceful_timeout", type=float, default=30.0, help="seconds in-flight requests get on shutdown")
    s.add_argument("--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def build_reranker(args: argparse.Namespace) -> Any:
    """The :class:`~rerank.Reranker` the command line asks for."""
    from rerank.reranker import Reranker

    pruning = args.pruning or None  # a spec string: from_pretrained resolves 'recommended' against the model folder
    # A service wants one prefill per request: the model's own recommendation, else single-pass.
    scoring = serve_scoring(args)
    return Reranker.from_pretrained(
        args.model,
        device=args.device,
        dtype=args.dtype,
        precision=args.precision,
        strategy=args.strategy,
        max_passage_tokens=args.max_passage_tokens,
        pruning=pruning,
        scoring=scoring,
        batch_size=args.batch_size,
    )


def serve_scoring(args: argparse.Namespace) -> str:
    """``--scoring``, else the model's recommendation (``head`` for the shipped default), else
    ``single_pass``: a service wants one prefill per request, never a decoded permutation by default."""
    from rerank.models import recommended_settings

    return args.scoring or recommended_settings(args.model).get("scoring", "single_pass")


def resolve_api_key(args: argparse.Namespace, environ: os._Environ | dict | None = None) -> str | None:
    """The server key from ``--api_key_file``, ``--api_key`` or ``$LAZYRANK_API_KEY`` (at most one of them).

    A file's surrounding whitespace (the trailing newline of ``echo KEY > file``) is dropped.

    Raises:
        ValueError: two sources at once, an unreadable or empty file, an empty variable.
    """
    environ = os.environ if environ is None else environ
    given = [
        name
        for name, value in (
            ("--api_key_file", args.api_key_file),
            ("--api_key", args.api_key),
            (f"${API_KEY_ENV}", environ.get(API_KEY_ENV)),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise ValueError(f"the API key comes from one place only; got {' and '.join(given)}")
    if args.api_key_file is not None:
        try:
            key = open(args.api_key_file, encoding="utf-8").read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--api_key_file {args.api_key_file}: cannot read it ({exc})") from None
        if not key:
            raise ValueError(f"--api_key_file {args.api_key_file} is empty")
        return key
    if args.api_key is not None:
        logger.warning(
            "--api_key on the command line is visible to other users (ps); prefer --api_key_file or $%s", API_KEY_ENV
        )
        return args.api_key
    if API_KEY_ENV in environ:
        key = environ[API_KEY_ENV].strip()
        if not key:
            raise ValueError(f"${API_KEY_ENV} is set but empty")
        return key
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rerank serve`` (also ``python -m rerank.serving.server``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    uvicorn = _require("uvicorn")
    _require("starlette")
    _require("prometheus_client")
    try:
        config = ServerConfig(
            model_name=args.model_name or args.model or "lazyrank",
            api_key=resolve_api_key(args),
            max_request_bytes=args.max_request_bytes,
            max_documents=args.max_documents,
            max_concurrent=args.max_concurrent,
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            max_query_tokens=args.max_query_tokens,
            body_timeout=args.body_timeout,
        )
        reranker = build_reranker(args)
    except (ValueError, TypeError) as exc:  # bad option values: a usage error, not a crash
        parser.error(str(exc))
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(getattr(logging, args.log_level.upper()))  # `rerank` may have configured it
    app = create_app(reranker, config, info={"model_path": args.model})
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "binding %s: the server is reachable from other machines%s",
            args.host,
            "" if config.api_key else f" and has no API key (--api_key_file or ${API_KEY_ENV})",
        )
    from rerank.serving.connections import header_timeout_protocol

    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            timeout_graceful_shutdown=args.graceful_timeout,
            access_log=False,
            http=header_timeout_protocol(args.header_timeout),
            limit_concurrency=args.max_connections,
        )
    )
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
