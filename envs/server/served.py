"""Environment classes checked the way the SDK server checks them, with their static answers
precomputed: splits and tools at startup, each split's task list as JSON on first use (the SDK
caches a class's task list too, so it does not change while the server runs)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from openreward.environments import Environment
from openreward.environments.types import Split

__all__ = ["ServedEnv", "TaskListing", "named_envs", "serve_env"]


class TaskListing:
    """A split's task list as JSON: each task's bytes once, joined per answer (a range costs a
    join of its tasks, the whole list one cached body)."""

    __slots__ = ("_all", "tasks")

    def __init__(self, tasks: Sequence[Any], encode: Callable[[Any], bytes]) -> None:
        self.tasks = [encode(t) for t in tasks]
        self._all: bytes | None = None

    def __len__(self) -> int:
        return len(self.tasks)

    def array(self, start: int = 0, stop: int | None = None) -> bytes:
        """The JSON array of tasks[start:stop] (indices already resolved)."""
        if start == 0 and (stop is None or stop >= len(self.tasks)):
            if self._all is None:
                self._all = b"[" + b",".join(self.tasks) + b"]"
            return self._all
        return b"[" + b",".join(self.tasks[start:stop]) + b"]"

    def task(self, index: int) -> bytes:
        """One task's JSON (IndexError outside the list, as a list index)."""
        return self.tasks[index]


@dataclass(frozen=True)
class ServedEnv:
    """An environment class with everything static about it computed once."""

    name: str
    cls: type[Environment]
    split_names: frozenset[str]
    tool_names: frozenset[str]
    splits_json: bytes
    tools_json: bytes
    # True when /task_tools equals /tools for every session (no per-task tools).
    static_task_tools: bool
    # split -> its task list as JSON, made on the first listing request (catalog.py).
    task_lists: dict[str, TaskListing] = field(default_factory=dict, compare=False)


def _split_dict(split: str | Split) -> dict[str, str]:
    if isinstance(split, Split):
        return split.model_dump()
    kind = split if split in ("train", "validation", "test") else "validation"
    return {"name": split, "type": kind}


def serve_env(name: str, cls: type[Environment]) -> ServedEnv:
    """Check an Environment class the way the SDK server does and precompute its static answers."""
    if not (isinstance(cls, type) and issubclass(cls, Environment)):
        raise ValueError(f"environment {name!r}: {cls!r} is not an openreward Environment subclass")
    listed = cls.list_tools()
    if not listed.tools and listed.terminal_tool is None:
        raise ValueError(f"environment {name!r} has no @tool methods")
    splits = [_split_dict(s) for s in cls._list_splits_cached()]
    if not splits:
        raise ValueError(f"environment {name!r} defines no splits")
    if cls.get_prompt is Environment.get_prompt and cls.get_messages is Environment.get_messages:
        raise ValueError(f"environment {name!r} implements neither get_prompt() nor get_messages()")
    tool_names = {t.name for t in listed.tools}
    if listed.terminal_tool is not None:
        tool_names.add(listed.terminal_tool.name)
    return ServedEnv(
        name=name,
        cls=cls,
        split_names=frozenset(s["name"] for s in splits),
        tool_names=frozenset(tool_names),
        splits_json=orjson.dumps(splits),
        tools_json=orjson.dumps(listed.model_dump()),
        static_task_tools=cls.list_task_tools is Environment.list_task_tools,
    )


def named_envs(
    env_classes: Mapping[str, type[Environment]] | Sequence[type[Environment]],
) -> dict[str, ServedEnv]:
    items = (
        env_classes.items()
        if isinstance(env_classes, Mapping)
        else [(c.name(), c) for c in env_classes]
    )
    served: dict[str, ServedEnv] = {}
    for name, cls in items:
        key = name.lower()
        if key in served:
            raise ValueError(f"environment {key!r} is listed twice")
        served[key] = serve_env(key, cls)
    return served
