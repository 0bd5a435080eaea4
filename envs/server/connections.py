"""Slow, idle and greedy clients: header, body and send timeouts, a header size cap, connection
caps for the server and for each client.

uvicorn has no header-read timeout: 21,000 connections that trickled their headers once made
98% of new connections fail. `guarded_protocol(limits)` returns uvicorn's httptools protocol
with, per connection:

- a header deadline: a request's headers must be complete `header_timeout_s` after the
  connection opened (or after its first byte, on a kept-alive connection), however slowly
  they trickle in; past it the connection gets a 408 and is closed;
- a body deadline: a body that stops arriving for `body_timeout_s`, or that arrives slower than
  MIN_BODY_BYTES_PER_S on average once `body_timeout_s` have passed, closes the connection (the
  handler sees a disconnect): a byte every 20 s once kept a connection in its body for ever;
- a send deadline: an answer whose bytes stop draining to the client for `send_timeout_s`
  (a client that does not read) aborts the connection and frees what it held;
- a header size cap: headers over `max_header_bytes` get a 431 (checked per received chunk
  while the headers are incomplete, and once when they end);
- a connection cap: when `max_connections` are open, a new connection first evicts the oldest
  one that is not in a request (idle keep-alive, or still sending headers), else the oldest
  whose body is arriving slower than MIN_BODY_BYTES_PER_S, so slow or idle clients cannot lock
  well-behaved ones out; when every connection is mid-request, the new one is refused at once
  with a 503 and Retry-After;
- a cap per client (its peer address): one client holds at most `max_connections_per_client`
  (default 3/4 of the cap, rounded up); beyond it, its own oldest idle or slow connection is
  evicted, else its new one is refused, so the last quarter always stays for the others.

Deadlines are attributes checked by one sweep a second (a quarter of the shortest timeout when
that is shorter), not a timer per request: a request costs a few attribute writes.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from contract.vocab import OrsReason

__all__ = ["ConnectionLimits", "default_max_connections", "guarded_protocol"]

log = logging.getLogger(__name__)

# Descriptors kept free for everything but client connections (database, logs, subprocesses).
RESERVED_FDS = 256
# The slowest a request body may arrive on average (past its first body_timeout_s), and the
# rate under which a connection in its body may be evicted for a new one (once in it for
# SLOW_BODY_GRACE_S).
MIN_BODY_BYTES_PER_S = 16 * 1024
SLOW_BODY_GRACE_S = 2.0


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client connection may take; see the module docstring."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    send_timeout_s: float = 30.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 4096
    max_connections_per_client: int | None = None
    retry_after_s: int = 1

    @property
    def sweep_s(self) -> float:
        return min(1.0, self.header_timeout_s / 4, self.body_timeout_s / 4, self.send_timeout_s / 4)

    @property
    def client_cap(self) -> int:
        """Connections one client may hold: its own setting, else 3/4 of the cap, rounded up."""
        if self.max_connections_per_client is not None:
            return self.max_connections_per_client
        return self.max_connections - self.max_connections // 4


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


class _CoalescedWrites:
    """A transport whose writes within one turn of the loop go out as one: uvicorn writes an
    answer's status line and headers, then its body, each a send (a syscall, which on loopback
    also runs the receiver's TCP path); joined they are one. The bytes leave at the end of the
    loop's turn (`call_soon`), before anything else this connection does: `close` and `abort`,
    and the send deadline's `get_write_buffer_size`, see them. `bench/env_server.py` measures
    the server's CPU per call.

    A write of LARGE_WRITE bytes or more goes out at once, after what is pending and without
    joining it (a 2 MB task listing took ~2 ms to copy and send): in the step of the request
    that wrote it, so the fair share (fairness.py) charges that request's client, not a callback
    no one is charged for."""

    __slots__ = ("_loop", "_pending", "_transport")

    LARGE_WRITE = 64 * 1024

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if len(data) >= self.LARGE_WRITE:
            pending, self._pending = self._pending, []
            if not self._transport.is_closing():
                self._transport.writelines([*pending, data])
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def writelines(self, chunks: Any) -> None:
        for data in chunks:
            self.write(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def guarded_protocol(
    limits: ConnectionLimits, closed: Counter[str] | None = None
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with `limits` enforced (pass it as `uvicorn.run(http=...)`);
    `closed` counts the connections it closes or refuses, by why."""
    sweeper: list[asyncio.TimerHandle] = []
    per_client: Counter[str] = Counter()
    counts: Counter[str] = closed if closed is not None else Counter()

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._phase = _IDLE
            self._since = time.monotonic()
            self._deadline = self._since + limits.header_timeout_s  # 0.0: none
            self._header_bytes = 0  # raw bytes of chunks that ended before the headers did
            self._chunk = 0  # bytes in the chunk being parsed
            self._body_bytes = 0  # of the request whose body is arriving
            self._peer = ""
            self._unsent = 0  # bytes waiting to be sent at the last sweep
            self._stalled_since = 0.0  # when they stopped draining (0.0: they drain)

        # -- connection lifetime

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.transport = _CoalescedWrites(transport, self.loop)  # type: ignore[assignment]
            self._peer = self.client[0] if self.client else "unknown"
            if not sweeper:
                sweeper.append(self.loop.call_later(limits.sweep_s, _sweep, self.connections))
            if per_client[self._peer] >= limits.client_cap and not self._evict(self._peer):
                self._refuse(f"this client holds {limits.client_cap} connections, its limit")
                return
            if len(self.connections) > limits.max_connections and not self._evict(None):
                self._refuse(f"server is at its limit of {limits.max_connections} connections")
                return
            per_client[self._peer] += 1

        def _refuse(self, message: str) -> None:
            counts["refused"] += 1
            self.connections.discard(self)
            self._peer = ""  # not counted for its client
            self.transport.write(
                _response(
                    b"503 Service Unavailable",
                    message,
                    b"retry-after: " + str(limits.retry_after_s).encode() + b"\r\n",
                )
            )
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._peer:
                per_client[self._peer] -= 1
                if per_client[self._peer] <= 0:
                    del per_client[self._peer]
                self._peer = ""
            super().connection_lost(exc)

        def _evictable(self, now: float) -> int:
            """0: not evictable; 1: idle or sending headers; 2: a body arriving too slowly."""
            if self._phase in (_IDLE, _HEADERS):
                return 1
            if self._phase == _BODY:
                age = now - self._since
                if age > SLOW_BODY_GRACE_S and self._body_bytes < age * MIN_BODY_BYTES_PER_S:
                    return 2
            return 0

        def _evict(self, peer: str | None) -> bool:
            """Close the oldest idle connection (of `peer`, or of anyone), else the oldest slow
            body; False when there is none."""
            now = time.monotonic()
            victim: GuardedHttpToolsProtocol | None = None
            best = (3, 0.0)
            for conn in self.connections:
                # only our own protocol has a phase (an upgraded websocket never idles here)
                if not isinstance(conn, GuardedHttpToolsProtocol) or conn is self:
                    continue
                if peer is not None and conn._peer != peer:
                    continue
                kind = conn._evictable(now)
                if kind and (kind, conn._since) < best:
                    victim, best = conn, (kind, conn._since)
            if victim is None:
                log.warning(
                    "connection cap (%d%s) reached with every connection in a request: refusing",
                    limits.client_cap if peer is not None else limits.max_connections,
                    f" for {peer}" if peer is not None else "",
                )
                return False
            counts["evicted_slow_body" if best[0] == 2 else "evicted_idle"] += 1
            victim._phase, victim._deadline = _BUSY, 0.0  # never picked twice
            victim.transport.close()
            return True

        def expire(self, now: float) -> None:
            """The sweep found this connection past its deadline."""
            self._deadline = 0.0
            if self.transport.is_closing():
                return
            if self._phase in (_IDLE, _HEADERS):
                counts["header_timeout"] += 1
                self.transport.write(
                    _response(
                        b"408 Request Timeout",
                        f"request headers did not arrive within {limits.header_timeout_s:g} s",
                    )
                )
            elif self._phase == _BODY:
                counts["body_timeout"] += 1
                log.info("closing a connection whose request body stalled or crawled")
            self.transport.close()

        def check_send(self, now: float) -> None:
            """The sweep's look at what waits to be sent: abort a client that stopped reading."""
            try:
                unsent = self.transport.get_write_buffer_size()
            except Exception:  # a transport already gone
                return
            if unsent == 0:
                self._unsent, self._stalled_since = 0, 0.0
            elif self._stalled_since == 0.0 or unsent < self._unsent:
                self._unsent, self._stalled_since = unsent, now
            elif now - self._stalled_since > limits.send_timeout_s:
                counts["send_timeout"] += 1
                log.info(
                    "aborting a connection whose client read none of %d bytes for %g s",
                    unsent,
                    limits.send_timeout_s,
                )
                self._unsent, self._deadline = 0, 0.0
                self.transport.abort()

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
                counts["headers_too_large"] += 1
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
            self._phase, self._since, self._body_bytes = _BODY, now, 0
            self._deadline = now + limits.body_timeout_s
            self._header_bytes = 0
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if self.transport.is_closing():  # refused above: no request to feed
                return
            self._body_bytes += len(body)
            self._deadline = self._body_deadline(time.monotonic())
            super().on_body(body)

        def _body_deadline(self, now: float) -> float:
            """The next chunk within body_timeout_s, and on average no slower than
            MIN_BODY_BYTES_PER_S past the first body_timeout_s."""
            crawl = self._since + limits.body_timeout_s + self._body_bytes / MIN_BODY_BYTES_PER_S
            return min(now + limits.body_timeout_s, crawl)

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
                self._deadline = self._body_deadline(time.monotonic())
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
                check = getattr(conn, "check_send", None)
                if check is not None:
                    check(now)
        finally:
            sweeper[0] = loop.call_later(limits.sweep_s, _sweep, connections)

    return GuardedHttpToolsProtocol
