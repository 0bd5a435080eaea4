"""Rollout-only's failures shown, not hidden: the environments the tasks name are checked on
the env server before any episode (an unknown environment or a server of another kind is
permanent, so it is said once instead of being retried in every episode), and a run stops early,
with the reason, when most episodes fail for one infrastructure reason.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bridge.engine import RETRY_TALLY
from tools.errors import RolloutOnlyError

EARLY_LOOK = 8
"""Episodes finished before the run may stop early (all of them in a smaller run)."""
MAX_REASON_CHARS = 300
CHECK_TIMEOUT_S = 10.0


def check_envs_served(url: str, envs: Iterable[str], timeout: float = CHECK_TIMEOUT_S) -> None:
    """Every environment in `envs` is served at `url`; RolloutOnlyError (one line) when the
    server lacks one or is not an ORS env server. A server behind a key it refuses is left to
    the episodes."""
    key = os.environ.get("ENV_SERVER_API_KEY")
    try:
        r = httpx.get(
            f"{url.rstrip('/')}/list_environments",
            headers={"X-API-Key": key} if key else {},
            timeout=timeout,
        )
    except httpx.HTTPError as e:
        raise RolloutOnlyError(f"env server {url}: GET /list_environments failed: {e}") from None
    if r.status_code in (401, 403):
        return
    names = _names(r)
    if names is None:
        raise RolloutOnlyError(
            f"{url} is not an ORS env server (GET /list_environments answered HTTP "
            f"{r.status_code}, not a list of names): point --env-server or the config's "
            "env_server at `python -m envs.server`, not at the engine or another service"
        )
    missing = sorted(set(envs) - set(names))
    if missing:
        raise RolloutOnlyError(
            f"unknown environment {', '.join(map(repr, missing))} on the env server {url} "
            f"(it serves {', '.join(names) or 'none'}): fix the task file or serve it there"
        )


def _names(r: httpx.Response) -> list[str] | None:
    if r.status_code != 200:
        return None
    try:
        body = r.json()
    except ValueError:
        return None
    if isinstance(body, list) and all(isinstance(n, str) for n in body):
        return body
    return None


@dataclass
class FailureWatch:
    """Counts finished episodes by infrastructure failure; says when the run should stop: once
    min(EARLY_LOOK, total) episodes are done and more than half of them failed for one reason
    (its stop reason and message; an engine outage's message without its tally of tries)."""

    total: int
    done: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)

    def add(self, metadata: dict[str, Any]) -> str | None:
        """Count one finished episode (its sample's metadata); the stop message, or None."""
        self.done += 1
        if metadata.get("infra_failure"):
            message = RETRY_TALLY.sub("", str(metadata.get("failure_message") or "no message"))
            message = message[:MAX_REASON_CHARS]
            self.by_reason[f"{metadata.get('stop_reason')}: {message}"] += 1
        return self.stop_message()

    def stop_message(self) -> str | None:
        """Why the run stops (one line), or None while it goes on."""
        if not self.by_reason or self.done < min(EARLY_LOOK, self.total):
            return None
        reason, n = self.by_reason.most_common(1)[0]
        if 2 * n <= self.done:
            return None
        return (
            f"stopped after {self.done} of {self.total} episodes: {n} failed for one "
            f"infrastructure reason ({reason})"
        )
