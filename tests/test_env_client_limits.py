"""A tool call too big for the env server is the model's doing: a tool error it sees, never an
env failure that ends (and drops) the episode. Against the real env server on loopback."""

from __future__ import annotations

import pytest

import bridge.env_local as env_local
from bridge.env_client import open_session
from bridge.http11 import close_loop_client
from contract.task import TaskMeta
from contract.vocab import ToolErrorKind

BIG = "1+" * (600 * 1024) + "1"  # ~1.2 MB of arguments


@pytest.fixture(autouse=True)
async def _close_http():
    yield
    await close_loop_client()


async def _session(url: str):
    task = TaskMeta(env="gsm8k", split="train", index=0)
    s = open_session(task, [url], "limits")
    await s.open()
    return s


async def test_oversized_arguments_are_refused_before_sending(server_url) -> None:
    s = await _session(server_url)
    try:
        res = await s.call("calculator", {"expression": BIG})
        assert res.error_kind == ToolErrorKind.TOO_LARGE and not res.finished and res.reward is None
        assert "at most 1048576 bytes" in res.text
        ok = await s.call("calculator", {"expression": "6*7"})  # the session goes on
        assert ok.error_kind is None and "42" in ok.text
    finally:
        await s.close()


async def test_server_413_is_a_tool_error(server_url, monkeypatch) -> None:
    monkeypatch.setattr(env_local, "MAX_CALL_BODY", 8 << 20)  # let it reach the server
    s = await _session(server_url)
    try:
        res = await s.call("calculator", {"expression": BIG})
        assert res.error_kind == ToolErrorKind.TOO_LARGE and res.text.startswith("Error: ")
        ok = await s.call("calculator", {"expression": "2+3"})
        assert ok.error_kind is None and "5" in ok.text
    finally:
        await s.close()
