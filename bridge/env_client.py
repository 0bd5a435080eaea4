"""ORS session clients: a lean HTTP client for our own env servers, the openreward SDK for hosted
envs.

A session lives on exactly one server: with several env-server URLs, `pick_server` pins it
by a stable hash of the session key, and every call of that session goes there.

Env calls have timeouts and bounded, jittered retries. Idempotent calls (create, prompt,
tools, delete) are retried on network errors and 429/502/503/504. A tool call (`/call`)
steps the environment, so it is only retried when the connection was never made (nothing
ran), or, once the server has sent the call's SSE `task_id`, by resuming that task_id (the
server replays the result instead of running the tool again).

A tool call the server cannot accept because of its size (arguments past the env server's body
limit, 1 MiB, or an HTTP 413) is the model's doing: it becomes a tool error the model sees
(`too_large`), never an env failure that ends the episode.
"""

from __future__ import annotations

import asyncio
import os
import random
import weakref
import zlib
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from bridge.errors import BridgeError, EnvFailure, HTTP11Error
from bridge.http11 import HTTPClient, client_for_loop, close_loop_client, deadline
from contract.task import TaskMeta, blocks_to_text
from contract.vocab import ToolErrorKind, ToolRefusal

RETRY_STATUSES = frozenset({429, 502, 503, 504})
# The env server's request body limit (envs/server: MAX_BODY_BYTES); bigger tool calls are refused
# here, before they are sent.
MAX_CALL_BODY = 1 << 20
# The env server's optional shared key (python -m envs.server --api-key / $ENV_SERVER_API_KEY).
ENV_SERVER_API_KEY = "ENV_SERVER_API_KEY"


@dataclass
class ToolResult:
    """One executed tool call as the model will see it."""

    text: str
    reward: float | None
    finished: bool
    error_kind: ToolErrorKind | None = (
        None  # set when the env refused the call (the model sees the text)
    )
    metadata: Any = None


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # total tries per call
    backoff: float = 0.2  # seconds; full jitter on base * 2**n
    backoff_max: float = 2.0
    retry_after_max: float = (
        30.0  # cap on a server's Retry-After (a full server answers 503 + Retry-After)
    )
    timeout: float = 60.0  # per request, control calls
    call_timeout: float = 600.0  # per tool call

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before the next try: the server's Retry-After when it gave one, else jittered
        backoff."""
        if retry_after is not None:
            return min(retry_after, self.retry_after_max) + random.uniform(0, self.backoff)
        return random.uniform(0, min(self.backoff_max, self.backoff * (2**attempt)))


class EnvSession(Protocol):
    """One ORS episode session."""

    sid: str | None
    url: str

    async def open(self) -> None: ...
    async def prompt_text(self) -> str: ...
    async def tools(
        self,
    ) -> list[dict[str, Any]]: ...  # ORS ToolSpec dicts: name, description, input_schema
    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult: ...
    async def alive(self) -> bool: ...
    async def close(self) -> None: ...


def pick_server(urls: list[str], key: str) -> str:
    """The env-server URL a session with this key is pinned to (stable across processes)."""
    if not urls:
        raise EnvFailure("no env server URL configured (set env_server in train_config.yaml)")
    return urls[zlib.crc32(key.encode()) % len(urls)]


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def _secrets(values: dict[str, str | None]) -> dict[str, str]:
    out = {}
    for name, value in values.items():
        v = value if value is not None else os.environ.get(name.upper())
        if v is None:
            raise EnvFailure(f"secret {name!r} has no value and ${name.upper()} is not set")
        out[name] = v
    return out


def _secrets_header(secrets: dict[str, str]) -> dict[str, str]:
    if not secrets:
        return {}
    from openreward.api.sandboxes.secrets import build_secrets_header

    return {"X-Secrets": build_secrets_header(secrets)}


def _refusal_kind(reason: str) -> ToolErrorKind:
    """The tool-error kind an ORS refusal's `reason` counts as (an unknown one: env_rejected)."""
    try:
        return ToolRefusal(reason).error_kind
    except ValueError:
        return ToolErrorKind.ENV_REJECTED


