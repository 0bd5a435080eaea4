"""The ORS env server (`envs.server`) over real HTTP on 127.0.0.1, through the stock `openreward`
client where a client is involved, and with raw requests for the malformed ones.

`Probe` is a small environment built to poke at the server (slow calls, crashing tools,
secrets); the real environments run through `python -m envs.server` itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO, env_server, free_port, run_process
from openreward.api.errors import ToolCallError
from openreward.environments import Environment, TextBlock, ToolOutput, tool
from pydantic import BaseModel

pytestmark = pytest.mark.long(4)

# ---------------------------------------------------------------- the probe environment


class EchoIn(BaseModel):
    text: str
    times: int = 1


class SlowIn(BaseModel):
    seconds: float


class SecretIn(BaseModel):
    name: str


class NoIn(BaseModel):
    pass


class Probe(Environment):
    """Tools that exercise the server rather than a task."""

    def __init__(self, task_spec: dict[str, Any] = {}, secrets: dict[str, str] = {}) -> None:  # noqa: B006 (the SDK's signature)
        super().__init__(task_spec, secrets)
        if "i" not in task_spec:
            raise ValueError("a probe task_spec needs 'i'")
        self.secrets = dict(secrets)

    @classmethod
    def list_splits(cls) -> list[str]:
        return ["train", "dev"]

    @classmethod
    def list_tasks(cls, split: str) -> list[dict[str, Any]]:
        return [{"i": i, "split": split} for i in range(5)]

    async def get_prompt(self) -> list[TextBlock]:
        return [TextBlock(text=f"probe task {self.task_spec['i']}")]

    @tool
    async def echo(self, params: EchoIn) -> ToolOutput:
        """Repeat the text."""
        return ToolOutput(blocks=[TextBlock(text=params.text * params.times)], reward=0.25)

    @tool
    async def slow(self, params: SlowIn) -> ToolOutput:
        """Sleep, then answer."""
        await asyncio.sleep(params.seconds)
        return ToolOutput(blocks=[TextBlock(text=f"slept {params.seconds}")])

    @tool
    async def boom(self, params: NoIn) -> ToolOutput:
        """Raise inside the environment."""
        raise RuntimeError("probe exploded")

    @tool
    async def secret_digest(self, params: SecretIn) -> ToolOutput:
        """sha256 of a secret the session was created with (never the value itself)."""
        value = self.secrets.get(params.name, "")
        return ToolOutput(blocks=[TextBlock(text=hashlib.sha256(value.encode()).hexdigest())])

    @tool
    async def finish(self, params: NoIn) -> ToolOutput:
        """End the episode."""
        return ToolOutput(blocks=[TextBlock(text="done")], reward=1.0, finished=True)

    @tool
    async def spin(self, params: NoIn) -> ToolOutput:
        """Compute forever on the event loop, swallowing ordinary exceptions."""
        while True:
            try:
                sum(range(1000))
            except Exception:
                pass

    @tool
    async def busy_steps(self, params: SlowIn) -> ToolOutput:
        """Compute `seconds` in 1 ms slices, yielding to the loop between them."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < params.seconds:
            t1 = time.perf_counter()
            while time.perf_counter() - t1 < 0.001:
                pass
            await asyncio.sleep(0)
        return ToolOutput(blocks=[TextBlock(text="done")])


class WebProbe(Probe):
    """A probe that offers the SDK's web toolset to its clients."""

    session_toolsets = ("web",)


PROBE_SERVER = """
import json, logging, sys
sys.path.insert(0, sys.argv[3])
import uvicorn
from envs.server.app import ServerSettings, create_app
import test_server
settings = json.loads(sys.argv[2])
logging.basicConfig(level=settings.pop("log_level", "INFO"), stream=sys.stdout)
app = create_app(
    {"probe": test_server.Probe, "webprobe": test_server.WebProbe}, ServerSettings(**settings)
)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="info", access_log=False)
"""


@contextlib.contextmanager
def probe_server(**settings: Any) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [
        sys.executable,
        "-c",
        PROBE_SERVER,
        str(port),
        json.dumps(settings),
        str(REPO / "tests"),
    ]
    with run_process(args, f"{base}/health") as proc:
        yield base, proc


@pytest.fixture(scope="module")
def probe_url() -> Iterator[str]:
    with probe_server() as (url, _):
        yield url


def _create(url: str, sid: str, env: str = "probe", **body: Any) -> httpx.Response:
    payload = {"env_name": env, "split": "train", "index": 0, **body}
    return httpx.post(f"{url}/create", json=payload, headers={"X-Session-ID": sid})


def _sse_events(text: str) -> list[tuple[str, str]]:
    events = []
    for block in text.strip().split("\n\n"):
        name = data = None
        lines = []
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                lines.append(line[5:].lstrip())
        if name:
            data = "\n".join(lines)
            events.append((name, data))
    return events


