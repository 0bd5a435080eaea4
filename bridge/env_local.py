"""A session on one of our env servers (`python -m envs.server`), spoken over lean HTTP + SSE
(bridge/http11.py), no SDK overhead.

Env calls have timeouts and bounded, jittered retries (`RetryPolicy`). Idempotent calls (create,
prompt, tools, delete) are retried on network errors and 429/502/503/504. A tool call (`/call`)
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
from typing import Any

import orjson

from bridge.env_session import RetryPolicy, ToolResult, one_line, refusal_kind, secret_values
from bridge.errors import BridgeError, EnvFailure, HTTP11Error
from bridge.http11 import HTTPClient, deadline
from bridge.ors_sse import SSEState, sse_result
from contract.task import TaskMeta, blocks_to_text
from contract.vocab import ToolErrorKind, ToolRefusal

RETRY_STATUSES = frozenset({429, 502, 503, 504})
# The env server's request body limit (envs/server: MAX_BODY_BYTES); bigger tool calls are refused
# here, before they are sent.
MAX_CALL_BODY = 1 << 20
# The env server's optional shared key (python -m envs.server --api-key / $ENV_SERVER_API_KEY).
ENV_SERVER_API_KEY = "ENV_SERVER_API_KEY"


def _secrets_header(secrets: dict[str, str]) -> dict[str, str]:
    if not secrets:
        return {}
    from openreward.api.sandboxes.secrets import build_secrets_header

    return {"X-Secrets": build_secrets_header(secrets)}


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
        raise EnvFailure(f"tool call answered an unexpected body: {one_line(repr(body), 200)}")
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
        error_kind=refusal_kind(reason),
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
        self._secrets = _secrets_header(secret_values(task.secrets)) if task.secrets else {}
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
                f"{one_line(raw.decode('utf-8', 'replace'))}"
            )
        try:
            return status, orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            if raw.startswith(b"event:") or b"\nevent:" in raw:
                return status, sse_result(raw.decode("utf-8", "replace"))
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
        if status == 400 and "already exists" not in one_line(repr(res)):
            detail = res.get("detail") if isinstance(res, dict) else res
            raise EnvFailure(f"/create {self.env} on {self.url}: {one_line(str(detail))}")
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
        state = SSEState(task_id)
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
                        f"{one_line(raw.decode('utf-8', 'replace'))}"
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


class _Resume(BridgeError):
    def __init__(self, task_id: str, message: str) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.message = message
