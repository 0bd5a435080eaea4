"""A session on a hosted OpenReward environment (`Owner/Name`) through the openreward SDK, one
SDK client per event loop."""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import Any

from bridge.env_session import RetryPolicy, ToolResult, one_line, refusal_kind, secret_values
from bridge.errors import EnvFailure
from contract.task import TaskMeta, blocks_to_text


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
        secrets = secret_values(self.task.secrets) if self.task.secrets else None
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
                f"cannot open a session on {self.task.env}: {type(e).__name__}: {one_line(str(e))}"
            ) from None
        self.sid = self._session.sid

    async def _guard(self, what: str, coro: Any, timeout: float) -> Any:
        try:
            return await asyncio.wait_for(coro, timeout)
        except Exception as e:
            raise EnvFailure(
                f"{what} on {self.task.env}: {type(e).__name__}: {one_line(str(e))}"
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
                error_kind=refusal_kind(str(getattr(e, "reason", ""))),
            )
        except Exception as e:
            raise EnvFailure(
                f"tool call {name!r} on {self.task.env}: {type(e).__name__}: {one_line(str(e))}"
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


async def close_sdk_client() -> None:
    """Close this event loop's SDK client (if any)."""
    sdk = _SDK_CLIENTS.pop(asyncio.get_running_loop(), None)
    if sdk is not None:
        try:
            await sdk.environments.aclose()
        except Exception:
            pass