def _assert_ors_error(r: httpx.Response, status: int, reason: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["ok"] is False and body["reason"] == reason, body
    assert body["error"] and body["detail"] == body["error"] and "\n" not in body["error"]
    return body


# ---------------------------------------------------------------- real environments, stock client


async def test_stock_client_plays_every_env(server_url: str) -> None:
    """gsm8k, whodunit and haiku episodes through the stock client on one multi-env server
    (the client's bare paths are routed by its X-Deployment header)."""
    from ors_episodes import play_gsm8k, play_haiku, play_whodunit

    gsm = await play_gsm8k(server_url, "test", 3, correct=True)
    assert gsm.tools == ["calculator", "submit_answer"] and gsm.final_reward == 1.0 and gsm.finished
    who = await play_whodunit(server_url, "test", 2, correct_parts=4)
    assert who.tools[0] == "list_clues" and who.final_reward == 1.0 and who.finished
    assert all(r is None for _, _, r, _ in who.calls[:-1])
    half = await play_whodunit(server_url, "train", 7, correct_parts=0)
    assert half.final_reward == 0.0 and half.finished
    haiku = await play_haiku(server_url, "test", 1)
    assert haiku.finished and haiku.final_reward == 1.0 and not haiku.calls[0][3]


async def test_stock_client_with_variant_paths_and_task_listing(server_url: str) -> None:
    from openreward import AsyncOpenReward

    client = AsyncOpenReward(api_key="test", base_url=server_url)
    try:
        env = client.environments.get("whodunit", variant="whodunit", base_url=server_url)
        assert await env.list_splits() == ["train", "test"]
        assert await env.num_tasks("test") == 500
        task = await env.get_task("test", 4)
        assert task.task_spec["index"] == 4
        assert len(await env.get_task_range("test", 2, 5)) == 3
        async with env.session(task=task) as s:
            assert "suspect" in (await s.get_prompt())[0].text.lower()
            out = await s.call_tool("list_suspects", {})
            assert out.reward is None and not out.finished
            with pytest.raises(ToolCallError) as e:
                await s.call_tool("submit_answer", {"who": 3})
            assert e.value.reason == "input_validation"
            with pytest.raises(ToolCallError) as e:
                await s.call_tool("make_coffee", {})
            assert e.value.reason == "not_found"
            await s.call_tool("submit_answer", {"who": "a", "what": "b", "where": "c"})
            with pytest.raises(ToolCallError) as e:
                await s.call_tool("list_clues", {})
            assert e.value.reason == "episode_finished"
    finally:
        await client.environments.aclose()


async def test_many_concurrent_episodes(server_url: str) -> None:
    from ors_episodes import play_whodunit

    eps = await asyncio.gather(
        *(play_whodunit(server_url, "train", i, correct_parts=4) for i in range(24))
    )
    assert [e.final_reward for e in eps] == [1.0] * 24


# ---------------------------------------------------------------- hardening, raw HTTP


def test_malformed_requests_get_typed_4xx(probe_url: str) -> None:
    u = probe_url
    sid = {"X-Session-ID": "hard-1"}
    assert _create(u, "hard-1").json() == {"sid": "hard-1"}
    _assert_ors_error(
        httpx.post(f"{u}/probe/call", content=b'{"name": "echo", "input":', headers=sid),
        400,
        "bad_json",
    )
    _assert_ors_error(
        httpx.post(f"{u}/probe/call", content=b"[1, 2]", headers=sid), 400, "bad_json"
    )
    _assert_ors_error(httpx.post(f"{u}/probe/call", content=b"", headers=sid), 400, "bad_json")
    _assert_ors_error(
        httpx.post(f"{u}/probe/call", json={"name": "echo", "input": [1]}, headers=sid),
        400,
        "bad_input_shape",
    )
    _assert_ors_error(
        httpx.post(f"{u}/probe/call", json={"name": 5, "input": {}}, headers=sid),
        400,
        "bad_input_shape",
    )
    _assert_ors_error(
        httpx.post(f"{u}/probe/call", json={"name": "echo", "input": {}}), 400, "missing_session_id"
    )
    _assert_ors_error(
        httpx.post(
            f"{u}/probe/call",
            json={"name": "echo", "input": {}},
            headers={"X-Session-ID": "nobody"},
        ),
        404,
        "unknown_session",
    )
    _assert_ors_error(
        httpx.post(f"{u}/nope/call", json={"name": "echo", "input": {}}, headers=sid),
        404,
        "unknown_env",
    )
    _assert_ors_error(httpx.get(f"{u}/probe/call", headers=sid), 405, "method_not_allowed")
    big = b'{"name": "echo", "input": {"text": "' + b"x" * (1 << 20) + b'"}}'
    _assert_ors_error(
        httpx.post(f"{u}/probe/call", content=big, headers=sid), 413, "body_too_large"
    )
    # task listing endpoints validate too
    _assert_ors_error(
        httpx.post(f"{u}/probe/task", json={"split": "nope", "index": 0}), 400, "invalid_split"
    )
    _assert_ors_error(
        httpx.post(f"{u}/probe/task", json={"split": "train", "index": 99}), 400, "invalid_index"
    )
    _assert_ors_error(
        httpx.post(f"{u}/probe/task", json={"split": "train", "index": "0"}), 400, "bad_request"
    )
    _assert_ors_error(httpx.post(f"{u}/probe/num_tasks", json={}), 400, "bad_request")
    # session creation
    _assert_ors_error(_create(u, "hard-1"), 400, "session_exists")
    _assert_ors_error(_create(u, "hard-2", env="nope"), 404, "unknown_env")
    _assert_ors_error(_create(u, "hard-2", index=77), 400, "invalid_index")
    _assert_ors_error(
        httpx.post(f"{u}/create", json={"env_name": "probe"}, headers={"X-Session-ID": "hard-2"}),
        400,
        "bad_request",
    )
    _assert_ors_error(
        httpx.post(
            f"{u}/create",
            json={"env_name": "probe", "task_spec": {}},
            headers={"X-Session-ID": "hard-2"},
        ),
        400,
        "invalid_task_spec",
    )
    _assert_ors_error(
        httpx.post(
            f"{u}/create",
            json={"env_name": "probe", "split": "train", "index": 0},
            headers={"X-Session-ID": "hard-2", "X-Secrets": "%%%not-base64"},
        ),
        400,
        "bad_secrets",
    )
    # still serving, and the session that saw all of this still works
    assert httpx.get(f"{u}/health").json() == {"status": "ok"}
    r = httpx.post(f"{u}/probe/call", json={"name": "echo", "input": {"text": "ok"}}, headers=sid)
    assert r.status_code == 200 and r.json()["output"]["blocks"][0]["text"] == "ok"


def test_tool_failures_plain_json_status_codes(probe_url: str) -> None:
    """Clients that do not ask for SSE get the RunToolOutput as the body, with a typed status."""
    u, sid = probe_url, {"X-Session-ID": "json-1"}
    _create(u, "json-1")
    call = lambda name, inp: httpx.post(
        f"{u}/probe/call", json={"name": name, "input": inp}, headers=sid
    )
    assert call("echo", {"text": "ab", "times": 2}).json() == {
        "ok": True,
        "output": {
            "blocks": [{"text": "abab", "detail": None, "type": "text"}],
            "metadata": None,
            "reward": 0.25,
            "finished": False,
        },
    }
    _assert_ors_error(call("teleport", {}), 404, "not_found")
    _assert_ors_error(call("echo", {"text": "x", "times": "many"}), 422, "input_validation")
    assert call("finish", {}).json()["output"]["finished"] is True
    _assert_ors_error(call("echo", {"text": "late"}), 409, "episode_finished")


def test_sse_framing_matches_the_sdk(probe_url: str) -> None:
    u, sid = probe_url, {"X-Session-ID": "sse-1", "Accept": "text/event-stream"}
    r = httpx.post(f"{u}/create_session", json={})
    events = _sse_events(r.text)
    assert r.headers["content-type"].startswith("text/event-stream")
    assert [e for e, _ in events] == ["task_id", "end"] and len(events[0][1]) == 36
    _create(u, "sse-1")
    long_text = "é" * 20000  # non-ASCII and longer than one SSE chunk
    r = httpx.post(
        f"{u}/probe/call", json={"name": "echo", "input": {"text": long_text}}, headers=sid
    )
    events = _sse_events(r.text)
    assert events[0][0] == "task_id" and events[-1][0] == "end"
    assert {e for e, _ in events[1:-1]} <= {"chunk"} and len(events) > 3
    result = json.loads("".join(d for _, d in events[1:]))
    assert result["ok"] and result["output"]["blocks"][0]["text"] == long_text
    r = httpx.post(f"{u}/probe/call", json={"name": "nope", "input": {}}, headers=sid)
    assert json.loads(_sse_events(r.text)[-1][1]) == {
        "ok": False,
        "error": "'nope' is not a valid tool",
        "reason": "not_found",
    }


async def test_env_exception_fails_only_that_call(probe_url: str) -> None:
    from openreward import AsyncOpenReward
    from openreward.api.errors import ToolFailed

    client = AsyncOpenReward(api_key="test", base_url=probe_url)
    try:
        env = client.environments.get("probe", base_url=probe_url)
        async with (
            env.session(split="train", index=1) as a,
            env.session(split="train", index=2) as b,
        ):
            with pytest.raises(ToolFailed, match="RuntimeError: probe exploded"):
                await a.call_tool("boom", {})
            out = await b.call_tool("echo", {"text": "fine"})
            assert out.blocks[0].text == "fine"
    finally:
        await client.environments.aclose()
    # server side, the crash costs only that call: the same session keeps working
    sid = {"X-Session-ID": "crash-1"}
    _create(probe_url, "crash-1")
    _assert_ors_error(
        httpx.post(f"{probe_url}/probe/call", json={"name": "boom", "input": {}}, headers=sid),
        500,
        "env_error",
    )
    r = httpx.post(
        f"{probe_url}/probe/call", json={"name": "echo", "input": {"text": "still"}}, headers=sid
    )
    assert r.json()["output"]["blocks"][0]["text"] == "still"
    metrics = httpx.get(f"{probe_url}/metrics").text
    assert 'ors_tool_calls_total{env="probe",tool="boom",status="env_error"} 2' in metrics


def test_slow_call_sends_task_id_first_and_can_be_resumed(probe_url: str) -> None:
    u, sid = probe_url, {"X-Session-ID": "slow-1", "Accept": "text/event-stream"}
    _create(u, "slow-1")
    t0 = time.monotonic()
    with httpx.stream(
        "POST", f"{u}/probe/call", json={"name": "slow", "input": {"seconds": 2.0}}, headers=sid
    ) as r:
        lines = r.iter_lines()
        first, task_line = next(lines), next(lines)
    assert (
        first == "event: task_id" and time.monotonic() - t0 < 1.9
    )  # sent before the call finished
    task_id = task_line.split(":", 1)[1].strip()
    # the client "lost" the stream; it asks again with the task_id and gets the one result
    r = httpx.post(
        f"{u}/probe/call",
        json={"name": "slow", "input": {"seconds": 2.0}, "task_id": task_id},
        headers=sid,
        timeout=10,
    )
    events = _sse_events(r.text)
    assert events[0] == ("task_id", task_id) and events[-1][0] == "end"
    assert json.loads(events[-1][1])["output"]["blocks"][0]["text"] == "slept 2.0"
    r = httpx.post(
        f"{u}/probe/call", json={"name": "slow", "input": {}, "task_id": "f" * 32}, headers=sid
    )
    assert _sse_events(r.text) == [("error", "unknown task_id")]


async def test_slow_call_through_stock_client(probe_url: str) -> None:
    from ors_episodes import ors_session

    async with ors_session(probe_url, "probe", "dev", 3) as s:
        assert (await s.get_prompt())[0].text == "probe task 3"
        out = await s.call_tool("slow", {"seconds": 1.3})
        assert out.blocks[0].text == "slept 1.3"


async def test_secrets_reach_the_env_and_never_the_logs() -> None:
    from openreward import AsyncOpenReward

    secret = "s3cr3t-VALUE-9f8e7d"
    with probe_server(log_level="DEBUG", log_requests=True) as (url, proc):
        client = AsyncOpenReward(api_key="test", base_url=url)
        try:
            env = client.environments.get("probe", base_url=url)
            async with env.session(
                split="train", index=0, secrets={"MY_TOKEN": (secret, ["127.0.0.1"])}
            ) as s:
                out = await s.call_tool("secret_digest", {"name": "MY_TOKEN"})
                assert out.blocks[0].text == hashlib.sha256(secret.encode()).hexdigest()
        finally:
            await client.environments.aclose()
        header = base64.b64encode(json.dumps({"MY_TOKEN": {"value": secret}}).encode()).decode()
        r = httpx.post(
            f"{url}/create",
            json={"env_name": "probe", "split": "train", "index": 0},
            headers={"X-Session-ID": "sec-2", "X-Secrets": header},
        )
        assert r.status_code == 200
        r = httpx.post(
            f"{url}/create",
            json={"env_name": "probe", "split": "train", "index": 0},
            headers={
                "X-Session-ID": "sec-3",
                "X-Secrets": base64.b64encode(b'{"A": "' + secret.encode() + b'"}').decode(),
            },
        )
        assert r.status_code == 400 and secret not in r.text
        proc.terminate()
        logs = proc.communicate(timeout=10)[0]
    assert "POST /call -> 200" in logs  # request logging was on (the stock client uses bare paths)
    assert secret not in logs and header not in logs


# ------------------------------------------------------------- CLI flags: api key, TTL, cap, config


def test_api_key_guards_everything_but_health() -> None:
    with env_server("--role", "env", "--envs", "whodunit", "--api-key", "k-123") as url:
        assert httpx.get(f"{url}/health").status_code == 200
        _assert_ors_error(httpx.get(f"{url}/list_environments"), 401, "unauthorized")
        _assert_ors_error(
            httpx.get(f"{url}/metrics", headers={"X-API-Key": "wrong"}), 401, "unauthorized"
        )
        assert httpx.get(f"{url}/list_environments", headers={"X-API-Key": "k-123"}).json() == [
            "whodunit"
        ]
        from ors_episodes import play_whodunit

        with pytest.raises(Exception, match=r"(?i)auth|401"):
            asyncio.run(
                play_whodunit(url, "test", 0)
            )  # the stock client with the wrong key ("test")

    with env_server(
        "--role", "env", "--envs", "whodunit", env={"ENV_SERVER_API_KEY": "test"}
    ) as url:
        from ors_episodes import play_whodunit

        ep = asyncio.run(play_whodunit(url, "test", 0))  # ors_episodes' client sends api_key="test"
        assert ep.finished and ep.final_reward == 1.0


def test_idle_sessions_are_reaped() -> None:
    with env_server("--role", "env", "--envs", "whodunit", "--session-ttl", "0.5") as url:
        assert _create(url, "idle-1", env="whodunit").status_code == 200
        assert httpx.post(f"{url}/ping", headers={"X-Session-ID": "idle-1"}).status_code == 200
        time.sleep(1.6)
        _assert_ors_error(
            httpx.post(f"{url}/ping", headers={"X-Session-ID": "idle-1"}), 410, "session_expired"
        )
        _assert_ors_error(
            httpx.get(f"{url}/whodunit/prompt", headers={"X-Session-ID": "idle-1"}),
            410,
            "session_expired",
        )
        metrics = httpx.get(f"{url}/metrics").text
        assert "ors_sessions_reaped_total 1" in metrics and "ors_sessions_open 0" in metrics


def test_max_sessions_answers_503_with_retry_after() -> None:
    with env_server("--role", "env", "--envs", "whodunit", "--max-sessions", "2") as url:
        assert _create(url, "cap-1", env="whodunit").status_code == 200
        assert _create(url, "cap-2", env="whodunit").status_code == 200
        r = _create(url, "cap-3", env="whodunit")
        _assert_ors_error(r, 503, "too_many_sessions")
        assert int(r.headers["retry-after"]) > 0
        assert httpx.post(f"{url}/delete", headers={"X-Session-ID": "cap-1"}).json() == {
            "sid": "cap-1"
        }
        assert _create(url, "cap-3", env="whodunit").status_code == 200
        _assert_ors_error(
            httpx.post(f"{url}/ping", headers={"X-Session-ID": "cap-1"}), 410, "session_deleted"
        )


def test_config_options_apply_and_bad_ones_fail_at_startup(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("environments:\n  whodunit:\n    options: {train_size: 7, test_size: 3}\n")
    with env_server("--role", "env", "--config", str(good)) as url:
        assert httpx.get(f"{url}/list_environments").json() == ["whodunit"]
        assert httpx.post(f"{url}/whodunit/num_tasks", json={"split": "train"}).json() == {
            "num_tasks": 7
        }
    bad = tmp_path / "bad.yaml"
    bad.write_text("environments:\n  whodunit:\n    options: {trian_size: 7}\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "envs.server",
            "--role",
            "env",
            "--config",
            str(bad),
            "--port",
            str(free_port()),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "trian_size" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "envs.server",
            "--role",
            "env",
            "--envs",
            "whodunit,chess",
            "--port",
            str(free_port()),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "unknown environment 'chess'" in out.stderr


def test_unusable_trajectory_db_fails_at_startup_in_one_line(tmp_path: Path) -> None:
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("not a database\n" * 100)
    blocked = tmp_path / "file"
    blocked.write_text("x")
    for db in (not_sqlite, blocked / "sub" / "t.db"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "envs.server",
                "--db",
                str(db),
                "--envs",
                "gsm8k",
                "--port",
                str(free_port()),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2, out.stderr
        assert f"--db {db}" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not_sqlite.read_text().startswith("not a database")  # left as it was


def test_a_runaway_tool_is_stopped_by_its_budget_and_the_episode_goes_on() -> None:
    """A tool that never returns (and swallows exceptions) costs its 0.3 s budget, not the
    server; the stop is the server's fact (503 `budget_exceeded` to a plain-JSON client)."""
    with probe_server(tool_budget_s=0.3) as (u, _):
        sid = {"X-Session-ID": "spin-1"}
        _create(u, "spin-1")
        call = lambda name, inp: httpx.post(
            f"{u}/probe/call", json={"name": name, "input": inp}, headers=sid, timeout=60
        )
        body = _assert_ors_error(call("spin", {}), 503, "budget_exceeded")
        assert "the server stopped spin" in body["error"] and "0.3 s of CPU" in body["error"]
        # steps that each yield to the loop add up against the same budget
        body = _assert_ors_error(call("busy_steps", {"seconds": 5.0}), 503, "budget_exceeded")
        assert "the server stopped busy_steps" in body["error"]
        assert call("busy_steps", {"seconds": 0.01}).json()["ok"] is True
        assert call("echo", {"text": "alive"}).json()["output"]["blocks"][0]["text"] == "alive"
        metrics = httpx.get(f"{u}/metrics").text
        assert 'ors_tool_calls_total{env="probe",tool="spin",status="budget_exceeded"} 1' in metrics


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_worst_tool_inputs_get_quick_clear_answers(tmp_path: Path) -> None:
    """The worst inputs we know for every tool of every env (tests/adversarial.py) each get a
    clear answer, and all of them together cost the server little CPU: once, one 29-character
    calculator expression froze the server for 11-23 s and one more `**64` never returned."""
    from adversarial import WORST_INPUTS

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "envs.server", "--port", str(port), "--role", "env"]
    with run_process(args, f"{url}/health") as proc:
        cpu0 = _cpu_seconds(proc.pid)
        n = 0
        for env, inputs in WORST_INPUTS.items():
            for k, (tool, tool_input, ends) in enumerate(inputs):
                sid = {"X-Session-ID": f"worst-{env}-{k}"}
                assert _create(url, sid["X-Session-ID"], env=env).status_code == 200
                r = httpx.post(
                    f"{url}/{env}/call",
                    json={"name": tool, "input": tool_input},
                    headers=sid,
                    timeout=60,
                )
                assert r.status_code in (200, 404, 413, 422), (
                    env,
                    tool,
                    r.status_code,
                    r.text[:300],
                )
                assert len(r.content) < 16_384, (env, tool, len(r.content))  # nothing echoed whole
                body = r.json()
                if body["ok"]:
                    assert body["output"]["finished"] is ends, (env, tool)
                else:
                    assert body["error"] and "\n" not in body["detail"][:200], body
                n += 1
        used = _cpu_seconds(proc.pid) - cpu0
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    # About 0.5 s of CPU in all (most of it reading 1 MiB bodies); the old server spent minutes.
    assert used < 10.0, f"{n} worst inputs cost the server {used:.1f} s of CPU"


def test_toolsets_only_when_the_env_offers_them(probe_url: str) -> None:
    """`toolset_name: "web"` would add web tools that act with the server's own OpenReward key:
    refused unless the environment class declares the toolset in `session_toolsets`."""
    for env in ("probe", "webprobe"):
        for name in ("backsearch", "cli"):
            r = _create(probe_url, f"ts-{env}-{name}", env=env, toolset_name=name)
            body = _assert_ors_error(r, 400, "bad_request")
            assert f"toolset {name!r} is not offered by {env}" in body["error"]
    body = _assert_ors_error(
        _create(probe_url, "ts-probe-web", env="probe", toolset_name="web"), 400, "bad_request"
    )
    assert "(it offers none)" in body["error"]
    assert _create(probe_url, "ts-web", env="webprobe", toolset_name="web").status_code == 200
    tools = httpx.get(f"{probe_url}/webprobe/task_tools", headers={"X-Session-ID": "ts-web"})
    assert "web_search" in [t["name"] for t in tools.json()["tools"]]


def test_create_bounds_what_a_client_can_make_the_server_keep(probe_url: str) -> None:
    big_spec = {"i": 1, "pad": "x" * (100 << 10)}
    _assert_ors_error(
        httpx.post(
            f"{probe_url}/create",
            json={"env_name": "probe", "task_spec": big_spec},
            headers={"X-Session-ID": "big-spec"},
        ),
        413,
        "body_too_large",
    )
    _assert_ors_error(_create(probe_url, "s" * 200), 400, "bad_session_id")
    assert _create(probe_url, "s" * 128).status_code == 200


ENV_REPORTER = """
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(dict(os.environ)).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_launcher_starts_services_without_hosted_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """run.sh once passed its whole environment (OPENREWARD_API_KEY included) to the env server."""
    from tools.launch.services import managed_process

    monkeypatch.setenv("OPENREWARD_API_KEY", "or-key")
    monkeypatch.setenv("WANDB_API_KEY", "wb-key")
    monkeypatch.setenv("ENV_SERVER_API_KEY", "server-key")
    monkeypatch.setenv("LLM_JUDGE_API_KEY", "judge-key")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with managed_process("reporter", [sys.executable, "-c", ENV_REPORTER, str(port)], url):
        seen = httpx.get(f"{url}/health").json()
    assert "OPENREWARD_API_KEY" not in seen and "WANDB_API_KEY" not in seen
    assert seen["ENV_SERVER_API_KEY"] == "server-key" and seen["LLM_JUDGE_API_KEY"] == "judge-key"
    assert seen["PATH"] == os.environ["PATH"]


def test_bodies_with_very_many_members_are_refused(probe_url: str) -> None:
    """Parsing 50,000 keys of one tool input took ~10 ms of the loop: refused before parsing."""
    sid = {"X-Session-ID": "members-1"}
    _create(probe_url, "members-1")
    many = {"name": "echo", "input": {"text": "x", **{f"k{i}": i for i in range(20_000)}}}
    r = httpx.post(f"{probe_url}/probe/call", json=many, headers=sid)
    body = _assert_ors_error(r, 413, "body_too_large")
    assert "10000 JSON object members" in body["error"]
    fine = {"name": "echo", "input": {"text": "y" * 100_000, **{f"k{i}": i for i in range(5000)}}}
    r = httpx.post(f"{probe_url}/probe/call", json=fine, headers=sid)
    assert r.status_code == 200 and len(r.json()["output"]["blocks"][0]["text"]) == 100_000


def test_the_member_count_before_parsing_refuses_exactly_what_its_rule_says() -> None:
    """Counted in one pass, the rule is unchanged: a body over 64 KiB with over MAX_JSON_MEMBERS
    '":' or '{' + '[' is refused; colons inside strings alone never are."""
    import orjson

    from envs.server.errors import OrsError
    from envs.server.wire import MAX_JSON_MEMBERS as M
    from envs.server.wire import count_containers_or_refuse

    def rule(raw: bytes) -> bool:
        counts = (raw.count(b'":'), raw.count(b"{") + raw.count(b"["))
        return len(raw) > 64 << 10 and max(counts) > M

    pad = "x" * 70_000
    bodies = [
        {"t": pad + ":" * (3 * M)},  # colons in a string only
        {"t": pad + '":' * (M + 1)},  # escaped quotes before colons: counted as members
        {"t": pad, **{f"k{i}": i for i in range(M + 1)}},  # members
        {"t": pad, "l": [[]] * (M + 1)},  # containers
        {"l": [[]] * (M + 1)},  # containers, but under 64 KiB
        {"t": pad, "l": [[]] * (M // 2), "c": ":" * M},  # over M marks, under M of each kind
        {"t": pad, **{f"k{i}": i for i in range(M // 2)}, "l": [{}] * (M // 2)},
        {"name": "calculator", "input": {"expression": "1+1"}},
    ]
    for body in bodies:
        raw = orjson.dumps(body)
        try:
            brackets = count_containers_or_refuse(raw)
        except OrsError as e:
            assert rule(raw) and e.status == 413, len(raw)
        else:
            assert not rule(raw) and brackets == raw.count(b"{") + raw.count(b"["), len(raw)
    assert sum(rule(orjson.dumps(b)) for b in bodies) == 3  # the cases above cover both sides


def test_default_session_cap() -> None:
    from envs.server.__main__ import _build_arg_parser
    from envs.server.app import ServerSettings

    assert _build_arg_parser().parse_args([]).max_sessions == ServerSettings().max_sessions == 4096


def test_metrics_are_prometheus_text(probe_url: str) -> None:
    sid = {"X-Session-ID": "met-1"}
    _create(probe_url, "met-1")
    for _ in range(3):
        httpx.post(
            f"{probe_url}/probe/call", json={"name": "echo", "input": {"text": "m"}}, headers=sid
        )
    httpx.post(f"{probe_url}/probe/call", json={"name": "nope" * 30, "input": {}}, headers=sid)
    r = httpx.get(f"{probe_url}/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    sample = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [0-9.e+-]+$')
    values = {}
    for line in r.text.splitlines():
        if not line.startswith("#"):
            assert sample.match(line), line
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    assert values['ors_tool_calls_total{env="probe",tool="echo",status="ok"}'] >= 3
    assert values['ors_tool_calls_total{env="probe",tool="<unknown>",status="not_found"}'] >= 1
    assert (
        values["ors_sessions_open"] >= 1 and values['ors_sessions_created_total{env="probe"}'] >= 1
    )
    buckets = [
        v for k, v in values.items() if k.startswith('ors_tool_call_seconds_bucket{env="probe"')
    ]
    assert (
        buckets == sorted(buckets)
        and buckets[-1] == values['ors_tool_call_seconds_count{env="probe"}']
    )


# --------------------------------------------------------------- app factory: services and lifespan


class RecordingService:
    """A minimal service with one router, recording its start/stop calls."""

    def __init__(self) -> None:
        from fastapi import APIRouter

        self.events: list[str] = []
        router = APIRouter()

        @router.get("/svc/ping")
        async def svc_ping() -> dict[str, Any]:
            return {"svc": "pong", "events": list(self.events)}

        self.routers = [router]

    async def start(self) -> None:
        self.events.append("start")

    async def stop(self) -> None:
        self.events.append("stop")


async def test_create_app_mounts_services_and_runs_their_lifespan() -> None:
    from envs.server.app import ServerSettings, create_app

    svc = RecordingService()
    app = create_app({"probe": Probe}, ServerSettings(api_key="k"), services=[svc])
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put)
    )
    await inbox.put({"type": "lifespan.startup"})
    assert (await asyncio.wait_for(outbox.get(), 10))["type"] == "lifespan.startup.complete"
    assert svc.events == ["start"]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        assert (await http.get("/svc/ping")).status_code == 401  # the key guards service routes too
        r = await http.get("/svc/ping", headers={"X-API-Key": "k"})
        assert r.json() == {"svc": "pong", "events": ["start"]}
        assert (await http.get("/probe/tools", headers={"X-API-Key": "k"})).json()["tools"][0][
            "name"
        ] == "boom"
        assert (await http.get("/health")).json() == {"status": "ok"}
    assert len(app.state.sessions) == 0 and "probe" in app.state.envs
    await inbox.put({"type": "lifespan.shutdown"})
    assert (await asyncio.wait_for(outbox.get(), 10))["type"] == "lifespan.shutdown.complete"
    await lifespan
    assert svc.events == ["start", "stop"]


async def test_the_time_an_answer_takes_to_send_is_charged_to_its_client() -> None:
    """A cached 2 MB task listing costs next to nothing to look up and ~2 ms to send: the send
    runs in the client's fair share (fairness.py), so a client listing again and again is seen
    as using the loop, not as idle."""
    from envs.server.app import ServerSettings, create_app

    app = create_app({"probe": Probe}, ServerSettings())
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/probe/tools",
        "headers": [],
        "client": ("10.0.0.9", 5000),
        "query_string": b"",
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def costly_send(msg: dict[str, Any]) -> None:  # a transport copying a large answer
        sent.append(msg)
        if msg["type"] == "http.response.body":
            end = time.perf_counter() + 0.03
            while time.perf_counter() < end:
                pass

    await app(scope, receive, costly_send)
    assert sent[0]["status"] == 200 and b"boom" in sent[1]["body"]
    assert app.ctx.fair._clients["10.0.0.9"].recent(time.monotonic()) >= 0.025


# ---------------------------------------------------------------- slow clients (issue 13)


def _limited_fds(n: int) -> Any:
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    return limit


@contextlib.contextmanager
def _server_with_fd_limit(*extra: str, fds: int = 512, envs: str = "whodunit") -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "envs.server", "--role", "env", "--envs", envs]
    proc = subprocess.Popen(
        [*args, "--port", str(port), *extra],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_limited_fds(fds),
    )
    try:
        from conftest import wait_http

        wait_http(f"{url}/health", proc=proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_slowloris_cannot_lock_out_other_clients() -> None:
    """900 connections that trickle their headers forever, against a server allowed 512 open
    files: once, slow connections like these made 98% of new connections fail."""
    import socket
    import threading

    with _server_with_fd_limit(fds=512) as url:
        port = int(url.rsplit(":", 1)[1])
        stop = threading.Event()
        opened = [0]

        def attack() -> None:
            socks: list[socket.socket | None] = [None] * 900
            while not stop.is_set():
                for i, s in enumerate(socks):
                    try:
                        if s is None:
                            s = socket.socket()
                            s.setblocking(False)
                            s.connect_ex(("127.0.0.1", port))
                            socks[i] = s
                            opened[0] += 1
                            continue
                        s.send(b"GET /health HTTP/1.1\r\nX-a: b\r\n"[i % 5 :][:3])
                    except OSError:
                        if s is not None:
                            s.close()
                        socks[i] = None
                stop.wait(0.2)
            for s in socks:
                if s is not None:
                    s.close()

        t = threading.Thread(target=attack, daemon=True)
        t.start()
        try:
            time.sleep(3)
            ok = 0
            for _ in range(30):
                try:
                    r = httpx.get(f"{url}/list_environments", timeout=10)
                    ok += r.status_code == 200
                except httpx.HTTPError:
                    pass
        finally:
            stop.set()
            t.join(30)
        assert opened[0] > 900  # the server closed slow connections and the attacker reopened
        assert ok == 30, f"{ok}/30 requests of a well-behaved client succeeded"


def test_header_and_body_timeouts_and_header_size() -> None:
    import socket

    with _server_with_fd_limit("--header-timeout", "1", "--body-timeout", "1") as url:
        port = int(url.rsplit(":", 1)[1])

        def exchange(data: bytes, wait: float = 15.0) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
                s.sendall(data)
                out = b""
                while True:
                    try:
                        chunk = s.recv(65536)
                    except ConnectionResetError:
                        return out
                    if not chunk:
                        return out
                    out += chunk

        t0 = time.monotonic()
        assert exchange(b"GET /health HTTP/1.1\r\nHost: x\r\n").startswith(b"HTTP/1.1 408")
        assert exchange(b"").startswith(b"HTTP/1.1 408")  # connected, said nothing
        head = (
            b"POST /create HTTP/1.1\r\nHost: x\r\nX-Session-ID: s\r\nContent-Length: 100\r\n\r\n{"
        )
        assert exchange(head) == b""  # the body stalled: closed without an answer
        assert time.monotonic() - t0 < 12
        big = b"GET /health HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 100_000 + b"\r\n\r\n"
        assert exchange(big).startswith(b"HTTP/1.1 431")
        assert httpx.get(f"{url}/health").status_code == 200


def test_connection_cap_refuses_clearly_when_every_connection_is_busy() -> None:
    import socket

    cap = ("--max-connections", "20", "--max-connections-per-client", "20")
    with _server_with_fd_limit(*cap) as url:
        port = int(url.rsplit(":", 1)[1])
        busy = []
        for i in range(20):  # requests whose bodies have not finished: every connection is busy
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(
                b"POST /create HTTP/1.1\r\nHost: x\r\nX-Session-ID: b%d\r\n"
                b"Content-Length: 10\r\n\r\n{" % i
            )
            busy.append(s)
        time.sleep(0.5)
        r = httpx.get(f"{url}/health", timeout=10)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert r.json()["reason"] == "connection_refused" and "20 connections" in r.json()["error"]
        for s in busy:
            s.close()
        time.sleep(0.5)
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200


def _wait_for(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def _open_bodies(port: int, n: int, source: str = "127.0.0.1") -> list[Any]:
    """`n` connections whose request bodies have begun and not ended."""
    import socket

    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
        s.sendall(
            b"POST /create HTTP/1.1\r\nHost: x\r\nX-Session-ID: t%d\r\n"
            b"Content-Length: 1000\r\n\r\n{" % i
        )
        socks.append(s)
    return socks


def test_a_body_sent_a_byte_at_a_time_cannot_hold_a_connection_slot() -> None:
    """Connections that keep a request body alive with a byte now and then: once, new clients got
    503 for as long as the trickle went on. A body that crawls is evicted for a new client (and
    closed past --body-timeout however often its bytes arrive)."""
    cap = ("--max-connections", "16", "--max-connections-per-client", "16")
    with _server_with_fd_limit(*cap) as url:
        port = int(url.rsplit(":", 1)[1])
        socks = _open_bodies(port, 16)
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(0.5):
                for s in socks:
                    try:
                        s.send(b" ")
                    except OSError:
                        pass

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        try:

            def served() -> bool:
                try:
                    return httpx.get(f"{url}/list_environments", timeout=5).status_code == 200
                except httpx.HTTPError:
                    return False

            assert _wait_for(served, 15), "a new client was refused while bodies trickled in"
            metrics = httpx.get(f"{url}/metrics", timeout=5).text
            assert 'ors_connections_closed_total{why="evicted_slow_body"}' in metrics
        finally:
            stop.set()
            t.join(5)
            for s in socks:
                s.close()


def test_one_client_cannot_take_every_connection() -> None:
    """A client (its peer address) holds at most 3/4 of --max-connections: with its requests all
    in flight, another client is still served at once."""
    with _server_with_fd_limit("--max-connections", "16") as url:
        port = int(url.rsplit(":", 1)[1])
        greedy = _open_bodies(port, 16, source="127.0.0.2")
        try:
            r = httpx.get(f"{url}/list_environments", timeout=10)
            assert r.status_code == 200, r.text
            assert 'why="refused"} 4' in httpx.get(f"{url}/metrics", timeout=10).text
        finally:
            for s in greedy:
                s.close()


def test_a_client_that_does_not_read_its_answer_is_dropped(tmp_path: Path) -> None:
    """Slow readers of a large answer held it (a streamed rollout keeps its page) for as long as
    they kept the connection: an answer that does not drain for --send-timeout seconds is
    dropped with its connection."""
    import socket

    db = str(tmp_path / "t.db")
    with env_server("--role", "trajectories", "--db", db, "--send-timeout", "1") as url:
        port = int(url.rsplit(":", 1)[1])
        rid = "unread-1"
        events: list[dict[str, Any]] = [
            {"eventType": "rollout", "eventId": rid, "timestamp": 1, "runName": "unread"}
        ]
        for i in range(24):  # 12 MB: more than the kernel's socket buffers hold
            events.append(
                {
                    "eventType": "message",
                    "eventId": f"{rid}-{i}",
                    "timestamp": 1,
                    "index": i,
                    "rolloutEventId": rid,
                    "type": "tool_result",
                    "content": "y" * (512 << 10),
                }
            )
        r = httpx.post(f"{url}/v1/rollouts", json={"events": events}, timeout=120)
        assert r.status_code == 200, r.text
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /api/rollouts/%s HTTP/1.1\r\nHost: x\r\n\r\n" % rid.encode())

        def dropped() -> bool:
            text = httpx.get(f"{url}/metrics", timeout=5).text
            return 'ors_connections_closed_total{why="send_timeout"} 1' in text

        try:
            assert _wait_for(dropped, 30), "the unread answer was kept"
            got = 0
            s.settimeout(10)
            try:
                while chunk := s.recv(1 << 16):
                    got += len(chunk)
            except (ConnectionResetError, TimeoutError):
                pass
            assert got < 12 << 20
        finally:
            s.close()
