"""How a call (a tool call or score_group) is answered: SSE as the SDK server sends it, or plain
JSON, and resumed by task_id when a client lost the stream.

A call that finishes within FIRST_EVENT_WAIT_S is answered in one write (task_id + result); a
slower one gets its task_id at once, then keepalive comments, then the result, and a client
that lost the stream asks for it again by task_id.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable
from typing import Any

import orjson
from starlette.types import Send

from contract.vocab import OrsReason, ToolRefusal
from envs.server.errors import OrsError, ToolCrashed
from envs.server.sessions import Session
from envs.server.wire import SSE_HEADERS, Request, send_body, sse_event, sse_result

__all__ = ["FIRST_EVENT_WAIT_S", "KEEPALIVE_S", "CallOutcome", "resume", "run_and_answer"]

FIRST_EVENT_WAIT_S = 1.0
KEEPALIVE_S = 10.0

CallOutcome = tuple[str, str | None]
"""A finished call: its result JSON, and its refusal reason (None when it succeeded)."""


def refusal_status(reason: str) -> int:
    """The HTTP status of a tool call the environment refused (an unknown reason: 422)."""
    try:
        return ToolRefusal(reason).status
    except ValueError:
        return 422


async def run_and_answer(req: Request, s: Session, work: Awaitable[CallOutcome]) -> None:
    """Run a call inline (no task per call) and answer it; a call slower than FIRST_EVENT_WAIT_S
    gets its task_id event and keepalives from a helper task while it runs, so the client
    neither times out nor loses the result: it can resume with the task_id."""
    loop = asyncio.get_running_loop()
    task_id = os.urandom(16).hex()  # as uuid4().hex, at a fifth of the cost
    outcome: asyncio.Future[CallOutcome] = loop.create_future()
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
        await _answer_json(req, outcome)
    elif streamer.started:
        await streamer.finish(_outcome_events(outcome))
    else:
        await send_body(
            req.send, 200, sse_event(b"task_id", task_id) + _outcome_events(outcome), SSE_HEADERS
        )


async def resume(req: Request, s: Session, task_id: Any) -> None:
    """A client that lost a call's stream asks for it again by task_id."""
    outcome = s.calls.get(task_id) if isinstance(task_id, str) else None
    if outcome is None:  # what the SDK server answers for a task it no longer has
        await send_body(req.send, 200, sse_event(b"error", "unknown task_id"), SSE_HEADERS)
        return
    if not req.wants_sse():
        await asyncio.wait((outcome,))
        await _answer_json(req, outcome)
        return
    if outcome.done():
        await send_body(
            req.send, 200, sse_event(b"task_id", task_id) + _outcome_events(outcome), SSE_HEADERS
        )
        return
    streamer = _SlowCallStream(req.send, task_id, outcome)
    streamer.start()
    await asyncio.wait((outcome,))
    await streamer.finish(_outcome_events(outcome))


async def _answer_json(req: Request, outcome: asyncio.Future[CallOutcome]) -> None:
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
    await send_body(req.send, refusal_status(reason), orjson.dumps(body))


def _outcome_events(outcome: asyncio.Future[CallOutcome]) -> bytes:
    exc = outcome.exception()
    if exc is not None:
        return sse_event(
            b"error",
            str(exc) if isinstance(exc, ToolCrashed) else f"{type(exc).__name__}: {exc}",
        )
    return sse_result(outcome.result()[0])


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
