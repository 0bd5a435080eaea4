"""The bridge's trajectory sink against the real env server: SDK event shapes, batching, spooling
through a real outage (server stopped and restarted), delivery by a later process, refusals."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO, env_server, free_port

from bridge.trajectory import Trajectory
from bridge.trajectory_codec import encode_line, trajectory_events
from bridge.trajectory_sink import DisabledSink, get_sink
from bridge.trajectory_spool import process_file
from bridge.trajectory_uploader import SinkSettings, TrajectoryUploader
from contract.config import parse_config

FAST = SinkSettings(backoff_base_s=0.2, backoff_cap_s=2.0, max_age_s=0.2)
OUTAGE_S = float(os.environ.get("TRAJ_OUTAGE_SECONDS", "0"))
# trajectories spooled during the outage: ~4 s at the producer's 10/s, past FAST's backoff cap
# (retries after 0.2, 0.4, 0.8, 1.6, 2.0 s)
OUTAGE_SPOOLED = 40


def make_trajectory(
    i: int = 0, run: str = "sink-run", env: str = "gsm8k", turns: int = 2, **over: Any
) -> Trajectory:
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": f"Task {i}: what is 2+2? <script>x()</script>"},
    ]
    rewards = []
    for t in range(turns):
        msgs.append(
            {
                "role": "assistant",
                "content": "Let me check." if t == 0 else "",
                "reasoning_content": f"thinking {t}",
                "tool_calls": [
                    {"id": f"call-{t}", "name": "calculator", "arguments": {"expr": "2+2"}},
                    {"id": f"call-{t}b", "name": "note", "arguments": '{"text": "hi"}'},
                ],
            }
        )
        last = t == turns - 1
        msgs.append(
            {
                "role": "tool",
                "tool_call_id": f"call-{t}",
                "name": "calculator",
                "content": "4",
                "reward": 1.0 if last else None,
                "finished": last,
                "is_error": False,
            }
        )
        msgs.append(
            {
                "role": "tool",
                "tool_call_id": f"call-{t}b",
                "name": "note",
                "content": "bad args",
                "reward": None,
                "finished": False,
                "is_error": True,
            }
        )
        rewards += [1.0 if last else None, None]
    fields = dict(
        run_name=run,
        env=env,
        split="train",
        index=i,
        task_spec=None,
        messages=msgs,
        turn_rewards=rewards,
        reward=1.0,
        reward_reduction="sum",
        stop_reason="env_finished",
        status="completed",
        num_turns=turns,
        num_tool_calls=2 * turns,
        tool_errors={"env_error": turns},
        drift_count=0,
        token_ids=list(range(100, 140)),
        prompt_length=10,
        loss_mask=[1] * 20 + [0] * 10,
        logprobs=[-0.5] * 20 + [0.0] * 10,
        timings={"generate": 0.5, "env": 0.1, "total": 0.7},
        group_index=i // 4,
        sample_index=i,
    )
    fields.update(over)
    return Trajectory(**fields)


@pytest.fixture(scope="module")
def traj_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("sink") / "trajectories.db"
    with env_server("--role", "trajectories", "--db", str(db)) as url:
        yield url


def run_rollouts(url: str, run: str) -> list[dict[str, Any]]:
    runs = {r["name"]: r["id"] for r in httpx.get(f"{url}/api/runs").json()["runs"]}
    if run not in runs:
        return []
    out, cursor = [], None
    while True:
        params = {"limit": 500, **({"after": cursor} if cursor else {})}
        page = httpx.get(f"{url}/api/runs/{runs[run]}/rollouts", params=params).json()
        out += page["rollouts"]
        cursor = page["next"]
        if not cursor:
            return out


# ---------------------------------------------------------------- event shapes


def test_events_are_exactly_what_the_sdk_sends() -> None:
    from openreward.api.rollouts.background import _encode_event
    from openreward.api.rollouts.serializers.models import NormalizedEvent
    from openreward.models import LogMessageEvent, RolloutStartedEvent, RolloutUpdateEvent

    events = trajectory_events(make_trajectory(3))
    kinds = {
        "rollout": RolloutStartedEvent,
        "message": LogMessageEvent,
        "rollout_update": RolloutUpdateEvent,
    }
    for ev in events:
        sdk_event = kinds[ev["eventType"]](**ev)  # every key is a field of the SDK's dataclass
        assert json.loads(_encode_event(sdk_event)) == ev  # and the SDK would encode it identically
        if ev["eventType"] == "message":
            NormalizedEvent(
                type=ev["type"],
                content=ev.get("content"),
                name=ev.get("name"),
                call_id=ev.get("callId"),
            )  # passes the SDK's own message validation
    assert [e["eventType"] for e in (events[0], events[-1])] == ["rollout", "rollout_update"]
    types = [e["type"] for e in events if e["eventType"] == "message"]
    assert types[:2] == ["system_message", "user_message"]
    assert types[2:9] == [
        "reasoning",
        "assistant_message",
        "tool_call",
        "tool_call",
        "tool_result",
        "tool_result",
        "reasoning",
    ]
    assert [e["index"] for e in events[1:-1]] == list(range(len(events) - 2))
    calls = [e for e in events if e.get("type") == "tool_call"]
    assert (
        json.loads(calls[0]["content"]) == {"expr": "2+2"}
        and calls[1]["content"] == '{"text": "hi"}'
    )
    results = [e for e in events if e.get("type") == "tool_result"]
    assert results[-2]["reward"] == 1.0 and results[-2]["isFinished"] is True
    assert results[1]["metadata"]["is_error"] is True


def test_trainer_data_rides_in_rollout_metadata() -> None:
    t = make_trajectory(5, extra={"tokenizer": "/models/qwen3", "model_name": "Qwen3-0.6B"})
    meta = trajectory_events(t)[0]["metadata"]
    for key in (
        "token_ids",
        "loss_mask",
        "logprobs",
        "turn_rewards",
        "reward_reduction",
        "stop_reason",
        "group_index",
        "sample_index",
        "timings",
        "prompt_length",
        "status",
        "reward",
    ):
        assert meta[key] == getattr(t, key), key
    assert meta["tokenizer"] == "/models/qwen3"
    # event ids are stable: re-encoding a trajectory (spool replay) cannot create duplicates
    assert trajectory_events(t) == trajectory_events(t)


def test_hosted_requests_respect_the_sdk_batch_limits(tmp_path: Path) -> None:
    from bridge.trajectory_uploader import HOSTED_SETTINGS

    up = TrajectoryUploader(
        "http://127.0.0.1:9",
        str(tmp_path),
        "r",
        hosted=True,
        settings=dataclasses.replace(HOSTED_SETTINGS, max_batch_bytes=50_000),
    )
    big = make_trajectory(
        0, turns=30, token_ids=list(range(20_000)), loss_mask=[1] * 19_990, logprobs=[-0.5] * 19_990
    )
    bodies = up._requests([encode_line(trajectory_events(big))])
    decoded = [json.loads(b)["events"] for b in bodies]
    assert all(
        len(evs) <= 128 and len(b) <= 50_000 for evs, b in zip(decoded, bodies, strict=False)
    )
    flat = [e for evs in decoded for e in evs]
    assert len(flat) == len(trajectory_events(big)) and flat[0]["eventType"] == "rollout"
    assert "token_ids" not in flat[0]["metadata"] and "tokens_omitted" in flat[0]["metadata"]
    local = TrajectoryUploader(
        "http://127.0.0.1:9",
        str(tmp_path),
        "r",
        settings=dataclasses.replace(FAST, max_batch_bytes=50_000),
    )
    first = json.loads(local._requests([encode_line(trajectory_events(big))])[0])["events"][0]
    assert first["metadata"]["token_ids"] == big.token_ids  # the local server gets everything


def test_local_requests_join_whole_trajectories_within_limits(tmp_path: Path) -> None:

    up = TrajectoryUploader(
        "http://127.0.0.1:9",
        str(tmp_path),
        "r",
        settings=dataclasses.replace(FAST, max_batch_events=40),
    )
    trajs = [make_trajectory(i) for i in range(5)]
    trajs[1].messages[1]["content"] = 'tricky {"eventType": "rollout"} "eventType":'
    bodies = up._requests([encode_line(trajectory_events(t)) for t in trajs])
    decoded = [json.loads(b)["events"] for b in bodies]
    assert [len(evs) for evs in decoded] == [30, 30, 15]  # 15 events per trajectory, never split
    assert [e for evs in decoded for e in evs] == [e for t in trajs for e in trajectory_events(t)]


# ---------------------------------------------------------------- delivery


async def test_sink_delivers_everything_with_token_data(traj_server: str, tmp_path: Path) -> None:
    up = TrajectoryUploader(traj_server, str(tmp_path / "spool"), "deliver-run", settings=FAST)
    trajs = [
        make_trajectory(i, run="deliver-run", env=["gsm8k", "whodunit"][i % 2]) for i in range(40)
    ]
    for t in trajs:
        up.submit(t)  # synchronous, returns at once
    assert await up.flush(60)
    await up.close()
    rows = run_rollouts(traj_server, "deliver-run")
    assert len(rows) == 40 and up.stats["delivered"] == 40 and up.stats["spooled"] == 0
    one = httpx.get(f"{traj_server}/api/rollouts/{rows[0]['event_id']}").json()
    src = next(t for t in trajs if t.index == one["task_index"])
    assert (
        one["tokens"]["token_ids"] == src.token_ids and one["tokens"]["loss_mask"] == src.loss_mask
    )
    assert one["tokens"]["logprobs"] == pytest.approx(src.logprobs)
    assert one["reward_reduction"] == "sum" and one["metadata"]["turn_rewards"] == src.turn_rewards
    assert (
        one["group_key"] == f"train:{src.invocation}:{src.group_index}"
        and one["num_messages"] == 13
    )  # 2 + 6 + 5 (no empty assistant text)


async def test_full_queue_spools_instead_of_dropping(traj_server: str, tmp_path: Path) -> None:
    up = TrajectoryUploader(
        traj_server,
        str(tmp_path / "spool"),
        "overflow-run",
        settings=dataclasses.replace(FAST, queue_size=3),
    )
    for i in range(30):
        up.submit(make_trajectory(i, run="overflow-run"))
    assert up.stats["spooled"] > 0
    assert await up.flush(60)
    await up.close()
    assert len(run_rollouts(traj_server, "overflow-run")) == 30


async def test_submit_never_raises(tmp_path: Path) -> None:
    up = TrajectoryUploader("http://127.0.0.1:9", str(tmp_path / "spool"), "x", settings=FAST)
    up.submit("not a trajectory")  # type: ignore[arg-type]
    up.submit(make_trajectory(0))
    await up.close(timeout=0.5)
    assert up.stats["spooled"] >= 1  # the good one is on disk, waiting for a server


async def test_refused_trajectory_is_kept_and_does_not_block_the_others(
    traj_server: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    up = TrajectoryUploader(traj_server, str(spool), "refuse-run", settings=FAST)
    for i in range(5):
        up.submit(make_trajectory(i, run="refuse-run", rollout_id="" if i == 2 else f"{i:032x}"))
    assert await up.flush(60)
    await up.close()
    assert len(run_rollouts(traj_server, "refuse-run")) == 4
    rejected = list(spool.glob("rejected-*.jsonl"))
    assert len(rejected) == 1 and up.stats["rejected"] == 1
    kept = [json.loads(line) for line in rejected[0].read_text().splitlines()]
    assert kept[0]["events"][0]["eventId"] == "" and kept[0]["events"][0]["runName"] == "refuse-run"


def test_spool_left_by_a_dead_process_is_delivered(traj_server: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    child = f"""
import asyncio, os, sys
sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / "tests")!r})
from test_trajectory_sink import make_trajectory, FAST
from bridge.trajectory_uploader import TrajectoryUploader
async def main():
    up = TrajectoryUploader("http://127.0.0.1:9", {str(spool)!r}, "orphan-run", settings=FAST)
    for i in range(12):
        up.submit(make_trajectory(i, run="orphan-run"))
    while up.stats["spooled"] < 12:
        await asyncio.sleep(0.05)
    os._exit(0)  # dies without close(): the active spool file is orphaned
