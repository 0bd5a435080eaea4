"""Slow and idle clients: header and body timeouts, a header size cap and a connection cap.

uvicorn has no header-read timeout: 21,000 connections that trickled their headers once made
98% of new connections fail. `guarded_protocol(limits)` returns uvicorn's httptools protocol
with, per connection:

- a header deadline: a request's headers must be complete `header_timeout_s` after the
  connection opened (or after its first byte, on a kept-alive connection), however slowly
  they trickle in; past it the connection gets a 408 and is closed;
- a body timeout: a request body that stops arriving for `body_timeout_s` closes the connection
  (the handler sees a disconnect);
- a header size cap: headers over `max_header_bytes` get a 431 (checked per received chunk
  while the headers are incomplete, and once when they end);
- a connection cap: when `max_connections` are open, a new connection first evicts the oldest
  one that is not in a request (idle keep-alive, or still sending headers), so slow or idle
  clients cannot lock well-behaved ones out; when every connection is mid-request, the new one
  is refused at once with a 503 and Retry-After.

Deadlines are attributes checked by one sweep a second (a quarter of the shortest timeout when
that is shorter), not a timer per request: a request costs a few attribute writes.
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

from contract.vocab import OrsReason

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

    @property
    def sweep_s(self) -> float:
        return min(1.0, self.header_timeout_s / 4, self.body_timeout_s / 4)


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
    body = orjson.dumps({"ok": False, "error": message, "reason": OrsReason.CONNECTION_REFUSED})
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


# Where a connection is: waiting for a request (idle), receiving one, or answering it.
_IDLE, _HEADERS, _BODY, _BUSY = "idle", "headers", "body", "busy"


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with `limits` enforced (pass it as `uvicorn.run(http=...)`)."""
    sweeper: list[asyncio.TimerHandle] = []

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._phase = _IDLE
            self._since = time.monotonic()
            self._deadline = self._since + limits.header_timeout_s  # 0.0: none
            self._header_bytes = 0  # raw bytes of chunks that ended before the headers did
            self._chunk = 0  # bytes in the chunk being parsed

        # -- connection lifetime

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if not sweeper:
                sweeper.append(self.loop.call_later(limits.sweep_s, _sweep, self.connections))
            if len(self.connections) > limits.max_connections and not self._evict():
                self.connections.discard(self)
                transport.write(
                    _response(
                        b"503 Service Unavailable",
                        f"server is at its limit of {limits.max_connections} connections",
                        b"retry-after: " + str(limits.retry_after_s).encode() + b"\r\n",
                    )
                )
                transport.close()

        def _evict(self) -> bool:
            """Close the oldest connection not in a request; False when there is none."""
            victim: GuardedHttpToolsProtocol | None = None
            for conn in self.connections:
                # only our own protocol has a phase (an upgraded websocket never idles here)
                if not isinstance(conn, GuardedHttpToolsProtocol) or conn is self:
                    continue
                if conn._phase not in (_IDLE, _HEADERS):
                    continue
                if victim is None or conn._since < victim._since:
                    victim = conn
            if victim is None:
                log.warning(
                    "connection cap (%d) reached with every connection in a request: refusing",
                    limits.max_connections,
                )
                return False
            victim._phase, victim._deadline = _BUSY, 0.0  # never picked twice
            victim.transport.close()
            return True

        def expire(self, now: float) -> None:
            """The sweep found this connection past its deadline."""
            self._deadline = 0.0
            if self.transport.is_closing():
                return
            if self._phase in (_IDLE, _HEADERS):
                self.transport.write(
                    _response(
                        b"408 Request Timeout",
                        f"request headers did not arrive within {limits.header_timeout_s:g} s",
                    )
                )
            elif self._phase == _BODY:
                log.info(
                    "closing a connection whose request body stalled for %g s",
                    limits.body_timeout_s,
                )
            self.transport.close()

        # -- parser events

        def data_received(self, data: bytes) -> None:
            before = self._phase
            self._chunk = len(data)
            super().data_received(data)
            # Before the end of the headers both before and after this chunk: all of `data` was
            # request line or headers. (A chunk that ended a body, e.g. of a request answered
            # early with 413, is not counted although the connection is idle after it.)
            if before in (_IDLE, _HEADERS) and self._phase in (_IDLE, _HEADERS):
                self._header_bytes += len(data)
                if self._header_bytes > limits.max_header_bytes:
                    self._too_large()

        def _too_large(self) -> None:
            self._deadline = 0.0
            if not self.transport.is_closing():
                self.transport.write(
                    _response(
                        b"431 Request Header Fields Too Large",
                        f"request headers are over {limits.max_header_bytes} bytes",
                    )
                )
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._phase == _IDLE and not self._deadline:  # first byte after keep-alive idle
                self._deadline = time.monotonic() + limits.header_timeout_s
            self._phase = _HEADERS

        def on_headers_complete(self) -> None:
            # The headers are at most what came before this chunk plus this chunk: count them
            # one by one only when that could be over the limit.
            if self._header_bytes + self._chunk > limits.max_header_bytes and (
                len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)
                > limits.max_header_bytes
            ):
                self._phase = _BUSY
                self._too_large()
                return
            now = time.monotonic()
            self._phase, self._since = _BODY, now
            self._deadline = now + limits.body_timeout_s
            self._header_bytes = 0
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if self.transport.is_closing():  # refused above: no request to feed
                return
            self._deadline = time.monotonic() + limits.body_timeout_s
            super().on_body(body)

        def on_message_complete(self) -> None:
            cycle = getattr(self, "cycle", None)
            if cycle is not None and getattr(cycle, "response_complete", False):
                # answered before its body was read (e.g. 413): idle once the body is through
                self._phase, self._since, self._deadline = _IDLE, time.monotonic(), 0.0
            else:
                self._phase, self._deadline = _BUSY, 0.0
            if not self.transport.is_closing():
                super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._phase == _BODY:
                # The rest of this request's body is still arriving (the answer came first): it
                # is body, not the next request's headers, and it may stall like any body.
                self._deadline = time.monotonic() + limits.body_timeout_s
            else:
                self._phase, self._since, self._deadline = _IDLE, time.monotonic(), 0.0

    def _sweep(connections: set[Any]) -> None:
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            for conn in list(connections):
                deadline = getattr(conn, "_deadline", 0.0)
                if deadline and now > deadline:
                    conn.expire(now)
        finally:
            sweeper[0] = loop.call_later(limits.sweep_s, _sweep, connections)

    return GuardedHttpToolsProtocol
