"""Episodes suspended by slime's abort under `--partial-rollout`, kept until slime hands them back.

slime's abort returns an in-flight sample as ABORTED and, with `--partial-rollout`, buffers it
and passes it to the generate function again in a later rollout. The bridge keeps the episode
(env session, token ledger, messages, counters) here, keyed by the episode key it wrote into
the sample, so the episode resumes at the turn where it stopped. An entry is used only when
the sample comes back with exactly the tokens it left with. Training, eval and saving between
two rollouts can outlast the env server's idle-session TTL (900 s by default), so every
suspended session is pinged each `$BRIDGE_KEEPALIVE_S` seconds (default `KEEPALIVE_S`, keep it
below the server's TTL) while it waits; an entry expires only after `SUSPEND_TTL_S` (the run's
length, in practice) or when more than `MAX_SUSPENDED` wait, and expired or evicted episodes
have their session deleted. A session lost anyway (a server restart) makes the episode restart,
counted in the sample (`partial_restarts`) and the rollout metrics. Entries belong to one event
loop (their HTTP connections do; slime's loop runs between rollouts too).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridge.env_seconds import env_seconds

if TYPE_CHECKING:
    from bridge.episode import Episode

log = logging.getLogger(__name__)

SUSPEND_TTL_S = 86400.0
"""Seconds a suspended episode is kept: as long as a run waits (its session is kept alive)."""
MAX_SUSPENDED = 8192
"""Suspended episodes kept per event loop; the oldest are dropped beyond it."""
KEEPALIVE_S = 60.0
"""Seconds between pings of a suspended episode's session ($BRIDGE_KEEPALIVE_S overrides)."""
KEEPALIVE_ENV = "BRIDGE_KEEPALIVE_S"
KEEPALIVE_CONCURRENCY = 64
"""Pings in flight at once."""


def keepalive_s() -> float:
    """Seconds between pings of suspended sessions: $BRIDGE_KEEPALIVE_S, else KEEPALIVE_S."""
    return env_seconds(KEEPALIVE_ENV, KEEPALIVE_S, positive=True)


@dataclass
class _Entry:
    episode: Episode
    tokens: list[int]
    since: float


class SuspendedEpisodes:
    """Suspended episodes of one event loop, oldest first."""

    def __init__(self, ttl_s: float = SUSPEND_TTL_S, capacity: int = MAX_SUSPENDED) -> None:
        self.ttl_s = ttl_s
        self.capacity = capacity
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._closing: set[asyncio.Task[Any]] = set()
        self._keepalive: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: str, episode: Episode, tokens: list[int]) -> None:
        """Keep `episode` until its sample (now holding `tokens`) comes back."""
        old = self._entries.pop(key, None)
        if old is not None and old.episode is not episode:
            self._discard(old)
        self._entries[key] = _Entry(episode, list(tokens), time.monotonic())
        self._expire()
        while len(self._entries) > self.capacity:
            _, entry = self._entries.popitem(last=False)
            self._discard(entry)
        if self._keepalive is None or self._keepalive.done():
            self._keepalive = asyncio.ensure_future(self._keep_alive())

    async def _keep_alive(self) -> None:
        """Ping every waiting episode's session each keepalive_s() while any wait."""
        limit = asyncio.Semaphore(KEEPALIVE_CONCURRENCY)

        async def ping(entry: _Entry) -> None:
            async with limit:
                try:
                    await entry.episode.session.alive()
                except Exception as e:  # a lost session is found when the episode resumes
                    log.debug("partial rollout: keepalive ping failed: %s", e)

        while self._entries:
            await asyncio.sleep(keepalive_s())
            self._expire()
            await asyncio.gather(*(ping(e) for e in list(self._entries.values())))

    def take(self, key: str, tokens: list[int]) -> Episode | None:
        """The suspended episode of `key`, if its sample came back unchanged and in time."""
        self._expire()
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        if list(tokens) != entry.tokens:
            log.warning(
                "partial rollout: sample %s came back with other tokens; restarting it", key
            )
            self._discard(entry)
            return None
        return entry.episode

    def _expire(self) -> None:
        now = time.monotonic()
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry.since < self.ttl_s:
                return
            del self._entries[key]
            self._discard(entry)

    def _discard(self, entry: _Entry) -> None:
        """Delete the episode's env session in the background."""
        task = asyncio.ensure_future(entry.episode.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close_all(self) -> None:
        """Delete every suspended episode's session (end of a run, tests)."""
        entries = list(self._entries.values())
        self._entries.clear()
        if self._keepalive is not None:
            self._keepalive.cancel()
        await asyncio.gather(*(e.episode.close() for e in entries), *self._closing)


_REGISTRIES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SuspendedEpisodes] = (
    weakref.WeakKeyDictionary()
)


def suspended_episodes() -> SuspendedEpisodes:
    """The running event loop's suspended episodes."""
    loop = asyncio.get_running_loop()
    reg = _REGISTRIES.get(loop)
    if reg is None:
        reg = _REGISTRIES[loop] = SuspendedEpisodes()
    return reg
