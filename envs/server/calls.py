"""Tool calls and group scoring: `/call` and `/score_group`, run under the call budget.

Tool calls run through the SDK's Environment machinery (`Environment._call_tool`: input
validation, per-tool locks, the episode-finished latch), or the session's toolset when it has
one. A refused call's message is for the model: it is cut to MAX_TOOL_ERROR_CHARS.

A call stopped at its CPU budget (budget.py) is the server's fact: it is answered with the
refusal `budget_exceeded` (not `input_validation`: the model's input is not blamed), and the
environment's state is put back as it was before the call (rollback.py), so a stopped
`submit_answer` neither finishes the episode nor spends the answer. Stopped calls count against
their session: the `max_stopped_calls`-th ends it (later requests: 410 `session_over_budget`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from openreward.environments import Environment
from openreward.environments import environment as sdk_environment
from openreward.environments.session import call_session_tool
from openreward.environments.types import (
    GroupScore,
    RunToolError,
    RunToolOutput,
    ScoreGroup,
    ScoreGroupOutput,
)
from openreward.environments.utils import run_user_callable
from pydantic import BaseModel, ValidationError

from contract.vocab import OrsReason, ToolRefusal
from envs.server.budget import BudgetExceeded
from envs.server.context import OrsContext
from envs.server.errors import OrsError, ToolCrashed
from envs.server.metrics import CallStatus
from envs.server.rollback import StateSnapshot
from envs.server.sessions import Session
from envs.server.streaming import CallOutcome, resume, run_and_answer
from envs.server.wire import Request

__all__ = ["call", "score_group"]

log = logging.getLogger(__name__)

UNKNOWN_TOOL_LABEL = "<unknown>"
# A refused tool call's message is for the model: cut it (SDK validation errors repeat the input).
MAX_TOOL_ERROR_CHARS = 2000
# Tool calls with a larger body have their input cut to the tool's fields first (_trim_large_input).
LARGE_INPUT_BYTES = 16 << 10


async def call(ctx: OrsContext, req: Request) -> None:
    """POST /{env}/call: run one tool call (or resume one by task_id)."""
    s = ctx.session(req)
    obj = await req.json_object(ctx.settings.max_body_bytes)
    task_id = obj.get("task_id")
    if task_id is not None:
        await resume(req, s, task_id)
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
    await run_and_answer(req, s, run_call(ctx, s, name, tool_input, large))


async def run_call(
    ctx: OrsContext, s: Session, name: str, tool_input: dict[str, Any], large: bool = False
) -> CallOutcome:
    """Run one tool call; returns (RunToolOutput JSON, error reason or None)."""
    t0 = time.perf_counter()
    tool = name if name in ctx.envs[s.env_name].tool_names else UNKNOWN_TOOL_LABEL
    if large and s.toolset is None and not s.env._episode_finished:
        checked = _trim_large_input(s.env, name, tool_input)
        if isinstance(checked, RunToolOutput):
            ctx.metrics.record_call(
                s.env_name, tool, CallStatus.INPUT_VALIDATION, time.perf_counter() - t0
            )
            return checked.model_dump_json(), CallStatus.INPUT_VALIDATION
        tool_input = checked
    snapshot = StateSnapshot(s.env)
    try:
        if s.toolset is None:
            res = await ctx.budget.run(s.env._call_tool(name, tool_input))
        else:
            res = await ctx.budget.run(call_session_tool(s.env, s.toolset, name, tool_input))
    except BudgetExceeded:
        snapshot.restore()
        ctx.metrics.record_call(
            s.env_name, tool, CallStatus.BUDGET_EXCEEDED, time.perf_counter() - t0
        )
        return await _stopped(ctx, s, tool), ToolRefusal.BUDGET_EXCEEDED
    except Exception as e:
        ctx.metrics.record_call(s.env_name, tool, OrsReason.ENV_ERROR, time.perf_counter() - t0)
        log.warning(
            "%s tool %r raised %s: %s (session %s)", s.env_name, name, type(e).__name__, e, s.sid
        )
        raise ToolCrashed(f"{type(e).__name__}: {e}") from None
    root = res.root
    reason = None if root.ok else (root.reason or CallStatus.INPUT_VALIDATION)
    if reason is not None and len(root.error) > MAX_TOOL_ERROR_CHARS:
        root.error = f"{root.error[:MAX_TOOL_ERROR_CHARS]}... (cut)"
    ctx.metrics.record_call(s.env_name, tool, reason or CallStatus.OK, time.perf_counter() - t0)
    return res.model_dump_json(), reason


async def _stopped(ctx: OrsContext, s: Session, tool: str) -> str:
    """The answer to a call stopped at its budget (the env's state already put back); the
    session's `max_stopped_calls`-th stopped call ends the session."""
    s.stopped_calls += 1
    limit = ctx.settings.max_stopped_calls
    log.warning(
        "%s tool %r used more than its %.3g s of CPU and was stopped (session %s, %d of %d)",
        s.env_name,
        tool,
        ctx.budget.limit_s,
        s.sid,
        s.stopped_calls,
        limit,
    )
    error = (
        f"the server stopped {tool}: it used more than its {ctx.budget.limit_s:g} s of CPU. "
        "This is the server's limit, not a fault of the call; the environment is as it was "
        "before it."
    )
    if s.stopped_calls >= limit:
        await ctx.sessions.remove(s.sid, why=OrsReason.SESSION_OVER_BUDGET)
        error += f" The session had {s.stopped_calls} calls stopped and is closed."
    return orjson.dumps(
        {"ok": False, "error": error, "reason": ToolRefusal.BUDGET_EXCEEDED}
    ).decode()


async def score_group(ctx: OrsContext, req: Request) -> None:
    """POST /{env}/score_group: score a group of candidates (or resume by task_id)."""
    s = ctx.session(req)
    obj = await req.json_object(ctx.settings.max_body_bytes)
    if obj.get("task_id") is not None:
        await resume(req, s, obj["task_id"])
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

    async def score() -> CallOutcome:
        try:
            res = await ctx.budget.run(
                run_user_callable(s.env.score_group, list(payload.candidates))
            )
            scores = [x if isinstance(x, GroupScore) else GroupScore(reward=float(x)) for x in res]
            if len(scores) != len(payload.candidates):
                raise ValueError(
                    f"score_group returned {len(scores)} scores for "
                    f"{len(payload.candidates)} candidates"
                )
        except BudgetExceeded:
            s.stopped_calls += 1
            if s.stopped_calls >= ctx.settings.max_stopped_calls:
                await ctx.sessions.remove(s.sid, why=OrsReason.SESSION_OVER_BUDGET)
            raise ToolCrashed(
                f"the server stopped score_group: it used more than its "
                f"{ctx.budget.limit_s:g} s of CPU"
            ) from None
        except Exception as e:
            raise ToolCrashed(f"{type(e).__name__}: {e}") from None
        return ScoreGroupOutput(scores=scores).model_dump_json(), None

    await run_and_answer(req, s, score())


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
