"""Schemathesis against the real server: every route of its published OpenAPI schema (ORS,
rollout upload and JSON API, web UI pages) gets generated valid and invalid requests, a few
thousand in all; none may get a 5xx, and the server must be healthy afterwards.

Once, 25,908 such requests drew 252 x 500 and 56 x 503 (and the server published no schema).
The fuzzer uses a fixed seed; its own pass/fail is checked as well as the status counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from conftest import REPO, env_server

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "40"))


def _with_live_sessions(schema: dict[str, Any], sids: list[str]) -> dict[str, Any]:
    """The schema with X-Session-ID drawn from sessions that exist (so calls reach the envs)."""
    for item in schema["paths"].values():
        for op in item.values():
            for param in op.get("parameters", []):
                if param.get("name") == "X-Session-ID":
                    param["schema"] = {"type": "string", "enum": sids}
    return schema


def test_fuzzed_requests_never_get_a_server_error(tmp_path: Path) -> None:
    st = Path(sys.executable).with_name("schemathesis")
    with env_server("--db", str(tmp_path / "fuzz.db")) as url:
        schema = httpx.get(f"{url}/openapi.json").json()
        assert {"/{env}/call", "/create", "/v1/rollouts", "/api/rollouts/{event_id}", "/"} <= set(
            schema["paths"]
        )
        sids = []
        for env in ("gsm8k", "whodunit", "haiku"):
            for k in range(3):
                sid = f"fuzz-{env}-{k}"
                body = {"env_name": env, "split": "train", "index": k}
                r = httpx.post(f"{url}/create", json=body, headers={"X-Session-ID": sid})
                assert r.status_code == 200, r.text
                sids.append(sid)
        spec = tmp_path / "openapi.json"
        spec.write_text(json.dumps(_with_live_sessions(schema, sids)))
        har = tmp_path / "fuzz.har"
        run = subprocess.run(
            [
                str(st),
                "run",
                str(spec),
                "--url",
                url,
                "--checks",
                "not_a_server_error",
                "--max-examples",
                str(MAX_EXAMPLES),
                "--seed",
                "20261",
                "--workers",
                "1",  # hypothesis' lambda-source cache is not thread-safe in schemathesis 4.32
                "--phases",
                "examples,coverage,fuzzing",
                "--generation-database",
                "none",
                "--suppress-health-check",
                "all",
                "--request-timeout",
                "60",
                "--no-color",
                "--report",
                "har",
                "--report-har-path",
                str(har),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=1800,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        statuses = Counter(
            e["response"]["status"] for e in json.loads(har.read_text())["log"]["entries"]
        )
        print(f"schemathesis: {sum(statuses.values())} requests, statuses {dict(statuses)}")
        assert httpx.get(f"{url}/health", timeout=10).json() == {"status": "ok"}
        body = {"env_name": "gsm8k", "split": "test", "index": 0}
        after = {"X-Session-ID": "after-fuzz"}
        assert httpx.post(f"{url}/create", json=body, headers=after).status_code == 200
        r = httpx.post(
            f"{url}/gsm8k/call",
            json={"name": "calculator", "input": {"expression": "2+2"}},
            headers=after,
        )
        assert r.status_code == 200 and r.json()["output"]["blocks"][0]["text"] == "2+2 = 4"
    server_errors = {s: n for s, n in statuses.items() if s >= 500}
    assert not server_errors, f"{server_errors}\n{run.stdout[-6000:]}"
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert sum(statuses.values()) >= 2000
