"""What the server and its environments offer, session-free: the environment list, the version,
the metrics, each environment's splits and tools, and its tasks (`/tasks`, `/num_tasks`,
`/task`, `/task_range`).

A split's task list is listed once and kept as JSON (served.py `TaskListing`): a listing
request then costs a join of bytes, not a rebuild of every task spec. The environment's own
coroutines (loading a task, listing one) run under the call budget (503 `budget_exceeded`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openreward._version import __version__ as SDK_VERSION
from openreward.environments import Environment

from contract.vocab import OrsReason
from envs.server.context import OrsContext
from envs.server.errors import OrsError
from envs.server.served import ServedEnv, TaskListing
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
    """POST /{env}/tasks: every task of a split (listed once, then served from its JSON)."""
    served = ctx.env_for(req)
    split = ctx.split(served, await req.json_object(ctx.settings.max_body_bytes))
    listing = await _listing(ctx, served, split)
    return _tasks_body(listing.array(), served)


async def num_tasks(ctx: OrsContext, req: Request) -> bytes:
    """POST /{env}/num_tasks: how many tasks a split has."""
    served = ctx.env_for(req)
    split = ctx.split(served, await req.json_object(ctx.settings.max_body_bytes))
    if served.cls.num_tasks.__func__ is not Environment.num_tasks.__func__:
        n = await _class_call(ctx, served, served.cls.num_tasks, split)
    else:
        n = len(await _listing(ctx, served, split))
    return dumps({"num_tasks": n})


async def task(ctx: OrsContext, req: Request) -> bytes:
    """POST /{env}/task: one task of a split by index."""
    served = ctx.env_for(req)
    obj = await req.json_object(ctx.settings.max_body_bytes)
    split = ctx.split(served, obj)
    index = body_field(obj, "index", int)
    found = await _class_call(ctx, served, served.cls.get_task, split, index)
    return dumps({"task": found, "env_name": served.name})


async def task_range(ctx: OrsContext, req: Request) -> bytes:
    """POST /{env}/task_range: the tasks [start, stop) of a split, with Python's slice rules
    (from the split's JSON when the class lists its tasks; else as the class answers)."""
    served = ctx.env_for(req)
    obj = await req.json_object(ctx.settings.max_body_bytes)
    split = ctx.split(served, obj)
    start = body_field(obj, "start", int, required=False)
    stop = body_field(obj, "stop", int, required=False)
    if served.cls.get_task_range.__func__ is Environment.get_task_range.__func__:
        try:
            listing = await _listing(ctx, served, split)
        except OrsError as e:
            if e.reason != OrsReason.NOT_SUPPORTED:
                raise
        else:
            lo, hi, _ = slice(start, stop).indices(len(listing))
            return _tasks_body(listing.array(lo, max(lo, hi)), served)
    listed = await _class_call(ctx, served, served.cls.get_task_range, split, start, stop)
    return dumps({"tasks": list(listed), "env_name": served.name})


def _tasks_body(array: bytes, served: ServedEnv) -> bytes:
    return b'{"tasks":' + array + b',"env_name":' + dumps(served.name) + b"}"


async def _listing(ctx: OrsContext, served: ServedEnv, split: str) -> TaskListing:
    """A split's task list as JSON, made once (the SDK caches the list on the class)."""
    listing = served.task_lists.get(split)
    if listing is None:
        listed = await _class_call(ctx, served, served.cls._list_tasks_cached, split)
        listing = served.task_lists.setdefault(split, TaskListing(listed, dumps))
    return listing


async def _class_call(
    ctx: OrsContext, served: ServedEnv, fn: Callable[..., Any], *args: Any
) -> Any:
    try:
        return await ctx.class_call(served, fn, *args)
    except OrsError:
        raise
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
