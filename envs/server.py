"""The ORS env server: serves Environment classes over the OpenReward wire protocol, fast.

`python -m envs.server --envs gsm8k,whodunit,haiku` speaks the protocol exactly as the stock
`openreward` client uses it (the same paths, JSON bodies and SSE framing as the SDK's own
`openreward.environments.Server`), and runs every tool call through the SDK's Environment
machinery (`Environment._call_tool`: input validation, per-tool locks, the episode-finished
latch). The HTTP layer is a small raw-ASGI router in front of a FastAPI app: the ORS paths
never touch FastAPI's per-request machinery; anything else (the trajectory service's routers)
falls through to FastAPI.

Hardening: bad input gets a typed 4xx in the ORS error shape
`{"ok": false, "error": msg, "reason": kind, "detail": msg}` (`detail` is what the stock client
shows); an exception inside an environment fails that call only; idle sessions are reaped;
`--max-sessions` answers 503 with Retry-After; `--api-key` guards everything but /health.

Wire details beyond the SDK server: tool-level refusals (not_found, input_validation,
episode_finished) travel inside the SSE result exactly as the SDK sends them (the stock client
turns them into `ToolCallError(reason)`); a client that does not send
`Accept: text/event-stream` gets the same JSON as the body with a typed status instead
(404/422/409, 500 for an env crash). Bare paths (`/call`, `/prompt`, `/create` without
`env_name`), which the stock client uses when no variant is given, are routed by the session,
else by the client's `X-Deployment` header, else to the first environment: the SDK server
would redirect them all to its first environment.
"""

from __future__ import annotations

import os

# The SDK logs three lines per tool call at INFO; its loggers read this when first imported.
os.environ.setdefault("OPENREWARD_LOG_LEVEL", "ERROR")

import argparse
import asyncio
import base64
import binascii
import gc
import hmac
import inspect
import logging
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, NoReturn, Optional, Protocol, Union

import orjson
from fastapi import APIRouter, FastAPI
from openreward._version import __version__ as SDK_VERSION
from openreward.environments import Environment
from openreward.environments.session import call_session_tool, list_session_tools
from openreward.environments.types import (GroupScore, ImageBlock, Message, ScoreGroup,
                                           ScoreGroupOutput, Split, TextBlock)
from openreward.environments.utils import run_user_callable
from pydantic import BaseModel, TypeAdapter, ValidationError

from envs.ors_metrics import ServerMetrics
from envs.sessions import Session, SessionTable

log = logging.getLogger("envs.server")

MAX_BODY_BYTES = 1 << 20
# A call that finishes within this long is answered in one write (task_id + result);
# a slower one gets its task_id at once, then keepalive comments, then the result.
FIRST_EVENT_WAIT_S = 1.0
KEEPALIVE_S = 10.0
# Characters per SSE data line; keeps every line far below aiohttp's line limit.
SSE_CHUNK_CHARS = 8192
UNKNOWN_TOOL_LABEL = "<unknown>"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_BLOCKS = TypeAdapter(list[Union[TextBlock, ImageBlock]])
_MESSAGES = TypeAdapter(list[Message])

# Tool-call failure reasons -> HTTP status for clients that ask for plain JSON instead of SSE.
_REASON_STATUS = {"not_found": 404, "name_collision": 409, "input_validation": 422,
                  "bad_input_shape": 400, "episode_finished": 409}


class TrajectoryServiceLike(Protocol):
    """What the server needs from a service it hosts (envs.rollouts_api.TrajectoryService)."""

    routers: list[APIRouter]

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass(frozen=True)
class ServerSettings:
    """Runtime knobs of one server process."""

    api_key: Optional[str] = None
    session_ttl_s: float = 900.0
    max_sessions: Optional[int] = None
    max_body_bytes: int = MAX_BODY_BYTES
    retry_after_s: int = 5
    log_requests: bool = False  # one debug line per request


