"""The attacks of `bench/env_server.py --attack`: what one hostile client does to the env server,
and what it costs a well-behaved one.

Each attack runs in its own process from 127.0.0.2 (so the server's per-client limits see
another client than the well-behaved one on 127.0.0.1) until SIGTERM, then prints one JSON line
of what it saw. For every attack the bench measures a lean client's whodunit episodes quiet and
then attacked, and prints the p99 ratio and the server's RSS ratio (peak under attack / idle
before it); the target of both is 2x.

    worst-inputs    the worst known input for every tool of every env (tests/adversarial.py),
                    each on a fresh session (create, call, delete)
    budget-hog      sessions repeating the most expensive calls there are, back to back
    task-listing    every env's full task list (/tasks), again and again
    session-grab    /create without /delete, as fast as answers come (every session slot)
    slow-body       connections that send a /create body (60,000 bytes, under its limit, so
                    its handler waits on it) a byte every 2 s
    slow-reader     connections that ask for a 2 MB answer and never read it
    session-memory  one session per connection sending 900 KiB calculator expressions
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
ATTACKER_ADDRESS = "127.0.0.2"

ATTACKS = (
    "worst-inputs",
    "budget-hog",
    "task-listing",
    "session-grab",
    "slow-body",
    "slow-reader",
    "session-memory",
)
# connections per attack (the raw-socket ones hold many at a time)
DEFAULT_ATTACKERS = {"slow-body": 400, "slow-reader": 64, "session-grab": 8}


class Seen:
    """What an attacker saw: answers by status, connection errors, requests sent."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.errors = 0

    def json(self) -> dict[str, Any]:
        return {
            "statuses": dict(self.statuses),
            "errors": self.errors,
            "calls": sum(self.statuses.values()),
        }


