"""ORS server-sent events as the env server streams them: `task_id`, `chunk`*, `end` (or
`error`), read incrementally from a `/call` stream or in one piece (e.g. `/create_session`)."""

from __future__ import annotations

from typing import Any

import orjson

from bridge.env_session import one_line
from bridge.errors import EnvFailure


class SSEState:
    """Incremental SSE parser for a `/call` stream: task_id, chunk*, end (or error)."""

    def __init__(self, task_id: str | None) -> None:
        self.task_id = task_id
        self._buf = b""
        self._event: str | None = None
        self._data: list[str] = []
        self._chunks: list[str] = []

    def feed(self, data: bytes) -> Any:
        """Consume bytes; returns the decoded result once the `end` event arrived, else None."""
        self._buf += data
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                return None
            line = self._buf[:i].decode("utf-8", "replace").rstrip("\r")
            self._buf = self._buf[i + 1 :]
            if not line:
                if self._event is not None:
                    text = "\n".join(self._data)
                    if self._event == "task_id":
                        self.task_id = text.strip()
                    elif self._event == "chunk":
                        self._chunks.append(text)
                    elif self._event == "end":
                        self._chunks.append(text)
                        return orjson.loads("".join(self._chunks))
                    elif self._event == "error":
                        raise EnvFailure(f"tool call failed in the environment: {one_line(text)}")
                self._event, self._data = None, []
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                self._event = value
            elif key == "data":
                self._data.append(value)


def sse_result(text: str) -> Any:
    """The JSON `end` payload (or task_id) of an SSE body read in one piece (e.g.
    /create_session)."""
    task_id, chunks = None, []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event, data = None, []
        for line in block.split("\n"):
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                event = value
            elif key == "data":
                data.append(value)
        joined = "\n".join(data)
        if event == "task_id":
            task_id = joined.strip()
        elif event in ("chunk", "end"):
            chunks.append(joined)
        elif event == "error":
            raise EnvFailure(f"server error event: {one_line(joined)}")
    body = "".join(chunks).strip()
    if body:
        try:
            res = orjson.loads(body)
            if isinstance(res, dict):
                res.setdefault("task_id", task_id)
                return res
        except orjson.JSONDecodeError:
            pass
    return {"task_id": task_id}
