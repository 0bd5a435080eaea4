"""A small keep-alive HTTP/1.1 client over asyncio streams, for plain-http servers on the cluster
network (SGLang router, env servers).

Why not aiohttp: at 256 concurrent episodes its per-request CPU (about 0.28 ms here) alone is most
of the bridge's budget per turn; this client needs about a third of that. It speaks only what those
servers answer: Content-Length or chunked bodies, no TLS, no redirects, no proxies.

Idle connections are reused only while younger than `reuse_idle_s` (servers close idle keep-alive
connections: uvicorn after 5 s). A request that fails on a reused connection before any response
byte arrived is retried once on a fresh connection only when the caller says it is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bridge.errors import HTTP11Error

if sys.version_info >= (3, 11):  # asyncio.timeout: no extra task per timed request

    def deadline(seconds: float | None) -> contextlib.AbstractAsyncContextManager[None]:
        """Cancel the enclosed awaits after `seconds` (raising TimeoutError); None: no limit."""
        return asyncio.timeout(seconds)
else:  # pragma: no cover - Python 3.10

    @contextlib.asynccontextmanager
    async def deadline(seconds: float | None) -> AsyncIterator[None]:
        if seconds is None:
            yield
            return
        task = asyncio.current_task()
        assert task is not None
        handle = asyncio.get_running_loop().call_later(seconds, task.cancel)
        try:
            yield
        except asyncio.CancelledError:
            if handle.cancelled() or handle.when() > asyncio.get_running_loop().time():
                raise
            raise asyncio.TimeoutError() from None
        finally:
            handle.cancel()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass


def split_url(url: str) -> tuple[str, int, str]:
    """(host, port, path prefix) of an http:// base URL."""
    u = urlsplit(url)
    if u.scheme != "http":
        raise ValueError(f"only http:// URLs are supported here, got {url!r}")
    return u.hostname or "127.0.0.1", u.port or 80, u.path.rstrip("/")


class HTTPClient:
    """Connection pools per (host, port); one client per event loop."""

    def __init__(self, reuse_idle_s: float = 2.0, max_idle_per_host: int = 1024) -> None:
        self.reuse_idle_s = reuse_idle_s
        self.max_idle = max_idle_per_host
        self._idle: dict[tuple[str, int], deque[_Conn]] = {}
        self._closed = False

    async def _connect(self, host: str, port: int, timeout: float | None) -> _Conn:
        try:
            async with deadline(timeout):
                reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
        except (OSError, asyncio.TimeoutError) as e:
            raise HTTP11Error(
                f"cannot connect to {host}:{port}: {type(e).__name__} {e}".strip(), connected=False
            ) from None
        return _Conn(reader, writer)

    def _take_idle(self, key: tuple[str, int]) -> _Conn | None:
        pool = self._idle.get(key)
        now = time.monotonic()
        while pool:
            conn = pool.pop()
            if (
                now - conn.idle_since < self.reuse_idle_s
                and not conn.reader.at_eof()
                and not conn.writer.is_closing()
            ):
                return conn
            conn.close()
        return None

    def _release(self, key: tuple[str, int], conn: _Conn) -> None:
        if self._closed:
            conn.close()
            return
        pool = self._idle.setdefault(key, deque())
        if len(pool) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        pool.append(conn)

    @staticmethod
    def _head(
        method: str,
        host: str,
        port: int,
        path: str,
        headers: dict[str, str] | None,
        body: bytes | None,
    ) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
        if headers:
            lines.extend(f"{k}: {v}" for k, v in headers.items())
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        elif method in ("POST", "PUT"):
            lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        retry_stale: bool = True,
    ) -> Response:
        """One request; the whole body is read. `timeout` bounds the whole exchange (None: no
        limit)."""
        if timeout is None:
            return await self._request(method, url, body, headers, retry_stale, None)
        try:
            async with deadline(timeout):
                return await self._request(method, url, body, headers, retry_stale, timeout)
        except asyncio.TimeoutError:
            raise HTTP11Error(f"{method} {url} timed out after {timeout:g} s") from None

    async def _request(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str] | None,
        retry_stale: bool,
        timeout: float | None,
    ) -> Response:
        chunks: list[bytes] = []
        async with self.stream(method, url, body, headers, retry_stale, timeout) as resp:
            async for chunk in resp.iter_chunks():
                chunks.append(chunk)
        return Response(resp.status, resp.headers, b"".join(chunks))

    def stream(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        retry_stale: bool = True,
        connect_timeout: float | None = None,
    ) -> _Exchange:
        """`async with client.stream(...) as resp: async for chunk in resp.iter_chunks(): ...`"""
        return _Exchange(self, method, url, body, headers, retry_stale, connect_timeout)

    async def close(self) -> None:
        self._closed = True
        for pool in self._idle.values():
            while pool:
                pool.pop().close()


