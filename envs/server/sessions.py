"""The env server's session table: live environment instances, idle reaping, sessions per client.

State is per process on purpose: clients pin each session to one server URL, so several
server processes can run side by side without sharing anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from openreward.environments import Environment
from openreward.environments.utils import run_user_callable

from contract.vocab import OrsReason
from envs.server.metrics import ServerMetrics

log = logging.getLogger(__name__)

# How many finished calls a session keeps so a client that lost the stream can resume by task_id.
CALLS_KEPT_PER_SESSION = 8
# How many ended session ids we remember, so late requests get 410 "ended" rather than 404
# "unknown".
ENDED_SESSIONS_REMEMBERED = 20_000


@dataclass(eq=False)
class Session:
    """One client episode: an environment instance bound to a task."""

    sid: str
    env_name: str
    env: Environment
    toolset: Any | None = None
    client: str = ""
    """Who opened it (the peer address): sessions per client are capped."""
    last_seen: float = field(default_factory=time.monotonic)
    active_calls: int = 0
    stopped_calls: int = 0
    """Calls of this session the server stopped at their budget (too many end the session)."""
    # task_id -> outcome of a running or finished call, oldest first (bounded).
    calls: OrderedDict[str, asyncio.Future[Any]] = field(default_factory=OrderedDict)

    def remember_call(self, task_id: str, task: asyncio.Future[Any]) -> None:
        """Keep `task` resumable under `task_id`, dropping the oldest finished calls."""
        calls = self.calls
        calls[task_id] = task
        while len(calls) > CALLS_KEPT_PER_SESSION:
            oldest_id, oldest = next(iter(calls.items()))
            if not oldest.done():
                break
            del calls[oldest_id]


class SessionTable:
    """Live sessions by id, with an idle reaper and an optional cap on how many may be open."""

    def __init__(self, ttl_s: float, max_sessions: int | None, metrics: ServerMetrics) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.metrics = metrics
        self._live: dict[str, Session] = {}
        self._ended: OrderedDict[str, OrsReason] = OrderedDict()
        self._per_client: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._live)

    def get(self, sid: str) -> Session | None:
        """The live session `sid` (and mark it used), or None."""
        s = self._live.get(sid)
        if s is not None:
            s.last_seen = time.monotonic()
        return s

    def ended_reason(self, sid: str) -> OrsReason | None:
        """Why a session that no longer exists ended, if we remember it."""
        return self._ended.get(sid)

    def exists(self, sid: str) -> bool:
        return sid in self._live

    def held_by(self, client: str) -> int:
        """How many live sessions `client` opened."""
        return self._per_client.get(client, 0)

    def is_full(self) -> bool:
        return self.max_sessions is not None and len(self._live) >= self.max_sessions

    def add(self, session: Session) -> None:
        self._live[session.sid] = session
        self._per_client[session.client] = self._per_client.get(session.client, 0) + 1
        self._ended.pop(session.sid, None)
        self.metrics.sessions_open = len(self._live)
        self.metrics.sessions_created[session.env_name] += 1

    async def remove(self, sid: str, why: OrsReason = OrsReason.SESSION_DELETED) -> bool:
        """End a session (`why`: SESSION_DELETED, SESSION_EXPIRED or SESSION_OVER_BUDGET) and
        tear its environment down; False if it was not live."""
        s = self._live.pop(sid, None)
        if s is None:
            return False
        left = self._per_client[s.client] - 1
        if left:
            self._per_client[s.client] = left
        else:
            del self._per_client[s.client]
        self._ended[sid] = why
        while len(self._ended) > ENDED_SESSIONS_REMEMBERED:
            self._ended.popitem(last=False)
        self.metrics.sessions_open = len(self._live)
        if why == OrsReason.SESSION_EXPIRED:
            self.metrics.sessions_reaped += 1
        elif why == OrsReason.SESSION_OVER_BUDGET:
            self.metrics.sessions_over_budget += 1
        else:
            self.metrics.sessions_deleted += 1
        if type(s.env).teardown is Environment.teardown:
            return True
        try:
            await run_user_callable(s.env.teardown)
        except Exception as e:  # a broken teardown must not take the server down
            log.warning(
                "teardown of %s session %s failed: %s: %s", s.env_name, sid, type(e).__name__, e
            )
        return True

    def idle_sessions(self, now: float) -> list[str]:
        """Sessions idle longer than the TTL with no call in flight."""
        limit = now - self.ttl_s
        return [sid for sid, s in self._live.items() if s.last_seen < limit and s.active_calls == 0]

    async def reap_forever(self) -> None:
        """Background task: remove idle sessions every few seconds (faster for short TTLs)."""
        interval = max(0.05, min(5.0, self.ttl_s / 4))
        while True:
            await asyncio.sleep(interval)
            for sid in self.idle_sessions(time.monotonic()):
                await self.remove(sid, why=OrsReason.SESSION_EXPIRED)

    async def close_all(self) -> None:
        """Tear down every live session (server shutdown)."""
        for sid in list(self._live):
            await self.remove(sid)
