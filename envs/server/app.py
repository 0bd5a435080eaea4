"""The server as one ASGI app: the ORS router in front of a FastAPI app that carries the services.

`create_app` builds it; `python -m envs.server` (envs/server/__main__.py) serves it with uvicorn.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI
from openreward.environments import Environment

from envs.server.budget import DEFAULT_TOOL_BUDGET_S
from envs.server.metrics import ServerMetrics
from envs.server.openapi import install_openapi
from envs.server.router import OrsRouter
from envs.server.served import named_envs
from envs.server.sessions import SessionTable

__all__ = [
    "DEFAULT_MAX_SESSIONS",
    "MAX_BODY_BYTES",
    "MAX_CREATE_BODY_BYTES",
    "ServerSettings",
    "TrajectoryServiceLike",
    "create_app",
    "memoize_tool_introspection",
]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
# /create carries a task_spec: 1,000 sessions of 1 MiB specs once took 1.2 GB in 5 s.
MAX_CREATE_BODY_BYTES = 64 << 10
# Open sessions per process unless --max-sessions says otherwise (a training run keeps about
# rollout batch x n-samples episodes open; 4096 sessions of the largest spec stay under 300 MB).
DEFAULT_MAX_SESSIONS = 4096
# A session whose calls keep hitting the budget is ended after this many (a client could
# otherwise repeat a maximal call forever: every stop costs the server a whole budget).
DEFAULT_MAX_STOPPED_CALLS = 3


class TrajectoryServiceLike(Protocol):
    """What the server needs from a service it hosts (envs.trajectories.api.TrajectoryService)."""

    routers: list[APIRouter]

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass(frozen=True)
class ServerSettings:
    """Runtime knobs of one server process."""

    api_key: str | None = None
    session_ttl_s: float = 900.0
    max_sessions: int | None = DEFAULT_MAX_SESSIONS
    # Sessions one client (peer address) may hold; None: 3/4 of max_sessions, rounded up.
    max_sessions_per_client: int | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    max_create_body_bytes: int = MAX_CREATE_BODY_BYTES
    # CPU time a call's own code may use on the event loop (envs/server/budget.py).
    tool_budget_s: float = DEFAULT_TOOL_BUDGET_S
    # Calls of one session stopped at that budget before the session is ended.
    max_stopped_calls: int = DEFAULT_MAX_STOPPED_CALLS
    retry_after_s: int = 5
    log_requests: bool = False  # one debug line per request

    @property
    def client_session_cap(self) -> int | None:
        """Sessions one client may hold: its own setting, else 3/4 of the server's cap, rounded
        up (a quarter stays free for the others)."""
        if self.max_sessions_per_client is not None:
            return self.max_sessions_per_client
        if self.max_sessions is None:
            return None
        return self.max_sessions - self.max_sessions // 4


def memoize_tool_introspection() -> None:
    """Make the SDK resolve each tool's signature and type hints once instead of on every call.

    `Environment._call_tool` introspects the tool function twice per call
    (`inspect.signature` + `typing.get_type_hints`, which compiles string annotations
    again each time); that was the largest single cost per call. The result depends only
    on the function (and whether it is bound), so caching it changes no behaviour.
    """
    import openreward.environments.environment as sdk_environment

    original = sdk_environment._introspect_tool
    if getattr(original, "memoized", False):
        return
    cache: dict[tuple[Any, bool], Any] = {}

    def introspect(fn: Callable[..., Any]) -> Any:
        func = getattr(fn, "__func__", None)
        key = (fn, False) if func is None else (func, True)
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = original(fn)
        return hit

    introspect.memoized = True  # type: ignore[attr-defined]
    sdk_environment._introspect_tool = introspect


def create_app(
    env_classes: Mapping[str, type[Environment]] | Sequence[type[Environment]],
    settings: ServerSettings = ServerSettings(),
    services: Iterable[TrajectoryServiceLike] = (),
) -> OrsRouter:
    """The server as one ASGI app: the ORS routes for `env_classes` (name -> class, or classes
    named as the SDK names them) answered directly, in front of a FastAPI app that carries each
    service's routers and whose lifespan starts and stops the services and the session reaper.
    `app.fastapi` is that FastAPI app; `app.state` its state (sessions, metrics, envs)."""
    memoize_tool_introspection()
    envs = named_envs(env_classes)
    services = list(services)
    metrics = ServerMetrics()
    sessions = SessionTable(settings.session_ttl_s, settings.max_sessions, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        started: list[TrajectoryServiceLike] = []
        reaper = asyncio.create_task(sessions.reap_forever())
        try:
            for svc in services:
                await svc.start()
                started.append(svc)
            yield
        finally:
            reaper.cancel()
            try:
                await reaper
            except asyncio.CancelledError:
                pass
            await sessions.close_all()
            router.budget.close()
            for svc in reversed(started):
                try:
                    await svc.stop()
                except Exception as e:
                    log.warning(
                        "stopping %s failed: %s: %s", type(svc).__name__, type(e).__name__, e
                    )

    extra: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        extra["telemetry"] = {"auto_configure": False}
    inner = FastAPI(
        title="slime-envs env server",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        **extra,
    )
    for svc in services:
        for svc_router in svc.routers:
            inner.include_router(svc_router)
    install_openapi(
        inner,
        list(envs),
        sorted({split for served in envs.values() for split in served.split_names}),
    )
    inner.state.sessions = sessions
    inner.state.metrics = metrics
    inner.state.envs = envs
    router = OrsRouter(inner, envs=envs, settings=settings, sessions=sessions, metrics=metrics)
    return router