def _too_large_message(name: str, size: int) -> str:
    return (
        f"the call to {name!r} is {size} bytes; the environment accepts at most "
        f"{MAX_CALL_BODY} bytes per call. Send shorter arguments."
    )


def too_large_result(name: str, size: int) -> ToolResult:
    """The tool error a model sees for a call too big for the env server."""
    return ToolResult(
        text=f"Error: {_too_large_message(name, size)}",
        reward=None,
        finished=False,
        error_kind=ToolErrorKind.TOO_LARGE,
    )


def _too_large_body(payload: dict[str, Any]) -> dict[str, Any]:
    """An ORS error body for a call the server refused with HTTP 413."""
    message = _too_large_message(str(payload.get("name")), len(orjson.dumps(payload)))
    return {"ok": False, "error": message, "reason": ToolRefusal.TOO_LARGE.value}


def _tool_result(body: Any) -> ToolResult:
    if not isinstance(body, dict) or "ok" not in body:
        raise EnvFailure(f"tool call answered an unexpected body: {_one_line(repr(body), 200)}")
    if body["ok"]:
        out = body.get("output") or {}
        reward = out.get("reward")
        return ToolResult(
            text=blocks_to_text(out.get("blocks") or []),
            reward=None if reward is None else float(reward),
            finished=bool(out.get("finished")),
            metadata=out.get("metadata"),
        )
    reason = body.get("reason") or ToolRefusal.INPUT_VALIDATION.value
    return ToolResult(
        text=f"Error: {body.get('error') or reason}",
        reward=None,
        finished=False,
        error_kind=_refusal_kind(reason),
    )


