"""An env server that fails some sessions: an HTTP proxy in front of the real env server
(`python -m envs.server`, tests/test_loop.py). Everything is forwarded as it is, except:

- `/create` of a poisoned task (env, index) answers HTTP 500: every session of that task is lost,
  so each of its episodes fails all its tries (an infra failure that reaches slime);
- every `create_every`-th other `/create` answers HTTP 500 (a lost session the bridge replays);
- the second tool call of every `call_every`-th session answers HTTP 500 (a session lost
  mid-episode, replayed on a new one).

    with FaultProxy(upstream_url, poison={("gsm8k", 3)}) as proxy:
        proxy.url   # what the config's env_server names
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from stub_server import BackgroundServer

_HOP = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}


class FaultProxy(BackgroundServer):
    name = "fault-proxy"

    def __init__(
        self,
        upstream: str,
        poison: set[tuple[str, int]] | None = None,
        create_every: int = 0,
        call_every: int = 0,
    ) -> None:
        super().__init__()
        self.upstream = upstream.rstrip("/")
        self.poison = set(poison or ())
        self.create_every = create_every
        self.call_every = call_every
        self.counts: Counter[str] = Counter()
        self._sessions: dict[str, int] = {}
        self._calls: Counter[str] = Counter()
        self._client: aiohttp.ClientSession | None = None

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        return app

    async def _shutdown(self) -> None:
        if self._client is not None:
            await self._client.close()
        await super()._shutdown()

    def _fault(self, request: web.Request, body: bytes) -> str | None:
        """Why this request fails on purpose, or None."""
        path, sid = request.path, request.headers.get("X-Session-ID", "")
        if path == "/create":
            self.counts["create"] += 1
            try:
                spec: Any = orjson.loads(body)
            except orjson.JSONDecodeError:
                spec = {}
            if (spec.get("env_name"), spec.get("index")) in self.poison:
                self.counts["poisoned"] += 1
                return "injected: this task's sessions are lost"
            self._sessions[sid] = len(self._sessions) + 1
            if self.create_every and self.counts["create"] % self.create_every == 0:
                self.counts["create_failed"] += 1
                return "injected: session lost at creation"
        elif path.endswith("/call") and sid in self._sessions:
            self._calls[sid] += 1
            nth = self._sessions[sid]
            if self.call_every and nth % self.call_every == 0 and self._calls[sid] == 2:
                self.counts["call_failed"] += 1
                return "injected: session lost mid-episode"
        return None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        why = self._fault(request, body)
        if why is not None:
            return web.json_response({"detail": why}, status=500)
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._client.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as up:
            data = await up.read()
            out = {k: v for k, v in up.headers.items() if k.lower() not in _HOP}
            return web.Response(body=data, status=up.status, headers=out)
