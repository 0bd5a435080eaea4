"""What the server and its environments offer, session-free: the environment list, the version,
the metrics, each environment's splits and tools, and its tasks (`/tasks`, `/num_tasks`,
`/task`, `/task_range`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openreward._version import __version__ as SDK_VERSION
from openreward.environments.utils import run_user_callable

from contract.vocab import OrsReason
from envs.server.context import OrsContext
from envs.server.errors import OrsError
from envs.server.served import ServedEnv
from envs.server.wire import Request, body_field, dumps, send_body

__all__ = [
    "list_environments",
    "metrics",
    "num_tasks",
    "splits",
    "task",
    "task_range",
    "tasks",
    "tools",
    "version",
]

PROMETHEUS_TEXT = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")


async def list_environments(ctx: OrsContext, req: Request) -> bytes:
    """GET /list_environments: the names of the served environments."""
    return ctx.env_list_json


async def version(ctx: OrsContext, req: Request) -> bytes:
    """GET /version: the SDK version this server speaks."""
    return dumps({"version": SDK_VERSION, "build_sha": None, "server": "slime-envs"})


async def metrics(ctx: OrsContext, req: Request) -> None:
    """GET /metrics: Prometheus text."""
    await send_body(req.send, 200, ctx.metrics.render().encode(), [PROMETHEUS_TEXT])


async def splits(ctx: OrsContext, req: Request) -> bytes:
    """GET /{env}/splits."""
    return ctx.env_for(req).splits_json


async def tools(ctx: OrsContext, req: Request) -> bytes:
    """GET /{env}/tools."""
    return ctx.env_for(req).tools_json


async def tasks(ctx: OrsContext, req: Request) -> bytes:
    """POST /{env}/tasks: every task of a split."""
    served = ctx.env_for(req)
    split = ctx.split(served, await req.json_object(ctx.settings.max_body_bytes))
    listed = await _class_call(served, served.cls.list_tasks, split)
    return dumps({"tasks": list(listed), "env_name": served.name})


async def num_tasks(ctx: OrsContext, req: Request) -> bytes:
    """POST /{env}/num_tasks: how many tasks a split has."""
    served = ctx.env_for(req)
    split = ctx.split(served, await req.json_object(ctx.settings.max_body_bytes))
    return dumps({"num_tasks": await _class_call(served, served.cls.num_tasks, split)})


async def task(ctx: OrsContext, req: Request) -> bytes:
    """POST /{env}/task: one task of a split by index."""
    served = ctx.env_for(req)
    obj = await req.json_object(ctx.settings.max_body_bytes)
    split = ctx.split(served, obj)
    index = body_field(obj, "index", int)
    found = await _class_call(served, served.cls.get_task, split, index)
    return dumps({"task": found, "env_name": served.name})


async def task_range(ctx: OrsContext, req: Request) -> bytes:
    """POST /{env}/task_range: the tasks [start, stop) of a split."""
    served = ctx.env_for(req)
    obj = await req.json_object(ctx.settings.max_body_bytes)
    split = ctx.split(served, obj)
    start = body_field(obj, "start", int, required=False)
    stop = body_field(obj, "stop", int, required=False)
    listed = await _class_call(served, served.cls.get_task_range, split, start, stop)
    return dumps({"tasks": list(listed), "env_name": served.name})


async def _class_call(served: ServedEnv, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return await run_user_callable(fn, *args)
    except IndexError:
        raise OrsError(400, OrsReason.INVALID_INDEX, f"{served.name}: index out of range") from None
    except NotImplementedError:
        raise OrsError(
            400,
            OrsReason.NOT_SUPPORTED,
            f"{served.name} does not list its tasks; use num_tasks and task",
        ) from None
    except Exception as e:
        raise OrsError(
            500, OrsReason.ENV_ERROR, f"{served.name}: {type(e).__name__}: {e}"
        ) from None
