"""Where prepare_tasks.py reads tasks from: a local env class in-process, or a hosted OpenReward
env.

Both sources answer the same four questions: which splits exist, how many tasks a split
has, and for one (split, index) the prompt, tools and ground truth the model will see.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from contract.task import blocks_to_text, ors_tool_to_openai, task_label
from tools.errors import TaskSourceError

OPENREWARD_API_KEY_ENV = "OPENREWARD_API_KEY"
MAX_TASK_FILE_BYTES = 1 << 30  # a whole task file read into memory (eval) stays below this


@dataclass(frozen=True)
class RenderedTask:
    """What one task looks like to the model before its first turn."""

    prompt: list[dict[str, str]]  # chat messages
    tools: list[dict[str, Any]]  # OpenAI-style function schemas
    label: str | None  # ground truth, for logging only


class TaskSource(Protocol):
    name: str
    concurrent: bool  # render() waits on the network: run many at once

    async def splits(self) -> list[str]: ...
    async def count(self, split: str) -> int: ...
    async def render(self, split: str, index: int) -> RenderedTask: ...
    async def aclose(self) -> None: ...


async def _resolve(value: Any) -> Any:
    """Env hooks may be sync or async; await only what needs it."""
    return await value if inspect.isawaitable(value) else value


def _split_name(split: Any) -> str:
    return split if isinstance(split, str) else getattr(split, "name", None) or split["name"]


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return " ".join(text.split())


def prompt_messages(blocks: Sequence[Any]) -> list[dict[str, str]]:
    """The env's prompt blocks as the chat message list slime reads (one user message)."""
    return [{"role": "user", "content": blocks_to_text(list(blocks))}]


def openai_tools(specs: Sequence[Any], skip: str | None = None) -> list[dict[str, Any]]:
    """ORS tool specs (SDK pydantic models or client dataclasses) as OpenAI function schemas."""
    return [
        ors_tool_to_openai(
            {"name": t.name, "description": t.description, "input_schema": t.input_schema}
        )
        for t in specs
        if t.name != skip
    ]


def _spec_dict(spec: Any) -> dict[str, Any]:
    if hasattr(spec, "model_dump"):
        return spec.model_dump()
    return dict(spec)


class LocalTaskSource:
    """A local environment class (envs.registry), read in-process: no server needed."""

    concurrent = False

    def __init__(
        self, name: str, options: dict[str, Any], secrets: dict[str, str] | None = None
    ) -> None:
        from envs.registry import configure_env, load_env_class

        self.name = name
        self._secrets = dict(secrets or {})
        try:
            self.cls = load_env_class(name)
        except KeyError as e:
            raise TaskSourceError(str(e)) from None
        except Exception as e:  # import-time failure inside the env module
            raise TaskSourceError(f"environment {name!r} failed to load: {_one_line(e)}") from None
        try:
            configure_env(self.cls, options)
        except Exception as e:
            raise TaskSourceError(f"environment {name!r}: bad options: {_one_line(e)}") from None
        self._specs: dict[str, Sequence[Any] | None] = {}
        self._class_tools: list[dict[str, Any]] | None = None
        self._terminal: str | None = None
        self._has_task_tools = _overrides(self.cls, "list_task_tools")

    @contextlib.contextmanager
    def _env_errors(self, what: str):
        try:
            yield
        except TaskSourceError:
            raise
        except Exception as e:
            raise TaskSourceError(f"environment {self.name!r}: {what}: {_one_line(e)}") from None

    async def splits(self) -> list[str]:
        with self._env_errors("cannot list splits"):
            return [_split_name(s) for s in await _resolve(self.cls.list_splits())]

    async def _task_specs(self, split: str) -> Sequence[Any] | None:
        """All task specs of a split, or None for an env that only supports indexing."""
        if split not in self._specs:
            with self._env_errors(f"cannot list tasks of split {split!r}"):
                try:
                    self._specs[split] = list(await _resolve(self.cls.list_tasks(split)))
                except NotImplementedError:
                    self._specs[split] = None
        return self._specs[split]

    async def count(self, split: str) -> int:
        specs = await self._task_specs(split)
        if specs is not None:
            return len(specs)
        with self._env_errors(f"cannot count tasks of split {split!r}"):
            return int(await _resolve(self.cls.num_tasks(split)))

    async def _task_spec(self, split: str, index: int) -> dict[str, Any]:
        specs = await self._task_specs(split)
        if specs is not None:
            return _spec_dict(specs[index])
        with self._env_errors(f"cannot get task {split}[{index}]"):
            return _spec_dict(await _resolve(self.cls.get_task(split, index)))

    def _tools_of_class(self) -> list[dict[str, Any]]:
        if self._class_tools is None:
            with self._env_errors("cannot list tools"):
                listed = self.cls.list_tools()
            self._terminal = listed.terminal_tool.name if listed.terminal_tool else None
            self._class_tools = openai_tools(listed.tools)
        return self._class_tools

    async def render(self, split: str, index: int) -> RenderedTask:
        spec = await self._task_spec(split, index)
        tools = self._tools_of_class()
        with self._env_errors(f"task {split}[{index}]"):
            env = self.cls(task_spec=spec, secrets=self._secrets)
            blocks = await _resolve(env.get_prompt())
            if self._has_task_tools:
                extra = (await _resolve(env.list_task_tools())).tools
                tools = tools + openai_tools(extra, skip=self._terminal)
            label = task_label(spec, self.cls)
        return RenderedTask(prompt=prompt_messages(blocks), tools=tools, label=label)

    async def aclose(self) -> None:
        return None


