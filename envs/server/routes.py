"""The ORS route table: each path's method and typed handler.

Root actions (`/create`, `/delete`, ...) and environment actions (`/{env}/call`, ...). An
environment action is also reachable bare (`/call`), the way the SDK's default-env redirect
allows: the session, the client's X-Deployment header or the first environment picks the env.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from envs.server import calls, catalog, lifecycle, session_views
from envs.server.context import OrsContext
from envs.server.wire import Request

__all__ = ["ENV_ACTIONS", "ROOT_ACTIONS", "Handler", "Route"]

Handler = Callable[[OrsContext, Request], Coroutine[Any, Any, bytes | None]]
"""An ORS handler: the body of a 200 answer, or None when it answered itself (SSE, text)."""


@dataclass(frozen=True)
class Route:
    """One ORS action: the HTTP method it takes and the handler that answers it."""

    method: str
    handler: Handler


ENV_ACTIONS: dict[str, Route] = {
    "splits": Route("GET", catalog.splits),
    "tools": Route("GET", catalog.tools),
    "tasks": Route("POST", catalog.tasks),
    "num_tasks": Route("POST", catalog.num_tasks),
    "task": Route("POST", catalog.task),
    "task_range": Route("POST", catalog.task_range),
    "prompt": Route("GET", session_views.prompt),
    "messages": Route("GET", session_views.messages),
    "task_tools": Route("GET", session_views.task_tools),
    "call": Route("POST", calls.call),
    "score_group": Route("POST", calls.score_group),
}
"""Actions under /{env}/..., also reachable bare."""

ROOT_ACTIONS: dict[str, Route] = {
    "list_environments": Route("GET", catalog.list_environments),
    "version": Route("GET", catalog.version),
    "metrics": Route("GET", catalog.metrics),
    "create_session": Route("POST", lifecycle.create_session),
    "create": Route("POST", lifecycle.create),
    "ping": Route("POST", lifecycle.ping),
    "delete": Route("POST", lifecycle.delete),
    "delete_session": Route("POST", lifecycle.delete),
}
"""Actions at the root only."""
