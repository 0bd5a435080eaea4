"""The bridge under slime's REAL control flow, for slime v0.2.2, v0.3.1 and main (624b824).

Each test runs tests/slime_driver.py in a subprocess on the vendored slime sources: slime's data
source, `generate_rollout`, its abort, dynamic filter and partial-rollout buffer, the conversion to
train data, the dp split and GRPO advantages, with the bridge as the generate function, the real
env server and the scripted SGLang stub. Skips (with the reason) without the vendored sources.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from conftest import REPO
from sglang_stub import SGLangStub, Turn
from slime_vendor import VERSIONS, missing_reason, slime_pythonpath

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))

TOKENIZER_DIR = str(REPO / ".cache" / "qwen3-tokenizer")
FAIL_MARKER = "INJECTED_ENV_FAILURE"


def call(name: str, args: dict[str, Any]) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(args)}}}\n</tool_call>'


def gsm8k_tasks(n: int) -> list[dict[str, Any]]:
    from envs.gsm8k import GSM8K

    rows = GSM8K.load_split("train")
    return [
        {
            "prompt": [{"role": "user", "content": "task"}],
            "label": rows[i]["label"],
            "metadata": {"env": "gsm8k", "split": "train", "index": i, "max_turns": 6},
        }
        for i in range(n)
    ]


class EnvFaultProxy:
    """A gateway in front of the real env server that answers 502 to every tool call whose
    arguments carry FAIL_MARKER: an environment lost for exactly that episode, every retry."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.failed = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.url = ""

    def __enter__(self) -> EnvFaultProxy:
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(20)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._http = ClientSession()
        app = web.Application(client_max_size=8 << 20)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def _forward(self, req: web.Request) -> web.StreamResponse:
        body = await req.read()
        if req.path.endswith("/call") and FAIL_MARKER.encode() in body:
            self.failed += 1
            return web.Response(status=502, text="bad gateway (injected)")
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


def run_driver(version: str, spec: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """slime `version`'s real chain in a subprocess; returns the driver's JSON."""
    task_file = tmp_path / "tasks.jsonl"
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


class Model:
    """The engine's script, per routing key (one per sample): a key plays `special[i]` if it is
    the i-th key to reach the engine, else a solving script for its own task (found in the prompt)."""

    def __init__(
        self, tok: Any, tasks: list[dict[str, Any]], special: list[list[Turn]] = ()
    ) -> None:
        from envs.gsm8k import GSM8K

        rows = GSM8K.load_split("train")
        self.tok = tok
        self.questions = [(rows[t["metadata"]["index"]]["question"], t["label"]) for t in tasks]
        self.special = list(special)
        self.queues: dict[str, list[Turn]] = {}
        self.keys: list[str] = []
        self.lock = threading.Lock()

    def script_for(self, req: Any) -> list[Turn]:
        if self.special:
            return list(self.special.pop(0))
        text = self.tok.decode(req.input_ids)
        label = next(label for q, label in self.questions if q in text)
        return solve(self.tok, label)

    def __call__(self, req: Any) -> Turn:
        key = req.routing_key or ""
        with self.lock:
            if key not in self.queues:
                self.keys.append(key)
                self.queues[key] = self.script_for(req)
            q = self.queues[key]
            return q.pop(0) if len(q) > 1 else q[0]


def solve(tok: Any, label: str, first: list[Turn] | None = None) -> list[Turn]:
    return [
        *(first or []),
        Turn.of_text(tok, call("calculator", {"expression": "6*7"}) + "<|im_end|>"),
        Turn.of_text(tok, call("submit_answer", {"answer": label}) + "<|im_end|>"),
    ]


@pytest.mark.parametrize("version", list(VERSIONS))
def test_infra_failure_never_enters_group_normalisation(
    version, qwen3_tokenizer, server_url, tmp_path
) -> None:
    """Group 0 has one episode whose env is lost on every try: its group is dropped by the
    bridge's filter and refilled, so the solved episodes get advantage 0, not +0.5."""
    tok = qwen3_tokenizer
    tasks = gsm8k_tasks(3)
    fail = [Turn.of_text(tok, call("calculator", {"expression": FAIL_MARKER}) + "<|im_end|>")]
    with EnvFaultProxy(server_url) as proxy:
        for t in tasks:
            t["metadata"]["env_server"] = [proxy.url]
        with SGLangStub(Model(tok, tasks, [fail]), tokenizer=tok) as stub:
            out = run_driver(
                version,
                {
                    "scenario": "rollout",
                    "tasks": tasks,
                    "argv": [
                        "--rollout-batch-size",
                        "2",
                        "--n-samples-per-prompt",
                        "4",
                        "--over-sampling-batch-size",
                        "2",
                        "--dynamic-sampling-filter-path",
                        "bridge.filters.drop_infra_failures",
                    ],
                    "set": {"sglang_router_ip": "127.0.0.1", "sglang_router_port": stub.port},
                },
                tmp_path,
            )
        assert proxy.failed >= 3  # the failing episode was replayed, and failed every time
    (r,) = out["rollouts"]
    samples = r["samples"]
    assert len(samples) == 8 and not any(s["infra_failure"] for s in samples)
    train = r["train"]
    assert train["raw_rewards"] == [1.0] * 8
    assert all(a == 0.0 for adv in train["advantages"] for a in adv)
    assert r["metrics"].get("rollout/dynamic_filter/drop_bridge_infra_failure") == 1