def _overrides(cls: type, method: str) -> bool:
    from openreward.environments import Environment

    return getattr(cls, method, None) is not getattr(Environment, method, None)


class HostedTaskSource:
    """A hosted OpenReward environment `Owner/Name`, read through the `openreward` SDK.

    The SDK decides where the name resolves (OPENREWARD_URL, or OPENREWARD_SESSION_URL for
    the env server). Prompts and per-task tools need a session, so one is opened per task,
    at most `concurrency` at a time.
    """

    concurrent = True

    def __init__(self, name: str, secrets: dict[str, str], concurrency: int = 8) -> None:
        api_key = os.environ.get(OPENREWARD_API_KEY_ENV)
        if not api_key:
            raise TaskSourceError(
                f"hosted environment {name!r} needs {OPENREWARD_API_KEY_ENV} set in the environment"
            )
        from openreward import AsyncOpenReward
        from openreward.api.sandboxes.secrets import WELL_KNOWN_SECRETS

        for key in secrets:  # the SDK only forwards secrets whose destination it knows
            if key not in WELL_KNOWN_SECRETS:
                raise TaskSourceError(
                    f"hosted environment {name!r}: the openreward SDK does not forward secret "
                    f"{key!r} "
                    f"(known: openai_api_key, anthropic_api_key, hf_token, ...)"
                )
        self.name = name
        self._client = AsyncOpenReward(api_key=api_key)
        self.url = self._client.session_base_url
        self._env = self._client.environments.get(name)
        self._secrets = secrets
        self._specs: dict[str, list[dict[str, Any]] | None] = {}
        self._sem = asyncio.Semaphore(max(1, concurrency))

    @contextlib.asynccontextmanager
    async def _remote_errors(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except TaskSourceError:
            raise
        except Exception as e:
            raise TaskSourceError(
                f"hosted environment {self.name!r} at {self.url}: {what}: {_describe_remote(e)}"
            ) from None

    async def splits(self) -> list[str]:
        async with self._remote_errors("cannot list splits"):
            return [_split_name(s) for s in await self._env.list_splits()]

    async def _task_specs(self, split: str) -> list[dict[str, Any]] | None:
        import aiohttp

        if split not in self._specs:
            async with self._remote_errors(f"cannot list tasks of split {split!r}"):
                try:
                    tasks = await self._env.list_tasks(split)
                    self._specs[split] = [dict(t.task_spec) for t in tasks]
                except aiohttp.ClientResponseError as e:
                    # 400 on a split that exists: the env only supports indexing (num_tasks +
                    # get_task).
                    if e.status != 400:
                        raise
                    self._specs[split] = None
        return self._specs[split]

    async def count(self, split: str) -> int:
        specs = await self._task_specs(split)
        if specs is not None:
            return len(specs)
        async with self._remote_errors(f"cannot count tasks of split {split!r}"):
            return int(await self._env.num_tasks(split))

    async def render(self, split: str, index: int) -> RenderedTask:
        specs = await self._task_specs(split)
        async with self._sem, self._remote_errors(f"task {split}[{index}]"):
            spec = (
                specs[index]
                if specs is not None
                else dict((await self._env.get_task(split, index)).task_spec)
            )
            async with self._env.session(
                split=split, index=index, secrets=self._secrets or None
            ) as s:
                blocks = await s.get_prompt()
                tools = await s.list_tools()
        return RenderedTask(
            prompt=prompt_messages(blocks),
            tools=openai_tools(tools),
            label=task_label(spec),
        )

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.environments.aclose()


def _describe_remote(err: BaseException) -> str:
    """One line for an SDK / aiohttp failure (unreachable server, HTTP status, bad key)."""
    import aiohttp

    if isinstance(err, aiohttp.ClientResponseError):
        return f"HTTP {err.status}: {_one_line(Exception(err.message))}"
    if isinstance(err, aiohttp.ClientConnectionError):
        return f"server unreachable ({_one_line(err)})"
    errors = getattr(err, "errors", None)  # the SDK's MaxRetriesError keeps the attempts
    if errors:
        return f"{_describe_remote(errors[-1])}, {len(errors)} attempts"
    if type(err).__name__ == "AuthenticationError":
        return f"authentication failed: check {OPENREWARD_API_KEY_ENV}"
    return f"{type(err).__name__}: {_one_line(err)}"


def resolve_secrets(env_name: str, secrets: dict[str, str | None]) -> dict[str, str]:
    """Config secrets with null values read from the upper-cased name in the environment."""
    out: dict[str, str] = {}
    for key, value in secrets.items():
        if value is None:
            value = os.environ.get(key.upper())
            if not value:
                raise TaskSourceError(
                    f"environment {env_name!r} needs secret {key!r}: set {key.upper()} in the "
                    "environment"
                )
        out[key] = value
    return out


def open_source(
    env_name: str, options: dict[str, Any], secrets: dict[str, str | None], concurrency: int = 8
) -> TaskSource:
    """The task source for an `environments:` entry: hosted for `Owner/Name`, else local."""
    from contract.config import is_hosted

    resolved = resolve_secrets(env_name, secrets)
    if is_hosted(env_name):
        if options:
            raise TaskSourceError(
                f"environment {env_name!r}: 'options' apply to local environments only"
            )
        return HostedTaskSource(env_name, resolved, concurrency)
    return LocalTaskSource(env_name, options, resolved)


def read_task_rows(path: Path, limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    """The rows of a prepare_tasks.py JSONL file with their line numbers, the first `limit` of
    them (all when None: then the file must be under MAX_TASK_FILE_BYTES). Every problem is a
    TaskSourceError naming the file and line; a file without rows is one too."""
    rows: list[tuple[int, dict[str, Any]]] = []
    try:
        if limit is None and path.stat().st_size > MAX_TASK_FILE_BYTES:
            raise TaskSourceError(f"{path}: task file larger than {MAX_TASK_FILE_BYTES >> 20} MiB")
        with path.open("rb") as f:
            for lineno, line in enumerate(f, 1):
                if limit is not None and len(rows) >= limit:
                    break
                if not line.strip():
                    continue
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    raise TaskSourceError(f"{path}:{lineno}: not JSON: {e}") from None
                if not isinstance(row, dict) or not isinstance(row.get("metadata"), dict):
                    raise TaskSourceError(
                        f"{path}:{lineno}: expected a prepare_tasks.py row with a metadata object"
                    )
                rows.append((lineno, row))
    except OSError as e:
        raise TaskSourceError(f"{path}: cannot read task file: {e.strerror or e}") from None
    if not rows:
        raise TaskSourceError(f"{path}: no task rows")
    return rows
