"""The loop shared between clients (envs/server/fairness.py): a client that has held the loop
longer than another waits while that one is served, never while the loop would idle, one
request at a time, and never longer than MAX_WAIT_S. In-process, no server: well under a second.

What it guards shows in `bench/env_server.py --attack --attacks budget-hog`: before the fair
share, maximal calls back to back from one client pushed another client's p50 from ~1.5 ms to
270 ms.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from envs.server import fairness
from envs.server.fairness import FairShare


async def busy(seconds: float) -> str:
    """A request that holds the loop for `seconds`."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return "busy"


async def held(gate: asyncio.Event, started: list[str], name: str) -> str:
    """A request that starts, then waits for `gate` (in flight, not holding the loop)."""
    started.append(name)
    await gate.wait()
    return name


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_client_alone_never_waits() -> None:
    async def main() -> None:
        fair = FairShare()
        await fair.run("a", busy(0.05))
        assert await asyncio.gather(*(fair.run("a", busy(0.01)) for _ in range(5))) == ["busy"] * 5
        assert fair.waits == 0

    asyncio.run(main())


def test_the_client_ahead_waits_while_another_is_served_and_no_longer() -> None:
    async def main() -> None:
        waited: list[int] = []
        fair = FairShare(on_wait=lambda: waited.append(1))
        await fair.run("b", busy(0.0))  # b first (a newcomer starts level with the others)
        await fair.run("hog", busy(0.05))  # 50 ms ahead
        started: list[str] = []
        b_gate, a_gate = asyncio.Event(), asyncio.Event()
        b = asyncio.create_task(fair.run("b", held(b_gate, started, "b")))
        await settle()
        a = asyncio.create_task(fair.run("hog", held(a_gate, started, "hog")))
        await settle()
        assert started == ["b"] and fair.waits == 1 and waited == [1]
        b_gate.set()  # b done: the loop would idle, so the hog goes on although b is still active
        assert await b == "b"
        await settle()
        assert started == ["b", "hog"]
        a_gate.set()
        assert await a == "hog"

    asyncio.run(main())


def test_the_client_ahead_runs_one_request_at_a_time_while_others_are_active() -> None:
    async def main() -> None:
        fair = FairShare()
        await fair.run("b", busy(0.0))  # b active (within IDLE_S), nothing in flight
        await fair.run("hog", busy(0.05))
        started: list[str] = []
        gates = [asyncio.Event(), asyncio.Event()]
        tasks = [
            asyncio.create_task(fair.run("hog", held(g, started, f"hog{k}")))
            for k, g in enumerate(gates)
        ]
        await settle()
        assert started == ["hog0"]
        gates[0].set()
        await tasks[0]
        await settle()
        assert started == ["hog0", "hog1"]
        gates[1].set()
        await tasks[1]

    asyncio.run(main())


def test_a_wait_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fairness, "MAX_WAIT_S", 0.2)

    async def main() -> None:
        fair = FairShare()
        await fair.run("b", busy(0.0))
        await fair.run("hog", busy(0.05))
        started: list[str] = []
        never = asyncio.Event()
        b = asyncio.create_task(fair.run("b", held(never, started, "b")))
        await settle()
        t = time.monotonic()
        assert await fair.run("hog", busy(0.0)) == "busy"
        assert 0.15 < time.monotonic() - t < 5
        b.cancel()

    asyncio.run(main())


def test_a_returning_client_saved_up_no_credit() -> None:
    async def main() -> None:
        fair = FairShare()
        await fair.run("late", busy(0.0))
        fair._clients["late"].last_seen -= 10 * fairness.IDLE_S  # then a long pause
        await fair.run("b", busy(0.03))
        await fair.run("hog", busy(0.06))
        await fair.run("late", busy(0.0))  # back: level with the slowest active client, b
        clocks = {name: c.clock for name, c in fair._clients.items()}
        assert clocks["late"] == pytest.approx(clocks["b"], abs=0.01)
        assert clocks["late"] > 0.02

    asyncio.run(main())


def test_a_request_waiting_on_its_clients_network_holds_no_one_back() -> None:
    async def main() -> None:
        fair = FairShare()
        await fair.run("slow", busy(0.0))
        await fair.run("hog", busy(0.05))
        never = asyncio.Event()

        async def receive() -> None:  # a body that never comes
            await never.wait()

        async def read_body() -> None:
            await fair.io("slow", receive)()

        slow = asyncio.create_task(fair.run("slow", read_body()))
        await settle()
        assert await fair.run("hog", busy(0.0)) == "busy"
        assert fair.waits == 0
        slow.cancel()

    asyncio.run(main())
