"""Benchmark: our ORS env server vs the SDK's stock `openreward.environments.Server`.

Both serve the SAME environment class (WhoDunIt) in their own uvicorn subprocess on 127.0.0.1
(uvloop + httptools for both, access log off, SDK logging at ERROR), and the SAME load drives
each in turn: 256 concurrent episodes, each opening a session and making 6 tool calls
(list_suspects, list_weapons, list_locations, list_clues, list_statements, submit_answer).

The load generator runs in its own process(es). By default it is the stock `openreward`
client (`AsyncOpenReward().environments.get(...).session(...)`); `--client lean` uses a small
aiohttp client that speaks the identical wire protocol (same paths, headers, JSON and SSE).

Timing: all 256 sessions are opened first (that phase is timed and reported separately,
because WhoDunIt builds its case in the constructor), then every episode makes its 6 calls
at once; calls/s is tool calls / wall time of that phase, p50/p99 are per-call latencies as
the client sees them. With 256 calls always in flight, mean latency ~= 256 / calls-per-second.

    .venv/bin/python bench/env_server.py [--episodes 256] [--rounds 3] [--client stock|lean] [--procs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ENV_NAME = "whodunit"
CALLS: list[tuple[str, dict[str, Any]]] = [
    ("list_suspects", {}), ("list_weapons", {}), ("list_locations", {}),
    ("list_clues", {}), ("list_statements", {}),
    ("submit_answer", {"who": "nobody", "what": "nothing", "where": "nowhere"}),
]

STOCK_SERVER = """
import os, sys
os.environ["OPENREWARD_LOG_LEVEL"] = "ERROR"
import uvicorn
from openreward.environments import Server
from envs.whodunit import WhoDunIt
uvicorn.run(Server([WhoDunIt]).app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", proxy_headers=False,
            http="httptools", access_log=False, log_level="warning", timeout_keep_alive=75, backlog=4096)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not come up")