class _Retryable(BridgeError):
    def __init__(
        self, message: str, connected: bool = True, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.connected = connected
        self.retry_after = retry_after


def _retry_after(headers: dict[str, str]) -> float | None:
    """A Retry-After given in seconds (the HTTP-date form is not used by our servers), else None."""
    try:
        value = float(headers.get("retry-after", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


class LocalEnvSession:
    """A session on one of our env servers, spoken over plain HTTP + SSE (no SDK overhead)."""

    def __init__(
        self, http: HTTPClient, url: str, task: TaskMeta, policy: RetryPolicy = RetryPolicy()
    ) -> None:
        self.http = http
        self.url = url.rstrip("/")
        self.task = task
        self.env = task.env
        self.policy = policy
        self.sid: str | None = None
        self._secrets = _secrets_header(_secrets(task.secrets)) if task.secrets else {}
        self._created = False
        key = os.environ.get(ENV_SERVER_API_KEY)
        self._auth = {"X-API-Key": key} if key else {}

    # --- plumbing ------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {**self._auth, "X-Session-ID": self.sid} if self.sid else dict(self._auth)

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        extra: dict[str, str] | None = None,
        accept: tuple[int, ...] = (200,),
    ) -> tuple[int, Any]:
        headers = {**self._headers(), **(extra or {})}
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            resp = await self.http.request(
                method, self.url + path, data, headers, timeout=self.policy.timeout
            )
        except HTTP11Error as e:
            raise _Retryable(
                f"{method} {path} on {self.url} failed: {e}", connected=e.connected
            ) from None
        status, raw = resp.status, resp.body
        if status in RETRY_STATUSES:
            raise _Retryable(
                f"{method} {path} on {self.url}: HTTP {status}",
                retry_after=_retry_after(resp.headers),
            )
        if status not in accept:
            raise EnvFailure(
                f"{method} {path} on {self.url}: HTTP {status}: "
                f"{_one_line(raw.decode('utf-8', 'replace'))}"
            )
        try:
            return status, orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            if raw.startswith(b"event:") or b"\nevent:" in raw:
                return status, _sse_result(raw.decode("utf-8", "replace"))
            raise EnvFailure(f"{method} {path} on {self.url}: invalid JSON") from None

    async def _retrying(
        self,
        method: str,
        path: str,
        body: Any = None,
        extra: dict[str, str] | None = None,
        accept: tuple[int, ...] = (200,),
    ) -> tuple[int, Any]:
        last = ""
        for attempt in range(self.policy.attempts):
            try:
                return await self._request(method, path, body, extra, accept)
            except _Retryable as e:
                last = str(e)
                if attempt + 1 < self.policy.attempts:
                    await asyncio.sleep(self.policy.delay(attempt, e.retry_after))
        raise EnvFailure(f"{last} (gave up after {self.policy.attempts} attempts)")

    # --- session -------------------------------------------------------------------------
    async def open(self) -> None:
        """Create the session: `/create_session` (gives the sid), then `/create` with the task."""
        _, res = await self._retrying("POST", "/create_session", {})
        sid = res.get("sid") if isinstance(res, dict) else None
        sid = sid or (res.get("task_id") if isinstance(res, dict) else None)
        if not sid:
            raise EnvFailure(f"/create_session on {self.url} returned no session id")
        self.sid = sid
        # A retried /create whose first attempt went through answers "Session already exists".
        status, res = await self._retrying(
            "POST",
            "/create",
            {"env_name": self.env, **self.task.create_args()},
            self._secrets,
            accept=(200, 400),
        )
        if status == 400 and "already exists" not in _one_line(repr(res)):
            detail = res.get("detail") if isinstance(res, dict) else res
            raise EnvFailure(f"/create {self.env} on {self.url}: {_one_line(str(detail))}")
        self._created = True

    async def prompt_text(self) -> str:
        _, blocks = await self._retrying("GET", f"/{self.env}/prompt")
        if isinstance(blocks, dict):  # tolerate {"blocks": [...]}
            blocks = blocks.get("blocks", [])
        return blocks_to_text(blocks or [])

    async def tools(self) -> list[dict[str, Any]]:
        status, res = await self._retrying("GET", f"/{self.env}/task_tools", accept=(200, 404))
        if status == 404:
            _, res = await self._retrying("GET", f"/{self.env}/tools")
        return list((res or {}).get("tools") or [])

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        """Run one tool call; never re-runs a call that may already have run."""
        task_id: str | None = None
        payload: dict[str, Any] = {"name": name, "input": arguments}
        size = len(orjson.dumps(payload)) + 64  # + room for a resumed call's task_id
        if size > MAX_CALL_BODY:
            return too_large_result(name, size)
        last = ""
        for attempt in range(self.policy.attempts):
            retry_after: float | None = None
            if task_id:
                payload["task_id"] = task_id
            try:
                body, task_id = await self._call_once(payload, task_id)
                return _tool_result(body)
            except _Retryable as e:
                last, retry_after = str(e), e.retry_after
                if e.connected and task_id is None:
                    # The request may have reached the env and stepped it: do not run it twice.
                    raise EnvFailure(
                        f"tool call {name!r} lost before the server acknowledged it: {last}"
                    ) from None
            except _Resume as e:
                task_id, last = e.task_id, e.message
            if attempt + 1 < self.policy.attempts:
                await asyncio.sleep(self.policy.delay(attempt, retry_after))
        raise EnvFailure(
            f"tool call {name!r}: {last} (gave up after {self.policy.attempts} attempts)"
        )

    async def _call_once(
        self, payload: dict[str, Any], task_id: str | None
    ) -> tuple[Any, str | None]:
        headers = {
            **self._headers(),
            "Accept": "text/event-stream",
            "Content-Type": "application/json",
        }
        try:
            async with deadline(self.policy.call_timeout):
                return await self._call_stream(payload, headers, task_id)
        except asyncio.TimeoutError:
            raise EnvFailure(
                f"tool call on {self.url} took longer than {self.policy.call_timeout:g} s"
            ) from None

    async def _call_stream(
        self, payload: dict[str, Any], headers: dict[str, str], task_id: str | None
    ) -> tuple[Any, str | None]:
        state = _SSEState(task_id)
        try:
            # never resend a tool call on a stale connection: it may have run
            async with self.http.stream(
                "POST",
                f"{self.url}/{self.env}/call",
                orjson.dumps(payload),
                headers,
                retry_stale=False,
                connect_timeout=self.policy.timeout,
            ) as resp:
                if resp.status in RETRY_STATUSES:
                    raise _Retryable(
                        f"/call on {self.url}: HTTP {resp.status}",
                        retry_after=_retry_after(resp.headers),
                    )
                if resp.status == 413:
                    async for _ in resp.iter_chunks():
                        pass
                    return _too_large_body(payload), state.task_id
                if resp.status != 200:
                    raw = b"".join([c async for c in resp.iter_chunks()])
                    raise EnvFailure(
                        f"/call on {self.url}: HTTP {resp.status}: "
                        f"{_one_line(raw.decode('utf-8', 'replace'))}"
                    )
                result = None
                async for (
                    chunk
                ) in resp.iter_chunks():  # read to the end so the connection can be reused
                    if result is None:
                        result = state.feed(chunk)
                if result is not None:
                    return result, state.task_id
        except HTTP11Error as e:
            if state.task_id:
                raise _Resume(state.task_id, str(e)) from None
            raise _Retryable(str(e), connected=e.connected) from None
        except orjson.JSONDecodeError:
            raise EnvFailure(f"/call on {self.url}: result is not JSON") from None
        if state.task_id:
            raise _Resume(state.task_id, "stream ended before the result")
        raise _Retryable("stream ended before the result")

    async def alive(self) -> bool:
        """Whether the server still has this session (a suspended episode may outlive its TTL)."""
        if self.sid is None or not self._created:
            return False
        try:
            status, _ = await self._request("POST", "/ping", accept=(200, 404, 410))
        except (_Retryable, EnvFailure):
            return False
        return status == 200

    async def close(self) -> None:
        """Delete the session (best effort, short): never raises."""
        if self.sid is None:
            return
        try:
            # like the SDK's session exit: /delete ends the env and the session id
            if self._created:
                await self._request_quiet("POST", "/delete")
        finally:
            self.sid = None

    async def _request_quiet(self, method: str, path: str) -> None:
        for attempt in range(2):
            try:
                await self._request(method, path, accept=(200, 404, 410))
                return
            except _Retryable as e:
                if not e.connected:
                    return  # the server is gone, and its sessions with it
                await asyncio.sleep(self.policy.delay(attempt))
            except Exception:
                return


class _SSEState:
    """Incremental SSE parser for a `/call` stream: task_id, chunk*, end (or error)."""

    def __init__(self, task_id: str | None) -> None:
        self.task_id = task_id
        self._buf = b""
        self._event: str | None = None
        self._data: list[str] = []
        self._chunks: list[str] = []

    def feed(self, data: bytes) -> Any:
        """Consume bytes; returns the decoded result once the `end` event arrived, else None."""
        self._buf += data
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                return None
            line = self._buf[:i].decode("utf-8", "replace").rstrip("\r")
            self._buf = self._buf[i + 1 :]
            if not line:
                if self._event is not None:
                    text = "\n".join(self._data)
                    if self._event == "task_id":
                        self.task_id = text.strip()
                    elif self._event == "chunk":
                        self._chunks.append(text)
                    elif self._event == "end":
                        self._chunks.append(text)
                        return orjson.loads("".join(self._chunks))
                    elif self._event == "error":
                        raise EnvFailure(f"tool call failed in the environment: {_one_line(text)}")
                self._event, self._data = None, []
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                self._event = value
            elif key == "data":
                self._data.append(value)


class _Resume(BridgeError):
    def __init__(self, task_id: str, message: str) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.message = message


def _sse_result(text: str) -> Any:
    """The JSON `end` payload (or task_id) of an SSE body read in one piece (e.g.
    /create_session)."""
    task_id, chunks = None, []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event, data = None, []
        for line in block.split("\n"):
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                event = value
            elif key == "data":
                data.append(value)
        joined = "\n".join(data)
        if event == "task_id":
            task_id = joined.strip()
        elif event in ("chunk", "end"):
            chunks.append(joined)
        elif event == "error":
            raise EnvFailure(f"server error event: {_one_line(joined)}")
    body = "".join(chunks).strip()
    if body:
        try:
            res = orjson.loads(body)
            if isinstance(res, dict):
                res.setdefault("task_id", task_id)
                return res
        except orjson.JSONDecodeError:
            pass
    return {"task_id": task_id}


class HostedEnvSession:
    """A session on a hosted OpenReward environment (`Owner/Name`) through the openreward SDK.

    Names resolve exactly as the SDK resolves them, honouring OPENREWARD_SESSION_URL;
    the API key comes from OPENREWARD_API_KEY.
    """

    def __init__(self, task: TaskMeta, policy: RetryPolicy = RetryPolicy()) -> None:
        self.task = task
        self.policy = policy
        self.sid: str | None = None
        self.url = ""
        self._session: Any = None

    async def open(self) -> None:
        from openreward import AsyncOpenReward
        from openreward.api.environments.types import Task

        client = _sdk_client(AsyncOpenReward)
        env = client.environments.get(self.task.env)
        self.url = str(env.client._base_url)
        secrets = _secrets(self.task.secrets) if self.task.secrets else None
        if self.task.index is not None:
            cm = env.session(split=self.task.split, index=self.task.index, secrets=secrets)
        else:
            owner, _, name = self.task.env.partition("/")
            cm = env.session(
                task=Task(
                    server_name=name,
                    environment_name=None,
                    task_spec=self.task.task_spec or {},
                    namespace=owner,
                ),
                secrets=secrets,
            )
        try:
            self._session = await asyncio.wait_for(cm.__aenter__(), self.policy.timeout)
        except Exception as e:
            raise EnvFailure(
                f"cannot open a session on {self.task.env}: {type(e).__name__}: {_one_line(str(e))}"
            ) from None
        self.sid = self._session.sid

    async def _guard(self, what: str, coro: Any, timeout: float) -> Any:
        try:
            return await asyncio.wait_for(coro, timeout)
        except Exception as e:
            raise EnvFailure(
                f"{what} on {self.task.env}: {type(e).__name__}: {_one_line(str(e))}"
            ) from None

    async def prompt_text(self) -> str:
        return blocks_to_text(
            await self._guard("get_prompt", self._session.get_prompt(), self.policy.timeout)
        )

    async def tools(self) -> list[dict[str, Any]]:
        specs = await self._guard("list_tools", self._session.list_tools(), self.policy.timeout)
        return [
            {"name": s.name, "description": s.description, "input_schema": s.input_schema}
            for s in specs
        ]

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        from openreward.api.errors import ToolCallError as SDKToolCallError

        try:
            out = await asyncio.wait_for(
                self._session.call_tool(name, arguments), self.policy.call_timeout
            )
        except SDKToolCallError as e:
            return ToolResult(
                text=f"Error: {e}",
                reward=None,
                finished=False,
                error_kind=_refusal_kind(str(getattr(e, "reason", ""))),
            )
        except Exception as e:
            raise EnvFailure(
                f"tool call {name!r} on {self.task.env}: {type(e).__name__}: {_one_line(str(e))}"
            ) from None
        return ToolResult(
            text=blocks_to_text(out.blocks),
            reward=out.reward,
            finished=bool(out.finished),
            metadata=out.metadata,
        )

    async def alive(self) -> bool:
        """Whether the hosted session is still open (a failing call later says more)."""
        return self._session is not None

    async def close(self) -> None:
        if self._session is None:
            return
        session, self._session = self._session, None
        try:
            await asyncio.wait_for(session.__aexit__(None, None, None), self.policy.timeout)
        except Exception:
            pass


_SDK_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
    weakref.WeakKeyDictionary()
)


def _sdk_client(cls: Any) -> Any:
    loop = asyncio.get_running_loop()
    client = _SDK_CLIENTS.get(loop)
    if client is None:
        client = _SDK_CLIENTS[loop] = cls(api_key=os.environ.get("OPENREWARD_API_KEY"))
    return client


def open_session(
    task: TaskMeta, urls: list[str], key: str, policy: RetryPolicy = RetryPolicy()
) -> EnvSession:
    """An unopened session for `task`: hosted via the SDK for `Owner/Name`, else on our env server.

    `urls` (the job's TRAIN_CONFIG env_server) win over the task row's own: run.sh hands the
    job the servers it started; the row's URLs are for running without a config.
    """
    if task.hosted:
        return HostedEnvSession(task, policy)
    return LocalEnvSession(
        client_for_loop(), pick_server(urls or task.env_server, key), task, policy
    )


async def close_shared_http() -> None:
    """Close this event loop's env HTTP session and SDK client (if any)."""
    loop = asyncio.get_running_loop()
    await close_loop_client()
    sdk = _SDK_CLIENTS.pop(loop, None)
    if sdk is not None:
        try:
            await sdk.environments.aclose()
        except Exception:
            pass
