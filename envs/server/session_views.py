"""What one session shows its client: the prompt, the messages and the task's tools."""

from __future__ import annotations

from openreward.environments.session import list_session_tools
from openreward.environments.types import ImageBlock, Message, TextBlock
from openreward.environments.utils import run_user_callable
from pydantic import TypeAdapter

from contract.vocab import OrsReason
from envs.server.context import OrsContext
from envs.server.errors import OrsError
from envs.server.wire import Request, dumps

__all__ = ["messages", "prompt", "task_tools"]

_BLOCKS = TypeAdapter(list[TextBlock | ImageBlock])
_MESSAGES = TypeAdapter(list[Message])


async def prompt(ctx: OrsContext, req: Request) -> bytes:
    """GET /{env}/prompt: the session's prompt blocks."""
    s = ctx.session(req)
    try:
        blocks = await run_user_callable(s.env.get_prompt)
        return _BLOCKS.dump_json(_BLOCKS.validate_python(list(blocks)))
    except Exception as e:
        raise OrsError(
            500, OrsReason.ENV_ERROR, f"{s.env_name}.get_prompt failed: {type(e).__name__}: {e}"
        ) from None


async def messages(ctx: OrsContext, req: Request) -> bytes:
    """GET /{env}/messages: the session's prompt as chat messages."""
    s = ctx.session(req)
    try:
        msgs = await run_user_callable(s.env.get_messages)
        return _MESSAGES.dump_json(_MESSAGES.validate_python(list(msgs)))
    except Exception as e:
        raise OrsError(
            500, OrsReason.ENV_ERROR, f"{s.env_name}.get_messages failed: {type(e).__name__}: {e}"
        ) from None


async def task_tools(ctx: OrsContext, req: Request) -> bytes:
    """GET /{env}/task_tools: the tools of the session's task (and toolset)."""
    s = ctx.session(req)
    served = ctx.envs[s.env_name]
    if s.toolset is None and served.static_task_tools:
        return served.tools_json
    try:
        listed = await list_session_tools(s.env, s.toolset)
    except Exception as e:
        raise OrsError(
            500, OrsReason.ENV_ERROR, f"{s.env_name} task tools failed: {type(e).__name__}: {e}"
        ) from None
    return dumps(listed.model_dump())