asyncio.run(main())
"""
    subprocess.run(
        [sys.executable, "-c", child],
        check=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    left = sorted(p.name.rsplit(".", 2)[1] for p in spool.glob("*.jsonl"))
    assert left == ["active", "journal"]  # the journal is empty: all 12 were spooled

    async def deliver() -> TrajectoryUploader:
        up = TrajectoryUploader(traj_server, str(spool), "orphan-run", settings=FAST)
        assert await up.flush(60)
        await up.close()
        return up

    asyncio.run(deliver())
    assert len(run_rollouts(traj_server, "orphan-run")) == 12
    assert not list(spool.glob("*.jsonl"))


async def until(what: str, predicate: Callable[[], bool], timeout: float = 120.0) -> None:
    """Wait (on the loop) until `predicate()` holds; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        await asyncio.sleep(0.05)


async def test_outage_loses_nothing_and_stores_each_trajectory_once(tmp_path: Path) -> None:
    """Stop the real server while the run keeps submitting: the outage lasts until the uploader
    has spooled OUTAGE_SPOOLED trajectories it could not send (its backoff at the cap), and at
    least TRAJ_OUTAGE_SECONDS (a longer soak); then the server comes back on the same port and
    every trajectory is stored once."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = tmp_path / "outage.db"
    up = TrajectoryUploader(url, str(tmp_path / "spool"), "outage-run", settings=FAST)
    submitted: list[str] = []
    stop = asyncio.Event()

    async def producer() -> None:
        i = 0
        while not stop.is_set():
            t = make_trajectory(i, run="outage-run")
            up.submit(t)
            submitted.append(t.rollout_id)
            i += 1
            await asyncio.sleep(0.1)

    with contextlib.ExitStack() as stack:
        await asyncio.to_thread(
            stack.enter_context, env_server("--role", "trajectories", "--db", str(db), port=port)
        )
        task = asyncio.create_task(producer())
        await until("a first delivery", lambda: up.stats["delivered"] > 0)
        assert len(run_rollouts(url, "outage-run")) > 0
    # server stopped (process terminated): keep generating
    t_down = time.monotonic()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/health", timeout=1)
    await until(
        f"{OUTAGE_SPOOLED} trajectories spooled",
        lambda: up.stats["spooled"] >= OUTAGE_SPOOLED and time.monotonic() - t_down >= OUTAGE_S,
        timeout=OUTAGE_S + 120,
    )
    with contextlib.ExitStack() as stack:
        await asyncio.to_thread(
            stack.enter_context, env_server("--role", "trajectories", "--db", str(db), port=port)
        )
        delivered = up.stats["delivered"]
        # the uploader finds the server back on its own (its next retry), before any flush
        await until("a delivery after the outage", lambda: up.stats["delivered"] > delivered)
        stop.set()
        await task
        assert await up.flush(120)
        await up.close()
        rows = run_rollouts(url, "outage-run")
        ids = [r["event_id"].replace("-", "") for r in rows]
        assert len(ids) == len(set(ids)) == len(submitted)
        assert set(ids) == set(submitted)
        assert {r["num_messages"] for r in rows} == {13}
    assert not list((tmp_path / "spool").glob("*.jsonl"))


# ---------------------------------------------------------------- configuration


def _config(**traj: Any):
    return parse_config(
        {
            "environments": {"gsm8k": {}},
            "env_server": "http://127.0.0.1:8123",
            "run_name": "cfg-run",
            "trajectories": traj,
        }
    )


async def test_get_sink_is_one_per_loop_and_reads_the_config(tmp_path: Path) -> None:
    cfg = _config(spool_dir=str(tmp_path / "s"))
    a, b = get_sink(cfg), get_sink(cfg)
    assert a is b and isinstance(a, TrajectoryUploader)
    assert a.url == "http://127.0.0.1:8123" and a.spool.dir == tmp_path / "s"
    assert isinstance(get_sink(_config(enabled=False)), DisabledSink)
    other = get_sink(_config(url="http://127.0.0.1:8999/", spool_dir=str(tmp_path / "s")))
    assert other is not a and other.url == "http://127.0.0.1:8999"
    seen = await asyncio.to_thread(lambda: asyncio.run(_sink_in_new_loop(cfg)))
    assert seen is not a
    await a.close(0.1)


async def _sink_in_new_loop(cfg) -> Any:
    s = get_sink(cfg)
    await s.close(0.1)
    return s


async def test_hosted_target_speaks_to_openreward_api_url(
    traj_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENREWARD_API_URL", traj_server)
    monkeypatch.setenv("OPENREWARD_API_KEY", "k-123")
    sink = get_sink(_config(target="openreward", spool_dir=str(tmp_path / "s")))
    assert (
        isinstance(sink, TrajectoryUploader)
        and sink.hosted
        and sink.settings.max_batch_events == 128
    )
    long = make_trajectory(
        0, run="hosted-run", env="GeneralReasoning/WhoDunIt", turns=30
    )  # > 128 events
    sink.submit(long)
    assert await sink.flush(60)
    await sink.close()
    rows = run_rollouts(traj_server, "hosted-run")
    assert len(rows) == 1 and rows[0]["num_messages"] == 2 + 6 + 29 * 5
    r = httpx.get(f"{traj_server}/api/rollouts/{rows[0]['event_id']}").json()
    assert r["environment_id"] == "local:GeneralReasoning/WhoDunIt"


LEFT_BY_A_KILLED_RUN = """
import os, signal, sys
sys.path[:0] = [{repo!r}, {tests!r}]
from test_trajectory_sink import make_trajectory
from bridge.trajectory_uploader import TrajectoryUploader
up = TrajectoryUploader({url!r}, {spool!r}, {run!r}, api_key="k-1", hosted={hosted!r})
for i in range({n}):
    up.submit(make_trajectory(i, run={run!r}))  # no loop: spooled at once