class OrsError(Exception):
    """A refused request: HTTP status, a machine-readable reason and a one-line message."""

    def __init__(self, status: int, reason: str, message: str,
                 headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = list(headers)

    def body(self) -> bytes:
        return orjson.dumps({"ok": False, "error": self.message, "reason": self.reason,
                             "detail": self.message})


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class ToolCrashed(Exception):
    """An exception escaped an environment's tool; the message names its type."""


# ---------------------------------------------------------------- served environments


@dataclass(frozen=True)
class ServedEnv:
    """An environment class with everything static about it computed once."""

    name: str
    cls: type[Environment]
    split_names: frozenset[str]
    tool_names: frozenset[str]
    splits_json: bytes
    tools_json: bytes
    # True when /task_tools equals /tools for every session (no per-task tools).
    static_task_tools: bool


def _split_dict(split: Union[str, Split]) -> dict[str, str]:
    if isinstance(split, Split):
        return split.model_dump()
    kind = split if split in ("train", "validation", "test") else "validation"
    return {"name": split, "type": kind}


def serve_env(name: str, cls: type[Environment]) -> ServedEnv:
    """Check an Environment class the way the SDK server does and precompute its static answers."""
    if not (isinstance(cls, type) and issubclass(cls, Environment)):
        raise ValueError(f"environment {name!r}: {cls!r} is not an openreward Environment subclass")
    listed = cls.list_tools()
    if not listed.tools and listed.terminal_tool is None:
        raise ValueError(f"environment {name!r} has no @tool methods")
    splits = [_split_dict(s) for s in cls._list_splits_cached()]
    if not splits:
        raise ValueError(f"environment {name!r} defines no splits")
    if cls.get_prompt is Environment.get_prompt and cls.get_messages is Environment.get_messages:
        raise ValueError(f"environment {name!r} implements neither get_prompt() nor get_messages()")
    tool_names = {t.name for t in listed.tools}
    if listed.terminal_tool is not None:
        tool_names.add(listed.terminal_tool.name)
    return ServedEnv(
        name=name,
        cls=cls,
        split_names=frozenset(s["name"] for s in splits),
        tool_names=frozenset(tool_names),
        splits_json=orjson.dumps(splits),
        tools_json=orjson.dumps(listed.model_dump()),
        static_task_tools=cls.list_task_tools is Environment.list_task_tools,
    )


def _named_envs(env_classes: Union[Mapping[str, type[Environment]], Sequence[type[Environment]]]
                ) -> dict[str, ServedEnv]:
    items = (env_classes.items() if isinstance(env_classes, Mapping)
             else [(c.name(), c) for c in env_classes])
    served: dict[str, ServedEnv] = {}
    for name, cls in items:
        key = name.lower()
        if key in served:
            raise ValueError(f"environment {key!r} is listed twice")
        served[key] = serve_env(key, cls)
    return served


# ---------------------------------------------------------------- small HTTP helpers


def _json_default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    """JSON bytes for a response body (orjson; pydantic models and mappings allowed)."""
    return orjson.dumps(obj, default=_json_default)


_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]


async def _send_body(send: Send, status: int, body: bytes,
                     headers: Sequence[tuple[bytes, bytes]] = _JSON_HEADERS) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _sse_event(event: bytes, data: str) -> bytes:
    lines = data.split("\n")
    return b"event: " + event + b"\n" + b"".join(b"data: " + ln.encode() + b"\n" for ln in lines) + b"\n"


def _sse_result(result: str) -> bytes:
    """The ORS result events: `chunk`* then `end`, each carrying a slice of the JSON text."""
    if len(result) <= SSE_CHUNK_CHARS:
        return b"event: end\ndata: " + result.encode() + b"\n\n"
    parts = [result[i:i + SSE_CHUNK_CHARS] for i in range(0, len(result), SSE_CHUNK_CHARS)]
    return b"".join(b"event: chunk\ndata: " + p.encode() + b"\n\n" for p in parts[:-1]) + \
        b"event: end\ndata: " + parts[-1].encode() + b"\n\n"


def _parse_secrets(raw: Optional[bytes]) -> dict[str, str]:
    """X-Secrets: base64(JSON {name: {"value": v, ...}}) -> {name: v}. Values never go in errors."""
    if not raw:
        return {}
    try:
        payload = orjson.loads(base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError):
        raise OrsError(400, "bad_secrets", "X-Secrets must be base64-encoded JSON") from None
    if not isinstance(payload, dict):
        raise OrsError(400, "bad_secrets", "X-Secrets must encode a JSON object {name: {\"value\": ...}}")
    out: dict[str, str] = {}
    for name, entry in payload.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("value"), str):
            raise OrsError(400, "bad_secrets", f"X-Secrets entry {name!r} must be {{\"value\": <string>}}")
        out[name] = entry["value"]
    return out


