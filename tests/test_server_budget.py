"""The env server under load and abuse: the CPU budget never blames the model, one session or
client cannot take the server, and what a client sends is bounded before it costs anything.

Served over real HTTP on 127.0.0.1: `BudgetProbe` (tests/budget_probe.py) behind create_app with
the trajectory service, and the real environments behind `python -m envs.server`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from budget_probe import N_TASKS, budget_probe_server
from conftest import env_server

from contract.vocab import ToolErrorKind

SSE = {"Accept": "text/event-stream"}


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A probe server with a 0.15 s budget and three stops per session."""
    db = tmp_path_factory.mktemp("budget") / "t.db"
    with budget_probe_server(tool_budget_s=0.15, max_stopped_calls=3, db=str(db)) as (url, _):
        yield url


def _create(url: str, sid: str, **body: Any) -> httpx.Response:
    payload = {"env_name": "probe", "split": "train", "index": 0, **body}
    return httpx.post(f"{url}/create", json=payload, headers={"X-Session-ID": sid}, timeout=30)


def _call(url: str, sid: str, name: str, args: dict[str, Any], sse: bool = True) -> Any:
    headers = {"X-Session-ID": sid, **(SSE if sse else {})}
    r = httpx.post(
        f"{url}/probe/call", json={"name": name, "input": args}, headers=headers, timeout=120
    )
    if not sse:
        return r
    assert r.status_code == 200, r.text
    data = [ln[5:].strip() for ln in r.text.splitlines() if ln.startswith("data:")]
    return json.loads("".join(data[1:]))  # after the task_id event


def _state(url: str, sid: str) -> dict[str, Any]:
    return json.loads(_call(url, sid, "state", {})["output"]["blocks"][0]["text"])


# ---------------------------------------------------------------- a stopped call is the server's


def test_a_stopped_call_is_the_servers_fact_and_leaves_no_trace(probe: str) -> None:
    """A call over its CPU budget is answered `budget_exceeded` (not `input_validation`): the
    client counts it as the server's, and the env is as it was: a stopped submission neither
    finishes the episode nor spends the answer."""
    from bridge.env_local import _tool_result

    assert _create(probe, "stop-1").status_code == 200
    res = _call(probe, "stop-1", "submit", {"answer": "spin"})
    assert res["ok"] is False and res["reason"] == "budget_exceeded", res
    assert "the server stopped submit" in res["error"] and "not a fault" in res["error"]
    assert _tool_result(res).error_kind is ToolErrorKind.BUDGET_EXCEEDED
    assert _state(probe, "stop-1") == {
        "submissions": 0,
        "history": [],
        "finished": False,
        "listed": _state(probe, "stop-1")["listed"],
    }
    done = _call(probe, "stop-1", "submit", {"answer": "42"})
    assert done["ok"] and done["output"]["finished"] and done["output"]["reward"] == 1.0
    # a plain-JSON client gets the server's status for it, not the model's 422
    _create(probe, "stop-json")
    r = _call(probe, "stop-json", "spin", {}, sse=False)
    assert r.status_code == 503 and r.json()["reason"] == "budget_exceeded"


def test_stopped_calls_count_against_their_session(probe: str) -> None:
    """One session cannot repeat a maximal call for ever: its third stopped call ends it."""
    assert _create(probe, "hog-1").status_code == 200
    for _ in range(2):
        assert _call(probe, "hog-1", "spin", {})["reason"] == "budget_exceeded"
    last = _call(probe, "hog-1", "spin", {})
    assert last["reason"] == "budget_exceeded" and "is closed" in last["error"]
    r = httpx.post(f"{probe}/ping", headers={"X-Session-ID": "hog-1"})
    assert r.status_code == 410 and r.json()["reason"] == "session_over_budget", r.text
    metrics = httpx.get(f"{probe}/metrics").text
    assert "ors_sessions_over_budget_total 1" in metrics
    assert 'tool="spin",status="budget_exceeded"} ' in metrics


