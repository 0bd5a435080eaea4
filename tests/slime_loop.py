"""Helpers for the tests that run slime's REAL rollout loop with the bridge
(tests/slime_driver.py in a subprocess per slime version): GSM8K task rows, the scripted
engine's per-episode scripts (`Model`), a gateway that puts faults between the bridge and a
real server (`Gateway`), the servers of a driver run's scenarios (`DriverScenarios`), and
`run_driver` / `run_driver_many`.

Used by tests/test_slime_control_flow.py, tests/test_slime_seams.py and bench/abort.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, web
from conftest import REPO
from sglang_stub import SGLangStub, Turn
from slime_vendor import slime_pythonpath
from stub_server import BackgroundServer

TOKENIZER_DIR = str(REPO / ".cache" / "qwen3-tokenizer")
FAIL_MARKER = "INJECTED_ENV_FAILURE"
SLOW_MARKER = "SLOW_TOOL_CALL"


def call(name: str, args: dict[str, Any]) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(args)}}}\n</tool_call>'


def gsm8k_tasks(n: int, url: str) -> list[dict[str, Any]]:
    from envs.gsm8k import GSM8K

    rows = GSM8K.load_split("train")
    return [
        {
            "prompt": [{"role": "user", "content": "task"}],
            "label": rows[i]["label"],
            "metadata": {
                "env": "gsm8k",
                "env_server": [url],
                "split": "train",
                "index": i,
                "max_turns": 6,
            },
        }
        for i in range(n)
    ]


@dataclasses.dataclass
class Outage:
    """The gateway refuses requests whose path ends with `path` for `seconds`, starting at the
    first such request after `after` of them went through: HTTP 500 for the first half (a
    worker killed under the router), then 503 `no_available_workers` (none left)."""

    path: str
    seconds: float
    after: int = 0
    started_at: float | None = None
    refused: int = 0
    seen: int = 0

    def refuses(self, path: str) -> int | None:
        """The status to answer for a request to `path`, or None to forward it."""
        if not path.endswith(self.path):
            return None
        self.seen += 1
        now = time.monotonic()
        if self.started_at is None:
            if self.seen <= self.after:
                return None
            self.started_at = now
        elapsed = now - self.started_at
        if elapsed >= self.seconds:
            return None
        self.refused += 1
        return 500 if elapsed < self.seconds / 2 else 503


class Gateway(BackgroundServer):
    """A gateway in front of a real server (the env server, or the engine stub as slime's router)
    that forwards every request, except:

    - a tool call (`/call`) whose arguments carry FAIL_MARKER answers 502: an environment lost
      for exactly that episode, every retry;
    - a tool call carrying SLOW_MARKER is held `slow_s` seconds before it is forwarded: a slow
      tool, as the bridge sees it (`slow_calls` records when each started and ended);
    - requests during an `Outage` are refused.
    """

    name = "gateway"

    def __init__(self, upstream: str, slow_s: float = 0.0, outage: Outage | None = None) -> None:
        super().__init__()
        self.upstream = upstream.rstrip("/")
        self.slow_s = slow_s
        self.outage = outage
        self.failed = 0
        self.slow_calls: list[dict[str, float | None]] = []
        self._lock = threading.Lock()

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=8 << 20)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        return app

    async def _startup(self) -> None:
        self._http = ClientSession()
        await super()._startup()

    async def _shutdown(self) -> None:
        await super()._shutdown()
        await self._http.close()

    async def _forward(self, req: web.Request) -> web.StreamResponse:
        body = await req.read()
        is_call = req.path.endswith("/call")
        if is_call and FAIL_MARKER.encode() in body:
            self.failed += 1
            return web.Response(status=502, text="bad gateway (injected)")
        status = self.outage.refuses(req.path) if self.outage is not None else None
        if status is not None:
            error = "no_available_workers" if status == 503 else "worker connection failed"
            return web.json_response({"error": error}, status=status)
        if is_call and SLOW_MARKER.encode() in body:
            record: dict[str, float | None] = {"started": time.monotonic(), "ended": None}
            with self._lock:
                self.slow_calls.append(record)
            await asyncio.sleep(self.slow_s)
            record["ended"] = time.monotonic()
        headers = {
            k: v for k, v in req.headers.items() if k.lower() not in ("host", "content-length")
        }
        async with self._http.request(
            req.method, self.upstream + req.path_qs, data=body, headers=headers
        ) as up:
            data = await up.read()
            return web.Response(
                status=up.status, body=data, content_type=up.content_type, charset=up.charset
            )


def driver_spec(spec: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """`spec` with its task rows written to a file and slime's common flags first in `argv`."""
    task_file = tmp_path / "tasks.jsonl"
    tmp_path.mkdir(parents=True, exist_ok=True)
    task_file.write_text("".join(json.dumps(r) + "\n" for r in spec.pop("tasks")))
    # fmt: off
    spec["argv"] = [
        "--hf-checkpoint", TOKENIZER_DIR,
        "--prompt-data", str(task_file),
        "--input-key", "prompt", "--label-key", "label", "--metadata-key", "metadata",
        "--custom-generate-function-path", "bridge.generate.generate",
        "--rollout-max-response-len", "256",
        "--advantage-estimator", "grpo",
        *spec["argv"],
    ]
    # fmt: on
    return spec


def run_driver(version: str, spec: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """slime `version`'s real chain in a subprocess; returns the driver's JSON."""
    spec = driver_spec(spec, tmp_path)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*slime_pythonpath(version), str(REPO), str(REPO / "tests")]),
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("TRAIN_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "slime_driver.py"), str(spec_file)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def router(server: SGLangStub | Gateway) -> dict[str, Any]:
    """The driver's `set` for slime's router address: `server` stands in for the router."""
    return {"sglang_router_ip": "127.0.0.1", "sglang_router_port": server.port}


class DriverScenarios:
    """The servers of the scenarios that one driver run plays (`run_driver_many`), started
    before it and kept open in `stack` for the checks: `specs` by scenario name go to the
    driver; `stubs` holds each scenario's engine stand-in."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self.stack = contextlib.ExitStack()
        self.specs: dict[str, dict[str, Any]] = {}
        self.stubs: dict[str, SGLangStub] = {}

    def engine(self, name: str, model: Model, weight_version: str = "default") -> SGLangStub:
        """The scripted engine that plays `model` for scenario `name`."""
        stub = self.stack.enter_context(
            SGLangStub(model, tokenizer=self.tok, weight_version=weight_version)
        )
        model.stub = stub
        self.stubs[name] = stub
        return stub


def run_driver_many(
    version: str, specs: dict[str, dict[str, Any]], tmp_path: Path
) -> dict[str, dict[str, Any]]:
    """Several specs (rollouts or eval) through slime `version` in ONE driver process (slime's
    import and Ray's start are most of a run's cost), each with fresh slime state; outputs by
    name."""
    runs = {name: driver_spec(spec, tmp_path / name) for name, spec in specs.items()}
    out = run_driver(version, {"scenario": "many", "runs": runs, "tasks": [], "argv": []}, tmp_path)
    return out["runs"]


class Model:
    """The engine's script, per routing key (one per sample): a key plays `special[i]` if it is
    the i-th key to reach the engine, else a solving script for its own task (found in the
    prompt). Tasks in `slow` take seven turns, each `delay` s under `slow_version`; the first
    episode of a task in `wrong` submits a wrong answer; episodes of a task in `slow_tool` make
    one SLOW_MARKER calculator call first (a Gateway holds it)."""

    def __init__(
        self,
        tok: Any,
        tasks: list[dict[str, Any]],
        special: list[list[Turn]] = (),
        slow: tuple[int, ...] = (),
        slow_version: str = "v1",
        delay: float = 1.0,
        wrong: tuple[int, ...] = (),
        slow_tool: tuple[int, ...] = (),
    ) -> None:
        from envs.gsm8k import GSM8K

        rows = GSM8K.load_split("train")
        self.tok = tok
        self.questions = [(rows[t["metadata"]["index"]]["question"], t["label"]) for t in tasks]
        self.special = list(special)
        self.slow, self.slow_version, self.delay = slow, slow_version, delay
        self.wrong, self.slow_tool = set(wrong), slow_tool
        self.stub: SGLangStub | None = None
        self.queues: dict[str, list[Turn]] = {}
        self.served: dict[str, int] = {}
        self.keys: list[str] = []
        self.lock = threading.Lock()

    def script_for(self, req: Any) -> list[Turn]:
        if self.special:
            return list(self.special.pop(0))
        text = self.tok.decode(req.input_ids)
        i, label = next((i, lb) for i, (q, lb) in enumerate(self.questions) if q in text)
        if i in self.slow:  # seven calculator turns, then the answer
            calc = Turn.of_text(self.tok, call("calculator", {"expression": "1+1"}) + "<|im_end|>")
            return [*[calc] * 7, *solve(self.tok, label)[1:]]
        if i in self.wrong:
            self.wrong.discard(i)
            return solve(self.tok, "987654321")
        if i in self.slow_tool:  # the held call, then the answer
            held = call("calculator", {"expression": SLOW_MARKER}) + "<|im_end|>"
            return [Turn.of_text(self.tok, held), *solve(self.tok, label)[1:]]
        return solve(self.tok, label)

    def __call__(self, req: Any) -> Turn:
        key = req.routing_key or ""
        with self.lock:
            if key not in self.queues:
                self.keys.append(key)
                self.queues[key] = self.script_for(req)
            q = self.queues[key]
            turn = q.pop(0) if len(q) > 1 else q[0]
        slow = self.stub is not None and self.stub.weight_version == self.slow_version
        self.served[key] = self.served.get(key, 0) + 1
        if slow and self.served[key] > 1 and key in self.slow_keys(req):  # turn 1 is quick
            return dataclasses.replace(turn, delay=self.delay)
        return turn

    def slow_keys(self, req: Any) -> set[str]:
        text = self.tok.decode(req.input_ids[:2000])
        slow = any(self.questions[i][0] in text for i in self.slow)
        return {req.routing_key or ""} if slow else set()


def solve(tok: Any, label: str, first: list[Turn] | None = None) -> list[Turn]:
    return [
        *(first or []),
        Turn.of_text(tok, call("calculator", {"expression": "6*7"}) + "<|im_end|>"),
        Turn.of_text(tok, call("submit_answer", {"answer": label}) + "<|im_end|>"),
    ]