async def _teardown_quietly(env: Environment) -> None:
    try:
        await run_user_callable(env.teardown)
    except Exception as e:
        log.warning("teardown of %s failed: %s: %s", type(env).__name__, type(e).__name__, e)


class Request:
    """One ORS request: the ASGI triple plus the few things every handler needs."""

    __slots__ = ("scope", "receive", "send", "headers", "env")

    def __init__(self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.headers = headers
        self.env: Optional[ServedEnv] = None  # from the path, when it names one

    def sid(self) -> str:
        raw = self.headers.get(b"x-session-id", b"").strip()
        if not raw:
            raise OrsError(400, "missing_session_id", "X-Session-ID header is required")
        return raw.decode("latin-1")

    def wants_sse(self) -> bool:
        return b"text/event-stream" in self.headers.get(b"accept", b"")

    async def body(self, limit: int) -> bytes:
        declared = self.headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise OrsError(413, "body_too_large", f"request body is over the {limit}-byte limit")
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await self.receive()
            if msg["type"] == "http.disconnect":
                raise _ClientGone()
            part = msg.get("body", b"")
            size += len(part)
            if size > limit:
                raise OrsError(413, "body_too_large", f"request body is over the {limit}-byte limit")
            if not msg.get("more_body", False):
                if not chunks:
                    return part
                chunks.append(part)
                return b"".join(chunks)
            chunks.append(part)

    async def json_object(self, limit: int) -> dict[str, Any]:
        raw = await self.body(limit)
        if not raw.strip():
            raise OrsError(400, "bad_json", "request body must be a JSON object, got an empty body")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise OrsError(400, "bad_json", f"malformed JSON body: {e}") from None
        if not isinstance(obj, dict):
            raise OrsError(400, "bad_json", f"request body must be a JSON object, got {type(obj).__name__}")
        return obj


def _field(obj: dict[str, Any], key: str, kind: type, required: bool = True) -> Any:
    """A typed field of a request body, or a 400 naming it."""
    if key not in obj or obj[key] is None:
        if required:
            raise OrsError(400, "bad_request", f"missing field {key!r}")
        return None
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise OrsError(400, "bad_request",
                       f"field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------- the ORS router


Handler = Callable[["OrsRouter", Request], Awaitable[Optional[bytes]]]

# Actions under /{env}/..., also reachable bare (/call) the way the SDK's default-env redirect allows.
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

    def __init__(self, app: ASGIApp, envs: dict[str, ServedEnv], settings: ServerSettings,
                 sessions: SessionTable, metrics: ServerMetrics) -> None:
        self.app = app
        self.envs = envs
        self.default_env = next(iter(envs.values()), None)
        self.settings = settings
        self.sessions = sessions
        self.metrics = metrics
        self._api_key = settings.api_key.encode() if settings.api_key else None
        self._creating: set[str] = set()
        self._env_list_json = orjson.dumps(list(envs))
        self._inner_prefixes: Optional[set[str]] = None

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
            await _send_body(send, 200, b'{"status":"ok"}')
            return
        headers = dict(scope["headers"])
        if self._api_key is not None:
            given = headers.get(b"x-api-key", b"")
            if not hmac.compare_digest(given, self._api_key):
                self.metrics.record_error("unauthorized")
                err = OrsError(401, "unauthorized", "missing or wrong X-API-Key")
                await _send_body(send, err.status, err.body())
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

    def _route(self, method: str, path: str, headers: dict[bytes, bytes]) -> Optional[str]:
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
                raise OrsError(405, "method_not_allowed", f"{req.scope['method']} is not allowed on {path}")
            if handler_name == "e_unknown_env":
                raise OrsError(404, "unknown_env", f"unknown environment {parts[1]!r}; "
                               f"this server has: {', '.join(self.envs) or 'none'}")
            body = await getattr(self, handler_name)(req)
            if body is not None:
                await _send_body(send, 200, body)
        except OrsError as e:
            self.metrics.record_error(e.reason)
            await _send_body(send, e.status, e.body(), [*_JSON_HEADERS, *e.headers])
        except _ClientGone:
            return
        except Exception as e:  # a bug in this server: answer, log, keep serving
            log.exception("internal error on %s %s", req.scope["method"], path)
            self.metrics.record_error("internal")
            err = OrsError(500, "internal", f"internal server error: {type(e).__name__}")
            try:
                await _send_body(send, 500, err.body())
            except Exception:
                pass

    async def _handle_logged(self, req: Request, handler_name: str, path: str) -> None:
        status = [0]
        send = req.send

        async def send_and_note(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        req.send = send_and_note
        t0 = time.perf_counter()
        await self._handle(req, handler_name, path)
        log.debug("%s %s -> %d in %.1f ms", req.scope["method"], path, status[0],
                  (time.perf_counter() - t0) * 1000)

    # -- resolution helpers

    def _env_for(self, req: Request) -> ServedEnv:
        """The env a request addresses: its path, else the client's X-Deployment, else the default."""
        if req.env is not None:
            return req.env
        dep = req.headers.get(b"x-deployment")
        if dep:
            served = self.envs.get(dep.decode("latin-1").lower())
            if served is not None:
                return served
        if self.default_env is None:
            raise OrsError(404, "unknown_env", "this server hosts no environments")
        return self.default_env

    def _session(self, req: Request) -> Session:
        sid = req.sid()
        s = self.sessions.get(sid)
        if s is None:
            why = self.sessions.ended_reason(sid)
            if why == "expired":
                raise OrsError(410, "session_expired",
                               f"session {sid} was idle longer than {self.sessions.ttl_s:g}s and was closed")
            if why is not None:
                raise OrsError(410, "session_deleted", f"session {sid} was deleted")
            raise OrsError(404, "unknown_session", f"no session {sid} on this server (call /create first)")
        if req.env is not None and req.env.name != s.env_name:
            raise OrsError(400, "wrong_env", f"session {sid} is a {s.env_name!r} session, not {req.env.name!r}")
        return s

    def _split(self, served: ServedEnv, obj: dict[str, Any]) -> str:
        split = _field(obj, "split", str)
        if split not in served.split_names:
            raise OrsError(400, "invalid_split", f"environment {served.name!r} has no split {split!r}; "
                           f"splits: {', '.join(sorted(served.split_names))}")
        return split

    # -- root endpoints

    async def h_list_environments(self, req: Request) -> bytes:
        return self._env_list_json

    async def h_version(self, req: Request) -> bytes:
        return dumps({"version": SDK_VERSION, "build_sha": None, "server": "slime-envs"})

    async def h_metrics(self, req: Request) -> None:
        await _send_body(req.send, 200, self.metrics.render().encode(),
                         [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")])

    async def h_create_session(self, req: Request) -> None:
        await req.body(self.settings.max_body_bytes)  # drain; the SDK sends env overrides we ignore
        sid = str(uuid.uuid4())
        await _send_body(req.send, 200, _sse_event(b"task_id", sid) + b"event: end\ndata: \n\n", _SSE_HEADERS)

    async def h_create(self, req: Request) -> bytes:
        sid = req.sid()
        obj = await req.json_object(self.settings.max_body_bytes)
        if self.sessions.exists(sid) or sid in self._creating:
            raise OrsError(400, "session_exists", f"Session already exists: {sid}")  # 400 as the SDK server
        if self.settings.max_sessions is not None and \
                len(self.sessions) + len(self._creating) >= self.settings.max_sessions:
            raise OrsError(503, "too_many_sessions",
                           f"server is at its limit of {self.settings.max_sessions} open sessions",
                           [(b"retry-after", str(self.settings.retry_after_s).encode())])
        env_name = _field(obj, "env_name", str, required=False)
        if env_name is not None:
            served = self.envs.get(env_name.lower())
            if served is None:
                raise OrsError(404, "unknown_env", f"unknown environment {env_name!r}; "
                               f"this server has: {', '.join(self.envs) or 'none'}")
        else:
            served = self._env_for(req)
        task_spec = obj.get("task_spec")
        has_index = obj.get("split") is not None or obj.get("index") is not None
        if (task_spec is not None) == has_index:
            raise OrsError(400, "bad_request", "give either task_spec or both split and index")
        secrets = _parse_secrets(req.headers.get(b"x-secrets"))
        toolset_name = _field(obj, "toolset_name", str, required=False)

        self._creating.add(sid)
        try:
            if task_spec is None:
                split = self._split(served, obj)
                index = _field(obj, "index", int)
                try:
                    task_spec = await run_user_callable(served.cls.get_task, split, index)
                except IndexError:
                    raise OrsError(400, "invalid_index", f"{served.name} split {split!r} has no task {index}") from None
                except Exception as e:
                    log.warning("%s.get_task(%r, %d) failed: %s: %s", served.name, split, index, type(e).__name__, e)
                    raise OrsError(500, "env_error", f"{served.name} could not load task {index}: {type(e).__name__}: {e}") from None
            elif not isinstance(task_spec, dict):
                raise OrsError(400, "bad_request", f"task_spec must be a JSON object, got {type(task_spec).__name__}")
            try:
                env = await run_user_callable(served.cls, task_spec=task_spec, secrets=secrets)
            except Exception as e:
                raise OrsError(400 if not has_index else 500, "env_error" if has_index else "invalid_task_spec",
                               f"{served.name} rejected the task: {type(e).__name__}: {e}") from None
            try:
                toolset = self._toolset(env, toolset_name) if toolset_name else None
                if type(env).setup is not Environment.setup:
                    await run_user_callable(env.setup)
            except OrsError:
                await _teardown_quietly(env)
                raise
            except Exception as e:
                log.warning("%s setup failed: %s: %s", served.name, type(e).__name__, e)
                await _teardown_quietly(env)
                raise OrsError(500, "env_error", f"{served.name} setup failed: {type(e).__name__}: {e}") from None
            self.sessions.add(Session(sid=sid, env_name=served.name, env=env, toolset=toolset))
        finally:
            self._creating.discard(sid)
        return dumps({"sid": sid})

    @staticmethod
    def _toolset(env: Environment, name: str) -> Any:
        from openreward.toolsets import BUILTIN_TOOLSETS  # rarely used; heavy to import

        toolset_cls = BUILTIN_TOOLSETS.get(name)
        if toolset_cls is None:
            raise OrsError(400, "bad_request", f"unknown toolset {name!r}; valid: {sorted(BUILTIN_TOOLSETS)}")
        try:
            return toolset_cls(env)
        except ValueError as e:
            raise OrsError(400, "bad_request", str(e)) from None

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
            raise OrsError(400, "invalid_index", f"{served.name}: index out of range") from None
        except NotImplementedError:
            raise OrsError(400, "not_supported", f"{served.name} does not list its tasks; "
                           "use num_tasks and task") from None
        except Exception as e:
            raise OrsError(500, "env_error", f"{served.name}: {type(e).__name__}: {e}") from None

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
        index = _field(obj, "index", int)
        task = await self._class_call(served, served.cls.get_task, split, index)
        return dumps({"task": task, "env_name": served.name})

    async def h_task_range(self, req: Request) -> bytes:
        served = self._env_for(req)
        obj = await req.json_object(self.settings.max_body_bytes)
        split = self._split(served, obj)
        start = _field(obj, "start", int, required=False)
        stop = _field(obj, "stop", int, required=False)
        tasks = await self._class_call(served, served.cls.get_task_range, split, start, stop)
        return dumps({"tasks": list(tasks), "env_name": served.name})

    async def h_prompt(self, req: Request) -> bytes:
        s = self._session(req)
        try:
            blocks = await run_user_callable(s.env.get_prompt)
            return _BLOCKS.dump_json(_BLOCKS.validate_python(list(blocks)))
        except Exception as e:
            raise OrsError(500, "env_error", f"{s.env_name}.get_prompt failed: {type(e).__name__}: {e}") from None

    async def h_messages(self, req: Request) -> bytes:
        s = self._session(req)
        try:
            msgs = await run_user_callable(s.env.get_messages)
            return _MESSAGES.dump_json(_MESSAGES.validate_python(list(msgs)))
        except Exception as e:
            raise OrsError(500, "env_error", f"{s.env_name}.get_messages failed: {type(e).__name__}: {e}") from None

    async def h_task_tools(self, req: Request) -> bytes:
        s = self._session(req)
        if s.toolset is None and self.envs[s.env_name].static_task_tools:
            return self.envs[s.env_name].tools_json
        try:
            listed = await list_session_tools(s.env, s.toolset)
        except Exception as e:
            raise OrsError(500, "env_error", f"{s.env_name} task tools failed: {type(e).__name__}: {e}") from None
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
            raise OrsError(400, "bad_input_shape", "field 'name' must be a non-empty string (the tool name)")
        tool_input = obj.get("input", {})
        if not isinstance(tool_input, dict):
            raise OrsError(400, "bad_input_shape",
                           f"field 'input' must be a JSON object of tool arguments, got {type(tool_input).__name__}")
        await self._run_and_answer(req, s, self._run_call(s, name, tool_input))

    async def _run_call(self, s: Session, name: str, tool_input: dict[str, Any]) -> tuple[str, Optional[str]]:
        """Run one tool call; returns (RunToolOutput JSON, error reason or None)."""
        t0 = time.perf_counter()
        tool = name if name in self.envs[s.env_name].tool_names else UNKNOWN_TOOL_LABEL
        try:
            if s.toolset is None:
                res = await s.env._call_tool(name, tool_input)
            else:
                res = await call_session_tool(s.env, s.toolset, name, tool_input)
        except Exception as e:
            self.metrics.record_call(s.env_name, tool, "env_error", time.perf_counter() - t0)
            log.warning("%s tool %r raised %s: %s (session %s)", s.env_name, name, type(e).__name__, e, s.sid)
            raise ToolCrashed(f"{type(e).__name__}: {e}") from None
        root = res.root
        reason = None if root.ok else (root.reason or "input_validation")
        self.metrics.record_call(s.env_name, tool, reason or "ok", time.perf_counter() - t0)
        return res.model_dump_json(), reason

    async def _run_and_answer(self, req: Request, s: Session,
                              work: Awaitable[tuple[str, Optional[str]]]) -> None:
        """Run a call inline (no task per call) and answer it; a call slower than FIRST_EVENT_WAIT_S
        gets its task_id event and keepalives from a helper task while it runs, so the client
        neither times out nor loses the result: it can resume with the task_id."""
        loop = asyncio.get_running_loop()
        task_id = uuid.uuid4().hex
        outcome: "asyncio.Future[tuple[str, Optional[str]]]" = loop.create_future()
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
            await _send_body(req.send, 200, _sse_event(b"task_id", task_id) + self._outcome_events(outcome),
                             _SSE_HEADERS)

    async def _resume(self, req: Request, s: Session, task_id: Any) -> None:
        """A client that lost a call's stream asks for it again by task_id."""
        outcome = s.calls.get(task_id) if isinstance(task_id, str) else None
        if outcome is None:  # what the SDK server answers for a task it no longer has
            await _send_body(req.send, 200, _sse_event(b"error", "unknown task_id"), _SSE_HEADERS)
            return
        if not req.wants_sse():
            await asyncio.wait((outcome,))
            await self._answer_json(req, outcome)
            return
        if outcome.done():
            await _send_body(req.send, 200, _sse_event(b"task_id", task_id) + self._outcome_events(outcome),
                             _SSE_HEADERS)
            return
        streamer = _SlowCallStream(req.send, task_id, outcome)
        streamer.start()
        await asyncio.wait((outcome,))
        await streamer.finish(self._outcome_events(outcome))

    async def _answer_json(self, req: Request, outcome: "asyncio.Future[tuple[str, Optional[str]]]") -> None:
        """Plain-JSON answer for clients that do not ask for SSE: failed calls get a typed 4xx."""
        exc = outcome.exception()
        if exc is not None:
            await _send_body(req.send, 500, OrsError(500, "env_error", str(exc)).body())
            return
        result, reason = outcome.result()
        if reason is None:
            await _send_body(req.send, 200, result.encode())
            return
        body = orjson.loads(result)
        body["detail"] = body.get("error", "")
        await _send_body(req.send, _REASON_STATUS.get(reason, 422), orjson.dumps(body))

    @staticmethod
    def _outcome_events(outcome: "asyncio.Future[tuple[str, Optional[str]]]") -> bytes:
        exc = outcome.exception()
        if exc is not None:
            return _sse_event(b"error", str(exc) if isinstance(exc, ToolCrashed) else f"{type(exc).__name__}: {exc}")
        return _sse_result(outcome.result()[0])

    async def h_score_group(self, req: Request) -> None:
        s = self._session(req)
        obj = await req.json_object(self.settings.max_body_bytes)
        if obj.get("task_id") is not None:
            await self._resume(req, s, obj["task_id"])
            return
        if not type(s.env)._supports_score_group():
            raise OrsError(404, "not_supported", f"environment {s.env_name!r} does not implement score_group")
        try:
            payload = ScoreGroup.model_validate(obj)
        except ValidationError as e:
            raise OrsError(400, "bad_request", f"bad score_group body: {e.errors(include_url=False)}") from None

        async def score() -> tuple[str, Optional[str]]:
            try:
                res = await run_user_callable(s.env.score_group, list(payload.candidates))
                scores = [x if isinstance(x, GroupScore) else GroupScore(reward=float(x)) for x in res]
                if len(scores) != len(payload.candidates):
                    raise ValueError(f"score_group returned {len(scores)} scores for {len(payload.candidates)} candidates")
            except Exception as e:
                raise ToolCrashed(f"{type(e).__name__}: {e}") from None
            return ScoreGroupOutput(scores=scores).model_dump_json(), None

        await self._run_and_answer(req, s, score())


class _SlowCallStream:
    """The SSE response of a call that is taking a while: task_id now, keepalives, result at the end."""

    def __init__(self, send: Send, task_id: str, outcome: "asyncio.Future[Any]") -> None:
        self.send = send
        self.task_id = task_id
        self.outcome = outcome
        self.started = False
        self._task: Optional["asyncio.Task[None]"] = None

    def start(self) -> None:
        self.started = True
        self._task = asyncio.get_running_loop().create_task(self._open_and_keep_alive())

    async def _open_and_keep_alive(self) -> None:
        await self.send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        await self.send({"type": "http.response.body", "body": _sse_event(b"task_id", self.task_id),
                         "more_body": True})
        while not self.outcome.done():
            await asyncio.wait((self.outcome,), timeout=KEEPALIVE_S)
            if not self.outcome.done():
                await self.send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})

    async def finish(self, events: bytes) -> None:
        if self._task is not None:
            await self._task
        await self.send({"type": "http.response.body", "body": events})


# ---------------------------------------------------------------- app factory


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


def create_app(env_classes: Union[Mapping[str, type[Environment]], Sequence[type[Environment]]],
               settings: ServerSettings = ServerSettings(),
               services: Iterable[TrajectoryServiceLike] = ()) -> OrsRouter:
    """The server as one ASGI app: the ORS routes for `env_classes` (name -> class, or classes
    named as the SDK names them) answered directly, in front of a FastAPI app that carries each
    service's routers and whose lifespan starts and stops the services and the session reaper.
    `app.fastapi` is that FastAPI app; `app.state` its state (sessions, metrics, envs)."""
    memoize_tool_introspection()
    envs = _named_envs(env_classes)
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
            for svc in reversed(started):
                try:
                    await svc.stop()
                except Exception as e:
                    log.warning("stopping %s failed: %s: %s", type(svc).__name__, type(e).__name__, e)

    extra: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        extra["telemetry"] = {"auto_configure": False}
    inner = FastAPI(title="slime-envs env server", lifespan=lifespan, docs_url=None, redoc_url=None,
                    openapi_url=None, **extra)
    for svc in services:
        for router in svc.routers:
            inner.include_router(router)
    inner.state.sessions = sessions
    inner.state.metrics = metrics
    inner.state.envs = envs
    return OrsRouter(inner, envs=envs, settings=settings, sessions=sessions, metrics=metrics)


# ---------------------------------------------------------------- CLI


def _fail(msg: str) -> NoReturn:
    print(f"envs.server: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def load_served_classes(names: Sequence[str], config_path: Optional[str]) -> dict[str, type[Environment]]:
    """Import the named environments and apply `environments.<name>.options` from the config."""
    from bridge.config import ConfigError, is_hosted, load_config
    from envs.registry import UnknownEnvironment, configure_env, load_env_class

    options: dict[str, dict[str, Any]] = {}
    if config_path:
        try:
            cfg = load_config(config_path)
        except ConfigError as e:
            _fail(str(e))
        options = {n.lower(): c.options for n, c in cfg.environments.items() if not is_hosted(n)}
        if not names:
            names = list(options)
    if not names:
        from envs.registry import ENVIRONMENTS
        names = list(ENVIRONMENTS)
    classes: dict[str, type[Environment]] = {}
    for name in names:
        key = name.strip().lower()
        if not key:
            continue
        try:
            cls = load_env_class(key)
        except UnknownEnvironment as e:
            _fail(str(e))
        except Exception as e:
            _fail(f"cannot load environment {key!r}: {type(e).__name__}: {e}")
        try:
            configure_env(cls, options.get(key, {}))
        except Exception as e:
            _fail(f"{config_path}: environments.{key}.options: {e}")
        classes[key] = cls
    return classes


def freeze_startup_objects() -> None:
    """Keep the ~300k objects created by imports out of the garbage collector's full passes.

    Without this, a full (generation 2) collection walks them all and stalls the event loop
    for 100-400 ms under load: the tail of the call latency. Objects created later are
    collected as usual, but less often: the request path allocates a lot and makes almost no
    reference cycles, so a full collection about once a minute under load is plenty.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)


def _build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m envs.server",
                                description="Serve environments over the OpenReward (ORS) protocol.")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--envs", default="", help="comma-separated env names (default: the config's "
                   "local environments, else gsm8k,whodunit,haiku)")
    p.add_argument("--config", help="train_config.yaml; applies environments.<name>.options")
    p.add_argument("--api-key", default=os.environ.get("ENV_SERVER_API_KEY"),
                   help="require this X-API-Key on every request but /health (default: $ENV_SERVER_API_KEY)")
    p.add_argument("--session-ttl", type=float, default=900.0, help="seconds before an idle session is closed")
    p.add_argument("--max-sessions", type=int, default=None, help="cap on open sessions (503 + Retry-After beyond)")
    p.add_argument("--db", default="runs/trajectories.db", help="trajectory store (roles all, trajectories)")
    p.add_argument("--role", choices=("all", "env", "trajectories"), default="all",
                   help="env: environments only; trajectories: the trajectory store/UI only; all: both")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    """CLI entry point: parse flags, load envs and services, run uvicorn."""
    args = _build_arg_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.session_ttl <= 0:
        _fail("--session-ttl must be positive")
    if args.max_sessions is not None and args.max_sessions < 1:
        _fail("--max-sessions must be at least 1")

    classes: dict[str, type[Environment]] = {}
    if args.role in ("all", "env"):
        classes = load_served_classes([n for n in args.envs.split(",") if n.strip()], args.config)
    services: list[TrajectoryServiceLike] = []
    if args.role in ("all", "trajectories"):
        try:
            from envs.rollouts_api import TrajectoryService
        except ImportError as e:
            _fail(f"--role {args.role} needs the trajectory service (envs/rollouts_api.py): {e}; "
                  "use --role env to serve environments only")
        from envs.store import StoreError

        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.db)), exist_ok=True)
            services.append(TrajectoryService(args.db))
        except (StoreError, OSError) as e:
            _fail(f"--db {args.db}: {e}")

    settings = ServerSettings(api_key=args.api_key or None, session_ttl_s=args.session_ttl,
                              max_sessions=args.max_sessions, log_requests=args.log_level == "debug")
    try:
        app = create_app(classes, settings, services)
    except ValueError as e:
        _fail(str(e))

    import uvicorn

    freeze_startup_objects()

    def have(mod: str) -> bool:
        try:
            __import__(mod)
            return True
        except ImportError:
            return False

    log.info("serving %s on http://%s:%d (role %s)", ", ".join(classes) or "no environments",
             args.host, args.port, args.role)
    uvicorn.run(app, host=args.host, port=args.port,
                loop="uvloop" if have("uvloop") else "asyncio",
                http="httptools" if have("httptools") else "h11",
                access_log=False, log_level=args.log_level, timeout_keep_alive=75, backlog=4096,
                proxy_headers=False)


if __name__ == "__main__":
    main()
