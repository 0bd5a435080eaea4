"""An ORS episode session as the episode loop sees it: the `EnvSession` protocol, the result of
one tool call, the retry policy both implementations follow, and server pinning.

Implementations, one per module: `bridge.env_local` (our env servers, lean HTTP + SSE) and
`bridge.env_hosted` (hosted OpenReward environments through the SDK); `bridge.env_client` picks
one for a task.

A session lives on exactly one server: with several env-server URLs, `pick_server` pins it
by a stable hash of the session key, and every call of that session goes there.
"""

from __future__ import annotations

import os
import random
import zlib
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.errors import EnvFailure
from contract.vocab import ToolErrorKind, ToolRefusal


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


def one_line(text: str, limit: int = 300) -> str:
    """`text` on one line, at most `limit` characters (for error messages)."""
    return " ".join(str(text).split())[:limit]


def secret_values(values: dict[str, str | None]) -> dict[str, str]:
    """A task's secrets with their values; a None value is read from `$NAME` (upper-cased)."""
    out = {}
    for name, value in values.items():
        v = value if value is not None else os.environ.get(name.upper())
        if v is None:
            raise EnvFailure(f"secret {name!r} has no value and ${name.upper()} is not set")
        out[name] = v
    return out


def refusal_kind(reason: str) -> ToolErrorKind:
    """The tool-error kind an ORS refusal's `reason` counts as (an unknown one: env_rejected)."""
    try:
        return ToolRefusal(reason).error_kind
    except ValueError:
        return ToolErrorKind.ENV_REJECTED
