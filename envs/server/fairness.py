"""The event loop shared fairly between clients: one that has used more of it lately than the
others waits while they are being served.

Every ORS request runs inline on the one event loop, so a client that sends expensive calls back
to back (each within its budget) takes the loop from everyone: one connection with a heavy task
spec once pushed a well-behaved client's p50 from 1.5 ms to 270 ms. `FairShare` keeps per client
(its peer address) how long its requests have held the loop lately: metered step by step (each
`send` of the request's coroutine; the time the loop was held is what the others waited, so it is
wall time, unlike the call budget's CPU time, which must not blame a call for a busy machine),
decaying with a half-life of HALF_LIFE_S. A request of a client whose recent use is more than
QUANTUM_S above the lowest of the other active clients' (a request in flight, or one within
IDLE_S) waits while another client has a request in flight that is not waiting on its own network
(a body sent slowly, an answer not read: `io`), or this one already has a request running: so
the client ahead keeps one request at a time on a loop the others leave idle (the loop never idles
while one waits), and another's request waits at most for that one request's step. Before it
decides, a request of the client ahead yields LET_IN_TURNS turns of the loop: the others'
requests read in the same turn start only in the next, and would not count as in flight yet.

Recent, not total: a client that has held the loop for the last seconds (an attacker, a trainer
that never pauses) waits for one that comes back from a pause (a rollout client between bursts)
until their recent use is level, at most about a half-life's worth of loop; with totals since
each became active, the two would split the loop evenly, and a client that alone keeps the loop
busy (32 episodes' calls back to back) would see its calls take twice as long. What a returning
client has is only the others' recent use (it decays too), never credit saved up over a long
pause. A client never seen before starts level with the lowest active one, so a new address
gets no head start over the clients already served. A client alone on the server never waits,
and a wait is bounded by MAX_WAIT_S.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar

__all__ = ["FairShare"]

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")

QUANTUM_S = 0.01
"""How far a client's recent use of the loop may run ahead of the lowest other active client's."""
HALF_LIFE_S = 1.0
"""Recent use halves every this many seconds."""
IDLE_S = 1.0
"""A client with nothing in flight for this long no longer counts as active."""
LET_IN_TURNS = 2
"""Turns of the loop a request of a client ahead yields before it decides whether to wait: one
in which the others' requests already sent are read (their tasks created), one in which they
start (and count as in flight)."""
MAX_WAIT_S = 10.0
"""The longest a request waits for its turn (then it runs anyway)."""


@dataclass
class _Client:
    used: float = 0.0
    """Seconds its requests have held the loop, decayed to `stamp` (see `recent`)."""
    stamp: float = 0.0
    """When `used` was last decayed (time.monotonic)."""
    in_flight: int = 0
    """Requests inside `run`, waiting or running."""
    io: int = 0
    """Of those, the ones awaiting the client's network (its body, its reading an answer)."""
    running: int = 0
    """Requests admitted and not yet done: each counts as `cost` ahead already, so a burst of
    concurrent requests cannot all pass before the first is charged."""
    cost: float = 0.001
    """The client's typical request, seconds of loop (a moving average)."""
    last_seen: float = 0.0

    def recent(self, now: float) -> float:
        """Its use of the loop lately: each second held counts half as much HALF_LIFE_S later."""
        return self.used * 0.5 ** ((now - self.stamp) / HALF_LIFE_S)

    def charge(self, seconds: float, now: float) -> None:
        self.used, self.stamp = self.recent(now) + seconds, now

    def ahead(self, now: float) -> float:
        return self.recent(now) + self.running * self.cost


