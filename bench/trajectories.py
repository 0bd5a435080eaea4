"""Benchmark of the trajectory service, against `python -m envs.server --role trajectories`.

1. Ingest: 20-turn rollouts through POST /v1/rollouts (target >= 500 rollouts/s), as the bridge's
   sink sends them (8 rollouts per request, with token ids / loss mask / logprobs in metadata) and
   as the stock SDK batches them (128 events per request, messages only). Baseline: the naive
   store, one INSERT per event and one commit per INSERT.
2. Rollout list of a 100,000-rollout run (target < 300 ms server time): first page, a filtered +
   reward-sorted page, a page 90,000 rows deep (keyset cursor), and the whole HTML page.
   Baseline: the same deep page with LIMIT/OFFSET.
3. The bridge's sink: submit() latency (each episode journaled to disk before it returns; goal
   p99 < 1 ms) and end-to-end delivery.
4. Server memory while 20 clients read one 63 MB rollout, 8 rounds, half of them slow readers
   who leave early (goal: RSS afterwards within 2x of idle; once 165 MB -> 6.3 GB).
5. Linear ingest (issue 22): 8,000 twins (rollouts of one GRPO group reporting the same group
   tripwire key) and 4,000 rollout_updates of one rollout, 100 per request (goal: each in
   seconds; once 409 s and 76 s). Linearity: a request's time at the end over at the start
   (1.0 is linear). An unrelated upload (one 20-turn rollout of another run) meanwhile: its p99
   over its p99 on the quiet server (goal < 2x: never blocked behind them).
6. The runs index of 100,000 runs (goal: a page in < 300 ms; once 4.6 s and 26 MB for the whole
   list). Baseline: the whole list, in-process (what the index answered before it paged).

    .venv/bin/python bench/trajectories.py [--rollouts 2000] [--list-rows 100000]

Numbers on a shared 2-core machine are noisy; the load generator shares the cores with the server.

Long on purpose: one script runs every scenario side by side with its baseline, as one
benchmark run; each section is one banner.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import orjson

REPO = Path(__file__).resolve().parent.parent
# bench/ holds scripts named like the packages (bench/bridge.py); keep it off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

from typing import Any  # noqa: E402

from bench.procs import free_port  # noqa: E402
from bridge.trajectory import Trajectory  # noqa: E402
from bridge.trajectory_codec import trajectory_events  # noqa: E402
from contract.trajectory_events import EventBatch  # noqa: E402
from envs.trajectories.store import TrajectoryStore  # noqa: E402

INGEST_TARGET = 500.0  # rollouts/s
LIST_TARGET_MS = 300.0


class Server:
    """`python -m envs.server --role trajectories` on a free loopback port."""

    def __init__(self, db: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "OPENREWARD_DISABLE_UPDATE_CHECK": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "envs.server",
                "--role",
                "trajectories",
                "--db",
                str(db),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            env=env,
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit("bench: server exited during startup")
            time.sleep(0.2)
        self.proc.kill()
        self.proc.wait()
        raise SystemExit("bench: server did not start")

    def cpu_seconds(self) -> dict[str, float]:
        """user+system CPU used so far by each thread of the server (Linux /proc), by thread
        name."""
        out: dict[str, float] = {}
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            name = "event loop" if task.name == str(self.proc.pid) else "other thread"
            out[f"{name}/{task.name}"] = (int(fields[11]) + int(fields[12])) / os.sysconf(
                "SC_CLK_TCK"
            )
        return out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def twenty_turn_trajectory(i: int, turns: int, with_tokens: bool, run: str = "bench") -> Trajectory:
    msgs: list[dict] = [
        {"role": "system", "content": "You are an agent. Use the tools to solve the task."},
        {"role": "user", "content": f"Task {i}: find the culprit among the suspects. " * 4},
    ]
    for t in range(turns):
        msgs.append(
            {
                "role": "assistant",
                "content": f"Step {t}: I will inspect the next clue carefully.",
                "reasoning_content": "Let me think about which tool gives the most information. "
                * 3,
                "tool_calls": [{"id": f"c{t}", "name": "view_exhibits", "arguments": {"page": t}}],
            }
        )
        msgs.append(
            {
                "role": "tool",
                "tool_call_id": f"c{t}",
                "name": "view_exhibits",
                "content": f"Exhibit {t}: a torn letter mentioning the garden at midnight. " * 3,
                "reward": 0.0 if t < turns - 1 else 1.0,
                "finished": t == turns - 1,
            }
        )
    n_resp = 150 * turns if with_tokens else 0
    return Trajectory(
        run_name=run,
        env=["gsm8k", "whodunit"][i % 2],
        split="train",
        index=i,
        task_spec=None,
        messages=msgs,
        turn_rewards=[0.0] * (turns - 1) + [1.0],
        reward=1.0,
        reward_reduction="sum",
        stop_reason="env_finished",
        status="completed",
        num_turns=turns,
        num_tool_calls=turns,
        tool_errors={},
        drift_count=0,
        token_ids=list(range(300 + n_resp)) if with_tokens else [],
        prompt_length=300 if with_tokens else 0,
        loss_mask=[1, 0] * (n_resp // 2),
        logprobs=[-0.123456] * n_resp,
        timings={"total": 12.5},
        group_index=i // 8,
        sample_index=i,
    )


async def post_all(url: str, bodies: list[bytes], concurrency: int) -> float:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            r = await client.post(
                f"{url}/v1/rollouts", content=body, headers={"content-type": "application/json"}
            )
            if r.status_code != 200:
                raise SystemExit(f"bench: ingest failed: {r.status_code} {r.text[:200]}")

    async with httpx.AsyncClient(timeout=120) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return time.perf_counter() - t0


def ingest_bodies(
    n: int,
    turns: int,
    with_tokens: bool,
    per_request: int | None,
    events_per_request: int | None,
    run: str,
) -> tuple[list[bytes], int]:
    all_events: list[list[dict]] = [
        trajectory_events(twenty_turn_trajectory(i, turns, with_tokens, run)) for i in range(n)
    ]
    if not with_tokens:
        for evs in all_events:
            meta = evs[0]["metadata"]
            for k in ("token_ids", "loss_mask", "logprobs"):
                meta.pop(k, None)
    bodies: list[bytes] = []
    if per_request:
        for i in range(0, n, per_request):
            bodies.append(
                orjson.dumps(
                    {"events": [e for evs in all_events[i : i + per_request] for e in evs]}
                )
            )
    else:
        flat = [e for evs in all_events for e in evs]
        for i in range(0, len(flat), events_per_request or 128):
            bodies.append(orjson.dumps({"events": flat[i : i + (events_per_request or 128)]}))
    return bodies, sum(len(e) for e in all_events)


def naive_baseline(n: int, turns: int, tmp: Path) -> float:
    """Rollouts/s of the naive store: one INSERT per event, one commit (fsync) per INSERT."""
    conn = sqlite3.connect(tmp / "naive.db", isolation_level=None)
    conn.execute(
        "CREATE TABLE events (event_id TEXT PRIMARY KEY, rollout TEXT, kind TEXT, body TEXT)"
    )
    events = [trajectory_events(twenty_turn_trajectory(i, turns, False)) for i in range(n)]
    t0 = time.perf_counter()
    for evs in events:
        for e in evs:
            conn.execute(
                "INSERT OR IGNORE INTO events VALUES (?,?,?,?)",
                (
                    e["eventId"] + e["eventType"],
                    e.get("rolloutEventId", e["eventId"]),
                    e["eventType"],
                    orjson.dumps(e).decode(),
                ),
            )
    dt = time.perf_counter() - t0
    conn.close()
    return n / dt


def bench_ingest(args: argparse.Namespace, tmp: Path) -> list[tuple[str, float, str]]:
    results = []
    server = Server(tmp / "ingest.db")
    try:
        for label, tokens, per_req, ev_per_req in (
            ("sink-style: 8 rollouts/request, with token data", True, 8, None),
            ("SDK-style: 128 events/request, messages only", False, None, 128),
        ):
            bodies, n_events = ingest_bodies(
                args.rollouts,
                args.turns,
                tokens,
                per_req,
                ev_per_req,
                run=f"bench-{uuid.uuid4().hex[:6]}",
            )
            mb = sum(len(b) for b in bodies) / 1e6
            cpu0 = server.cpu_seconds()
            dt = asyncio.run(post_all(server.url, bodies, args.concurrency))
            time.sleep(0.5)  # let the server finish its bookkeeping before reading its CPU time
            cpu1 = server.cpu_seconds()
            per_thread = {k: (v - cpu0.get(k, 0.0)) / args.rollouts * 1000 for k, v in cpu1.items()}
            cpu_ms = sum(per_thread.values())
            busiest = sorted(
                ((ms, k.split("/")[0]) for k, ms in per_thread.items() if ms > 0.05), reverse=True
            )
            rate = args.rollouts / dt
            results.append(
                (
                    label,
                    rate,
                    f"{args.rollouts} rollouts, {n_events} events, {len(bodies)} requests, "
                    f"{mb:.1f} MB in {dt:.2f}s ({n_events / dt:,.0f} events/s)\n      server CPU "
                    f"{cpu_ms:.2f} ms/rollout = {1000 / cpu_ms:,.0f} rollouts per CPU-second; "
                    "by thread: " + ", ".join(f"{n} {ms:.2f} ms" for ms, n in busiest),
                )
            )
    finally:
        server.stop()
    return results


def fill_store(db: Path, n: int) -> None:
    """A 100k-rollout run written straight into the store (what ingest would have produced)."""
    store = TrajectoryStore(db)
    t0 = 1_700_000_000_000
    envs = ["gsm8k", "whodunit", "haiku"]
    stops = ["env_finished"] * 6 + ["max_turns", "no_tool_call", "context_budget"]
    chunk = 5000
    for start in range(0, n, chunk):
        events = []
        for i in range(start, min(n, start + chunk)):
            rid = str(uuid.UUID(int=i + 1))
            stop = stops[i % len(stops)]
            events.append(
                {
                    "eventType": "rollout",
                    "eventId": rid,
                    "timestamp": t0 + i * 500,
                    "runName": "big-run",
                    "environment": envs[i % 3],
                    "split": "train" if i % 10 else "test",
                    "metadata": {
                        "reward": (i * 7919 % 1000) / 1000,
                        "status": "completed" if stop == "env_finished" else "truncated",
                        "stop_reason": stop,
                        "num_turns": 1 + i % 20,
                        "group_index": i // 8,
                    },
                }
            )
            events.append(
                {
                    "eventType": "message",
                    "eventId": f"{rid}-0",
                    "timestamp": t0 + i * 500,
                    "index": 0,
                    "rolloutEventId": rid,
                    "type": "user_message",
                    "content": f"task {i}",
                }
            )
        store.write(EventBatch.model_validate({"events": events}).events)
    store.stop()


def timed_get(
    client: httpx.Client, url: str, params: dict | None = None, reps: int = 15
) -> tuple[float, float, dict]:
    """(median server ms from Server-Timing, median wall ms, last JSON/None)."""
    server_ms, wall_ms, body = [], [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        r = client.get(url, params=params)
        wall_ms.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
        st = r.headers.get("server-timing", "")
        if "dur=" in st:
            server_ms.append(float(st.split("dur=")[1]))
        if r.headers.get("content-type", "").startswith("application/json"):
            body = r.json()
    return (
        (statistics.median(server_ms) if server_ms else float("nan")),
        statistics.median(wall_ms),
        body,
    )


def bench_list(args: argparse.Namespace, tmp: Path) -> list[tuple[str, float, str]]:
    db = tmp / "list.db"
    t0 = time.perf_counter()
    fill_store(db, args.list_rows)
    print(f"  (filled {args.list_rows:,} rollouts in {time.perf_counter() - t0:.1f}s)")
    results = []
    server = Server(db)
    try:
        with httpx.Client(timeout=60) as c:
            run_id = next(
                r["id"]
                for r in c.get(f"{server.url}/api/runs").json()["runs"]
                if r["name"] == "big-run"
            )
            base = f"{server.url}/api/runs/{run_id}/rollouts"
            s, w, first = timed_get(c, base)
            results.append(
                (
                    "first page (newest 50, with total count)",
                    s,
                    f"wall {w:.1f} ms, total={first['total']}",
                )
            )
            s, w, page = timed_get(
                c,
                base,
                {
                    "env": "whodunit",
                    "stop_reason": "no_tool_call",
                    "min_reward": 0.5,
                    "sort": "reward",
                    "order": "desc",
                },
            )
            results.append(
                (
                    "filtered env+stop reason+reward range, sorted by reward",
                    s,
                    f"wall {w:.1f} ms, total={page['total']}",
                )
            )
            conn = sqlite3.connect(db)
            depth = max(0, min(90_000, args.list_rows - 60))
            ts, rid = conn.execute(
                "SELECT ts, id FROM rollouts ORDER BY ts DESC, id DESC LIMIT 1 OFFSET ?", (depth,)
            ).fetchone()
            s, w, _deep = timed_get(c, base, {"after": f"{ts!r}~{rid}"})
            results.append((f"page {depth:,} rows deep (keyset cursor)", s, f"wall {w:.1f} ms"))
            t = time.perf_counter()
            for _ in range(5):
                conn.execute(
                    "SELECT id, event_id, env, reward FROM rollouts WHERE run_id = ? "
                    "ORDER BY ts DESC, id DESC LIMIT 50 OFFSET ?",
                    (run_id, depth),
                ).fetchall()
            offset_ms = (time.perf_counter() - t) / 5 * 1000
            results.append(
                ("  baseline: same deep page with LIMIT/OFFSET (in-process SQL)", offset_ms, "")
            )
            conn.close()
            _, w, _ = timed_get(c, f"{server.url}/runs/{run_id}", reps=7)
            results.append(("HTML run page (list + facets + count + SVG chart), wall", w, ""))
            s, w, _ = timed_get(c, base, {"status": "truncated", "sort": "turns"})
            results.append(("filtered status=truncated, sorted by turns", s, f"wall {w:.1f} ms"))
    finally:
        server.stop()
    return results


async def _sink_run(url: str, spool: Path, n: int, turns: int) -> dict[str, float]:
    from bridge.trajectory_uploader import TrajectoryUploader

    trajs = [twenty_turn_trajectory(i, turns, True, run="bench-sink") for i in range(n)]
    up = TrajectoryUploader(url, str(spool), "bench-sink")
    lags: list[float] = []
    stop = asyncio.Event()

    async def monitor() -> None:  # how late a 1 ms timer fires = how long the loop was blocked
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append((time.perf_counter() - t - 0.001) * 1000)

    mon = asyncio.create_task(monitor())
    submit_us = []
    t0 = time.perf_counter()
    for i, t in enumerate(trajs):
        s = time.perf_counter()
        up.submit(t)
        submit_us.append((time.perf_counter() - s) * 1e6)
        if i % 16 == 15:
            await asyncio.sleep(0)  # generation yields to the loop between episodes
    ok = await up.flush(300)
    delivered_s = time.perf_counter() - t0
    stop.set()
    await mon
    await up.close()
    submit_us.sort()
    lags.sort()
    return {
        "ok": float(ok),
        "submit_p50_us": submit_us[len(submit_us) // 2],
        "submit_p99_us": submit_us[int(len(submit_us) * 0.99)],
        "submit_max_us": submit_us[-1],
        "lag_p99_ms": lags[int(len(lags) * 0.99)] if lags else 0.0,
        "lag_max_ms": lags[-1] if lags else 0.0,
        "delivered_per_s": n / delivered_s,
        "delivered": up.stats["delivered"],
    }


def bench_sink(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    server = Server(tmp / "sink.db")
    try:
        return asyncio.run(_sink_run(server.url, tmp / "spool", args.sink_rollouts, args.turns))
    finally:
        server.stop()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def big_rollout_body(run: str, n_tokens: int, n_msgs: int, msg_chars: int) -> tuple[str, bytes]:
    """One rollout of about (n_tokens x 30 + n_msgs x msg_chars) bytes of upload JSON."""
    rid = str(uuid.uuid4())
    meta = {
        "reward": 1.0,
        "status": "completed",
        "num_turns": n_msgs // 2,
        "prompt_length": 1000,
        "token_ids": [100_000 + i % 50_000 for i in range(n_tokens)],
        "loss_mask": [1] * (n_tokens - 1000),
        "logprobs": [-0.123456789] * (n_tokens - 1000),
    }
    ts = 1_700_000_000_000
    evs: list[dict] = [
        {"eventType": "rollout", "eventId": rid, "timestamp": ts, "runName": run, "metadata": meta}
    ]
    for i in range(n_msgs):
        evs.append(
            {
                "eventType": "message",
                "eventId": str(uuid.uuid4()),
                "timestamp": ts,
                "index": i,
                "rolloutEventId": rid,
                "type": "tool_result",
                "content": "y" * msg_chars,
            }
        )
    return rid, orjson.dumps({"events": evs})


async def _read_many(url: str, readers: int) -> None:
    """`readers` at once, half of them slow readers who leave after 20 MB."""

    async def one(slow: bool) -> None:
        async with httpx.AsyncClient(timeout=600) as c:
            async with c.stream("GET", url) as r:
                n = 0
                async for chunk in r.aiter_raw(1 << 16 if slow else 1 << 20):
                    n += len(chunk)
                    if slow:
                        await asyncio.sleep(0.002)
                        if n > 20 << 20:
                            break

    await asyncio.gather(*(one(i % 2 == 1) for i in range(readers)))


def bench_memory(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """Server RSS while 20 clients read one 63 MB rollout, 8 rounds (the test of issue 13)."""
    server = Server(tmp / "mem.db")
    try:
        fresh = _rss_mb(server.proc.pid)
        rid, body = big_rollout_body("bench-mem", 1_500_000, 220, 100_000)
        r = httpx.post(f"{server.url}/v1/rollouts", content=body, timeout=600)
        if r.status_code != 200:
            raise SystemExit(f"bench: upload of the large rollout failed: {r.status_code}")
        size_mb = len(body) / 1e6
        del body
        time.sleep(3)
        uploaded = _rss_mb(server.proc.pid)
    finally:
        server.stop()
    server = Server(tmp / "mem.db")  # the reads, on a server that holds the rollout on disk
    try:
        time.sleep(2)
        idle = peak = _rss_mb(server.proc.pid)

        async def rounds() -> float:
            nonlocal peak
            for _ in range(args.memory_rounds):
                task = asyncio.ensure_future(
                    _read_many(f"{server.url}/api/rollouts/{rid}", args.memory_readers)
                )
                while not task.done():
                    peak = max(peak, _rss_mb(server.proc.pid))
                    await asyncio.sleep(0.05)
                await task
            return peak

        t0 = time.perf_counter()
        asyncio.run(rounds())
        wall = time.perf_counter() - t0
        time.sleep(5)
        after = _rss_mb(server.proc.pid)
        return {
            "size_mb": size_mb,
            "fresh": fresh,
            "uploaded": uploaded,
            "idle": idle,
            "peak": peak,
            "after": after,
            "wall": wall,
        }
    finally:
        server.stop()


def twin_events(i: int, run: str = "twins") -> list[dict]:
    """A rollout of GRPO group 0 reporting the same group tripwire key as every other."""
    rid = f"twin-{i}"
    return [
        {
            "eventType": "rollout",
            "eventId": rid,
            "timestamp": 1_700_000_000_000 + i,
            "runName": run,
            "environment": "haiku",
            "metadata": {
                "reward": 1.0,
                "status": "completed",
                "num_turns": 1,
                "group_index": 0,
                "tripwires": [],
                "tripwire_keys": {"duplicate_in_group": "the same poem"},
            },
        },
        {
            "eventType": "message",
            "eventId": f"{rid}-0",
            "timestamp": 1_700_000_000_000 + i,
            "index": 0,
            "rolloutEventId": rid,
            "type": "tool_call",
            "name": "submit_haiku",
            "content": '{"poem": "an old silent pond"}',
        },
    ]


def update_event(rid: str, i: int) -> dict:
    """A rollout_update adding one 1 KB key to the rollout's info."""
    return {
        "eventType": "rollout_update",
        "eventId": rid,
        "timestamp": 1_700_000_000_000 + i,
        "rollout_info": {f"step_{i}": "x" * 1000},
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def _post_timed(client: httpx.Client, url: str, body: bytes) -> float:
    t = time.perf_counter()
    r = client.post(
        f"{url}/v1/rollouts", content=body, headers={"content-type": "application/json"}
    )
    if r.status_code != 200:
        raise SystemExit(f"bench: upload failed: {r.status_code} {r.text[:200]}")
    return time.perf_counter() - t


def _unrelated_uploads(url: str, stop: Any, out: list[float]) -> None:
    """One 20-turn rollout of another run every 50 ms until `stop` is set; latencies in `out`."""
    with httpx.Client(timeout=600) as c:
        i = 0
        while not stop.is_set():
            events = trajectory_events(twenty_turn_trajectory(i, 20, False, run="unrelated"))
            out.append(_post_timed(c, url, orjson.dumps({"events": events})))
            i += 1
            stop.wait(0.05)


def bench_linear(args: argparse.Namespace, tmp: Path) -> list[str]:
    import threading

    server = Server(tmp / "linear.db")
    lines = []
    try:
        quiet: list[float] = []
        stop = threading.Event()
        t = threading.Thread(target=_unrelated_uploads, args=(server.url, stop, quiet))
        t.start()
        time.sleep(5)
        stop.set()
        t.join()
        quiet_p99 = _percentile(quiet, 0.99)
        lines.append(
            f"  unrelated upload on the quiet server: p50 {_percentile(quiet, 0.5) * 1000:.1f} ms,"
            f" p99 {quiet_p99 * 1000:.1f} ms ({len(quiet)} uploads)"
        )
        twins = [
            orjson.dumps({"events": [e for i in range(k, k + 100) for e in twin_events(i)]})
            for k in range(0, args.twins, 100)
        ]
        first = twin_events(0, run="updates")
        updates = [
            orjson.dumps({"events": [update_event("twin-0-u", i) for i in range(k, k + 100)]})
            for k in range(0, args.updates, 100)
        ]
        for label, bodies, setup in (
            (f"{args.twins:,} twins", twins, None),
            (f"{args.updates:,} updates of one rollout", updates, first),
        ):
            with httpx.Client(timeout=3600) as c:
                if setup is not None:
                    setup[0]["eventId"] = "twin-0-u"
                    setup[1]["rolloutEventId"] = "twin-0-u"
                    _post_timed(c, server.url, orjson.dumps({"events": setup}))
                during: list[float] = []
                stop = threading.Event()
                t = threading.Thread(target=_unrelated_uploads, args=(server.url, stop, during))
                t.start()
                t0 = time.perf_counter()
                times = [_post_timed(c, server.url, b) for b in bodies]
                total = time.perf_counter() - t0
                stop.set()
                t.join()
            tenth = max(1, len(times) // 10)
            early, late = sum(times[:tenth]) / tenth, sum(times[-tenth:]) / tenth
            p99 = _percentile(during, 0.99)
            lines.append(
                f"  {label}, 100 per request: {total:.1f} s "
                f"({'in seconds' if total < 60 else 'NOT in seconds'}); "
                f"a request {early * 1000:.0f} ms in the first tenth, {late * 1000:.0f} ms in the "
                f"last: linearity {late / early:.2f}x (1.0 linear)"
            )
            lines.append(
                f"    unrelated upload meanwhile: p99 {p99 * 1000:.1f} ms, max "
                f"{max(during, default=0) * 1000:.1f} ms = {p99 / quiet_p99:.2f}x quiet p99 "
                f"({'met' if p99 < 2 * quiet_p99 else 'NOT met'}: < 2x; {len(during)} uploads)"
            )
    finally:
        server.stop()
    return lines


def fill_runs(db: Path, n: int) -> None:
    """`n` runs of one rollout each, written straight into the store."""
    store = TrajectoryStore(db)
    for start in range(0, n, 5000):
        events = [
            {
                "eventType": "rollout",
                "eventId": f"run-rollout-{i}",
                "timestamp": 1_700_000_000_000 + i,
                "runName": f"run-{i:06d}",
                "environment": ["gsm8k", "whodunit", "haiku"][i % 3],
                "metadata": {"reward": (i % 10) / 10, "status": "completed"},
            }
            for i in range(start, min(n, start + 5000))
        ]
        store.write(EventBatch.model_validate({"events": events}).events)
    store.stop()


def bench_runs_index(args: argparse.Namespace, tmp: Path) -> list[str]:
    db = tmp / "runs.db"
    t0 = time.perf_counter()
    fill_runs(db, args.runs)
    lines = [f"  (filled {args.runs:,} runs in {time.perf_counter() - t0:.1f}s)"]
    store = TrajectoryStore(db)
    t = time.perf_counter()
    everything = orjson.dumps({"runs": store.list_runs()})
    whole_ms = (time.perf_counter() - t) * 1000
    store.stop()
    server = Server(db)
    try:
        with httpx.Client(timeout=120) as c:
            s, w, page = timed_get(c, f"{server.url}/api/runs", reps=15)
            size = len(c.get(f"{server.url}/api/runs").content)
            deep_cursor = page["next"]
            for _ in range(50):
                deep_cursor = c.get(f"{server.url}/api/runs", params={"after": deep_cursor}).json()[
                    "next"
                ]
            s_deep, _, _ = timed_get(c, f"{server.url}/api/runs", {"after": deep_cursor}, reps=15)
            _, w_html, _ = timed_get(c, f"{server.url}/", reps=7)
        lines.append(
            f"  /api/runs first page: {s:.1f} ms server time (wall {w:.1f} ms), {size / 1e3:.0f} KB"
            f" = {s / LIST_TARGET_MS:.3f}x the {LIST_TARGET_MS:.0f} ms budget; 51 pages deep: "
            f"{s_deep:.1f} ms; the runs page (HTML): {w_html:.1f} ms wall"
        )
        lines.append(
            f"  baseline: the whole list (what the index answered before), in-process: "
            f"{whole_ms:.0f} ms, {len(everything) / 1e6:.1f} MB = {whole_ms / max(s, 1e-3):.0f}x "
            "the page's time"
        )
    finally:
        server.stop()
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rollouts", type=int, default=2000, help="rollouts to ingest per scenario")
    p.add_argument("--turns", type=int, default=20)
    p.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="concurrent upload connections (the SDK uses up to 32)",
    )
    p.add_argument("--list-rows", type=int, default=100_000)
    p.add_argument("--baseline-rollouts", type=int, default=30)
    p.add_argument("--skip-ingest", action="store_true")
    p.add_argument("--skip-list", action="store_true")
    p.add_argument(
        "--sink-rollouts", type=int, default=1000, help="trajectories for the sink section"
    )
    p.add_argument("--skip-sink", action="store_true")
    p.add_argument("--memory-readers", type=int, default=20)
    p.add_argument("--memory-rounds", type=int, default=8)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--twins", type=int, default=8000, help="twins for the linear-ingest section")
    p.add_argument("--updates", type=int, default=4000, help="updates of one rollout (same)")
    p.add_argument("--skip-linear", action="store_true")
    p.add_argument("--runs", type=int, default=100_000, help="runs for the runs-index section")
    p.add_argument("--skip-runs", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-traj-") as d:
        tmp = Path(d)
        if not args.skip_ingest:
            print(
                f"Ingest of {args.turns}-turn rollouts through POST /v1/rollouts (target >= "
                f"{INGEST_TARGET:.0f}/s)"
            )
            base = naive_baseline(args.baseline_rollouts, args.turns, tmp)
            for label, rate, detail in bench_ingest(args, tmp):
                print(
                    f"  {label}: {rate:,.0f} rollouts/s = {rate / INGEST_TARGET:.2f}x target, "
                    f"{rate / base:,.0f}x naive baseline\n      {detail}"
                )
            print(
                "  baseline (one INSERT per event, one commit per INSERT, in-process): "
                f"{base:,.1f} rollouts/s"
            )
        if not args.skip_sink:
            print(
                f"Bridge sink: submit() of {args.sink_rollouts} {args.turns}-turn trajectories "
                "(with token data) "
                "on a running event loop"
            )
            r = bench_sink(args, tmp)
            print(
                f"  submit() (journaled to disk before it returns): p50 {r['submit_p50_us']:.1f} "
                "us, "
                f"p99 {r['submit_p99_us']:.1f} us = {r['submit_p99_us'] / 1000:.2f}x the 1 ms "
                "goal, "
                f"max {r['submit_max_us']:.0f} us; event-loop lag p99 {r['lag_p99_ms']:.2f} ms, "
                f"max {r['lag_max_ms']:.1f} ms"
            )
            print(
                f"  all delivered: {bool(r['ok'])} ({int(r['delivered'])} trajectories, "
                f"{r['delivered_per_s']:,.0f}/s end to end = "
                f"{r['delivered_per_s'] / INGEST_TARGET:.2f}x target)"
            )
        if not args.skip_memory:
            print(
                f"Server memory: {args.memory_readers} concurrent reads of one large rollout "
                f"(half of them slow readers who leave early), {args.memory_rounds} rounds "
                "(goal: RSS after within 2x of idle)"
            )
            m = bench_memory(args, tmp)
            print(
                f"  reads: RSS idle {m['idle']:.0f} MB, peak {m['peak']:.0f} MB, after "
                f"{m['after']:.0f} MB = {m['after'] / m['idle']:.2f}x idle "
                f"({'met' if m['after'] < 2 * m['idle'] else 'NOT met'}); {m['wall']:.0f} s of "
                "reads"
            )
            print(
                f"  the upload ({m['size_mb']:.0f} MB in one request) beforehand, on another "
                "server "
                f"process: RSS {m['fresh']:.0f} MB -> {m['uploaded']:.0f} MB"
            )
        if not args.skip_linear:
            print(
                "Linear ingest: group tripwires and rollout updates cost what they add "
                "(goal: each in seconds; an unrelated upload within 2x of its quiet p99)"
            )
            for line in bench_linear(args, tmp):
                print(line)
        if not args.skip_runs:
            print(f"Runs index of {args.runs:,} runs (goal: a page < {LIST_TARGET_MS:.0f} ms)")
            for line in bench_runs_index(args, tmp):
                print(line)
        if not args.skip_list:
            print(
                f"Rollout list of a {args.list_rows:,}-rollout run (target < "
                f"{LIST_TARGET_MS:.0f} ms server time)"
            )
            for label, ms, detail in bench_list(args, tmp):
                ratio = (
                    f" = {ms / LIST_TARGET_MS:.3f}x target budget"
                    if not label.startswith("  ")
                    else ""
                )
                print(f"  {label}: {ms:.1f} ms{ratio}{'  (' + detail + ')' if detail else ''}")


if __name__ == "__main__":
    main()