def start_server(kind: str) -> tuple[str, subprocess.Popen]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENREWARD_LOG_LEVEL": "ERROR",
           "OPENREWARD_DISABLE_UPDATE_CHECK": "1"}
    if kind == "stock":
        args = [sys.executable, "-c", STOCK_SERVER, str(port)]
    else:
        args = [sys.executable, "-m", "envs.server", "--role", "env", "--envs", ENV_NAME,
                "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    wait_health(url, proc)
    return url, proc


# ---------------------------------------------------------------- load generator (own process)


class LeanSession:
    """The ORS session calls the stock client makes, over one shared aiohttp session."""

    def __init__(self, http: Any, split: str, index: int) -> None:
        self.http, self.split, self.index = http, split, index
        self.sid = ""

    async def _sse(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
        async with self.http.post(path, json=body, headers={"Accept": "text/event-stream", **headers}) as r:
            r.raise_for_status()
            event, data, chunks = None, [], []
            async for raw in r.content:
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if event == "task_id" and not self.sid:
                        self.sid = "\n".join(data).strip()
                    elif event in ("chunk", "end"):
                        chunks.append("\n".join(data))
                        if event == "end":
                            text = "".join(chunks)
                            return json.loads(text) if text else None
                    elif event == "error":
                        raise RuntimeError("\n".join(data))
                    event, data = None, []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
        return None

    async def __aenter__(self) -> "LeanSession":
        await self._sse("/create_session", {}, {})
        async with self.http.post("/create", json={"split": self.split, "index": self.index, "env_name": ENV_NAME},
                                  headers={"X-Session-ID": self.sid}) as r:
            r.raise_for_status()
            await r.read()
        return self

    async def get_prompt(self) -> Any:
        async with self.http.get(f"/{ENV_NAME}/prompt", headers={"X-Session-ID": self.sid}) as r:
            r.raise_for_status()
            return await r.json()

    async def call_tool(self, name: str, args: dict[str, Any]) -> Any:
        res = await self._sse(f"/{ENV_NAME}/call", {"name": name, "input": args}, {"X-Session-ID": self.sid})
        if not res["ok"]:
            raise RuntimeError(res["error"])
        return res["output"]

    async def __aexit__(self, *exc: Any) -> None:
        for path in ("/delete", "/delete_session"):
            async with self.http.post(path, headers={"X-Session-ID": self.sid}) as r:
                await r.read()


def cpu_seconds(pid: int) -> float:
    """User+system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_load(url: str, episodes: int, rounds: int, offset: int, client: str,
                   server_pid: int) -> dict[str, Any]:
    """Open `episodes` sessions, then make every episode's 6 calls concurrently; `rounds` times."""
    os.environ.setdefault("OPENREWARD_DISABLE_UPDATE_CHECK", "1")
    latencies: list[float] = []
    call_wall = open_wall = server_cpu = client_cpu = 0.0
    errors: list[str] = []
    if client == "stock":
        from openreward import AsyncOpenReward

        api = AsyncOpenReward(api_key="bench", base_url=url)
        env = api.environments.get(ENV_NAME, variant=ENV_NAME, base_url=url)

        def session(i: int) -> Any:
            return env.session(split="train", index=i)
        closer = api.environments.aclose
    else:
        import aiohttp

        http = aiohttp.ClientSession(base_url=url, connector=aiohttp.TCPConnector(limit=0))

        def session(i: int) -> Any:
            return LeanSession(http, "train", i)
        closer = http.close

    for r in range(rounds):
        opened, go, called = asyncio.Event(), asyncio.Event(), asyncio.Event()
        ready = finished = 0

        async def episode(i: int) -> None:
            nonlocal ready, finished
            async with session(offset + i + r * episodes) as s:
                await s.get_prompt()
                ready += 1
                if ready == episodes:
                    opened.set()
                await go.wait()
                for name, args in CALLS:
                    t = time.perf_counter()
                    try:
                        await s.call_tool(name, args)
                    except Exception as e:  # keep going; report how many failed
                        errors.append(f"{type(e).__name__}: {e}"[:200])
                    latencies.append(time.perf_counter() - t)
                finished += 1
                if finished == episodes:
                    called.set()

        t0 = time.perf_counter()
        tasks = [asyncio.create_task(episode(i)) for i in range(episodes)]
        await asyncio.wait_for(opened.wait(), timeout=600)
        t1 = time.perf_counter()
        s0, c0 = cpu_seconds(server_pid), time.process_time()
        go.set()
        # the call phase ends when the last call returns; session close is not timed
        await called.wait()
        t2 = time.perf_counter()
        server_cpu += cpu_seconds(server_pid) - s0
        client_cpu += time.process_time() - c0
        await asyncio.gather(*tasks)
        open_wall += t1 - t0
        call_wall += t2 - t1
    await closer()
    return {"latencies": latencies, "call_wall": call_wall, "open_wall": open_wall,
            "server_cpu": server_cpu, "client_cpu": client_cpu,
            "sessions": episodes * rounds, "errors": errors}


def drive(url: str, server_pid: int, episodes: int, rounds: int, client: str, procs: int) -> dict[str, Any]:
    """Run the load in `procs` separate processes and merge their results."""
    per = episodes // procs
    children = [subprocess.Popen(
        [sys.executable, __file__, "--_load", url, "--episodes", str(per), "--rounds", str(rounds),
         "--offset", str(k * per * rounds), "--client", client, "--server-pid", str(server_pid)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
        for k in range(procs)]
    results = []
    for c in children:
        out, _ = c.communicate(timeout=1800)
        if c.returncode != 0:
            raise RuntimeError(f"load process failed with {c.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    lat = sorted(x for r in results for x in r["latencies"])
    call_wall = max(r["call_wall"] for r in results)
    open_wall = max(r["open_wall"] for r in results)
    errors = [e for r in results for e in r["errors"]]
    return {
        "calls": len(lat),
        "calls_per_s": len(lat) / call_wall,
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "sessions_per_s": sum(r["sessions"] for r in results) / open_wall,
        # CPU the server process burned per tool call during the call phase: robust to machine noise
        "server_cpu_us": max(r["server_cpu"] for r in results) / len(lat) * 1e6,
        "client_cpu_us": sum(r["client_cpu"] for r in results) / len(lat) * 1e6,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=256, help="concurrent episodes")
    p.add_argument("--rounds", type=int, default=3, help="how many times to repeat the 256-episode wave")
    p.add_argument("--client", choices=("stock", "lean"), default="stock")
    p.add_argument("--procs", type=int, default=1, help="load-generator processes")
    p.add_argument("--only", choices=("stock", "ours"), help="benchmark one server only")
    p.add_argument("--_load", help=argparse.SUPPRESS)
    p.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--server-pid", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._load:
        print(json.dumps(asyncio.run(run_load(a._load, a.episodes, a.rounds, a.offset, a.client, a.server_pid))))
        return

    kinds = [a.only] if a.only else ["stock", "ours"]
    servers = {k: start_server(k) for k in kinds}
    results: dict[str, dict[str, Any]] = {}
    try:
        for kind in kinds:
            url, proc = servers[kind]
            drive(url, proc.pid, min(32, a.episodes), 1, a.client, 1)  # warm-up
            results[kind] = drive(url, proc.pid, a.episodes, a.rounds, a.client, a.procs)
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait(timeout=10)

    print(f"env server benchmark: WhoDunIt, {a.episodes} concurrent episodes x {len(CALLS)} tool calls, "
          f"{a.rounds} rounds, client={a.client} ({a.procs} load process(es)), {os.cpu_count()} CPUs")
    print(f"{'server':<8} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'sessions/s':>11} "
          f"{'server CPU/call':>16} {'client CPU/call':>16} {'errors':>7}")
    names = {"stock": "stock", "ours": "ours"}
    for kind, r in results.items():
        print(f"{names[kind]:<8} {r['calls_per_s']:>9.0f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
              f"{r['sessions_per_s']:>11.0f} {r['server_cpu_us']:>13.0f} us {r['client_cpu_us']:>13.0f} us "
              f"{r['errors']:>7}")
        if r["errors"]:
            print(f"  first error: {r['first_error']}")
    if len(results) == 2:
        s, o = results["stock"], results["ours"]
        print(f"ratio ours/stock: calls/s {o['calls_per_s'] / s['calls_per_s']:.2f}x, "
              f"p50 {s['p50_ms'] / o['p50_ms']:.2f}x lower, p99 {s['p99_ms'] / o['p99_ms']:.2f}x lower "
              f"(targets: >= 5x calls/s, ours p99 <= 50 ms); server CPU per call "
              f"{s['server_cpu_us'] / o['server_cpu_us']:.2f}x lower")


if __name__ == "__main__":
    main()
