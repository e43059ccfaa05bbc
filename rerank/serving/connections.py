"""Connection-level limits uvicorn lacks: a deadline for a request's headers.

uvicorn closes idle keep-alive connections and caps open connections (``limit_concurrency``), but a
client that opens a connection and sends part of its headers (or nothing) holds it forever. The
protocol class below closes a connection whose next request's headers have not arrived in full
``header_timeout`` seconds after the connection opened or the previous response ended. A body that
stalls is the app's business (408, ``ServerConfig.body_timeout``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["header_timeout_protocol"]


def header_timeout_protocol(header_timeout: float) -> type:
    """uvicorn's h11 protocol with a deadline on request headers (pass as ``uvicorn.Config(http=...)``)."""
    if not header_timeout > 0:
        raise ValueError(f"header_timeout must be a positive number of seconds, got {header_timeout!r}")
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()

        def _arm_header_deadline(self) -> None:
            if not self.transport.is_closing():
                # uvicorn starts a new cycle object for each request whose headers are complete
                self.loop.call_later(header_timeout, self._header_deadline, self.cycle)

        def _header_deadline(self, cycle_when_armed: Any) -> None:
            if self.cycle is cycle_when_armed and not self.transport.is_closing():
                self.logger.info(
                    "closing a connection whose request headers did not arrive within %g s", header_timeout
                )
                self.timeout_keep_alive_handler()  # uvicorn's own close of an idle connection

    return HeaderTimeoutH11Protocol
