"""The ORS router: raw-ASGI middleware in front of the FastAPI app, answering the ORS paths.

The ORS paths never touch FastAPI's per-request machinery; anything else (the trajectory
service's routers) falls through to the wrapped app. Every request but `/health` must carry the
server's X-API-Key when it has one. A path is resolved through the route table (routes.py) to
a typed handler, run (and its answer sent) in its client's fair share of the loop
(fairness.py); an ORS-looking mistake (a wrong method, an unknown env) is refused here.
Whatever a handler raises becomes an answer: an OrsError its typed status, anything else a
logged 500; the server keeps serving.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from contract.vocab import OrsReason
from envs.server.budget import CallBudget
from envs.server.context import OrsContext
from envs.server.errors import ClientGone, OrsError
from envs.server.metrics import ServerMetrics
from envs.server.routes import ENV_ACTIONS, ROOT_ACTIONS, Route
from envs.server.served import ServedEnv
from envs.server.sessions import SessionTable
from envs.server.wire import JSON_HEADERS, Request, send_body

if TYPE_CHECKING:
    from envs.server.app import ServerSettings

__all__ = ["OrsRouter"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Resolved:
    """A path resolved to its route, and the environment the path names (if it names one)."""

    route: Route
    env: ServedEnv | None


async def _answer(route: Route, ctx: OrsContext, req: Request) -> None:
    """Run the handler and send its 200 answer: both in the client's share of the loop (a 2 MB
    task listing costs the loop ~1.6 ms to send, next to nothing to look up)."""
    body = await route.handler(ctx, req)
    if body is not None:
        await send_body(req.send, 200, body)


class OrsRouter:
    """Raw-ASGI middleware answering the ORS paths; everything else goes to the wrapped app."""

    def __init__(
        self,
        app: ASGIApp,
        envs: dict[str, ServedEnv],
        settings: ServerSettings,
        sessions: SessionTable,
        metrics: ServerMetrics,
    ) -> None:
        self.app = app
        self.ctx = OrsContext(envs, settings, sessions, metrics)
        self._api_key = settings.api_key.encode() if settings.api_key else None
        self._inner_prefixes: set[str] | None = None

    @property
    def fastapi(self) -> FastAPI:
        """The wrapped app (services' routers, lifespan)."""
        return self.app  # type: ignore[return-value]

    @property
    def state(self) -> Any:
        return self.app.state  # type: ignore[attr-defined]

    @property
    def budget(self) -> CallBudget:
        """The tool-call budget (the app's lifespan stops its ticker)."""
        return self.ctx.budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == "/health":
            await send_body(send, 200, b'{"status":"ok"}')
            return
        headers = dict(scope["headers"])
        if self._api_key is not None:
            given = headers.get(b"x-api-key", b"")
            if not hmac.compare_digest(given, self._api_key):
                self.ctx.metrics.record_error(OrsReason.UNAUTHORIZED)
                err = OrsError(401, OrsReason.UNAUTHORIZED, "missing or wrong X-API-Key")
                await send_body(send, err.status, err.body())
                return
        resolved = self._resolve(scope["method"], path)
        if resolved is None:
            await self.app(scope, receive, send)
            return
        req = Request(scope, receive, send, headers)
        fair = self.ctx.fair  # waiting on the client's bytes is not wanting the loop
        req.receive, req.send = fair.io(req.client, receive), fair.io(req.client, send)
        if self.ctx.settings.log_requests:
            await self._handle_logged(req, resolved, path)
        else:
            await self._handle(req, resolved, path)

    def _resolve(self, method: str, path: str) -> _Resolved | OrsError | None:
        """The route of an ORS path, the error for an ORS-looking mistake, None to pass it on."""
        parts = path.split("/")
        env: ServedEnv | None = None
        if len(parts) == 2:
            route = ROOT_ACTIONS.get(parts[1]) or ENV_ACTIONS.get(parts[1])
        elif len(parts) == 3:
            first = parts[1].lower()
            route = ENV_ACTIONS.get(parts[2])
            env = self.ctx.envs.get(first)
            if route is None or (env is None and first in self._inner_path_prefixes()):
                return None
            if env is None:
                return self.ctx.unknown_env(parts[1])
        else:
            return None
        if route is None:
            return None
        if route.method != method:
            return OrsError(405, OrsReason.METHOD_NOT_ALLOWED, f"{method} is not allowed on {path}")
        return _Resolved(route, env)

    def _inner_path_prefixes(self) -> set[str]:
        """First path segments the wrapped app (the trajectory service) routes itself."""
        if self._inner_prefixes is None:
            prefixes: set[str] = set()
            for route in getattr(getattr(self.app, "router", None), "routes", []) or []:
                seg = getattr(route, "path", "").strip("/").split("/", 1)[0]
                if seg:
                    prefixes.add(seg.lower())
            self._inner_prefixes = prefixes
        return self._inner_prefixes

    async def _handle(self, req: Request, resolved: _Resolved | OrsError, path: str) -> None:
        send = req.send
        try:
            if isinstance(resolved, OrsError):
                raise resolved
            req.env = resolved.env
            await self.ctx.fair.run(req.client, _answer(resolved.route, self.ctx, req))
        except OrsError as e:
            self.ctx.metrics.record_error(e.reason)
            await send_body(send, e.status, e.body(), [*JSON_HEADERS, *e.headers])
        except ClientGone:
            return
        except Exception as e:  # a bug in this server: answer, log, keep serving
            log.exception("internal error on %s %s", req.scope["method"], path)
            self.ctx.metrics.record_error(OrsReason.INTERNAL)
            err = OrsError(500, OrsReason.INTERNAL, f"internal server error: {type(e).__name__}")
            try:
                await send_body(send, 500, err.body())
            except Exception:
                pass

    async def _handle_logged(self, req: Request, resolved: _Resolved | OrsError, path: str) -> None:
        status = [0]
        send = req.send

        async def send_and_note(msg: MutableMapping[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        req.send = send_and_note
        t0 = time.perf_counter()
        await self._handle(req, resolved, path)
        log.debug(
            "%s %s -> %d in %.1f ms",
            req.scope["method"],
            path,
            status[0],
            (time.perf_counter() - t0) * 1000,
        )
