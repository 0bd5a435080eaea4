"""Network faults between the bridge and the REAL env server: a tool call whose stream breaks after
the server acknowledged it (resumed by task_id, never run twice), one that breaks before (not
resent), and a full server (503, retried). Faults come from a TCP proxy on loopback; the env server
is real."""

from __future__ import annotations

import asyncio
import re
import sys
import time

import httpx
import pytest
from conftest import free_port, run_process
from generate_helpers import _close_bridge_clients, call, make_args, make_sample, run, turn  # noqa: F401
from sglang_stub import SGLangStub


class FaultProxy:
    """Forwards TCP to the env server; the first `/call` response is cut once, per `mode`:
    "after_task_id" (the client got the task_id event) or "before_response" (nothing came back)."""

    def __init__(self, upstream_port: int, mode: str) -> None:
        self.upstream_port = upstream_port
        self.mode = mode
        self.cut_done = False
        self.calls_seen = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        armed = asyncio.Event()

        async def client_to_upstream() -> None:
            try:
                while data := await cr.read(65536):
                    if b"/call HTTP/1.1" in data:
                        self.calls_seen += 1
                        if not self.cut_done and b'"task_id"' not in data:
                            armed.set()
                            if self.mode == "before_response":
                                self.cut_done = True
                                uw.write(data)
                                await asyncio.sleep(
                                    0.3
                                )  # let the server run the tool, then drop the line
                                cw.close()
                                uw.close()
                                return
                    uw.write(data)
            except (ConnectionError, OSError):
                pass
            finally:
                uw.close()

        async def upstream_to_client() -> None:
            buf = b""
            try:
                while data := await ur.read(65536):
                    if armed.is_set() and self.mode == "before_response":
                        continue  # the answer to the cut call never reaches the client
                    if armed.is_set() and not self.cut_done and self.mode == "after_task_id":
                        buf += data
                        i = buf.find(b"event: task_id")
                        j = (
                            -1
                            if i < 0
                            else min(
                                (
                                    k
                                    for k in (buf.find(b"\n\n", i), buf.find(b"\r\n\r\n", i))
                                    if k >= 0
                                ),
                                default=-1,
                            )
                        )
                        if j >= 0:
                            self.cut_done = True
                            cw.write(buf[: j + 2])
                            await cw.drain()
                            cw.close()
                            return
                        continue
                    cw.write(data)
            except (ConnectionError, OSError):
                pass
            finally:
                cw.close()

        try:
            await asyncio.gather(client_to_upstream(), upstream_to_client())
        except asyncio.CancelledError:  # test over: the loop is closing
            cw.close()
            uw.close()


def _tool_calls(url: str, tool: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(
        float(m.group(1))
        for m in re.finditer(r"^ors_tool_calls_total\{[^}]*" + tool + r"[^}]*\} (\S+)", text, re.M)
    )


@pytest.fixture()
def gsm8k_server(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "envs.server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--envs",
        "gsm8k",
        "--db",
        str(tmp_path / "t.db"),
        "--max-sessions",
        "1",
    ]
    with run_process(cmd, f"{url}/health"):
        yield port, url


def _label(index: int) -> str:
    from envs.gsm8k import GSM8K

    return GSM8K.load_split("train")[index]["label"]


async def test_call_stream_broken_after_task_id_is_resumed_not_rerun(
    qwen3_tokenizer, gsm8k_server
) -> None:
    port, direct = gsm8k_server
    proxy = FaultProxy(port, "after_task_id")
    url = await proxy.start()
    tok = qwen3_tokenizer
    script = [turn(tok, call("submit_answer", {"answer": _label(0)}) + "<|im_end|>")]
    try:
        with SGLangStub(script=script, tokenizer=tok) as stub:
            s = await run(make_args(stub), make_sample(url, "gsm8k", "resume-1"))
    finally:
        await proxy.stop()
    assert proxy.cut_done and proxy.calls_seen == 2  # the call, then its resume by task_id
    assert s.status.value == "completed" and s.reward == 1.0, s.metadata.get("failure_message")
    assert _tool_calls(direct, "submit_answer") == 1  # the tool ran exactly once


async def test_call_lost_before_acknowledgement_is_not_resent(
    qwen3_tokenizer, gsm8k_server, monkeypatch
) -> None:
    import bridge.play

    monkeypatch.setattr(bridge.play, "EPISODE_ATTEMPTS", 1)  # this episode alone, no replay
    monkeypatch.setenv(bridge.play.REPLAY_WINDOW_ENV, "0")
    port, direct = gsm8k_server
    proxy = FaultProxy(port, "before_response")
    url = await proxy.start()
    tok = qwen3_tokenizer
    script = [turn(tok, call("submit_answer", {"answer": _label(0)}) + "<|im_end|>")]
    try:
        with SGLangStub(script=script, tokenizer=tok) as stub:
            s = await run(make_args(stub), make_sample(url, "gsm8k", "lost-1"))
    finally:
        await proxy.stop()
    assert proxy.calls_seen == 1  # never sent twice
    assert (
        s.status.value == "failed" and s.remove_sample and s.reward == 0.0 and sum(s.loss_mask) == 0
    )
    assert "lost before the server acknowledged" in s.metadata["failure_message"]
    assert _tool_calls(direct, "submit_answer") <= 1


async def test_full_server_503_is_retried(qwen3_tokenizer, gsm8k_server) -> None:
    """The server takes one session at a time (--max-sessions 1): the second episode's create gets
    503 + Retry-After until the first ends, and goes through on a retry."""
    _, url = gsm8k_server
    tok = qwen3_tokenizer
    slow = turn(tok, call("submit_answer", {"answer": _label(0)}) + "<|im_end|>", delay=0.4)
    script = {
        "full-1": [slow],
        "full-2": [turn(tok, call("submit_answer", {"answer": _label(1)}) + "<|im_end|>")],
    }
    with SGLangStub(script=script, tokenizer=tok) as stub:
        first = asyncio.create_task(run(make_args(stub), make_sample(url, "gsm8k", "full-1")))
        deadline = time.monotonic() + 60
        while not stub.in_flight:  # the first episode holds the one session, at its model turn
            assert time.monotonic() < deadline, "the first episode never reached the engine"
            await asyncio.sleep(0.02)
        second = await run(make_args(stub), make_sample(url, "gsm8k", "full-2", index=1))
        first = await first
    assert first.reward == 1.0 and second.reward == 1.0, second.metadata.get("failure_message")


def test_retry_waits_for_the_servers_retry_after() -> None:
    from bridge.env_local import _retry_after
    from bridge.env_session import RetryPolicy

    policy = RetryPolicy(backoff=0.2, backoff_max=2.0, retry_after_max=30.0)
    assert all(
        5.0 <= policy.delay(0, 5.0) <= 5.2 for _ in range(100)
    )  # the server's word, plus jitter
    assert all(30.0 <= policy.delay(0, 600.0) <= 30.2 for _ in range(100))  # capped
    assert all(
        0.0 <= policy.delay(1) <= 0.4 for _ in range(100)
    )  # no Retry-After: jittered backoff
    assert _retry_after({"retry-after": "5"}) == 5.0
    assert _retry_after({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}) is None
    assert _retry_after({"retry-after": "-1"}) is None and _retry_after({}) is None