def test_the_bridge_counts_stopped_calls_apart_from_the_models_errors() -> None:
    from bridge import metrics
    from bridge.sample import FallbackSample

    md = {
        "env": "gsm8k",
        "stop_reason": "env_finished",
        "num_turns": 2,
        "num_tool_calls": 3,
        "tool_errors": {"budget_exceeded": 2, "invalid_arguments": 1},
    }
    s = FallbackSample(metadata=md, reward=1.0)
    s.status = FallbackSample.Status.COMPLETED
    got = metrics.episode_metrics([s])["all"]
    assert got["server_stopped_calls"] == 2 and got["tool_errors/budget_exceeded"] == 2
    assert got["tool_errors_total"] == 1  # the model's own


# ---------------------------------------------------------------- CPU time, not wall time


def _rollout_events(i: int, turns: int = 20) -> list[dict[str, Any]]:
    rid = f"load-{i}"
    ts = 1_700_000_000_000 + i
    events: list[dict[str, Any]] = [
        {"eventType": "rollout", "eventId": rid, "timestamp": ts, "runName": "load"}
    ]
    for k in range(2 * turns):
        events.append(
            {
                "eventType": "message",
                "eventId": f"{rid}-{k}",
                "rolloutEventId": rid,
                "timestamp": ts,
                "index": k,
                "type": "tool_call" if k % 2 == 0 else "tool_result",
                "content": f"step {k}: a torn letter mentions the garden at midnight. " * 4,
            }
        )
    return events


def _hogs(n: int) -> list[subprocess.Popen]:
    """`n` processes that keep every core busy (the test stops them)."""
    spin = "import time\nt = time.time() + 120\nwhile time.time() < t: pass\n"
    return [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(n)]


def test_no_legitimate_call_is_stopped_on_a_loaded_machine(probe: str) -> None:
    """Calls that each use 30 ms of CPU against a 150 ms budget, on a machine kept busy by
    other processes, while uploads arrive and full garbage collections of a large heap run in
    the middle of the calls: none is stopped (the budget counts the call's own CPU; a
    collection and the time the machine gave to others are not the call's)."""
    hogs = _hogs(2 * (os.cpu_count() or 2))
    stop = threading.Event()
    uploaded = [0]

    def upload() -> None:
        with httpx.Client(timeout=60) as c:
            i = 0
            while not stop.is_set():
                events = [e for k in range(8) for e in _rollout_events(i + k)]
                r = c.post(f"{probe}/v1/rollouts", json={"events": events})
                assert r.status_code == 200, r.text
                uploaded[0] += 8
                i += 8

    uploader = threading.Thread(target=upload, daemon=True)
    results: list[dict[str, Any]] = []
    try:
        uploader.start()
        for e in range(6):
            sid = f"loaded-{e}"
            assert _create(probe, sid).status_code == 200
            for k in range(3):
                results.append(_call(probe, sid, "work", {"ms": 30, "collect": k == 1}))
    finally:
        stop.set()
        for h in hogs:
            h.kill()
            h.wait()
        uploader.join(60)
    assert uploaded[0] > 0
    stopped = [r for r in results if not r["ok"]]
    assert not stopped, f"{len(stopped)} of {len(results)} legitimate calls stopped: {stopped[0]}"
    assert 'tool="work",status="budget_exceeded"' not in httpx.get(f"{probe}/metrics").text


# ---------------------------------------------------------------- listing and loading tasks


def test_task_lists_are_built_once_and_task_loading_has_a_budget(probe: str) -> None:
    """The listing endpoints serve a split's list as built once (they rebuilt 10,000 specs per
    request), and an env coroutine that loads a task is stopped at the budget (503)."""
    _create(probe, "lists")
    before = _state(probe, "lists")["listed"]
    for _ in range(5):
        r = httpx.post(f"{probe}/probe/tasks", json={"split": "train"}, timeout=60)
        assert r.status_code == 200 and len(r.json()["tasks"]) == N_TASKS
    r = httpx.post(f"{probe}/probe/task_range", json={"split": "train", "start": -3}, timeout=60)
    assert [t["i"] for t in r.json()["tasks"]] == [N_TASKS - 3, N_TASKS - 2, N_TASKS - 1]
    r = httpx.post(f"{probe}/probe/task_range", json={"split": "train", "start": 5, "stop": 2})
    assert r.json() == {"tasks": [], "env_name": "probe"}
    r = httpx.post(f"{probe}/probe/num_tasks", json={"split": "train"})
    assert r.json() == {"num_tasks": N_TASKS}
    assert _state(probe, "lists")["listed"] - before <= 1
    t0 = time.monotonic()
    r = httpx.post(f"{probe}/probe/task", json={"split": "spin", "index": 0}, timeout=30)
    assert r.status_code == 503 and r.json()["reason"] == "budget_exceeded", r.text
    assert int(r.headers["retry-after"]) > 0 and time.monotonic() - t0 < 20
    r = _create(probe, "spin-task", split="spin")
    assert r.status_code == 503 and r.json()["reason"] == "budget_exceeded", r.text
    assert httpx.get(f"{probe}/health").status_code == 200


