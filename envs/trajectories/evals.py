"""Evals in the trajectory store: an eval's spec and report, its models, one row per episode.

`python -m tools.eval` writes here; the web UI's comparison page reads here. Every episode
is an ordinary rollout (run `<eval>/<model>`, so the run pages show it too) plus an
`eval_episodes` row naming it, written in one transaction: the row exists exactly when the
rollout does, and a resumed eval reruns exactly the episodes without a row.

Tables (schema v4): `evals`, `eval_models`, `eval_episodes`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from contract.trajectory_events import EventBatch
from envs.trajectories.errors import SpecMismatch
from envs.trajectories.store import TrajectoryStore

__all__ = ["EpisodeRow", "EvalModel", "EvalRecords", "SpecMismatch"]


@dataclass(frozen=True)
class EvalModel:
    """One model of an eval, in the order it was added."""

    name: str
    kind: str
    endpoint: dict[str, Any]
    run_name: str


@dataclass(frozen=True)
class EpisodeRow:
    """The outcome of one episode of one model on one task."""

    model: str
    env: str
    task: str
    sample: int
    rollout_event_id: str
    reward: float
    solved: bool
    num_turns: int
    num_tool_calls: int
    stop_reason: str
    status: str
    tool_errors: dict[str, int] = field(default_factory=dict)
    failure: str | None = None


_EPISODE_COLUMNS = (
    "model, env, task, sample, rollout_event_id, reward, solved, num_turns, num_tool_calls, "
    "stop_reason, status, tool_errors, failure"
)


def _row(r: Any) -> EpisodeRow:
    return EpisodeRow(
        model=r[0],
        env=r[1],
        task=r[2],
        sample=int(r[3]),
        rollout_event_id=r[4],
        reward=float(r[5]),
        solved=bool(r[6]),
        num_turns=int(r[7]),
        num_tool_calls=int(r[8]),
        stop_reason=r[9],
        status=r[10],
        tool_errors=orjson.loads(r[11]) if r[11] else {},
        failure=r[12],
    )


class EvalRecords:
    """Reads and writes the eval tables of one trajectory store."""

    def __init__(self, store: TrajectoryStore) -> None:
        self.store = store

    def _conn(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A connection of the store's fixed pool for one `with` block (never two at once)."""
        return self.store._read()

    # -- evals

    def find(self, name: str) -> dict[str, Any] | None:
        """The eval named `name` (id, name, spec, spec_hash, created_at, updated_at), or None."""
        with self._conn() as conn:
            r = conn.execute(
                "SELECT id, name, spec, spec_hash, created_at, updated_at FROM evals WHERE name "
                "= ?",
                (name,),
            ).fetchone()
        if r is None:
            return None
        return {**dict(r), "spec": orjson.loads(r["spec"])}

    def ensure(self, name: str, spec: dict[str, Any], spec_hash: str) -> int:
        """The id of eval `name`, created with this spec if new; SpecMismatch if its spec
        differs."""
        with self._conn() as conn:
            return self._ensure(conn, name, spec, spec_hash)

    def _ensure(
        self, conn: sqlite3.Connection, name: str, spec: dict[str, Any], spec_hash: str
    ) -> int:
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT id, spec, spec_hash FROM evals WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                cur = conn.execute(
                    "INSERT INTO evals(name, spec, spec_hash, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (name, orjson.dumps(spec).decode(), spec_hash, now, now),
                )
                assert cur.lastrowid is not None  # set by every INSERT
                eval_id = cur.lastrowid
            elif row["spec_hash"] != spec_hash:
                raise SpecMismatch(_describe_mismatch(name, orjson.loads(row["spec"]), spec))
            else:
                eval_id = int(row["id"])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return eval_id

    def check(self, name: str, spec: dict[str, Any], spec_hash: str) -> int | None:
        """The id of eval `name` when its spec matches, None when there is none (nothing
        written)."""
        found = self.find(name)
        if found is None:
            return None
        if found["spec_hash"] != spec_hash:
            raise SpecMismatch(_describe_mismatch(name, found["spec"], spec))
        return int(found["id"])

    def add_models(self, eval_id: int, models: list[EvalModel]) -> None:
        """Add models the eval does not have yet (a model keeps its first kind and run)."""
        with self._conn() as conn:
            self._add_models(conn, eval_id, models)

    def _add_models(self, conn: sqlite3.Connection, eval_id: int, models: list[EvalModel]) -> None:
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            have = {
                r[0]: r[1]
                for r in conn.execute(
                    "SELECT model, kind FROM eval_models WHERE eval_id = ?", (eval_id,)
                )
            }
            position = len(have)
            for m in models:
                if m.name in have:
                    if have[m.name] != m.kind:
                        raise SpecMismatch(
                            f"model {m.name!r} of this eval is a {have[m.name]} model, not "
                            f"{m.kind}: "
                            "give the new one another name"
                        )
                    continue
                conn.execute(
                    "INSERT INTO eval_models VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        eval_id,
                        m.name,
                        position,
                        m.kind,
                        orjson.dumps(m.endpoint).decode(),
                        m.run_name,
                        now,
                    ),
                )
                position += 1
            conn.execute("UPDATE evals SET updated_at = ? WHERE id = ?", (now, eval_id))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def models(self, eval_id: int) -> list[EvalModel]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT model, kind, endpoint, run_name FROM eval_models WHERE eval_id = ? "
                "ORDER BY position",
                (eval_id,),
            ).fetchall()
        return [EvalModel(r[0], r[1], orjson.loads(r[2]) if r[2] else {}, r[3]) for r in rows]

    def save_report(self, eval_id: int, report: dict[str, Any]) -> None:
        with self._conn() as conn:
            conn.execute(
                "UPDATE evals SET report = ?, updated_at = ? WHERE id = ?",
                (orjson.dumps(report).decode(), time.time(), eval_id),
            )

    def list_evals(self) -> list[dict[str, Any]]:
        """Every eval, newest first: id, name, times, models, episode count, whether it has a
        report."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT id, name, created_at, updated_at, report IS NOT NULL AS reported, "
                "(SELECT COUNT(*) FROM eval_episodes e WHERE e.eval_id = evals.id) AS episodes, "
                "json_extract(spec, '$.k') AS k, json_array_length(spec, '$.tasks') AS tasks "
                "FROM evals ORDER BY updated_at DESC"
            ).fetchall()
        out = []
        for r in rows:
            item = dict(r)
            item["models"] = [m.name for m in self.models(item["id"])]
            out.append(item)
        return out

    def get(self, eval_id: int) -> dict[str, Any] | None:
        """One eval: its row (spec and report parsed) and models."""
        with self._conn() as conn:
            r = conn.execute(
                "SELECT id, name, spec, spec_hash, created_at, updated_at, report FROM evals "
                "WHERE id = ?",
                (eval_id,),
            ).fetchone()
        if r is None:
            return None
        out = dict(r)
        out["spec"] = orjson.loads(out["spec"])
        out["report"] = orjson.loads(out["report"]) if out["report"] else None
        out["models"] = self.models(eval_id)
        return out

    # -- episodes

    def episodes(self, eval_id: int, env: str | None = None) -> list[EpisodeRow]:
        """The episodes stored for an eval (optionally one environment's), by env, task, model,
        sample."""
        sql = f"SELECT {_EPISODE_COLUMNS} FROM eval_episodes WHERE eval_id = ?"
        args: list[Any] = [eval_id]
        if env is not None:
            sql += " AND env = ?"
            args.append(env)
        sql += " ORDER BY env, task, model, sample"
        with self._conn() as conn:
            return [_row(r) for r in conn.execute(sql, args)]

    def envs(self, eval_id: int) -> list[str]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT DISTINCT env FROM eval_episodes WHERE eval_id = ? ORDER BY env", (eval_id,)
            ).fetchall()
        return [r[0] for r in rows]

    def record(self, eval_id: int, row: EpisodeRow, events: list[dict[str, Any]]) -> None:
        """Store one episode's rollout events and its eval row in one transaction (blocking)."""
        self.record_many(eval_id, [(row, events)])

    def record_many(
        self, eval_id: int, episodes: list[tuple[EpisodeRow, list[dict[str, Any]]]]
    ) -> None:
        """Store episodes (rollout events and eval row each) in one transaction (blocking): all of
        them or none. A row already there (an episode rerun with --retry-errors) is replaced."""
        batch = [
            ev
            for _, events in episodes
            for ev in EventBatch.model_validate({"events": events}).events
        ]
        now = time.time()
        rows = [
            (
                eval_id,
                row.model,
                row.env,
                row.task,
                row.sample,
                row.rollout_event_id,
                row.reward,
                int(row.solved),
                row.num_turns,
                row.num_tool_calls,
                row.stop_reason,
                row.status,
                orjson.dumps(row.tool_errors).decode() if row.tool_errors else None,
                row.failure,
                now,
            )
            for row, _ in episodes
        ]

        def insert(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR REPLACE INTO eval_episodes VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows
            )

        self.store.write(batch, then=insert)

    def close(self) -> None:
        """Nothing to release: connections belong to the store's pool (kept for callers)."""


def _diffs(old: Any, new: Any, path: str) -> list[str]:
    """`path old -> new` for each leaf that differs (values shortened)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d
            for key in sorted(set(old) | set(new), key=str)
            for d in _diffs(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
        ]
    if old == new:
        return []
    return [f"{path} {str(old)[:40]} -> {str(new)[:40]}"]


def _describe_mismatch(name: str, old: dict[str, Any], new: dict[str, Any]) -> str:
    """One line naming what differs between two specs."""
    diffs = []
    for key in ("k", "sampling", "solve_threshold", "settings"):
        diffs += _diffs(old.get(key), new.get(key), key)
    if old.get("tasks") != new.get("tasks"):
        diffs.append(f"tasks ({len(old.get('tasks') or [])} -> {len(new.get('tasks') or [])})")
    what = "; ".join(diffs[:3]) + (f"; +{len(diffs) - 3} more" if len(diffs) > 3 else "")
    return (
        f"eval {name!r} exists with another spec ({what or 'spec version'}): "
        "rerun with its settings, or pick a new --name"
    )
