"""A tiny client for a rerank server (``rerank serve``, or any Cohere/Jina-compatible one).

The LangChain and LlamaIndex adapters use it when they are given a URL instead of a
:class:`~rerank.Reranker`. It speaks the Cohere v1 shape and needs httpx (in the ``serve`` extra;
LangChain and LlamaIndex install it too). An ``api_key`` travels under the rules of
:mod:`rerank.keyed_http`: https, or plain http to a loopback host only, and never to a proxy in clear.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RerankHTTPClient", "RerankHTTPError", "endpoint_url"]


class RerankHTTPError(RuntimeError):
    """The server answered with an error status; ``status`` and ``error_type`` say which."""

    def __init__(self, status: int, message: str, error_type: str | None = None):
        super().__init__(f"rerank server answered {status}: {message}")
        self.status = status
        self.error_type = error_type


def _httpx():
    try:
        import httpx
    except ImportError as exc:
        raise ImportError("calling a rerank server needs httpx: pip install 'lazyrank[serve]'") from exc
    return httpx


def endpoint_url(base_url: str) -> str:
    """The rerank endpoint for a server root, a ``/v1`` or ``/v2`` prefix, or a full ``.../rerank`` URL."""
    url = base_url.rstrip("/")
    if url.endswith("/rerank"):
        return url
    if url.endswith(("/v1", "/v2")):
        return url + "/rerank"
    return url + "/v1/rerank"


@dataclass
class RerankHTTPClient:
    """Rank documents on a rerank server; results are ``[(index, relevance_score)]`` best first.

    Example:
        >>> client = RerankHTTPClient("http://127.0.0.1:8000")            # doctest: +SKIP
        >>> client.rerank("how do bees keep warm", ["...", "..."], top_n=1)  # doctest: +SKIP
        [(1, 0.73)]
    """

    base_url: str = field(
        metadata={"help": "Server root (http://127.0.0.1:8000), a /v1 prefix, or the full rerank URL."}
    )
    api_key: str | None = field(default=None, metadata={"help": "Sent as 'Authorization: Bearer <key>'."})
    model: str | None = field(
        default=None, metadata={"help": "The 'model' field of each request (the server may ignore it)."}
    )
    timeout: float = field(default=120.0, metadata={"help": "Seconds per request."})
    allow_insecure_key: bool = field(
        default=False, metadata={"help": "Send api_key over plain http to a non-loopback host (never via a proxy)."}
    )

    def __post_init__(self):
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout!r}")
        self.url = endpoint_url(self.base_url)
        from rerank.keyed_http import bypass_proxy, check_key_url

        check_key_url(self.url, bool(self.api_key), "api_key", self.allow_insecure_key)
        # httpx honours http_proxy / https_proxy unless told not to (trust_env=False)
        self._trust_env = not bypass_proxy(self.url, bool(self.api_key))

    def _request(self, query: str, documents: Sequence[str], top_n: int | None) -> tuple[dict, dict]:
        body: dict[str, Any] = {"query": query, "documents": list(documents), "top_n": top_n}
        if self.model is not None:
            body["model"] = self.model
        # Servers in this family expect some Bearer token even when they check none.
        headers = {"Authorization": f"Bearer {self.api_key or 'none'}"}
        return body, headers

    @staticmethod
    def _parse(response: Any) -> list[tuple[int, float]]:
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code != 200:
            message = payload.get("error") or payload.get("detail") if isinstance(payload, dict) else response.text
            error_type = payload.get("error_type") if isinstance(payload, dict) else None
            raise RerankHTTPError(response.status_code, str(message), error_type)
        if not isinstance(payload, dict) or not isinstance(payload.get("results"), list):
            raise RerankHTTPError(response.status_code, f"unexpected answer: {str(payload)[:200]}")
        return [(int(r["index"]), float(r["relevance_score"])) for r in payload["results"]]

    def rerank(self, query: str, documents: Sequence[str], top_n: int | None = None) -> list[tuple[int, float]]:
        """Blocking request."""
        httpx = _httpx()
        body, headers = self._request(query, documents, top_n)
        response = httpx.post(self.url, json=body, headers=headers, timeout=self.timeout, trust_env=self._trust_env)
        return self._parse(response)

    async def arerank(self, query: str, documents: Sequence[str], top_n: int | None = None) -> list[tuple[int, float]]:
        """Async request (native httpx.AsyncClient, no thread)."""
        httpx = _httpx()
        body, headers = self._request(query, documents, top_n)
        async with httpx.AsyncClient(timeout=self.timeout, trust_env=self._trust_env) as client:
            response = await client.post(self.url, json=body, headers=headers)
        return self._parse(response)
