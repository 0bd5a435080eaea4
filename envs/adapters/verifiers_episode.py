"""One verifiers episode played from outside, one assistant message at a time.

`Episode` runs the loop of verifiers' own `MultiTurnEnv.rollout()` with the environment's hooks
(init_state, setup_state, the stop conditions, get_prompt_messages -> env_response,
add_model_response, cleanup, rubric.score_rollout) in the same order, except that each assistant
message comes from the ORS tool call being served instead of a model client. Everything runs in
the tool call's own coroutine, so the env server's per-call time budget bounds it.

A `vf.Error` raised by the environment is recorded in the state as `rollout()` records it (the
`has_error` stop condition then ends the episode); any other exception propagates, as it does out
of `rollout()`. Imports verifiers: load this module only for a verifiers environment.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import verifiers as vf
from verifiers.legacy.types import Response, ResponseMessage
from verifiers.legacy.utils.message_utils import maybe_normalize_messages

__all__ = ["Episode", "ExternalModel", "message_text"]


def message_text(content: Any) -> str:
    """The text of a verifiers message content (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            p.get("text", "") if isinstance(p, dict) else getattr(p, "text", "") for p in content
        ]
        return "\n".join(str(p) for p in parts if p)
    return "" if content is None else str(content)


def as_response(assistant: dict[str, Any]) -> Response:
    """An assistant message (`content`, `tool_calls` of {id, name, arguments as a JSON string})
    as the `vf.Response` a model client would have returned."""
    calls = assistant.get("tool_calls") or None
    return Response(
        id=f"ors-{uuid.uuid4().hex[:12]}",
        created=int(time.time()),
        model="ors",
        message=ResponseMessage(
            content=assistant.get("content"),
            tool_calls=[vf.ToolCall(**c) for c in calls] if calls else None,
            finish_reason="tool_calls" if calls else "stop",
            is_truncated=False,
        ),
    )


class ExternalModel(vf.Client):
    """The model client a verifiers state requires; never asked for a completion (the assistant
    messages come from the ORS calls)."""

    def __init__(self) -> None:
        super().__init__(object())

    def setup_client(self, config: Any) -> Any:
        raise NotImplementedError("the model is driven through the ORS tool calls")

    async def to_native_tool(self, tool: Any) -> Any:
        return tool

    async def to_native_prompt(self, messages: Any) -> tuple[Any, dict[str, Any]]:
        return messages, {}

    async def get_native_response(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the model is driven through the ORS tool calls")

    async def raise_from_native_response(self, response: Any) -> None:
        return None

    async def from_native_response(self, response: Any) -> Any:
        return response

    async def close(self) -> None:
        return None


def _dump(messages: list[Any]) -> list[dict[str, Any]]:
    return [
        m.model_dump(exclude_none=True) if hasattr(m, "model_dump") else dict(m) for m in messages
    ]


class Episode:
    """One rollout of `env` on dataset row `row`, advanced by `step(assistant message)`."""

    def __init__(self, env: Any, row: dict[str, Any]) -> None:
        self.env, self.row = env, row
        self.state: Any = None
        self.prompt: list[Any] = []
        """The messages the model sees now (what the next assistant message answers)."""
        self.done = False
        self.scored = False

    async def start(self) -> None:
        """init_state and setup_state, then the loop up to the first model turn."""
        env = self.env
        state = await env.init_state(self.row, client=ExternalModel(), model="ors")
        state["timing"].generation.start = time.time()
        try:
            state = (await env.setup_state(state)) or state
        except vf.Error as e:
            state["error"] = e
        self.state = state
        await self._advance()

    async def step(self, assistant: dict[str, Any]) -> list[dict[str, Any]]:
        """Hand the environment one assistant message; returns its reply messages (the
        final_env_response when it ends the episode with one)."""
        if self.state is None:
            await self.start()
        if self.done:
            return []
        before = len(self.prompt) + 1
        try:
            await self.env.add_model_response(self.state, self.prompt, as_response(assistant))
        except vf.Error as e:
            self.state["error"] = e
        return await self._advance(before)

    async def _advance(self, before: int = 0) -> list[dict[str, Any]]:
        """One pass of rollout()'s loop: the stop conditions, then env_response (the next
        prompt); returns the messages added after the assistant message."""
        env, state = self.env, self.state
        if await env.is_completed(state):
            self.done = True
            return []
        try:
            messages = await env.get_prompt_messages(state)
            messages = maybe_normalize_messages(messages, field_name="prompt_messages")
        except vf.Error as e:
            state["error"] = e
            self.done = await env.is_completed(state)
            return []
        final = state.get("final_env_response")
        if final is not None:
            self.done = await env.is_completed(state)
            return _dump(maybe_normalize_messages(final, field_name="final_env_response"))
        self.prompt = list(messages)
        return _dump(self.prompt[before:]) if before else []

    async def finish(self) -> tuple[float, dict[str, float], str]:
        """Clean up and score the episode with the environment's rubric, once:
        (reward, metrics, stop condition)."""
        env, state = self.env, self.state
        if not self.scored:
            self.scored = True
            await env.cleanup(state)  # MultiTurnEnv's first handler renders the completion
            if env.score_rollouts:
                await env.rubric.score_rollout(state)
            else:
                await env.rubric.dummy_score_rollout(state)
            await env.rubric.cleanup(state)
        metrics = {k: float(v) for k, v in (state.get("metrics") or {}).items()}
        return float(state.get("reward") or 0.0), metrics, str(state.get("stop_condition") or "")