os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_run(spool: Path, url: str, run: str, n: int, hosted: bool) -> None:
    code = LEFT_BY_A_KILLED_RUN.format(
        repo=str(REPO),
        tests=str(REPO / "tests"),
        url=url,
        spool=str(spool),
        run=run,
        n=n,
        hosted=hosted,
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == -9, done.stderr[-2000:]


def deliver_spool(url: str, spool: Path, run: str, hosted: bool = False) -> dict[str, int]:
    """One sink delivering what it may take from `spool` (as run.sh's leftovers, the job's
    entrypoint, or the next run do); its stats."""

    async def go() -> dict[str, int]:
        up = TrajectoryUploader(url, str(spool), run, api_key="k-1", hosted=hosted, settings=FAST)
        assert await up.flush(60)
        await up.close()
        return up.stats

    return asyncio.run(go())


def test_a_spool_dir_shared_by_a_local_and_a_hosted_target_delivers_each_to_its_own(
    traj_server: str, tmp_path: Path
) -> None:
    """A run uploading to a hosted account and a run storing locally, both killed, one spool dir
    (the config's folder). Before, the next local run's sink took the hosted run's episodes into
    the local store, and the next hosted run uploaded the local run's to the account (with its
    key). Now each hosted target has its own folder in the spool dir."""
    spool, port = tmp_path / "spool", free_port()
    hosted = f"http://127.0.0.1:{port}"  # down while the runs play, as a hosted API can be
    _killed_run(spool, hosted, "to-hosted", 4, hosted=True)
    _killed_run(spool, "http://127.0.0.1:9", "to-local", 3, hosted=False)
    assert deliver_spool(traj_server, spool, "next-local", hosted=False)["delivered"] == 3
    assert run_rollouts(traj_server, "to-hosted") == []
    assert len(run_rollouts(traj_server, "to-local")) == 3
    with env_server("--role", "trajectories", "--db", str(tmp_path / "h.db"), port=port):
        assert deliver_spool(hosted, spool, "next-hosted", hosted=True)["delivered"] == 4
        assert len(run_rollouts(hosted, "to-hosted")) == 4
        assert run_rollouts(hosted, "to-local") == []
    assert [p.name for p in spool.rglob("*.jsonl")] == []


# ---------------------------------------------------------------- losing nothing (issue 13)


def dead_pid() -> int:
    """The pid of a process that has exited (as a crashed trainer's would be)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


async def test_torn_lines_are_quarantined_and_never_stall_delivery(
    traj_server: str, tmp_path: Path
) -> None:
    """One torn line once stopped its spool file for good (the spool task died silently, and so
    did every later process on the same file). Torn spool and journal lines are set aside."""
    from bridge.trajectory_codec import journal_line

    spool = tmp_path / "spool"
    spool.mkdir()
    pid = dead_pid()
    units = [encode_line(trajectory_events(make_trajectory(i, run="torn-run"))) for i in range(6)]
    torn = units[2][: len(units[2]) // 2]
    (spool / f"torn-run-aaaa0000.{pid}.active.jsonl").write_bytes(
        b"\n".join([units[0], units[1], torn, b"garbage", units[3], units[4][:-1]]) + b"\n"
    )
    journaled = [journal_line(make_trajectory(i, run="torn-run")) for i in range(10, 13)]
    (spool / f"torn-run-bbbb0000.{pid}.journal.jsonl").write_bytes(
        b"\n".join([*journaled, journaled[0][:40]])  # killed in the middle of a write
    )
    up = TrajectoryUploader(traj_server, str(spool), "torn-run", settings=FAST)
    assert await up.flush(60)
    await up.close()
    stored = {r["task_index"] for r in run_rollouts(traj_server, "torn-run")}
    assert stored == {0, 1, 3, 10, 11, 12}
    assert up.stats["quarantined"] == 4 and up.stats["recovered"] == 3
    quarantined = process_file(spool, "quarantine").read_bytes().splitlines()
    assert sorted(quarantined) == sorted([torn, b"garbage", units[4][:-1], journaled[0][:40]])
    assert [p.name for p in spool.glob("*.jsonl")] == [process_file(spool, "quarantine").name]


async def test_a_journal_line_of_any_shape_is_quarantined_and_never_blocks_the_spool(
    traj_server: str, tmp_path: Path
) -> None:
    """Journal lines that parse but are not trajectories one can send (a trajectory whose
    messages are numbers, whose timings are a list, a JSON list): each once made every spool
    pass fail, so nothing after it was ever delivered. Each is set aside; the rest arrive."""
    from bridge.trajectory_codec import journal_line

    spool = tmp_path / "spool"
    spool.mkdir()
    pid = dead_pid()
    good = [journal_line(make_trajectory(i, run="shape-run")) for i in range(3)]
    fields = json.loads(good[0])
    wrong = [
        json.dumps({**fields, "rollout_id": "wrong-1", "messages": [5, 6]}).encode(),
        json.dumps({**fields, "rollout_id": "wrong-2", "timings": [1, 2]}).encode(),
        json.dumps({**fields, "rollout_id": "wrong-3", "extra": "not a dict"}).encode(),
        b"[1, 2, 3]",
    ]
    (spool / f"shape-run-cccc0000.{pid}.journal.jsonl").write_bytes(
        b"\n".join([good[0], *wrong[:2], good[1], *wrong[2:], good[2]]) + b"\n"
    )
    up = TrajectoryUploader(traj_server, str(spool), "shape-run", settings=FAST)
    assert await up.flush(60), up.stats
    await up.close()
    assert {r["task_index"] for r in run_rollouts(traj_server, "shape-run")} == {0, 1, 2}
    assert up.stats["quarantined"] == 4 and up.stats["recovered"] == 3
    quarantined = process_file(spool, "quarantine").read_bytes().splitlines()
    assert sorted(quarantined) == sorted(wrong)


FULL_DISK_CHILD = """
import asyncio, json, logging, os, resource, signal, sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
logging.basicConfig(level=logging.ERROR, stream=sys.stderr, format="%(message)s")
from test_trajectory_sink import make_trajectory, FAST
from bridge.trajectory_uploader import SinkSettings, TrajectoryUploader
# One delivery attempt, then a long backoff: the spool file is not rotated while the episodes
# arrive, so it must outgrow the limit (a per-file limit; rotations could dodge it otherwise).
SLOW = SinkSettings(backoff_base_s=60.0, backoff_cap_s=60.0, max_age_s=0.2)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
async def main():
    up = TrajectoryUploader({url!r}, {spool!r}, "disk-run", settings=SLOW)
    for i in range(1000):
        up.submit(make_trajectory(i, run="disk-run"))
        if i % 50 == 0:
            await asyncio.sleep(0.01)
    await asyncio.sleep(1)
    print("submitted", flush=True)
    sys.stdin.readline()  # the parent starts the server
    ok = await up.flush(180)
    ok = await up.close() and ok
    print(json.dumps({{"ok": ok, **up.stats}}), flush=True)
asyncio.run(main())
"""


def test_a_full_disk_degrades_loudly_and_loses_nothing(tmp_path: Path) -> None:
    """1,000 episodes while the server is down and files cannot grow past 2 MiB (RLIMIT_FSIZE in
    a child process: every write past it fails with EFBIG, as on a full disk). Once, 586 of
    1,000 were lost this way; now what does not fit stays in memory and is sent later."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spool = tmp_path / "spool"
    code = FULL_DISK_CHILD.format(
        repo=str(REPO), tests=str(REPO / "tests"), limit=2 << 20, url=url, spool=str(spool)
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "submitted"
        with env_server("--role", "trajectories", "--db", str(tmp_path / "d.db"), port=port):
            child.stdin.write("go\n")
            child.stdin.flush()
            out, err = child.communicate(timeout=300)
            stats = json.loads(out.strip().splitlines()[-1])
            rows = run_rollouts(url, "disk-run")
    finally:
        if child.poll() is None:
            child.kill()
    assert stats["ok"] and stats["lost"] == 0 and len(rows) == 1000, (stats, err[-2000:])
    # the spool file filled up (each episode counted once), and the log said so:
    assert 0 < stats["in_memory_only"] <= 1000, (stats, err[-2000:])
    assert "could not be spooled" in err and "File too large" in err
    assert len({r["event_id"] for r in rows}) == 1000


KILL_CHILD = """
import asyncio, os, signal, sys, time
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from test_trajectory_sink import make_trajectory, FAST
from bridge.trajectory_uploader import TrajectoryUploader
async def main():
    up = TrajectoryUploader({url!r}, {spool!r}, "kill-run", settings=FAST)
    took = []
    for i in range(300):
        t = time.perf_counter()
        up.submit(make_trajectory(i, run="kill-run", turns=1 + i % 10))
        took.append(time.perf_counter() - t)
        if i % 10 == 0:
            await asyncio.sleep(0)  # let the uploader run (and spool) as it would in training
    took.sort()
    print(f"submit p50 {{took[150] * 1e3:.3f}} ms p99 {{took[296] * 1e3:.3f}} ms", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # right after the last submit returned
asyncio.run(main())
"""


def test_kill_9_right_after_submit_loses_nothing(traj_server: str, tmp_path: Path) -> None:
    """A kill -9 of the training process once lost the 4-7% of episodes still in memory: every
    episode is now in the journal (the OS page cache) before submit() returns."""
    spool = tmp_path / "spool"
    code = KILL_CHILD.format(
        repo=str(REPO),
        tests=str(REPO / "tests"),
        url=f"http://127.0.0.1:{free_port()}",
        spool=str(spool),
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -9, done.stderr[-2000:]
    print(done.stdout.strip())  # submit latency in the child (provisional: a shared machine)

    async def deliver() -> TrajectoryUploader:
        up = TrajectoryUploader(traj_server, str(spool), "kill-run", settings=FAST)
        assert await up.flush(120)
        await up.close()
        return up

    up = asyncio.run(deliver())
    assert {r["task_index"] for r in run_rollouts(traj_server, "kill-run")} == set(range(300))
    assert up.stats["recovered"] > 0 and up.stats["quarantined"] == 0
    assert [p.name for p in spool.glob("*.jsonl")] == []
