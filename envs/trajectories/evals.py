"""Evals in the trajectory store: an eval's spec and report, its models, one row per episode.

`python -m tools.eval` writes here; the web UI's comparison page reads here. Every episode
is an ordinary rollout (run `<eval>/<model>`, so the run pages show it too) plus an
`eval_episodes` row naming it, written in one transaction: the row exists exactly when the
rollout does, and a resumed eval reruns exactly the episodes without a row. An episode run again
(`--retry-errors`) replaces its row, and the rollout it replaces moves to the run
`<eval>/<model>/superseded`: the model's run holds exactly the eval's episodes.

A model's identity (what `tools/eval/identity.py` reads: target, served model, tokenizer,
checkpoint, sampling arguments) is stored with it; a later run naming the same model with another
identity is refused, the differing leaves named. An episode's reward parts are read from its
rollout's metadata (`reward_parts`, contract/env_report.py).

Tables (schema v4): `evals`, `eval_models`, `eval_episodes`.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from contract.trajectory_events import EventBatch
from envs.trajectories.errors import SpecMismatch
from envs.trajectories.eval_identity import (
    IDENTITY_VERSION,
    check_same_model,
    describe_spec_mismatch,
    identity_diffs,
)
from envs.trajectories.store import TrajectoryStore

__all__ = [
    "IDENTITY_VERSION",
    "SUPERSEDED",
    "EpisodeRow",
    "EvalModel",
    "EvalRecords",
    "SpecMismatch",
    "identity_diffs",
    "model_summary",
    "share_text",
]

SUPERSEDED = "superseded"
"""`<run>/superseded`: where an episode's rollout goes when a rerun replaces it."""
MAX_PARTS = 16


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
    parts: dict[str, float] = field(default_factory=dict)
    """The reward's parts the env reported (read from the rollout; empty when it reported none)."""


_EPISODE_COLUMNS = (
    "e.model, e.env, e.task, e.sample, e.rollout_event_id, e.reward, e.solved, e.num_turns, "
    "e.num_tool_calls, e.stop_reason, e.status, e.tool_errors, e.failure"
)
_PARTS_COLUMN = (
    "(SELECT CASE WHEN json_valid(r.metadata) THEN json_extract(r.metadata, '$.reward_parts') END "
    "FROM rollouts r WHERE r.event_id = e.rollout_event_id)"
)


def _parts(text: Any) -> dict[str, float]:
    """Reward parts from stored JSON, bounded: names to finite numbers (anything else dropped)."""
    if not isinstance(text, str):
        return {}
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(obj, dict):
        return {}
    out = {}
    for k, v in list(obj.items())[:MAX_PARTS]:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[str(k)[:64]] = float(v)
    return out


def model_summary(endpoint: dict[str, Any]) -> dict[str, Any]:
    """What names a model to a reader, from its stored identity: kind, target, served model id,
    tokenizer, checkpoint (path, step), weight version, sampling arguments (older stores: what
    they recorded)."""
    raw = endpoint.get("served")
    served: dict[str, Any] = raw if isinstance(raw, dict) else {}
    out: dict[str, Any] = {"kind": endpoint.get("kind"), "target": endpoint.get("target")}
    model = endpoint.get("model") or served.get("model")
    if model:
        out["model"] = model
    tok = endpoint.get("tokenizer")
    if isinstance(tok, dict):
        out["tokenizer"] = tok.get("path")
        if tok.get("files_hash"):
            out["tokenizer_hash"] = tok["files_hash"]
    elif isinstance(tok, str):
        out["tokenizer"] = tok
    ckpt = endpoint.get("checkpoint") or served.get("checkpoint")
    if isinstance(ckpt, dict) and ckpt.get("path"):
        out["checkpoint"] = ckpt["path"]
        if ckpt.get("step") is not None:
            out["step"] = ckpt["step"]
    for key in ("model_path", "weight_version"):
        if served.get(key) is not None and key not in out:
            out[key] = served[key]
    if endpoint.get("sampling_args"):
        out["sampling_args"] = endpoint["sampling_args"]
    return {k: v for k, v in out.items() if v is not None}


