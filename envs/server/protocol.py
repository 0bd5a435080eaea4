"""The ORS router: raw-ASGI handlers for every ORS path, in front of the FastAPI app.

The ORS paths never touch FastAPI's per-request machinery; anything else (the trajectory
service's routers) falls through to the wrapped app. Tool calls run through the SDK's
Environment machinery (`Environment._call_tool`: input validation, per-tool locks, the
episode-finished latch). A call that finishes within FIRST_EVENT_WAIT_S is answered in one
write (task_id + result); a slower one gets its task_id at once, then keepalive comments,
then the result, and a client that lost the stream resumes it by task_id.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI
from openreward._version import __version__ as SDK_VERSION
from openreward.environments import Environment
from openreward.environments import environment as sdk_environment
from openreward.environments.session import call_session_tool, list_session_tools
from openreward.environments.types import (
    GroupScore,
    ImageBlock,
    Message,
    RunToolError,
    RunToolOutput,
    ScoreGroup,
    ScoreGroupOutput,
    TextBlock,
)
from openreward.environments.utils import run_user_callable
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from contract.vocab import OrsReason, ToolRefusal
from envs.server.budget import BudgetExceeded, CallBudget
from envs.server.errors import ClientGone, OrsError, ToolCrashed
from envs.server.metrics import CallStatus, ServerMetrics
from envs.server.served import ServedEnv
from envs.server.sessions import Session, SessionTable
from envs.server.wire import (
    JSON_HEADERS,
    SSE_HEADERS,
    Request,
    body_field,
    dumps,
    parse_secrets,
    send_body,
    sse_event,
    sse_result,
)

if TYPE_CHECKING:
    from envs.server.app import ServerSettings

__all__ = ["OrsRouter"]

log = logging.getLogger(__name__)

# A call that finishes within this long is answered in one write (task_id + result);
# a slower one gets its task_id at once, then keepalive comments, then the result.
FIRST_EVENT_WAIT_S = 1.0
KEEPALIVE_S = 10.0
UNKNOWN_TOOL_LABEL = "<unknown>"
# A refused tool call's message is for the model: cut it (SDK validation errors repeat the input).
MAX_TOOL_ERROR_CHARS = 2000
# Tool calls with a larger body have their input cut to the tool's fields first (_trim_large_input).
LARGE_INPUT_BYTES = 16 << 10
# The class attribute naming the session toolsets (openreward.toolsets) an env offers its clients.
SESSION_TOOLSETS_ATTR = "session_toolsets"

_BLOCKS = TypeAdapter(list[TextBlock | ImageBlock])
_MESSAGES = TypeAdapter(list[Message])


# Tool-call failure reasons -> HTTP status for clients that ask for plain JSON instead of SSE.
def _refusal_status(reason: str) -> int:
    """The HTTP status of a tool call the environment refused (an unknown reason: 422)."""
    try:
        return ToolRefusal(reason).status
    except ValueError:
        return 422


async def _teardown_quietly(env: Environment) -> None:
    try:
        await run_user_callable(env.teardown)
    except Exception as e:
        log.warning("teardown of %s failed: %s: %s", type(env).__name__, type(e).__name__, e)


Handler = Callable[["OrsRouter", Request], Awaitable[bytes | None]]

# Actions under /{env}/..., also reachable bare (/call) the way the SDK's default-env redirect
# allows.
_ENV_ACTIONS: dict[str, tuple[str, str]] = {
    # action: (method, handler name)
    "splits": ("GET", "h_splits"),
    "tools": ("GET", "h_tools"),
    "tasks": ("POST", "h_tasks"),
    "num_tasks": ("POST", "h_num_tasks"),
    "task": ("POST", "h_task"),
    "task_range": ("POST", "h_task_range"),
    "prompt": ("GET", "h_prompt"),
    "messages": ("GET", "h_messages"),
    "task_tools": ("GET", "h_task_tools"),
    "call": ("POST", "h_call"),
    "score_group": ("POST", "h_score_group"),
}
_ROOT_ACTIONS: dict[str, tuple[str, str]] = {
    "list_environments": ("GET", "h_list_environments"),
    "version": ("GET", "h_version"),
    "metrics": ("GET", "h_metrics"),
    "create_session": ("POST", "h_create_session"),
    "create": ("POST", "h_create"),
    "ping": ("POST", "h_ping"),
    "delete": ("POST", "h_delete"),
    "delete_session": ("POST", "h_delete_session"),
}


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
        self.envs = envs
        self.default_env = next(iter(envs.values()), None)
        self.settings = settings
        self.sessions = sessions
        self.metrics = metrics
        self._api_key = settings.api_key.encode() if settings.api_key else None
        self._creating: set[str] = set()
        self._env_list_json = orjson.dumps(list(envs))
        self._inner_prefixes: set[str] | None = None
        self.budget = CallBudget(settings.tool_budget_s)

    @property
    def fastapi(self) -> FastAPI:
        """The wrapped app (services' routers, lifespan)."""
        return self.app  # type: ignore[return-value]

    @property
    def state(self) -> Any:
        return self.app.state  # type: ignore[attr-defined]

    # -- dispatch

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
                self.metrics.record_error(OrsReason.UNAUTHORIZED)
                err = OrsError(401, OrsReason.UNAUTHORIZED, "missing or wrong X-API-Key")
                await send_body(send, err.status, err.body())
                return
        handler_name = self._route(scope["method"], path, headers)
        if handler_name is None:
            await self.app(scope, receive, send)
            return
        req = Request(scope, receive, send, headers)
        if self.settings.log_requests:
            await self._handle_logged(req, handler_name, path)
        else:
            await self._handle(req, handler_name, path)

    def _route(self, method: str, path: str, headers: dict[bytes, bytes]) -> str | None:
        """The handler for a path, "h_*" error markers for ORS-looking mistakes, None to pass on."""
        parts = path.split("/")
        if len(parts) == 2:
            action = parts[1]
            spec = _ROOT_ACTIONS.get(action) or _ENV_ACTIONS.get(action)
        elif len(parts) == 3:
            first = parts[1].lower()
            spec = _ENV_ACTIONS.get(parts[2])
            if spec is None or (first not in self.envs and first in self._inner_path_prefixes()):
                return None
            if first not in self.envs:
                return "e_unknown_env"
        else:
            return None
        if spec is None:
            return None
        if spec[0] != method:
            return "e_method"
        return spec[1]

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

    async def _handle(self, req: Request, handler_name: str, path: str) -> None:
        send = req.send
        try:
            parts = path.split("/")
            if len(parts) == 3:
                req.env = self.envs.get(parts[1].lower())
            if handler_name == "e_method":
                raise OrsError(
                    405,
                    OrsReason.METHOD_NOT_ALLOWED,
                    f"{req.scope['method']} is not allowed on {path}",
                )
            if handler_name == "e_unknown_env":
                raise OrsError(
                    404,
                    OrsReason.UNKNOWN_ENV,
                    f"unknown environment {parts[1]!r}; "
                    f"this server has: {', '.join(self.envs) or 'none'}",
                )
            body = await getattr(self, handler_name)(req)
            if body is not None:
                await send_body(send, 200, body)
        except OrsError as e:
            self.metrics.record_error(e.reason)
            await send_body(send, e.status, e.body(), [*JSON_HEADERS, *e.headers])
        except ClientGone:
            return
        except Exception as e:  # a bug in this server: answer, log, keep serving
            log.exception("internal error on %s %s", req.scope["method"], path)
            self.metrics.record_error(OrsReason.INTERNAL)
            err = OrsError(500, OrsReason.INTERNAL, f"internal server error: {type(e).__name__}")
            try:
                await send_body(send, 500, err.body())
            except Exception:
                pass

    async def _handle_logged(self, req: Request, handler_name: str, path: str) -> None:
        status = [0]
        send = req.send

        async def send_and_note(msg: MutableMapping[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        req.send = send_and_note
        t0 = time.perf_counter()
        await self._handle(req, handler_name, path)
        log.debug(
            "%s %s -> %d in %.1f ms",
            req.scope["method"],
            path,
            status[0],
            (time.perf_counter() - t0) * 1000,
        )

    # -- resolution helpers

    def _env_for(self, req: Request) -> ServedEnv:
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

    def _session(self, req: Request) -> Session:
        sid = req.sid()
        s = self.sessions.get(sid)
        if s is None:
            why = self.sessions.ended_reason(sid)
            if why == "expired":
                raise OrsError(
                    410,
                    OrsReason.SESSION_EXPIRED,
                    f"session {sid} was idle longer than {self.sessions.ttl_s:g}s and was closed",
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

    def _split(self, served: ServedEnv, obj: dict[str, Any]) -> str:
        split = body_field(obj, "split", str)
        if split not in served.split_names:
            raise OrsError(
                400,
                OrsReason.INVALID_SPLIT,
                f"environment {served.name!r} has no split {split!r}; "
                f"splits: {', '.join(sorted(served.split_names))}",
            )
        return split

    # -- root endpoints

    async def h_list_environments(self, req: Request) -> bytes:
        return self._env_list_json

    async def h_version(self, req: Request) -> bytes:
        return dumps({"version": SDK_VERSION, "build_sha": None, "server": "slime-envs"})

    async def h_metrics(self, req: Request) -> None:
        await send_body(
            req.send,
            200,
            self.metrics.render().encode(),
            [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")],
        )

    async def h_create_session(self, req: Request) -> None:
        await req.body(self.settings.max_body_bytes)  # drain; the SDK sends env overrides we ignore
        sid = str(uuid.uuid4())
        await send_body(
            req.send, 200, sse_event(b"task_id", sid) + b"event: end\ndata: \n\n", SSE_HEADERS
        )

    async def h_create(self, req: Request) -> bytes:
        sid = req.sid()
        obj = await req.json_object(self.settings.max_create_body_bytes)
        if self.sessions.exists(sid) or sid in self._creating:
            raise OrsError(
                400, OrsReason.SESSION_EXISTS, f"Session already exists: {sid}"
            )  # 400 as the SDK server
        if (
            self.settings.max_sessions is not None
            and len(self.sessions) + len(self._creating) >= self.settings.max_sessions
        ):
            raise OrsError(
                503,
                OrsReason.TOO_MANY_SESSIONS,
                f"server is at its limit of {self.settings.max_sessions} open sessions",
                [(b"retry-after", str(self.settings.retry_after_s).encode())],
            )
        env_name = body_field(obj, "env_name", str, required=False)
        if env_name is not None:
            served = self.envs.get(env_name.lower())
            if served is None:
                raise OrsError(
                    404,
                    OrsReason.UNKNOWN_ENV,
                    f"unknown environment {env_name!r}; "
                    f"this server has: {', '.join(self.envs) or 'none'}",
                )
        else:
            served = self._env_for(req)
        task_spec = obj.get("task_spec")
        has_index = obj.get("split") is not None or obj.get("index") is not None
        if (task_spec is not None) == has_index:
            raise OrsError(
                400, OrsReason.BAD_REQUEST, "give either task_spec or both split and index"
            )
        secrets = parse_secrets(req.headers.get(b"x-secrets"))
        toolset_name = body_field(obj, "toolset_name", str, required=False)

        self._creating.add(sid)
        try:
            if task_spec is None:
                split = self._split(served, obj)
                index = body_field(obj, "index", int)
                try:
                    task_spec = await run_user_callable(served.cls.get_task, split, index)
                except IndexError:
                    raise OrsError(
                        400,
                        OrsReason.INVALID_INDEX,
                        f"{served.name} split {split!r} has no task {index}",
                    ) from None
                except Exception as e:
                    log.warning(
                        "%s.get_task(%r, %d) failed: %s: %s",
                        served.name,
                        split,
                        index,
                        type(e).__name__,
                        e,
                    )
                    raise OrsError(
                        500,
                        OrsReason.ENV_ERROR,
                        f"{served.name} could not load task {index}: {type(e).__name__}: {e}",
                    ) from None
            elif not isinstance(task_spec, dict):
                raise OrsError(
                    400,
                    OrsReason.BAD_REQUEST,
                    f"task_spec must be a JSON object, got {type(task_spec).__name__}",
                )
            try:
                env = await run_user_callable(served.cls, task_spec=task_spec, secrets=secrets)
            except Exception as e:
                raise OrsError(
                    400 if not has_index else 500,
                    OrsReason.ENV_ERROR if has_index else OrsReason.INVALID_TASK_SPEC,
                    f"{served.name} rejected the task: {type(e).__name__}: {e}",
                ) from None
            try:
                toolset = self._toolset(served, env, toolset_name) if toolset_name else None
                if type(env).setup is not Environment.setup:
                    await run_user_callable(env.setup)
            except OrsError:
                await _teardown_quietly(env)
                raise
            except Exception as e:
                log.warning("%s setup failed: %s: %s", served.name, type(e).__name__, e)
                await _teardown_quietly(env)
                raise OrsError(
                    500, OrsReason.ENV_ERROR, f"{served.name} setup failed: {type(e).__name__}: {e}"
                ) from None
            self.sessions.add(Session(sid=sid, env_name=served.name, env=env, toolset=toolset))
        finally:
            self._creating.discard(sid)
        return dumps({"sid": sid})

    @staticmethod
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
            raise OrsError(
                400,
                OrsReason.BAD_REQUEST,
                f"unknown toolset {name!r}; valid: {sorted(BUILTIN_TOOLSETS)}",
            )
        try:
            return toolset_cls(env)
        except ValueError as e:
            raise OrsError(400, OrsReason.BAD_REQUEST, str(e)) from None

    async def h_ping(self, req: Request) -> bytes:
        self._session(req)
        return b'{"status":"ok"}'

    async def h_delete(self, req: Request) -> bytes:
        sid = req.sid()
        await self.sessions.remove(sid, why="deleted")
        return dumps({"sid": sid})

    h_delete_session = h_delete

    # -- per-environment endpoints

    async def h_splits(self, req: Request) -> bytes:
        return self._env_for(req).splits_json

    async def h_tools(self, req: Request) -> bytes:
        return self._env_for(req).tools_json

    async def _class_call(self, served: ServedEnv, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await run_user_callable(fn, *args)
        except IndexError:
            raise OrsError(
                400, OrsReason.INVALID_INDEX, f"{served.name}: index out of range"
            ) from None
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

    async def h_tasks(self, req: Request) -> bytes:
        served = self._env_for(req)
        split = self._split(served, await req.json_object(self.settings.max_body_bytes))
        tasks = await self._class_call(served, served.cls.list_tasks, split)
        return dumps({"tasks": list(tasks), "env_name": served.name})

    async def h_num_tasks(self, req: Request) -> bytes:
        served = self._env_for(req)
        split = self._split(served, await req.json_object(self.settings.max_body_bytes))
        return dumps({"num_tasks": await self._class_call(served, served.cls.num_tasks, split)})

    async def h_task(self, req: Request) -> bytes:
        served = self._env_for(req)
        obj = await req.json_object(self.settings.max_body_bytes)
        split = self._split(served, obj)
        index = body_field(obj, "index", int)
        task = await self._class_call(served, served.cls.get_task, split, index)
        return dumps({"task": task, "env_name": served.name})

    async def h_task_range(self, req: Request) -> bytes:
        served = self._env_for(req)
        obj = await req.json_object(self.settings.max_body_bytes)
        split = self._split(served, obj)
        start = body_field(obj, "start", int, required=False)
        stop = body_field(obj, "stop", int, required=False)
        tasks = await self._class_call(served, served.cls.get_task_range, split, start, stop)
        return dumps({"tasks": list(tasks), "env_name": served.name})

    async def h_prompt(self, req: Request) -> bytes:
        s = self._session(req)
        try:
            blocks = await run_user_callable(s.env.get_prompt)
            return _BLOCKS.dump_json(_BLOCKS.validate_python(list(blocks)))
        except Exception as e:
            raise OrsError(
                500, OrsReason.ENV_ERROR, f"{s.env_name}.get_prompt failed: {type(e).__name__}: {e}"
            ) from None

    async def h_messages(self, req: Request) -> bytes:
        s = self._session(req)
        try:
            msgs = await run_user_callable(s.env.get_messages)
            return _MESSAGES.dump_json(_MESSAGES.validate_python(list(msgs)))
        except Exception as e:
            raise OrsError(
                500,
                OrsReason.ENV_ERROR,
                f"{s.env_name}.get_messages failed: {type(e).__name__}: {e}",
            ) from None

    async def h_task_tools(self, req: Request) -> bytes:
        s = self._session(req)
        if s.toolset is None and self.envs[s.env_name].static_task_tools:
            return self.envs[s.env_name].tools_json
        try:
            listed = await list_session_tools(s.env, s.toolset)
        except Exception as e:
            raise OrsError(
                500, OrsReason.ENV_ERROR, f"{s.env_name} task tools failed: {type(e).__name__}: {e}"
            ) from None
        return dumps(listed.model_dump())

    # -- tool calls

    async def h_call(self, req: Request) -> None:
        s = self._session(req)
        obj = await req.json_object(self.settings.max_body_bytes)
        task_id = obj.get("task_id")
        if task_id is not None:
            await self._resume(req, s, task_id)
            return
        name = obj.get("name")
        if not isinstance(name, str) or not name:
            raise OrsError(
                400,
                OrsReason.BAD_INPUT_SHAPE,
                "field 'name' must be a non-empty string (the tool name)",
            )
        tool_input = obj.get("input", {})
        if not isinstance(tool_input, dict):
            raise OrsError(
                400,
                OrsReason.BAD_INPUT_SHAPE,
                "field 'input' must be a JSON object of tool arguments, got "
                f"{type(tool_input).__name__}",
            )
        large = req.body_size > LARGE_INPUT_BYTES
        await self._run_and_answer(req, s, self._run_call(s, name, tool_input, large))

    async def _run_call(
        self, s: Session, name: str, tool_input: dict[str, Any], large: bool = False
    ) -> tuple[str, str | None]:
        """Run one tool call; returns (RunToolOutput JSON, error reason or None)."""
        t0 = time.perf_counter()
        tool = name if name in self.envs[s.env_name].tool_names else UNKNOWN_TOOL_LABEL
        if large and s.toolset is None and not s.env._episode_finished:
            checked = _trim_large_input(s.env, name, tool_input)
            if isinstance(checked, RunToolOutput):
                self.metrics.record_call(
                    s.env_name, tool, CallStatus.INPUT_VALIDATION, time.perf_counter() - t0
                )
                return checked.model_dump_json(), CallStatus.INPUT_VALIDATION
            tool_input = checked
        try:
            if s.toolset is None:
                res = await self.budget.run(s.env._call_tool(name, tool_input))
            else:
                res = await self.budget.run(call_session_tool(s.env, s.toolset, name, tool_input))
        except BudgetExceeded:
            self.metrics.record_call(
                s.env_name, tool, CallStatus.BUDGET_EXCEEDED, time.perf_counter() - t0
            )
            log.warning(
                "%s tool %r exceeded its %.3gs budget and was stopped (session %s)",
                s.env_name,
                tool,
                self.budget.limit_s,
                s.sid,
            )
            res = RunToolOutput(
                RunToolError(
                    reason="input_validation",
                    error=(
                        f"{tool} was stopped: it computed for longer than its "
                        f"{self.budget.limit_s:g} s budget on this input; use a simpler input"
                    ),
                )
            )
            return res.model_dump_json(), CallStatus.INPUT_VALIDATION
        except Exception as e:
            self.metrics.record_call(
                s.env_name, tool, OrsReason.ENV_ERROR, time.perf_counter() - t0
            )
            log.warning(
                "%s tool %r raised %s: %s (session %s)",
                s.env_name,
                name,
                type(e).__name__,
                e,
                s.sid,
            )
            raise ToolCrashed(f"{type(e).__name__}: {e}") from None
        root = res.root
        reason = None if root.ok else (root.reason or CallStatus.INPUT_VALIDATION)
        if reason is not None and len(root.error) > MAX_TOOL_ERROR_CHARS:
            root.error = f"{root.error[:MAX_TOOL_ERROR_CHARS]}... (cut)"
        self.metrics.record_call(
            s.env_name, tool, reason or CallStatus.OK, time.perf_counter() - t0
        )
        return res.model_dump_json(), reason

    async def _run_and_answer(
        self, req: Request, s: Session, work: Awaitable[tuple[str, str | None]]
    ) -> None:
        """Run a call inline (no task per call) and answer it; a call slower than FIRST_EVENT_WAIT_S
        gets its task_id event and keepalives from a helper task while it runs, so the client
        neither times out nor loses the result: it can resume with the task_id."""
        loop = asyncio.get_running_loop()
        task_id = os.urandom(16).hex()  # as uuid4().hex, at a fifth of the cost
        outcome: asyncio.Future[tuple[str, str | None]] = loop.create_future()
        s.remember_call(task_id, outcome)
        streamer = _SlowCallStream(req.send, task_id, outcome) if req.wants_sse() else None
        timer = loop.call_later(FIRST_EVENT_WAIT_S, streamer.start) if streamer else None
        s.active_calls += 1
        try:
            outcome.set_result(await work)
        except ToolCrashed as e:
            outcome.set_exception(e)
        except BaseException:
            outcome.set_exception(ToolCrashed("the call was cancelled (server shutting down)"))
            raise
        finally:
            s.active_calls -= 1
            s.last_seen = time.monotonic()
            if timer is not None:
                timer.cancel()
        if streamer is None:
            await self._answer_json(req, outcome)
        elif streamer.started:
            await streamer.finish(self._outcome_events(outcome))
        else:
            await send_body(
                req.send,
                200,
                sse_event(b"task_id", task_id) + self._outcome_events(outcome),
                SSE_HEADERS,
            )

    async def _resume(self, req: Request, s: Session, task_id: Any) -> None:
        """A client that lost a call's stream asks for it again by task_id."""
        outcome = s.calls.get(task_id) if isinstance(task_id, str) else None
        if outcome is None:  # what the SDK server answers for a task it no longer has
            await send_body(req.send, 200, sse_event(b"error", "unknown task_id"), SSE_HEADERS)
            return
        if not req.wants_sse():
            await asyncio.wait((outcome,))
            await self._answer_json(req, outcome)
            return
        if outcome.done():
            await send_body(
                req.send,
                200,
                sse_event(b"task_id", task_id) + self._outcome_events(outcome),
                SSE_HEADERS,
            )
            return
        streamer = _SlowCallStream(req.send, task_id, outcome)
        streamer.start()
        await asyncio.wait((outcome,))
        await streamer.finish(self._outcome_events(outcome))

    async def _answer_json(
        self, req: Request, outcome: asyncio.Future[tuple[str, str | None]]
    ) -> None:
        """Plain-JSON answer for clients that do not ask for SSE: failed calls get a typed 4xx."""
        exc = outcome.exception()
        if exc is not None:
            await send_body(req.send, 500, OrsError(500, OrsReason.ENV_ERROR, str(exc)).body())
            return
        result, reason = outcome.result()
        if reason is None:
            await send_body(req.send, 200, result.encode())
            return
        body = orjson.loads(result)
        body["detail"] = body.get("error", "")
        await send_body(req.send, _refusal_status(reason), orjson.dumps(body))

    @staticmethod
    def _outcome_events(outcome: asyncio.Future[tuple[str, str | None]]) -> bytes:
        exc = outcome.exception()
        if exc is not None:
            return sse_event(
                b"error",
                str(exc) if isinstance(exc, ToolCrashed) else f"{type(exc).__name__}: {exc}",
            )
        return sse_result(outcome.result()[0])

    async def h_score_group(self, req: Request) -> None:
        s = self._session(req)
        obj = await req.json_object(self.settings.max_body_bytes)
        if obj.get("task_id") is not None:
            await self._resume(req, s, obj["task_id"])
            return
        if not type(s.env)._supports_score_group():
            raise OrsError(
                404,
                OrsReason.NOT_SUPPORTED,
                f"environment {s.env_name!r} does not implement score_group",
            )
        try:
            payload = ScoreGroup.model_validate(obj)
        except ValidationError as e:
            raise OrsError(
                400, OrsReason.BAD_REQUEST, f"bad score_group body: {e.errors(include_url=False)}"
            ) from None

        async def score() -> tuple[str, str | None]:
            try:
                res = await self.budget.run(
                    run_user_callable(s.env.score_group, list(payload.candidates))
                )
                scores = [
                    x if isinstance(x, GroupScore) else GroupScore(reward=float(x)) for x in res
                ]
                if len(scores) != len(payload.candidates):
                    raise ValueError(
                        f"score_group returned {len(scores)} scores for "
                        f"{len(payload.candidates)} candidates"
                    )
            except BudgetExceeded:
                raise ToolCrashed(
                    f"score_group was stopped: it computed for longer than its "
                    f"{self.budget.limit_s:g} s budget"
                ) from None
            except Exception as e:
                raise ToolCrashed(f"{type(e).__name__}: {e}") from None
            return ScoreGroupOutput(scores=scores).model_dump_json(), None

        await self._run_and_answer(req, s, score())


_ABSENT = object()


def _trim_large_input(
    env: Environment, name: str, tool_input: dict[str, Any]
) -> dict[str, Any] | RunToolOutput:
    """A large tool input (over LARGE_INPUT_BYTES of body) cut to the tool's own fields, or a
    refusal with a bounded message. The SDK would expand every key into a keyword argument
    (50,000 keys cost 33 ms on the loop) and repeat the whole input in its validation error."""
    fn = getattr(env, name, None)
    if fn is None or not Environment._is_tool(fn):
        return tool_input  # the SDK answers not_found
    _, hints, params = sdk_environment._introspect_tool(fn)
    if not params:
        return {}
    model = hints[params[0].name]
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return tool_input
    if model.model_config.get("extra", "ignore") == "ignore":
        keys = {*model.model_fields, *(f.alias for f in model.model_fields.values() if f.alias)}
        tool_input = {k: v for k in keys if (v := tool_input.get(k, _ABSENT)) is not _ABSENT}
    try:
        model.model_validate(tool_input)
    except ValidationError as e:
        errors = str(e.errors(include_input=False, include_url=False))
        return RunToolOutput(
            RunToolError(
                reason="input_validation",
                error=f"Tool input validation error: {errors}"[:MAX_TOOL_ERROR_CHARS],
            )
        )
    return tool_input


class _SlowCallStream:
    """The SSE response of a call that is taking a while: task_id now, keepalives, result at the
    end."""

    def __init__(self, send: Send, task_id: str, outcome: asyncio.Future[Any]) -> None:
        self.send = send
        self.task_id = task_id
        self.outcome = outcome
        self.started = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.started = True
        self._task = asyncio.get_running_loop().create_task(self._open_and_keep_alive())

    async def _open_and_keep_alive(self) -> None:
        await self.send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        await self.send(
            {
                "type": "http.response.body",
                "body": sse_event(b"task_id", self.task_id),
                "more_body": True,
            }
        )
        while not self.outcome.done():
            await asyncio.wait((self.outcome,), timeout=KEEPALIVE_S)
            if not self.outcome.done():
                await self.send(
                    {"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True}
                )

    async def finish(self, events: bytes) -> None:
        if self._task is not None:
            await self._task
        await self.send({"type": "http.response.body", "body": events})
