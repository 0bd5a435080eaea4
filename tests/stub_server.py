"""An aiohttp application served on 127.0.0.1 from its own thread and event loop: the lifecycle
the scripted engines (sglang_stub.py, openai_stub.py) share. A subclass gives `make_app()`."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import TypeVar

from aiohttp import web

S = TypeVar("S", bound="BackgroundServer")


class BackgroundServer:
    """Serve `make_app()` from a background thread; a context manager (start on enter)."""

    name = "stub"  # in the thread's name and in start-up errors

    def __init__(self, port: int | None = None) -> None:
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    def make_app(self) -> web.Application:
        raise NotImplementedError

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.name} not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self: S) -> S:
        """Serve from a background thread; returns once the port accepts connections."""
        self._ready.clear()
        self._startup_error = None
        self._thread = threading.Thread(target=self._run_thread, name=self.name, daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._startup_error is not None:
            raise RuntimeError(f"{self.name} failed to start: {self._startup_error}")
        if not self._ready.is_set():
            raise TimeoutError(f"{self.name} did not start within 30s")
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop is None or self._thread is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            fut.result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_thread(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as e:  # reported to start()
            self._startup_error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _startup(self) -> None:
        self._runner = web.AppRunner(self.make_app(), access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port or 0))
        self._port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, backlog=2048).start()

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