class FairShare:
    """Each client's recent use of the loop; `run(client, coro)` runs a request in its turn."""

    def __init__(self, on_wait: Callable[[], None] | None = None) -> None:
        self._clients: dict[str, _Client] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._on_wait = on_wait
        self.waits = 0
        """Requests that waited for their turn."""

    def _active(self, c: _Client, now: float) -> bool:
        return c.in_flight > 0 or now - c.last_seen < IDLE_S

    def _standing(self, me: _Client, now: float) -> tuple[bool, bool]:
        """Whether `me` is ahead of an active client, and whether another client has a request
        in flight that wants the loop (not waiting on its network)."""
        floor = None
        others_in_flight = False
        for other in self._clients.values():
            if other is not me and self._active(other, now):
                used = other.recent(now)
                floor = used if floor is None else min(floor, used)
                others_in_flight = others_in_flight or other.in_flight > other.io
        return floor is not None and me.ahead(now) > floor + QUANTUM_S, others_in_flight

    def _must_wait(self, me: _Client, now: float) -> bool:
        """Whether `me` is ahead of an active client while the loop is wanted by another (a
        request of theirs in flight) or already serves one of mine."""
        ahead, others_in_flight = self._standing(me, now)
        return ahead and (others_in_flight or me.running > 0)

    def io(self, client: str, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        """`fn` (an ASGI receive or send) as time the client's request waits on its network:
        a body sent a byte at a time, or an answer not read, never holds back the others."""

        async def awaiting_client(*args: P.args, **kwargs: P.kwargs) -> R:
            c = self._clients.get(client)
            if c is None:
                return await fn(*args, **kwargs)
            c.io += 1
            self._wake()
            try:
                return await fn(*args, **kwargs)
            finally:
                c.io -= 1

        return awaiting_client

    async def run(self, client: str, coro: Coroutine[Any, Any, T]) -> T:
        """Run a request's coroutine in `client`'s turn, charging it the loop time it holds."""
        now = time.monotonic()
        c = self._clients.get(client)
        if c is None:  # never seen (or forgotten): level with the lowest active client
            self._forget_quiet(now)
            active = [o.recent(now) for o in self._clients.values() if self._active(o, now)]
            c = self._clients[client] = _Client(used=min(active, default=0.0), stamp=now)
        c.in_flight += 1
        try:
            if self._standing(c, now)[0]:
                # Others' requests read in this turn of the loop start in the next one; until
                # they do, they are not in flight: let them in before deciding.
                for _ in range(LET_IN_TURNS):
                    await asyncio.sleep(0)
                if self._must_wait(c, time.monotonic()):
                    await self._wait_turn(c)
            metered = Metered(coro)
            c.running += 1
            try:
                return await metered
            finally:
                c.running -= 1
                c.charge(metered.used, time.monotonic())
                c.cost += (metered.used - c.cost) / 8
        finally:
            c.in_flight -= 1
            c.last_seen = time.monotonic()
            self._wake()

    async def _wait_turn(self, c: _Client) -> None:
        self.waits += 1
        if self._on_wait is not None:
            self._on_wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MAX_WAIT_S
        while self._must_wait(c, time.monotonic()) and loop.time() < deadline:
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            # woken when a request ends; rechecked a few times a second (clients go quiet)
            await asyncio.wait((waiter,), timeout=min(0.1, max(0.0, deadline - loop.time())))

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _forget_quiet(self, now: float) -> None:
        """Drop the inactive clients when there are many (one that comes back starts level with the
        lowest active one, as a new one does)."""
        if len(self._clients) > 1024:
            for name in [n for n, c in self._clients.items() if not self._active(c, now)]:
                del self._clients[name]


class Metered(Generic[T]):
    """Drives one coroutine and sums how long its steps held the loop (`used`, seconds)."""

    __slots__ = ("_coro", "used")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro
        self.used = 0.0

    def __await__(self) -> Generator[Any, Any, T]:
        return self

    def __iter__(self) -> Metered[T]:
        return self

    def __next__(self) -> Any:
        return self._step(self._coro.send, None)

    def send(self, value: Any) -> Any:
        return self._step(self._coro.send, value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        return self._step(self._coro.throw, typ if val is None else val)

    def close(self) -> None:
        self._coro.close()

    def _step(self, fn: Any, arg: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(arg)
        finally:
            self.used += time.perf_counter() - t0