class _Exchange:
    """One request/response on a pooled connection."""

    def __init__(
        self,
        client: HTTPClient,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str] | None,
        retry_stale: bool,
        connect_timeout: float | None,
    ) -> None:
        self.client = client
        self.method, self.url, self.body, self.req_headers = method, url, body, headers
        self.retry_stale = retry_stale
        self.connect_timeout = connect_timeout
        u = urlsplit(url)
        if u.scheme != "http":
            raise HTTP11Error(f"only http:// URLs are supported here, got {url!r}", connected=False)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self.key = (self.host, self.port)
        self.conn: _Conn | None = None
        self.status = 0
        self.headers: dict[str, str] = {}  # response headers, lower-case names
        self._reusable = False
        self._done = False

    async def __aenter__(self) -> _Exchange:
        payload = self.client._head(
            self.method, self.host, self.port, self.path, self.req_headers, self.body
        ) + (self.body or b"")
        conn = self.client._take_idle(self.key)
        reused = conn is not None
        if conn is None:
            conn = await self.client._connect(self.host, self.port, self.connect_timeout)
        try:
            try:
                await self._send_and_read_head(conn, payload)
            except (OSError, asyncio.IncompleteReadError, HTTP11Error) as e:
                conn.close()
                if not (reused and self.retry_stale and isinstance(e, _NoResponse)):
                    raise HTTP11Error(
                        f"{self.method} {self.url}: {type(e).__name__} {e}".strip()
                    ) from None
                conn = await self.client._connect(self.host, self.port, self.connect_timeout)
                try:
                    await self._send_and_read_head(conn, payload)
                except (OSError, asyncio.IncompleteReadError, HTTP11Error) as e2:
                    raise HTTP11Error(
                        f"{self.method} {self.url}: {type(e2).__name__} {e2}".strip()
                    ) from None
        # errors and cancellation: never leave a half-used connection in the pool
        except BaseException:
            conn.close()
            raise
        self.conn = conn
        return self

    async def _send_and_read_head(self, conn: _Conn, payload: bytes) -> None:
        conn.writer.write(payload)
        try:
            head = await conn.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            if not e.partial:
                raise _NoResponse("connection closed before any response") from None
            raise
        except ConnectionResetError:
            raise _NoResponse("connection reset before any response") from None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise HTTP11Error(f"bad status line {lines[0][:80]!r}")
        self.status = int(parts[1])
        hdrs: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                hdrs[k.strip().lower()] = v.strip()
        self.headers = hdrs

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The response body, as it arrives."""
        assert self.conn is not None
        reader = self.conn.reader
        hdrs = self.headers
        try:
            # Data is yielded as it arrives, so a stream that breaks midway still delivered what it
            # had (e.g. an SSE task_id to resume a tool call with).
            if "chunked" in hdrs.get("transfer-encoding", "").lower():
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                            pass
                        break
                    async for data in _read_n(reader, size):
                        yield data
                    if await reader.readexactly(2) != b"\r\n":
                        raise ValueError("bad chunk terminator")
                self._reusable = hdrs.get("connection", "").lower() != "close"
            elif "content-length" in hdrs:
                async for data in _read_n(reader, int(hdrs["content-length"])):
                    yield data
                self._reusable = hdrs.get("connection", "").lower() != "close"
            elif self.method == "HEAD" or self.status in (204, 304):
                self._reusable = True
            else:  # body until close
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    yield data
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            self._reusable = False
            raise HTTP11Error(
                f"{self.method} {self.url}: response broke: {type(e).__name__} {e}".strip()
            ) from None
        self._done = True

    async def __aexit__(self, *exc: object) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if self._done and self._reusable and exc[0] is None:
            self.client._release(self.key, conn)
        else:
            conn.close()


async def _read_n(reader: asyncio.StreamReader, n: int) -> AsyncIterator[bytes]:
    """Exactly `n` bytes, in the pieces they arrive in."""
    while n > 0:
        data = await reader.read(min(n, 1 << 20))
        if not data:
            raise asyncio.IncompleteReadError(b"", n)
        n -= len(data)
        yield data


class _NoResponse(HTTP11Error):
    """The connection died before any response byte: on a reused connection, safe to resend."""


_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, HTTPClient] = (
    weakref.WeakKeyDictionary()
)


def client_for_loop() -> HTTPClient:
    """The HTTP client of the running event loop (connections belong to one loop)."""
    loop = asyncio.get_running_loop()
    c = _CLIENTS.get(loop)
    if c is None or c._closed:
        c = _CLIENTS[loop] = HTTPClient()
    return c


async def close_loop_client() -> None:
    c = _CLIENTS.pop(asyncio.get_running_loop(), None)
    if c is not None:
        await c.close()
