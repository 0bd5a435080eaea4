"""Where `python -m tools.replay` reads stored rollouts: the trajectory store's database file, or a
server's trajectory JSON API; and the tool calls of a stored conversation, each with its result.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson

from tools.errors import ReplayError

PAGE = 500


@dataclass(frozen=True)
class StoredCall:
    """One tool call of the stored episode and what the model saw come back."""

    position: int
    name: str
    arguments: dict[str, Any] | None  # None: not a JSON object (the bridge could not parse it)
    text: str | None
    reward: float | None
    finished: bool
    executed: bool | None = None
    """Whether the env ran it, as the bridge recorded it (None: an older rollout that does not
    say)."""


def stored_calls(messages: list[dict[str, Any]]) -> list[StoredCall]:
    """The tool calls of a stored conversation, each paired with its result (by call id)."""
    results = {m.get("call_id"): m for m in messages if m.get("type") == "tool_result"}
    out: list[StoredCall] = []
    for m in messages:
        if m.get("type") != "tool_call":
            continue
        try:
            args = orjson.loads(m.get("content") or "")
        except orjson.JSONDecodeError:
            args = None
        res = results.get(m.get("call_id")) or {}
        executed = (res.get("metadata") or {}).get("executed")
        out.append(
            StoredCall(
                position=len(out) + 1,
                name=str(m.get("name") or ""),
                arguments=args if isinstance(args, dict) else None,
                text=res.get("content"),
                reward=res.get("reward"),
                finished=bool(res.get("is_finished")),
                executed=executed if isinstance(executed, bool) else None,
            )
        )
    return out


def rollout_event_id(rollout_id: str) -> str:
    """The store's id of a rollout: the dashed UUID form of a 32-hex trajectory id."""
    rid = rollout_id.strip()
    if re.fullmatch(r"[0-9a-fA-F]{32}", rid):
        return str(uuid.UUID(hex=rid))
    return rid


class RolloutSource(Protocol):
    async def rollout(self, rollout_id: str) -> dict[str, Any]: ...
    async def run_rollout_ids(self, run: str) -> list[str]: ...


class StoreSource:
    """Rollouts read from a trajectory database file."""

    def __init__(self, path: str) -> None:
        if not Path(path).is_file():
            raise ReplayError(f"no trajectory database at {path} (give --db or --url)")
        from envs.trajectories.errors import StoreError
        from envs.trajectories.store import TrajectoryStore

        try:
            self.store = TrajectoryStore(path)
        except StoreError as e:
            raise ReplayError(str(e)) from None

    async def rollout(self, rollout_id: str) -> dict[str, Any]:
        found = await asyncio.to_thread(self.store.event_id_of, rollout_event_id(rollout_id))
        r = None if found is None else await asyncio.to_thread(self.store.get_rollout, found)
        if r is None:
            raise ReplayError(f"no rollout {rollout_id!r} in {self.store.path}")
        return r

    async def run_rollout_ids(self, run: str) -> list[str]:
        run_id = self.store.run_id_by_name(run)
        if run_id is None and run.isdigit() and self.store.get_run(int(run)) is not None:
            run_id = int(run)
        if run_id is None:
            raise ReplayError(f"no run {run!r} in {self.store.path}")
        ids: list[str] = []
        after = None
        while True:
            page = self.store.list_rollouts(run_id, sort="time", after=after, limit=PAGE)
            ids += [r["event_id"] for r in page.rows]
            if page.next_cursor is None:
                return ids
            after = page.next_cursor


class ApiSource:
    """Rollouts read from a server's trajectory JSON API (`/api/...`)."""

    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url.rstrip("/")
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.AsyncClient(timeout=60.0, headers=headers, trust_env=False)

    async def _get(self, path: str, **params: Any) -> Any:
        try:
            r = await self.http.get(self.url + path, params=params)
        except httpx.HTTPError as e:
            raise ReplayError(f"cannot reach {self.url}: {type(e).__name__}: {e}") from None
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise ReplayError(f"{self.url}{path}: HTTP {r.status_code}: {r.text[:200]}")
        return r.json()

    async def rollout(self, rollout_id: str) -> dict[str, Any]:
        r = await self._get(f"/api/rollouts/{rollout_event_id(rollout_id)}")
        if r is None:
            raise ReplayError(f"no rollout {rollout_id!r} on {self.url}")
        return r

    async def run_rollout_ids(self, run: str) -> list[str]:
        runs = (await self._get("/api/runs") or {}).get("runs", [])
        match = [r["id"] for r in runs if r["name"] == run or str(r["id"]) == run]
        if not match:
            raise ReplayError(f"no run {run!r} on {self.url}")
        ids: list[str] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": PAGE, **({"after": after} if after else {})}
            page = await self._get(f"/api/runs/{match[0]}/rollouts", **params) or {}
            ids += [r["event_id"] for r in page.get("rollouts", [])]
            after = page.get("next")
            if not after:
                return ids

    async def close(self) -> None:
        await self.http.aclose()
