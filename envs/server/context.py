"""What every ORS handler reads: the served environments, the settings, the session table, the
metrics, the call budget and the clients' fair shares, with the lookups they share (which env,
which session, which split).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from openreward.environments.utils import run_user_callable

from contract.vocab import OrsReason
from envs.server.budget import BudgetExceeded, CallBudget
from envs.server.errors import OrsError
from envs.server.fairness import FairShare
from envs.server.metrics import ServerMetrics
from envs.server.served import ServedEnv
from envs.server.sessions import Session, SessionTable
from envs.server.wire import Request, body_field

if TYPE_CHECKING:
    from envs.server.app import ServerSettings

__all__ = ["OrsContext"]


class OrsContext:
    """The server's state as the handlers see it (one per app)."""

    def __init__(
        self,
        envs: dict[str, ServedEnv],
        settings: ServerSettings,
        sessions: SessionTable,
        metrics: ServerMetrics,
    ) -> None:
        self.envs = envs
        self.default_env = next(iter(envs.values()), None)
        self.settings = settings
        self.sessions = sessions
        self.metrics = metrics
        self.budget = CallBudget(settings.tool_budget_s)
        self.fair = FairShare(on_wait=metrics.record_fair_wait)
        self.creating: dict[str, str] = {}
        """Session id -> client of each /create running (they count against the caps)."""
        self.env_list_json = orjson.dumps(list(envs))

    def unknown_env(self, name: str) -> OrsError:
        """The 404 for an environment this server does not have."""
        return OrsError(
            404,
            OrsReason.UNKNOWN_ENV,
            f"unknown environment {name!r}; this server has: {', '.join(self.envs) or 'none'}",
        )

    def env_for(self, req: Request) -> ServedEnv:
        """The env a request addresses: its path, else the client's X-Deployment, else the
        default."""
        if req.env is not None:
            return req.env
        dep = req.headers.get(b"x-deployment")
        if dep:
            served = self.envs.get(dep.decode("latin-1").lower())
            if served is not None:
                return served
        if self.default_env is None:
            raise OrsError(404, OrsReason.UNKNOWN_ENV, "this server hosts no environments")
        return self.default_env

    def session(self, req: Request) -> Session:
        """The live session the request's X-Session-ID names, or the 4xx that says why not."""
        sid = req.sid()
        s = self.sessions.get(sid)
        if s is None:
            why = self.sessions.ended_reason(sid)
            if why == OrsReason.SESSION_EXPIRED:
                raise OrsError(
                    410,
                    why,
                    f"session {sid} was idle longer than {self.sessions.ttl_s:g}s and was closed",
                )
            if why == OrsReason.SESSION_OVER_BUDGET:
                raise OrsError(
                    410,
                    why,
                    f"session {sid} was closed after {self.settings.max_stopped_calls} of its "
                    "calls were stopped at their CPU budget",
                )
            if why is not None:
                raise OrsError(410, OrsReason.SESSION_DELETED, f"session {sid} was deleted")
            raise OrsError(
                404,
                OrsReason.UNKNOWN_SESSION,
                f"no session {sid} on this server (call /create first)",
            )
        if req.env is not None and req.env.name != s.env_name:
            raise OrsError(
                400,
                OrsReason.WRONG_ENV,
                f"session {sid} is a {s.env_name!r} session, not {req.env.name!r}",
            )
        return s

    async def class_call(self, served: ServedEnv, fn: Callable[..., Any], *args: Any) -> Any:
        """An environment class's method (list, load a task): a coroutine runs under the call
        budget (503 `budget_exceeded` when stopped), a plain function in a thread as the SDK
        runs it."""
        if not inspect.iscoroutinefunction(fn):
            return await run_user_callable(fn, *args)
        try:
            return await self.budget.run(fn(*args))
        except BudgetExceeded:
            raise OrsError(
                503,
                OrsReason.BUDGET_EXCEEDED,
                f"{served.name}.{getattr(fn, '__name__', 'call')} used more than its "
                f"{self.budget.limit_s:g} s of CPU and was stopped",
                [(b"retry-after", str(self.settings.retry_after_s).encode())],
            ) from None

    def split(self, served: ServedEnv, obj: dict[str, Any]) -> str:
        """The body's `split`, one the environment has."""
        split = body_field(obj, "split", str)
        if split not in served.split_names:
            raise OrsError(
                400,
                OrsReason.INVALID_SPLIT,
                f"environment {served.name!r} has no split {split!r}; "
                f"splits: {', '.join(sorted(served.split_names))}",
            )
        return split