async def _http_loop(
    url: str, attackers: int, stop: asyncio.Event, seen: Seen, one: Callable[..., Awaitable[None]]
) -> None:
    import aiohttp

    connector = aiohttp.TCPConnector(local_addr=(ATTACKER_ADDRESS, 0), limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def loop(k: int) -> None:
            i = k
            while not stop.is_set():
                try:
                    await one(http, url, k, i, seen)
                except aiohttp.ClientError:
                    seen.errors += 1
                except asyncio.TimeoutError:
                    seen.errors += 1
                i += attackers

        await asyncio.gather(*(loop(k) for k in range(attackers)))


async def _post(http: Any, url: str, seen: Seen, **kw: Any) -> int:
    async with http.post(url, **kw) as r:
        await r.read()
        seen.statuses[r.status] += 1
        return int(r.status)


def _worst_inputs() -> list[tuple[str, bytes]]:
    sys.path.insert(0, str(REPO / "tests"))
    from adversarial import WORST_INPUTS

    return [
        (env, json.dumps({"name": tool, "input": args}).encode())
        for env, items in WORST_INPUTS.items()
        for tool, args, _ in items
    ]


async def worst_inputs(http: Any, url: str, k: int, i: int, seen: Seen) -> None:
    plan = _PLAN or _worst_inputs()
    _PLAN[:] = plan
    env, body = plan[i % len(plan)]
    sid = {"X-Session-ID": f"attack-{k}-{i}"}
    create = {"env_name": env, "split": "train", "index": i % 50}
    await _post(http, f"{url}/create", seen, json=create, headers=sid)
    headers = {**sid, "Content-Type": "application/json"}
    await _post(http, f"{url}/{env}/call", seen, data=body, headers=headers)
    await _post(http, f"{url}/delete", seen, headers=sid)


_PLAN: list[tuple[str, bytes]] = []
# The most expensive calls of each env that are not refused (each costs 10-30 ms of CPU).
_HEAVY = [
    ("haiku", {"name": "submit_haiku", "input": {"poem": ("actually every separate " * 80)}}),
    ("whodunit", {"name": "submit_answer", "input": {"who": "x" * 300_000, "what": "y"}}),
    ("gsm8k", {"name": "calculator", "input": {"expression": "((((1/3)**64+1)**64)**64)**64"}}),
]


async def budget_hog(http: Any, url: str, k: int, i: int, seen: Seen) -> None:
    env, call = _HEAVY[k % len(_HEAVY)]
    sid = {"X-Session-ID": f"hog-{k}-{i}"}
    create = {"env_name": env, "split": "train", "index": k}
    if await _post(http, f"{url}/create", seen, json=create, headers=sid) != 200:
        return
    for _ in range(20):  # until the env ends the episode, or the server the session
        if await _post(http, f"{url}/{env}/call", seen, json=call, headers=sid) != 200:
            break
    await _post(http, f"{url}/delete", seen, headers=sid)


async def task_listing(http: Any, url: str, k: int, i: int, seen: Seen) -> None:
    env = ("gsm8k", "whodunit", "haiku")[i % 3]
    await _post(http, f"{url}/{env}/tasks", seen, json={"split": "train"})


_GRABBED: list[str] = []


async def session_grab(http: Any, url: str, k: int, i: int, seen: Seen) -> None:
    sid = f"grab-{k}-{i}"
    create = {"env_name": "gsm8k", "split": "train", "index": i % 1000}
    if await _post(http, f"{url}/create", seen, json=create, headers={"X-Session-ID": sid}) == 200:
        _GRABBED.append(sid)


async def session_memory(http: Any, url: str, k: int, i: int, seen: Seen) -> None:
    sid = {"X-Session-ID": f"mem-{k}"}
    if i == k:
        create = {"env_name": "gsm8k", "split": "train", "index": k}
        await _post(http, f"{url}/create", seen, json=create, headers=sid)
    call = {"name": "calculator", "input": {"expression": "1+" * (450 << 10)}}
    if await _post(http, f"{url}/gsm8k/call", seen, json=call, headers=sid) == 410:
        create = {"env_name": "gsm8k", "split": "train", "index": k}
        await _post(http, f"{url}/create", seen, json=create, headers=sid)


async def _raw_loop(url: str, attackers: int, stop: asyncio.Event, seen: Seen, slow: str) -> None:
    """Raw connections from the attacker's address: bodies a byte at a time, or answers never
    read; a connection the server closes is opened again."""
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80

    async def conn(k: int) -> None:
        while not stop.is_set():
            try:
                r, w = await asyncio.open_connection(
                    host, port, local_addr=(ATTACKER_ADDRESS, 0), limit=1 << 12
                )
            except OSError:
                seen.errors += 1
                await asyncio.sleep(0.5)
                continue
            try:
                if slow == "body":
                    w.write(
                        b"POST /create HTTP/1.1\r\nHost: x\r\nX-Session-ID: slow-%d\r\n"
                        b"Content-Length: 60000\r\n\r\n{" % k
                    )
                    while not stop.is_set() and not r.at_eof():
                        await asyncio.wait_for(w.drain(), 10)
                        w.write(b" ")
                        try:
                            await asyncio.wait_for(r.read(1), 2)
                        except asyncio.TimeoutError:
                            continue
                else:
                    body = b'{"split": "train"}'
                    w.write(
                        b"POST /gsm8k/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                        b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    await w.drain()
                    await asyncio.wait_for(stop.wait(), 3600)  # and never read
                seen.statuses[0] += 1  # a connection the server closed
            except (OSError, asyncio.TimeoutError):
                seen.errors += 1
            finally:
                w.close()

    await asyncio.gather(*(conn(k) for k in range(attackers)))


ONE_REQUEST = {
    "worst-inputs": worst_inputs,
    "budget-hog": budget_hog,
    "task-listing": task_listing,
    "session-grab": session_grab,
    "session-memory": session_memory,
}


async def run(url: str, kind: str, attackers: int) -> dict[str, Any]:
    """Attack `url` with `kind` from `attackers` connections until SIGTERM; what it saw."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    seen = Seen()
    if kind in ONE_REQUEST:
        await _http_loop(url, attackers, stop, seen, ONE_REQUEST[kind])
    else:
        await _raw_loop(url, attackers, stop, seen, "body" if kind == "slow-body" else "reader")
    if _GRABBED:  # leave the server as we found it for the next attack
        import aiohttp

        async with aiohttp.ClientSession() as http:
            for sid in _GRABBED:
                async with http.post(f"{url}/delete", headers={"X-Session-ID": sid}) as r:
                    await r.read()
    return seen.json()
