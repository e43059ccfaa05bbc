"""Where an API key may travel, and the urllib client that follows it (OpenAI-compatible teachers and
query generators; the httpx client of the LangChain / LlamaIndex adapters applies the same two checks).

Where a key may go, in one place:

* over https to any host (an environment proxy only sees an encrypted ``CONNECT`` tunnel);
* over plain http to a loopback host only (``localhost``, 127.0.0.0/8, ``::1``), unless the caller
  opts out with ``allow_insecure_key=True``;
* never to a proxy in clear: loopback hosts, and any plain-http request carrying a key, bypass the
  ``http_proxy`` / ``https_proxy`` of the environment (urllib would otherwise hand the whole request,
  ``Authorization`` header included, to the proxy);
* never along a redirect (a 3xx is an error: following it would resend the header elsewhere).
"""

from __future__ import annotations

import ipaddress
import json
import os
import urllib.request
from urllib.parse import urlparse

__all__ = ["KeyedClient", "bypass_proxy", "check_key_transport", "check_key_url", "is_loopback_url"]


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is this machine (``localhost``, 127.0.0.0/8 or ``::1``): plain http
    to it never crosses a network."""
    host = (urlparse(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def check_key_transport(url: str, api_key_env: str, allow_insecure_key: bool = False) -> None:
    """Refuse to send the key in ``$api_key_env`` to ``url`` unless over https or to a loopback host.

    Plain http carries the bearer token readable to anyone on the path. ``allow_insecure_key=True``
    is the explicit opt-out (e.g. a trusted private network). No key set means nothing to leak.
    """
    check_key_url(url, bool(os.environ.get(api_key_env)), f"${api_key_env}", allow_insecure_key)


def check_key_url(url: str, has_key: bool, what: str, allow_insecure_key: bool = False) -> None:
    """Raise ``ValueError`` naming ``what`` (the key's source) when a key may not go to ``url``."""
    if not has_key or allow_insecure_key:
        return
    if urlparse(url).scheme != "https" and not is_loopback_url(url):
        raise ValueError(
            f"refusing to send {what} over plain {urlparse(url).scheme or '?'}:// to {url}: "
            "use https, a loopback address, or allow_insecure_key=True"
        )


def bypass_proxy(url: str, has_key: bool) -> bool:
    """Whether a request must ignore the environment's proxies: loopback hosts, and plain http carrying a
    key (a proxy would read the request, key included, in clear). https through a proxy is a tunnel."""
    return is_loopback_url(url) or (has_key and urlparse(url).scheme != "https")


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would resend the Authorization header to wherever it points (http included):
    fail with the 3xx instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class KeyedClient:
    """POSTs JSON to one URL with the bearer key read from the environment variable ``api_key_env``.

    Raises ``ValueError`` at construction when the key may not travel to ``url`` (see the module
    docstring). :meth:`post_json` raises urllib's errors (``HTTPError``, ``URLError``, ``OSError``,
    ``TimeoutError``) and ``json.JSONDecodeError``; callers turn them into their own errors.
    """

    def __init__(self, url: str, api_key_env: str, *, timeout: float, allow_insecure_key: bool = False):
        check_key_transport(url, api_key_env, allow_insecure_key)
        self.url, self.timeout = url, timeout
        self.api_key = os.environ.get(api_key_env, "")
        handlers: list[urllib.request.BaseHandler] = [_RefuseRedirects]
        if self.bypasses_proxy:
            handlers.append(urllib.request.ProxyHandler({}))  # direct connection, whatever the environment says
        self._opener = urllib.request.build_opener(*handlers)

    @property
    def bypasses_proxy(self) -> bool:
        """Loopback, or plain http with a key: a proxy would read the request (key included) in clear."""
        return bypass_proxy(self.url, bool(self.api_key))

    def post_json(self, payload: dict) -> dict:
        """POST ``payload`` as JSON and return the decoded JSON reply."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.url, data=json.dumps(payload).encode("utf-8"), method="POST", headers=headers
        )
        with self._opener.open(request, timeout=self.timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))
