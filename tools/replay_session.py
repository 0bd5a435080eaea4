"""A fresh session of a stored rollout's task for `python -m tools.replay`: the env class
in-process, or the bridge's own session client on an env server.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from bridge.env_session import ToolResult
from contract.task import TaskMeta, blocks_to_text
from contract.vocab import ToolErrorKind
from tools.errors import ReplayError


class ReplaySession(Protocol):
    async def open(self) -> None: ...
    async def tools(self) -> list[dict[str, Any]]: ...
    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult: ...
    async def close(self) -> None: ...


class InProcessSession:
    """The env class instantiated here, called through the SDK's tool dispatch; results become
    the text the bridge would have shown the model (bridge/env_client.py does the same)."""

    def __init__(self, task: TaskMeta) -> None:
        from envs.errors import UnknownEnvironment
        from envs.registry import load_env_class

        try:
            self.cls = load_env_class(task.env)
        except UnknownEnvironment as e:
            raise ReplayError(f"{e}; replay a hosted env with --url") from None
        self.task = task
        self.env: Any = None

    async def open(self) -> None:
        from openreward.environments.utils import run_user_callable

        spec = self.task.task_spec
        if self.task.index is not None:
            spec = await run_user_callable(self.cls.get_task, self.task.split, self.task.index)
        self.env = await run_user_callable(self.cls, task_spec=spec, secrets={})
        await run_user_callable(self.env.setup)

    async def tools(self) -> list[dict[str, Any]]:
        from openreward.environments.session import list_session_tools

        return [t.model_dump() for t in (await list_session_tools(self.env, None)).tools]

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        res = (await self.env._call_tool(name, arguments)).root
        if not res.ok:
            return ToolResult(
                f"Error: {res.error or res.reason}", None, False, ToolErrorKind.ENV_REJECTED
            )
        out = res.output
        return ToolResult(blocks_to_text(out.blocks), out.reward, out.finished, None, out.metadata)

    async def close(self) -> None:
        from openreward.environments.utils import run_user_callable

        if self.env is not None:
            await run_user_callable(self.env.teardown)


def task_of(rollout: dict[str, Any]) -> TaskMeta:
    """The task a stored rollout ran: split + index when known, else its task spec."""
    env = rollout.get("env") or ""
    if not env:
        raise ReplayError(f"rollout {rollout.get('event_id')} names no environment")
    split, index = rollout.get("split"), rollout.get("task_index")
    try:
        if index is not None and split is not None:
            return TaskMeta(env=env, split=split, index=index)
        return TaskMeta(env=env, task_spec=rollout.get("task_spec"))
    except ValueError:
        raise ReplayError(
            f"rollout {rollout.get('event_id')} has neither split+index nor a task spec"
        ) from None


def open_replay_session(task: TaskMeta, url: str | None) -> ReplaySession:
    """In-process without `url`; else the bridge's own client on the env server at `url`."""
    if url is None:
        return InProcessSession(task)
    from bridge.env_client import open_session

    return open_session(task, [url.rstrip("/")], uuid.uuid4().hex)
