"""Benchmark: N env-server replicas vs 1 on the same load (what `run.sh --env-servers N` buys).

Each replica is our `python -m envs.server --role env` (bench/env_server.py's `start_server`),
in its own process on 127.0.0.1, serving WhoDunIt. The SAME load drives both set-ups: the
episodes of bench/env_server.py (open a session, then 6 tool calls: list_suspects ...
submit_answer), all sessions opened first, then every call at once; each episode is pinned to
one replica exactly as the bridge pins sessions (`bridge.env_session.pick_server` on its key).
The load runs in `--procs` separate processes with bench/env_server.py's lean client, so the
generator is not the bottleneck. calls/s = tool calls / wall time of the call phase; "server CPU
per call" sums the replicas' CPU, which is what a replica costs regardless of machine noise.

    .venv/bin/python bench/env_server_replicas.py [--replicas 2,4,8] [--episodes 512] [--rounds 2]
        [--procs 2] [--repeat 3]

`--replicas` takes one count or several (`2,4,8`): every set-up, 1 replica included, is measured in
the same run, alternating, and each is compared with 1 replica.

Replicas only add calls/s while there are free cores for them (each is one Python process); on
a shared or small machine the ratio is bounded by its idle cores: the header prints the count
and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from env_server import CALLS, REPO, LeanSession, cpu_seconds, start_server

from bridge.env_session import pick_server


async def run_load(urls: list[str], episodes: int, rounds: int, offset: int) -> dict[str, Any]:
    """Open `episodes` sessions, each on the replica its key pins it to, then make every call at
    once. Each round, this process prints `ready` once its sessions are open and starts calling
    when the driver writes `go` to its stdin (every load process at the same moment), then
    prints `done`."""
    latencies: list[float] = []
    call_wall = 0.0
    errors: list[str] = []
    per_url = dict.fromkeys(urls, 0)
    for r in range(rounds):
        opened, go, called = asyncio.Event(), asyncio.Event(), asyncio.Event()
        ready = finished = 0

        async def episode(i: int) -> None:
            nonlocal ready, finished
            index = offset + i + r * episodes  # noqa: B023
            url = pick_server(urls, f"episode-{index}")
            per_url[url] += 1
            async with LeanSession(url, "train", index) as s:
                await s.get_prompt()
                ready += 1
                if ready == episodes:
                    opened.set()  # noqa: B023
                await go.wait()  # noqa: B023
                for name, args in CALLS:
                    t = time.perf_counter()
                    try:
                        await s.call_tool(name, args)
                    except Exception as e:
                        errors.append(f"{type(e).__name__}: {e}"[:200])
                    latencies.append(time.perf_counter() - t)
                finished += 1
                if finished == episodes:
                    called.set()  # noqa: B023

        tasks = [asyncio.create_task(episode(i)) for i in range(episodes)]
        await asyncio.wait_for(opened.wait(), timeout=600)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the driver's `go`
        t1 = time.perf_counter()
        go.set()
        await called.wait()
        call_wall += time.perf_counter() - t1
        print("done", flush=True)
        await asyncio.gather(*tasks)
    return {"latencies": latencies, "call_wall": call_wall, "errors": errors, "per_url": per_url}


def drive(
    urls: list[str], pids: list[int], episodes: int, rounds: int, procs: int
) -> dict[str, Any]:
    """The load in `procs` processes; merged calls/s, latencies and the replicas' CPU per call.

    The processes open their sessions, then start calling together (a barrier each round), so
    calls/s is every process's calls over the wall time from the common start to the last one
    done: the replicas serve all of them at once, as the bridge's episodes do."""
    per = episodes // procs
    cpu0 = sum(cpu_seconds(p) for p in pids)
    children = [
        subprocess.Popen(
            [
                *(sys.executable, __file__, "--_load", ",".join(urls), "--episodes", str(per)),
                *("--rounds", str(rounds), "--offset", str(k * per * rounds)),
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(procs)
    ]
    wall = 0.0
    for _ in range(rounds):
        for c in children:
            _expect(c, "ready")
        t0 = time.perf_counter()
        for c in children:
            assert c.stdin is not None
            c.stdin.write("go\n")
            c.stdin.flush()
        for c in children:
            _expect(c, "done")
        wall += time.perf_counter() - t0
    results = []
    for c in children:
        assert c.stdin is not None and c.stdout is not None
        c.stdin.close()
        out = c.stdout.read()  # not communicate(): it would skip what readline() buffered
        if c.wait(timeout=1800) != 0:
            raise RuntimeError(f"load process failed with {c.returncode}")
        try:
            results.append(json.loads(out.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            raise RuntimeError(f"load process printed {out[-500:]!r}") from None
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0  # includes session opening: same for both
    lat = sorted(x for r in results for x in r["latencies"])
    spread = [sum(r["per_url"][u] for r in results) for u in urls]
    return {
        "calls_per_s": len(lat) / wall,
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "server_cpu_us": cpu / len(lat) * 1e6,
        "errors": sum(len(r["errors"]) for r in results),
        "sessions_per_replica": spread,
    }


def _expect(child: subprocess.Popen, word: str) -> None:
    """Read the load process's next line, which must be `word`."""
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if line != word:
        child.kill()
        raise RuntimeError(f"load process said {line!r}, expected {word!r}")


def measure(counts: tuple[int, ...], a: argparse.Namespace) -> dict[int, list[dict[str, Any]]]:
    """Each set-up's servers up at once; runs alternate between set-ups, so a noisy minute on a
    shared machine hurts them alike."""
    setups = {n: [start_server("ours") for _ in range(n)] for n in counts}
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    try:
        for servers in setups.values():  # warm-up
            drive([u for u, _ in servers], [p.pid for _, p in servers], 64, 1, 1)
        for _ in range(a.repeat):
            for n, servers in setups.items():
                urls, pids = [u for u, _ in servers], [p.pid for _, p in servers]
                runs[n].append(drive(urls, pids, a.episodes, a.rounds, a.procs))
    finally:
        for servers in setups.values():
            for _, proc in servers:
                proc.terminate()
                proc.wait(timeout=10)
    return runs


def _counts(text: str) -> tuple[int, ...]:
    """`2` or `2,4,8`: replica counts above 1, each compared with 1."""
    try:
        counts = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N1,N2,..., got {text!r}") from None
    if not counts or any(n < 2 for n in counts) or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError("replica counts must be distinct and at least 2")
    return counts


def ratio_line(n: int, one: dict[str, Any], many: dict[str, Any]) -> str:
    """N replicas against 1 (median runs), each ratio worded the way it went."""
    calls = many["calls_per_s"] / one["calls_per_s"]
    p99 = many["p99_ms"] / one["p99_ms"]
    cpu = many["server_cpu_us"] / one["server_cpu_us"]
    p99_words = f"{1 / p99:.2f}x lower" if p99 <= 1 else f"{p99:.2f}x higher"
    return (
        f"ratio {n} replicas / 1 (median runs): calls/s {calls:.2f}x, p99 {p99_words} "
        f"({many['p99_ms']:.1f} vs {one['p99_ms']:.1f} ms), CPU per call {cpu:.2f}x"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--replicas",
        type=_counts,
        default=(2,),
        help="N or N1,N2,...: replica counts, each compared with 1 [2]",
    )
    p.add_argument("--episodes", type=int, default=512, help="concurrent episodes")
    p.add_argument("--rounds", type=int, default=2, help="waves of episodes per run")
    p.add_argument("--procs", type=int, default=2, help="load-generator processes")
    p.add_argument("--repeat", type=int, default=3, help="runs per set-up; medians are compared")
    p.add_argument("--_load", help=argparse.SUPPRESS)
    p.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._load:
        print(json.dumps(asyncio.run(run_load(a._load.split(","), a.episodes, a.rounds, a.offset))))
        return
    runs = measure((1, *a.replicas), a)
    print(
        f"env-server replicas: WhoDunIt, {a.episodes} concurrent episodes x {len(CALLS)} calls, "
        f"{a.rounds} rounds per run, {a.repeat} runs each, {a.procs} load process(es), "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'set-up':<14} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU/call':>10} "
        f"{'errors':>7}  sessions"
    )
    medians = {}
    for n, rs in runs.items():
        for i, r in enumerate(rs, 1):
            print(
                f"{f'{n} replica(s) #{i}':<14} {r['calls_per_s']:>9.0f} {r['p50_ms']:>8.1f} "
                f"{r['p99_ms']:>8.1f} {r['server_cpu_us']:>7.0f} us {r['errors']:>7}  "
                f"{r['sessions_per_replica']}"
            )
        medians[n] = sorted(rs, key=lambda r: r["calls_per_s"])[len(rs) // 2]
    one = medians[1]
    for n in a.replicas:
        print(ratio_line(n, one, medians[n]))


if __name__ == "__main__":
    main()