def share_text(x: float) -> str:
    """A share as a percentage that never rounds a small one to 0% (or an almost-all to 100%)."""
    p = 100.0 * x
    if p <= 0 or p >= 100:
        return f"{p:.0f}%"
    if p < 0.1:
        return "<0.1%"
    if p > 99.9:
        return ">99.9%"
    if p < 1 or p > 99:
        return f"{p:.1f}%"
    return f"{p:.0f}%"


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
        parts=_parts(r[13]) if len(r) > 13 else {},
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
                raise SpecMismatch(describe_spec_mismatch(name, orjson.loads(row["spec"]), spec))
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
            raise SpecMismatch(describe_spec_mismatch(name, found["spec"], spec))
        return int(found["id"])

    def check_models(self, eval_id: int, models: list[EvalModel]) -> None:
        """SpecMismatch naming the differing leaves when a stored model of the eval has another
        identity than the one given (nothing written)."""
        stored = {m.name: m for m in self.models(eval_id)}
        for m in models:
            if m.name in stored:
                check_same_model(stored[m.name], m)

    def add_models(self, eval_id: int, models: list[EvalModel]) -> None:
        """Add models the eval does not have yet; a model it has must have the same identity
        (SpecMismatch naming what differs), and what its server reports now is kept with it."""
        with self._conn() as conn:
            self._add_models(conn, eval_id, models)

    def _add_models(self, conn: sqlite3.Connection, eval_id: int, models: list[EvalModel]) -> None:
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            have = {
                r[0]: EvalModel(r[0], r[1], orjson.loads(r[2]) if r[2] else {}, r[3])
                for r in conn.execute(
                    "SELECT model, kind, endpoint, run_name FROM eval_models WHERE eval_id = ?",
                    (eval_id,),
                )
            }
            position = len(have)
            for m in models:
                if m.name in have:
                    merged = check_same_model(have[m.name], m)
                    if merged != have[m.name].endpoint:
                        conn.execute(
                            "UPDATE eval_models SET endpoint = ? WHERE eval_id = ? AND model = ?",
                            (orjson.dumps(merged).decode(), eval_id, m.name),
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
            models = self.models(item["id"])
            item["models"] = [m.name for m in models]
            item["model_info"] = {m.name: model_summary(m.endpoint) for m in models}
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

    def episodes(
        self, eval_id: int, env: str | None = None, parts: bool = False
    ) -> list[EpisodeRow]:
        """The episodes stored for an eval (optionally one environment's), by env, task, model,
        sample; `parts`: with the reward parts of each (read from its rollout)."""
        columns = f"{_EPISODE_COLUMNS}, {_PARTS_COLUMN}" if parts else _EPISODE_COLUMNS
        sql = f"SELECT {columns} FROM eval_episodes e WHERE e.eval_id = ?"
        args: list[Any] = [eval_id]
        if env is not None:
            sql += " AND e.env = ?"
            args.append(env)
        sql += " ORDER BY e.env, e.task, e.model, e.sample"
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
            _supersede(conn, eval_id, [row for row, _ in episodes], now)
            conn.executemany(
                "INSERT OR REPLACE INTO eval_episodes VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows
            )

        self.store.write(batch, then=insert)

    def close(self) -> None:
        """Nothing to release: connections belong to the store's pool (kept for callers)."""


def _supersede(conn: sqlite3.Connection, eval_id: int, rows: list[EpisodeRow], now: float) -> None:
    """Move the rollouts of the eval rows these episodes replace to `<run>/superseded` (inside
    the write's transaction): the store's triggers move their run statistics with them."""
    runs: dict[str, int] = {}
    for row in rows:
        old = conn.execute(
            "SELECT e.rollout_event_id, m.run_name FROM eval_episodes e JOIN eval_models m "
            "ON m.eval_id = e.eval_id AND m.model = e.model WHERE e.eval_id = ? AND e.model = ? "
            "AND e.env = ? AND e.task = ? AND e.sample = ?",
            (eval_id, row.model, row.env, row.task, row.sample),
        ).fetchone()
        if old is None or old[0] == row.rollout_event_id:
            continue
        name = f"{old[1]}/{SUPERSEDED}"
        if name not in runs:
            conn.execute(
                "INSERT INTO runs(name, created_at, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET updated_at = excluded.updated_at",
                (name, now, now),
            )
            runs[name] = int(
                conn.execute("SELECT id FROM runs WHERE name = ?", (name,)).fetchone()[0]
            )
        for table, column in (
            ("rollouts", "event_id"),
            ("rollout_tripwires", "event_id"),
            ("rollout_tripwire_keys", "event_id"),
        ):
            conn.execute(f"UPDATE {table} SET run_id = ? WHERE {column} = ?", (runs[name], old[0]))
