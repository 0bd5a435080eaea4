"""A session's life: `/create_session` (an id), `/create` (an environment bound to a task, with an
optional toolset), `/ping` and `/delete`.

`/create` is bounded: its body by `max_create_body_bytes`, the open sessions by `max_sessions`
(503 with Retry-After beyond) and those of one client (its peer address) by
`max_sessions_per_client` (429 with Retry-After: one client cannot take every slot), toolsets to
those the env class lists in `session_toolsets`.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from openreward.environments import Environment
from openreward.environments.utils import run_user_callable

from contract.vocab import OrsReason
from envs.server.context import OrsContext
from envs.server.errors import OrsError
from envs.server.served import ServedEnv
from envs.server.sessions import Session
from envs.server.wire import (
    SSE_HEADERS,
    Request,
    body_field,
    dumps,
    parse_secrets,
    send_body,
    sse_event,
)

__all__ = ["create", "create_session", "delete", "ping"]

log = logging.getLogger(__name__)

# The class attribute naming the session toolsets (openreward.toolsets) an env offers its clients.
SESSION_TOOLSETS_ATTR = "session_toolsets"


async def create_session(ctx: OrsContext, req: Request) -> None:
    """POST /create_session: a new session id, as an SSE `task_id` event (as the SDK server)."""
    await req.body(ctx.settings.max_body_bytes)  # drain; the SDK sends env overrides we ignore
    sid = str(uuid.uuid4())
    await send_body(
        req.send, 200, sse_event(b"task_id", sid) + b"event: end\ndata: \n\n", SSE_HEADERS
    )


async def create(ctx: OrsContext, req: Request) -> bytes:
    """POST /create: bind the session id to an environment instance for a task."""
    sid = req.sid()
    obj = await req.json_object(ctx.settings.max_create_body_bytes)
    if ctx.sessions.exists(sid) or sid in ctx.creating:
        raise OrsError(
            400, OrsReason.SESSION_EXISTS, f"Session already exists: {sid}"
        )  # 400 as the SDK server
    _check_caps(ctx, req.client)
    env_name = body_field(obj, "env_name", str, required=False)
    if env_name is not None:
        served = ctx.envs.get(env_name.lower())
        if served is None:
            raise ctx.unknown_env(env_name)
    else:
        served = ctx.env_for(req)
    task_spec = obj.get("task_spec")
    has_index = obj.get("split") is not None or obj.get("index") is not None
    if (task_spec is not None) == has_index:
        raise OrsError(400, OrsReason.BAD_REQUEST, "give either task_spec or both split and index")
    secrets = parse_secrets(req.headers.get(b"x-secrets"))
    toolset_name = body_field(obj, "toolset_name", str, required=False)

    ctx.creating[sid] = req.client
    try:
        if task_spec is None:
            task_spec = await _indexed_task(ctx, served, obj)
        elif not isinstance(task_spec, dict):
            raise OrsError(
                400,
                OrsReason.BAD_REQUEST,
                f"task_spec must be a JSON object, got {type(task_spec).__name__}",
            )
        env = await _instantiate(served, task_spec, secrets, has_index)
        toolset = await _set_up(served, env, toolset_name)
        session = Session(sid, served.name, env, toolset=toolset, client=req.client)
        ctx.sessions.add(session)
    finally:
        del ctx.creating[sid]
    return dumps({"sid": sid})


def _check_caps(ctx: OrsContext, client: str) -> None:
    """503 when the server holds its `max_sessions`; 429 when this client holds its share."""
    retry = [(b"retry-after", str(ctx.settings.retry_after_s).encode())]
    limit = ctx.settings.max_sessions
    if limit is not None and len(ctx.sessions) + len(ctx.creating) >= limit:
        raise OrsError(
            503,
            OrsReason.TOO_MANY_SESSIONS,
            f"server is at its limit of {limit} open sessions",
            retry,
        )
    share = ctx.settings.client_session_cap
    if share is not None:
        held = ctx.sessions.held_by(client) + sum(c == client for c in ctx.creating.values())
        if held >= share:
            raise OrsError(
                429,
                OrsReason.CLIENT_LIMIT,
                f"this client ({client}) holds {held} sessions, its limit on this server; "
                "delete finished sessions first",
                retry,
            )


async def _indexed_task(ctx: OrsContext, served: ServedEnv, obj: dict[str, Any]) -> Any:
    """The task spec at the body's split and index."""
    split = ctx.split(served, obj)
    index = body_field(obj, "index", int)
    try:
        return await ctx.class_call(served, served.cls.get_task, split, index)
    except OrsError:
        raise
    except IndexError:
        raise OrsError(
            400, OrsReason.INVALID_INDEX, f"{served.name} split {split!r} has no task {index}"
        ) from None
    except Exception as e:
        log.warning(
            "%s.get_task(%r, %d) failed: %s: %s", served.name, split, index, type(e).__name__, e
        )
        raise OrsError(
            500,
            OrsReason.ENV_ERROR,
            f"{served.name} could not load task {index}: {type(e).__name__}: {e}",
        ) from None


