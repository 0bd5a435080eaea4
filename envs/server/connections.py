"""Slow and idle clients: header and body timeouts, a header size cap and a connection cap.

uvicorn has no header-read timeout: 21,000 connections that trickled their headers once made
98% of new connections fail. `guarded_protocol(limits)` returns uvicorn's httptools protocol
with, per connection:

- a header deadline: a request's headers must be complete `header_timeout_s` after the
  connection opened (or after its first byte, on a kept-alive connection), however slowly
  they trickle in; past it the connection gets a 408 and is closed;
- a body timeout: a request body that stops arriving for `body_timeout_s` closes the connection
  (the handler sees a disconnect);
- a header size cap: more than `max_header_bytes` before the headers end gets a 431;
- a connection cap: when `max_connections` are open, a new connection first evicts the oldest
  one that is not in a request (idle keep-alive, or still sending headers), so slow or idle
  clients cannot lock well-behaved ones out; when every connection is mid-request, the new one
  is refused at once with a 503 and Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["ConnectionLimits", "default_max_connections", "guarded_protocol"]

log = logging.getLogger(__name__)

# Descriptors kept free for everything but client connections (database, logs, subprocesses).
RESERVED_FDS = 256


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client connection may take; see the module docstring."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 4096
    retry_after_s: int = 1


def default_max_connections(wanted: int = 8192) -> int:
    """Raise the soft open-files limit to the hard one and return a connection cap that fits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = wanted + RESERVED_FDS if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return max(16, min(wanted, soft - RESERVED_FDS))


def _response(status: bytes, message: str, extra: bytes = b"") -> bytes:
    body = orjson.dumps({"ok": False, "error": message, "reason": "connection_refused"})
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        + extra
        + b"content-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


class _HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing headers that are over the limit."""


# Where a connection is: waiting for a request (idle), receiving one, or answering it.
_IDLE, _HEADERS, _BODY, _BUSY = "idle", "headers", "body", "busy"


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with `limits` enforced (pass it as `uvicorn.run(http=...)`)."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _limits = limits

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._phase = _IDLE
            self._since = time.monotonic()
            self._header_bytes = 0  # raw bytes of chunks that ended before the headers did
            self._parsed_bytes = 0  # request line and header fields parsed so far
            self._headers_over_limit = False
            self._timer: asyncio.TimerHandle | None = None

        # -- connection lifetime

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > self._limits.max_connections and not self._evict():
                self.connections.discard(self)
                transport.write(
                    _response(
                        b"503 Service Unavailable",
                        f"server is at its limit of {self._limits.max_connections} connections",
                        b"retry-after: " + str(self._limits.retry_after_s).encode() + b"\r\n",
                    )
                )
                transport.close()
                return
            self._arm(self._limits.header_timeout_s, self._headers_too_slow)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _evict(self) -> bool:
            """Close the oldest connection not in a request; False when there is none."""
            victim = None
            for conn in self.connections:
                if conn is self or getattr(conn, "_phase", _BUSY) not in (_IDLE, _HEADERS):
                    continue
                if victim is None or conn._since < victim._since:
                    victim = conn
            if victim is None:
                log.warning(
                    "connection cap (%d) reached with every connection in a request: refusing",
                    self._limits.max_connections,
                )
                return False
            victim._phase = _BUSY  # never picked twice
            victim.transport.close()
            return True

        # -- timers

        def _arm(self, seconds: float, callback: Any) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, callback)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _headers_too_slow(self) -> None:
            self._timer = None
            if not self.transport.is_closing():
                self.transport.write(
                    _response(
                        b"408 Request Timeout",
                        f"request headers did not arrive within {self._limits.header_timeout_s:g} s",
                    )
                )
                self.transport.close()

        def _body_too_slow(self) -> None:
            self._timer = None
            if not self.transport.is_closing():
                log.info(
                    "closing a connection whose request body stalled for %g s",
                    self._limits.body_timeout_s,
                )
                self.transport.close()

        # -- parser events

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # Still before the end of the headers: all of `data` was request line or headers
            # (httptools buffers a header line until it ends, so count raw bytes too).
            if self._phase in (_IDLE, _HEADERS) and not self.transport.is_closing():
                self._header_bytes += len(data)
                if self._header_bytes > self._limits.max_header_bytes:
                    self._too_large()

        def on_url(self, url: bytes) -> None:
            self._count_header_bytes(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count_header_bytes(len(name) + len(value) + 4)
            super().on_header(name, value)

        def _count_header_bytes(self, n: int) -> None:
            self._parsed_bytes += n
            if self._parsed_bytes > self._limits.max_header_bytes:
                self._headers_over_limit = True
                raise _HeadersTooLarge()  # httptools stops; uvicorn calls send_400_response

        def send_400_response(self, msg: str) -> None:
            if self._headers_over_limit:
                self._too_large()
            else:
                super().send_400_response(msg)

        def _too_large(self) -> None:
            self.transport.write(
                _response(
                    b"431 Request Header Fields Too Large",
                    f"request headers are over {self._limits.max_header_bytes} bytes",
                )
            )
            self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._phase == _IDLE and self._timer is None:  # first byte after keep-alive idle
                self._arm(self._limits.header_timeout_s, self._headers_too_slow)
            self._phase, self._since = _HEADERS, time.monotonic()

        def on_headers_complete(self) -> None:
            self._phase, self._since = _BODY, time.monotonic()
            self._header_bytes = self._parsed_bytes = 0
            self._arm(self._limits.body_timeout_s, self._body_too_slow)
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if self._timer is not None:  # progress: the body timeout starts again
                self._arm(self._limits.body_timeout_s, self._body_too_slow)
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._disarm()
            self._phase, self._since = _BUSY, time.monotonic()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._phase, self._since = _IDLE, time.monotonic()
            self._header_bytes = self._parsed_bytes = 0

    return GuardedHttpToolsProtocol
