"""The loop shared between clients (envs/server/fairness.py): a client that has held the loop
more than another lately waits while that one is served, never while the loop would idle, one
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


def test_the_client_ahead_lets_in_a_request_read_in_the_same_turn_of_the_loop() -> None:
    """Requests read in one turn of the loop start in the next, the ahead client's first: it
    yields before deciding, so the other's request is in flight by then and goes first."""

    async def main() -> None:
        fair = FairShare()
        await fair.run("b", busy(0.0))
        await fair.run("hog", busy(0.05))
        started: list[str] = []
        gates = [asyncio.Event(), asyncio.Event()]
        hog = asyncio.create_task(fair.run("hog", held(gates[0], started, "hog")))
        b = asyncio.create_task(fair.run("b", held(gates[1], started, "b")))  # same turn, after
        await settle()
        assert started == ["b"] and fair.waits == 1
        gates[1].set()
        await b
        await settle()
        assert started == ["b", "hog"]
        gates[0].set()
        await hog

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


def pause(fair: FairShare, name: str, seconds: float) -> None:
    """As if `name` had sent nothing for `seconds`: its recent use decays, it goes inactive."""
    c = fair._clients[name]
    c.stamp -= seconds
    c.last_seen -= seconds


def test_a_client_that_held_the_loop_lately_waits_for_one_back_from_a_pause() -> None:
    """The attacker that never pauses against a rollout client between bursts: with use counted
    since each became active, the two would be level and split the loop evenly."""

    async def main() -> None:
        fair = FairShare()
        await fair.run("rollout", busy(0.03))
        pause(fair, "rollout", 5 * fairness.HALF_LIFE_S)
        await fair.run("hog", busy(0.06))
        started: list[str] = []
        gates = [asyncio.Event(), asyncio.Event()]
        rollout = asyncio.create_task(fair.run("rollout", held(gates[0], started, "rollout")))
        await settle()
        hog = asyncio.create_task(fair.run("hog", held(gates[1], started, "hog")))
        await settle()
        assert started == ["rollout"] and fair.waits == 1
        gates[0].set()
        await rollout
        await settle()
        assert started == ["rollout", "hog"]
        gates[1].set()
        await hog

    asyncio.run(main())


def test_use_long_past_counts_for_nothing() -> None:
    async def main() -> None:
        fair = FairShare()
        await fair.run("b", busy(0.0))
        await fair.run("hog", busy(0.06))
        fair._clients["hog"].stamp -= 20 * fairness.HALF_LIFE_S  # its use long ago; b still active
        assert fair._clients["hog"].recent(time.monotonic()) < 0.001
        never = asyncio.Event()
        b = asyncio.create_task(fair.run("b", held(never, [], "b")))
        await settle()
        assert await fair.run("hog", busy(0.0)) == "busy"
        assert fair.waits == 0
        b.cancel()

    asyncio.run(main())


def test_a_new_client_starts_level_with_the_lowest_active_one() -> None:
    """A new address gets no head start over the clients already served, nor a handicap."""

    async def main() -> None:
        fair = FairShare()
        await fair.run("b", busy(0.03))
        await fair.run("hog", busy(0.06))
        await fair.run("new", busy(0.0))
        now = time.monotonic()
        recent = {name: c.recent(now) for name, c in fair._clients.items()}
        assert recent["new"] == pytest.approx(recent["b"], abs=0.01)
        assert 0.02 < recent["new"] < recent["hog"] - 0.02

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


def test_a_client_waiting_for_one_back_from_a_pause_is_not_starved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The price of counting recent use: while the returning client keeps the loop busy, the one
    that held it before waits, until their recent use is level (about a half-life), not until
    MAX_WAIT_S."""
    monkeypatch.setattr(fairness, "HALF_LIFE_S", 0.2)

    async def main() -> None:
        fair = FairShare()
        await fair.run("rollout", busy(0.0))
        pause(fair, "rollout", 2.0)
        await fair.run("hog", busy(0.2))
        stop = asyncio.Event()

        async def call() -> None:  # holds the loop 4 ms, then lets it go once
            await busy(0.004)
            await asyncio.sleep(0)

        async def rollout() -> None:  # back to back, 2 in flight: the loop is never free
            deadline = time.monotonic() + 3.0
            while not stop.is_set() and time.monotonic() < deadline:
                await fair.run("rollout", call())

        workers = [asyncio.create_task(rollout()) for _ in range(2)]
        await asyncio.sleep(0)  # both in flight
        t = time.monotonic()
        assert await fair.run("hog", busy(0.0)) == "busy"
        waited = time.monotonic() - t
        stop.set()
        await asyncio.gather(*workers)
        assert 0.05 < waited < 1.0, waited

    asyncio.run(main())