async def _instantiate(
    served: ServedEnv, task_spec: dict[str, Any], secrets: dict[str, str], has_index: bool
) -> Environment:
    """The environment instance for a task; a task it refuses is the client's 400 (a spec it
    sent) or the env's 500 (a task from its own split)."""
    try:
        env: Environment = await run_user_callable(served.cls, task_spec=task_spec, secrets=secrets)
        return env
    except Exception as e:
        raise OrsError(
            400 if not has_index else 500,
            OrsReason.ENV_ERROR if has_index else OrsReason.INVALID_TASK_SPEC,
            f"{served.name} rejected the task: {type(e).__name__}: {e}",
        ) from None


async def _set_up(served: ServedEnv, env: Environment, toolset_name: str | None) -> Any:
    """The session's toolset (or None), after the env's own setup; the env is torn down when
    either fails."""
    try:
        toolset = _toolset(served, env, toolset_name) if toolset_name else None
        if type(env).setup is not Environment.setup:
            await run_user_callable(env.setup)
        return toolset
    except OrsError:
        await _teardown_quietly(env)
        raise
    except Exception as e:
        log.warning("%s setup failed: %s: %s", served.name, type(e).__name__, e)
        await _teardown_quietly(env)
        raise OrsError(
            500, OrsReason.ENV_ERROR, f"{served.name} setup failed: {type(e).__name__}: {e}"
        ) from None


def _toolset(served: ServedEnv, env: Environment, name: str) -> Any:
    """The session toolset `name`, only when the env class offers it (`session_toolsets`).

    The SDK's toolsets act with whatever credentials the server process holds (web search
    and fetch call the hosted service with $OPENREWARD_API_KEY), so a client may never pick
    one the environment did not declare for local use."""
    offered = tuple(getattr(served.cls, SESSION_TOOLSETS_ATTR, ()) or ())
    if name not in offered:
        raise OrsError(
            400,
            OrsReason.BAD_REQUEST,
            f"toolset {name[:64]!r} is not offered by {served.name}"
            + (f"; it offers: {', '.join(offered)}" if offered else " (it offers none)"),
        )
    from openreward.toolsets import BUILTIN_TOOLSETS  # rarely used; heavy to import

    toolset_cls = BUILTIN_TOOLSETS.get(name)
    if toolset_cls is None:
        valid = sorted(BUILTIN_TOOLSETS)
        raise OrsError(400, OrsReason.BAD_REQUEST, f"unknown toolset {name!r}; valid: {valid}")
    try:
        return toolset_cls(env)
    except ValueError as e:
        raise OrsError(400, OrsReason.BAD_REQUEST, str(e)) from None


async def _teardown_quietly(env: Environment) -> None:
    try:
        await run_user_callable(env.teardown)
    except Exception as e:
        log.warning("teardown of %s failed: %s: %s", type(env).__name__, type(e).__name__, e)


async def ping(ctx: OrsContext, req: Request) -> bytes:
    """POST /ping: whether the session is live (its 4xx otherwise)."""
    ctx.session(req)
    return b'{"status":"ok"}'


async def delete(ctx: OrsContext, req: Request) -> bytes:
    """POST /delete (and /delete_session): end the session and tear its environment down."""
    sid = req.sid()
    await ctx.sessions.remove(sid)
    return dumps({"sid": sid})