# ---------------------------------------------------------------- bounded at the door


def test_deeply_nested_bodies_are_refused_at_the_door(server_url: str) -> None:
    """A task spec nested 300 deep was accepted and then made every tool call of its session a
    500 (its hash could not serialise it): refused with a 400 now, and never a 5xx."""
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    spec = {"question": "What is 2+2?", "label": "4", "deep": deep}
    sid = {"X-Session-ID": "deep-1"}
    r = httpx.post(
        f"{server_url}/create", json={"env_name": "gsm8k", "task_spec": spec}, headers=sid
    )
    assert r.status_code == 400 and r.json()["reason"] == "json_too_deep", r.text
    body = {"env_name": "gsm8k", "split": "test", "index": 0}
    assert httpx.post(f"{server_url}/create", json=body, headers=sid).status_code == 200
    r = httpx.post(
        f"{server_url}/gsm8k/call",
        json={"name": "calculator", "input": {"expression": "1", "x": deep}},
        headers=sid,
    )
    assert r.status_code == 400 and r.json()["reason"] == "json_too_deep", r.text
    r = httpx.post(
        f"{server_url}/gsm8k/call",
        json={"name": "calculator", "input": {"expression": "2+2"}},
        headers=sid,
    )
    assert r.status_code == 200 and r.json()["output"]["blocks"][0]["text"] == "2+2 = 4"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _server_pid(url: str) -> int:
    port = url.rsplit(":", 1)[1]
    out = subprocess.run(
        ["ss", "-Htlnp", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split("pid=")[1].split(",")[0])


def test_a_sessions_memory_is_bounded_whatever_its_calls_send() -> None:
    """One session's 80 calculator calls with 900 KiB expressions: each once stayed with the
    session (RSS 295 -> 691 MB for one session); what a session keeps is bounded now."""
    with env_server("--role", "env", "--envs", "gsm8k") as url:
        pid = _server_pid(url)
        sid = {"X-Session-ID": "mem-1"}
        body = {"env_name": "gsm8k", "split": "test", "index": 0}
        assert httpx.post(f"{url}/create", json=body, headers=sid).status_code == 200
        expr = "1+" * (450 << 10)
        call = {"name": "calculator", "input": {"expression": expr}}
        with httpx.Client(timeout=60) as c:
            assert c.post(f"{url}/gsm8k/call", json=call, headers=sid).json()["ok"]
            before = _rss_mb(pid)
            for _ in range(80):
                assert c.post(f"{url}/gsm8k/call", json=call, headers=sid).json()["ok"]
            grown = _rss_mb(pid) - before
        metrics = httpx.get(f"{url}/metrics").text
    assert grown < 30, f"one session's calls grew the server by {grown:.0f} MB"
    assert "ors_call_records_cut_total 81" in metrics


# ---------------------------------------------------------------- one client, one share


def test_one_client_cannot_take_every_session() -> None:
    """A client (its peer address) holds at most 3/4 of --max-sessions: another client still
    gets a session (once, one client took every slot in under 2 s)."""
    with env_server("--role", "env", "--envs", "gsm8k", "--max-sessions", "8") as url:
        body = {"env_name": "gsm8k", "split": "test", "index": 0}
        greedy = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        with greedy:
            codes = [
                greedy.post(f"{url}/create", json=body, headers={"X-Session-ID": f"g{i}"})
                for i in range(8)
            ]
        assert [r.status_code for r in codes] == [200] * 6 + [429, 429]
        assert codes[-1].json()["reason"] == "client_limit" and "retry-after" in codes[-1].headers
        for i in range(2):
            r = httpx.post(f"{url}/create", json=body, headers={"X-Session-ID": f"other-{i}"})
            assert r.status_code == 200, r.text
