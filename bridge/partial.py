"""Episodes suspended by slime's abort under `--partial-rollout`, kept until slime hands them back.

slime's abort returns an in-flight sample as ABORTED and, with `--partial-rollout`, buffers it
and passes it to the generate function again in a later rollout. The bridge keeps the episode
(env session, token ledger, messages, counters) here, keyed by the episode key it wrote into
the sample, so the episode resumes at the turn where it stopped. An entry is used only when
the sample comes back with exactly the tokens it left with; it expires after `SUSPEND_TTL_S`
(below the env server's idle-session TTL), and expired or evicted episodes have their session
deleted. Entries belong to one event loop (their HTTP connections do).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridge.episode import Episode

log = logging.getLogger(__name__)

SUSPEND_TTL_S = 600.0
"""Seconds a suspended episode is kept (the env server reaps sessions idle for 900 s by default)."""
MAX_SUSPENDED = 8192
"""Suspended episodes kept per event loop; the oldest are dropped beyond it."""


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
        task = asyncio.ensure_future(entry.episode.session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close_all(self) -> None:
        """Delete every suspended episode's session (end of a run, tests)."""
        entries = list(self._entries.values())
        self._entries.clear()
        await asyncio.gather(*(e.episode.session.close() for e in entries), *self._closing)


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
