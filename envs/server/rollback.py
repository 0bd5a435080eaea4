"""An environment's state as it was before a call, put back when the server stops the call.

A call stopped at its CPU budget is the server's fact, never the model's, so it must leave no
trace: a stopped `submit_answer` neither finishes the episode nor spends a submission. The
snapshot keeps the instance's top-level attributes and the contents of its top-level lists,
dicts and sets (what tools change: counters, flags, histories); objects deeper down are taken to
be read by tools, not changed. The SDK's own machinery (per-tool locks, the exclusive gate, its
toolset instances) is left as it is. A snapshot costs a dict copy and the containers' copies: a
few microseconds per call.
"""

from __future__ import annotations

from typing import Any

__all__ = ["StateSnapshot"]

# The SDK's per-instance machinery, made lazily and shared with concurrent calls: never put back.
_SDK_MACHINERY = frozenset({"_exclusive_gate", "_tool_locks", "_toolset_instances"})


class StateSnapshot:
    """The state of one environment instance at one moment."""

    __slots__ = ("_attrs", "_contents", "_env")

    def __init__(self, env: Any) -> None:
        self._env = env
        attrs = {k: v for k, v in vars(env).items() if k not in _SDK_MACHINERY}
        self._attrs = attrs
        self._contents: dict[str, Any] = {}
        for key, value in attrs.items():
            kind = type(value)
            if kind is list or kind is dict or kind is set:
                self._contents[key] = value.copy()

    def restore(self) -> None:
        """Put the attributes back, and the contents of the lists, dicts and sets they held."""
        state = vars(self._env)
        for key in [k for k in state if k not in self._attrs and k not in _SDK_MACHINERY]:
            del state[key]
        for key, value in self._attrs.items():
            state[key] = value
            before = self._contents.get(key)
            if before is None:
                continue
            if type(value) is list:
                value[:] = before
            else:
                value.clear()
                value.update(before)
