"""Embedded SQLite store of rollouts: versioned schema, one writer thread, fast indexed reads.

Data model (what the OpenReward rollout-upload events become):
  runs            one row per run name
  rollouts        one row per `rollout` event; trainer fields pulled out of its metadata
  messages        one row per `message` event, keyed by eventId (ingest is idempotent)
  rollout_tokens  token ids / loss mask / logprobs packed as arrays (kept off the list rows)
  run_env_stats   per run and env: rollout count, reward sum, last update (kept by triggers)

The schema and its migrations live in `schema.py`, the upload events in `events.py`.
Writes go through `submit()` to a single writer thread that commits several request
batches in one transaction (group commit); reads use one connection per thread (WAL).
"""

from __future__ import annotations

import array
import contextlib
import logging
import math
import operator
import queue
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from contract.trajectory_events import (
    MAX_ABS_REWARD,
    NULL,
    Event,
    IngestResult,
    MessageEvent,
    Rejected,
    RolloutEvent,
)
from envs.trajectories import tripwires
from envs.trajectories.errors import StoreError
from envs.trajectories.schema import connect, migrate

log = logging.getLogger(__name__)

PAGE_SIZE_MAX = 500
# Group commit: one transaction takes every batch waiting (up to this many events), and while
# uploads keep coming it lingers this long for more (fewer, larger commits: ~40% less CPU per
# event).
GROUP_COMMIT_MAX_EVENTS = 50_000
GROUP_COMMIT_LINGER_S = 0.003
# WAL checkpoints run on their own thread every CHECKPOINT_INTERVAL_S; the writer checkpoints
# itself only if the WAL grows past this many pages (a safety net against an unbounded WAL).
CHECKPOINT_INTERVAL_S = 1.0
WRITER_AUTOCHECKPOINT_PAGES = 50_000
# Metadata keys the bridge's sink sends that become columns or packed arrays.
ARRAY_KEYS = ("token_ids", "loss_mask", "logprobs")
# Read connections per store: every reader shares these (each thread once had its own, with a
# 64 MiB page cache: 20 readers of a 63 MB rollout took the server to 6.3 GB).
READ_CONNECTIONS = 4
READ_CACHE_KIB = 8 * 1024
MESSAGE_PAGE = 256
MESSAGE_PAGE_BYTES = 1 << 20
CUT_CHARS = 2_000  # what a message cut by `messages(max_chars=...)` keeps at least


# ---------------------------------------------------------------- packing


def pack_ints(values: Iterable[int], code: str = "i") -> bytes:
    """Integers as a packed array (int32 by default); raises TypeError/OverflowError on bad
    input."""
    if isinstance(values, (list, tuple)):
        try:  # struct packs a list ~2.5x faster than array.array; same native layout
            return struct.pack(f"{len(values)}{code}", *values)
        except (struct.error, OverflowError, TypeError):
            pass  # let array.array raise its usual TypeError/OverflowError
    return array.array(code, values).tobytes()


def unpack_ints(blob: bytes, code: str = "i") -> list[int]:
    a = array.array(code)
    a.frombytes(blob)
    return a.tolist()


def pack_floats(values: list[float | None]) -> bytes:
    """Floats as a packed float32 array; None becomes NaN."""
    try:
        return struct.pack(f"{len(values)}f", *values)  # fast path: no None
    except (struct.error, OverflowError, TypeError):
        pass
    try:
        return array.array("f", values).tobytes()  # type: ignore[type-var]  # None: TypeError
    except TypeError:
        return array.array("f", (math.nan if v is None else v for v in values)).tobytes()


def unpack_floats(blob: bytes) -> list[float | None]:
    a = array.array("f")
    a.frombytes(blob)
    return [None if math.isnan(v) else v for v in a]


def _dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


# ---------------------------------------------------------------- writes


@dataclass
class _WriteJob:
    events: list[Event]
    future: Future = field(default_factory=Future)


class _Writer:
    """Applies event batches inside one transaction; keeps a run-name cache."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._run_ids: dict[str, int] = {}
        self._run_info_seen: set[int] = set()

    def forget(self) -> None:
        """Drop caches after a rollback (the rows they point to may be gone)."""
        self._run_ids.clear()
        self._run_info_seen.clear()

    def run_id(self, name: str, run_info: str | None, now: float) -> int:
        """The id of run `name` (made on first sight); `run_info` is its JSON text, if any."""
        rid = self._run_ids.get(name)
        if rid is None:
            row = self.conn.execute("SELECT id FROM runs WHERE name = ?", (name,)).fetchone()
            if row is None:
                cur = self.conn.execute(
                    "INSERT INTO runs(name, created_at, updated_at, run_info) VALUES (?, ?, ?, ?)",
                    (name, now, now, run_info),
                )
                assert cur.lastrowid is not None  # set by every INSERT
                rid = cur.lastrowid
            else:
                rid = int(row[0])
            self._run_ids[name] = rid
        if run_info and rid not in self._run_info_seen:
            self.conn.execute(
                "UPDATE runs SET run_info = ? WHERE id = ? AND run_info IS NULL", (run_info, rid)
            )
            self._run_info_seen.add(rid)
        return rid

    def apply(self, events: list[Event]) -> IngestResult:
        """Write one request's events (the caller owns the transaction).

        Every event is turned into its rows first; one that cannot be (an integer past 64 bits
        in its metadata, a reward out of range) is reported in `rejected` and the others are
        written. Messages go first, so a rollout inserted by the same batch counts them in its
        INSERT; only rollouts whose reward/status/turns must be derived from messages are
        refreshed.
        """
        now = time.time()
        result = IngestResult()
        touched: set[str] = set()
        touched_runs: set[int] = set()
        msg_rows: list[tuple[Any, ...]] = []
        ordered: list[tuple[str, Any]] = []  # rollouts and updates, in batch order
        for i, ev in enumerate(events):
            try:
                kind = ev["eventType"]
                if kind == "message":
                    msg_rows.append(_message_row(ev))  # type: ignore[arg-type]
                    touched.add(ev["rolloutEventId"])  # type: ignore[typeddict-item]
                elif kind == "rollout":
                    ordered.append((kind, _PreparedRollout.of(ev)))  # type: ignore[arg-type]
                else:
                    ordered.append((kind, (ev["eventId"], _dumps(ev.get("rollout_info") or {}))))
            except (TypeError, ValueError, OverflowError) as e:
                result.rejected.append(Rejected(i, ev.get("eventId"), _one_line(e)))
        if msg_rows:
            before = self.conn.total_changes
            self.conn.executemany(_INSERT_MESSAGES_SQL, msg_rows)
            inserted = self.conn.total_changes - before
            result.messages += inserted
            result.duplicates += len(msg_rows) - inserted
        for what, item in ordered:
            if what == "rollout":
                rid = self.run_id(item.run_name, item.run_info, now)
                outcome = self._insert_rollout(item, rid, now)
                if outcome is None:
                    result.duplicates += 1
                else:
                    result.rollouts += 1
                    if outcome:  # complete as inserted: nothing to derive from messages
                        touched.discard(item.event_id)
                    else:
                        touched.add(item.event_id)
                touched_runs.add(rid)
            else:
                event_id, info = item
                self._update_rollout(event_id, info, now)
                result.updates += 1
        for event_id in touched:
            run = self._refresh_rollout(event_id, now)
            if run is not None:
                touched_runs.add(run)
        for rid in touched_runs:
            self.conn.execute("UPDATE runs SET updated_at = ? WHERE id = ?", (now, rid))
        return result

    def _insert_rollout(self, p: _PreparedRollout, run_id: int, now: float) -> bool | None:
        """Insert (or fill a placeholder); None if already stored, else whether it needs no
        refresh."""
        cur = self.conn.execute(_INSERT_ROLLOUT_SQL, (p.event_id, run_id, *p.row, now, p.event_id))
        if cur.rowcount == 0:
            return None
        tripwires.record(self.conn, p.event_id, run_id, p.group_key, p.meta)
        if p.arrays.get("token_ids") is not None:
            self._insert_tokens(p.event_id, p.arrays, p.prompt_length)
        return p.complete

    def _insert_tokens(self, event_id: str, arrays: dict[str, Any], prompt_length: Any) -> None:
        try:
            mask = arrays.get("loss_mask") or []
            try:
                mask_blob = bytes(mask)  # uint8 array; 3x faster than array("B") from a list
            except (TypeError, ValueError):
                mask_blob = pack_ints([1 if m else 0 for m in mask], "B")
            self.conn.execute(
                "INSERT OR IGNORE INTO rollout_tokens VALUES (?,?,?,?,?)",
                (
                    event_id,
                    int(prompt_length or 0),
                    pack_ints(arrays.get("token_ids") or []),
                    mask_blob,
                    pack_floats(list(arrays.get("logprobs") or [])),
                ),
            )
        except (TypeError, ValueError, OverflowError) as e:
            log.warning("rollout %s: token arrays not stored: %s", event_id, e)

    def _update_rollout(self, event_id: str, info: str | None, now: float) -> None:
        self.conn.execute(
            "INSERT INTO rollouts(event_id, rollout_info, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(event_id) DO UPDATE SET updated_at = excluded.updated_at, "
            "rollout_info = json_patch(IFNULL(rollouts.rollout_info, '{}'), excluded.rollout_info)",
            (event_id, info, now),
        )

    def _refresh_rollout(self, event_id: str, now: float) -> int | None:
        """Recount a rollout's messages; derive reward/status/turns where the rollout did not state
        them.

        One statement: SQLite evaluates the CASE branches lazily, so explicit fields cost nothing.
        """
        row = self.conn.execute(_REFRESH_SQL, {"id": event_id, "now": now}).fetchone()
        return None if row is None else int(row[0])


_REFRESH_SQL = """
UPDATE rollouts SET
    num_messages = (SELECT COUNT(*) FROM messages WHERE rollout_event_id = :id),
    updated_at = :now,
    reward = CASE WHEN reward_explicit THEN reward ELSE
        (SELECT reward FROM messages WHERE rollout_event_id = :id AND reward IS NOT NULL
         ORDER BY is_finished DESC, idx DESC LIMIT 1) END,
    status = CASE WHEN status_explicit THEN status ELSE
        (CASE WHEN EXISTS (SELECT 1 FROM messages WHERE rollout_event_id = :id AND is_finished)
              THEN 'finished' ELSE 'running' END) END,
    num_turns = CASE WHEN turns_explicit THEN num_turns ELSE
        (SELECT COUNT(*) FROM messages WHERE rollout_event_id = :id AND type = 'tool_call') END
WHERE event_id = :id AND run_id IS NOT NULL
RETURNING run_id
"""


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) else None


# SQLite stores a bound NaN as NULL. Python's sqlite3 binds a float directly but sends None (and
# bytes) through its adapter lookup first (~0.4 us per parameter), which made NULL columns the
# largest per-row cost of message ingest; nullable parameters are therefore bound as NULL.
# (No column receives a real NaN: events reject NaN, and token logprobs are packed into blobs.)


def _n(value: Any) -> Any:
    """A nullable parameter for a hot INSERT: None becomes NULL (stored as NULL)."""
    return NULL if value is None else value


_MESSAGE_FIELDS = operator.itemgetter(
    "eventId",
    "rolloutEventId",
    "index",
    "type",
    "content",
    "summary",
    "contentReference",
    "name",
    "callId",
    "reward",
    "isFinished",
    "timestamp",
)
_INSERT_MESSAGES_SQL = (
    "INSERT OR IGNORE INTO messages(event_id, rollout_event_id, idx, type, content, summary, "
    "content_reference, "
    "name, call_id, reward, is_finished, ts, metadata) VALUES (?,?,?,?,?,?,?,?,?,?,IFNULL(?, "
    "0),? / 1000.0,?)"
)


def _message_row(ev: MessageEvent) -> tuple[Any, ...]:
    """The `messages` row of one event, for _INSERT_MESSAGES_SQL (raises on unstorable metadata)."""
    meta = ev["metadata"]
    return (*_MESSAGE_FIELDS(ev), NULL if meta is None else orjson.dumps(meta).decode())


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[:limit] + "..."


def _int64_or_none(value: Any, what: str) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"{what} {value} does not fit a 64-bit integer")
    return value


_INSERT_ROLLOUT_SQL = (
    "INSERT INTO rollouts(event_id, run_id, name, env, environment_id, split, step, ts, "
    "status, status_explicit, stop_reason, reward, reward_explicit, "
    "reward_reduction, num_turns, turns_explicit, group_key, task_index, metadata, "
    "task_spec, run_info, rollout_info, updated_at, num_messages) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,"
    "(SELECT COUNT(*) FROM messages WHERE rollout_event_id = ?)) "
    "ON CONFLICT(event_id) DO UPDATE SET run_id = excluded.run_id, name = excluded.name, "
    "env = excluded.env, environment_id = excluded.environment_id, split = excluded.split, "
    "step = excluded.step, ts = excluded.ts, updated_at = excluded.updated_at, "
    "status = excluded.status, status_explicit = excluded.status_explicit, "
    "stop_reason = excluded.stop_reason, reward = excluded.reward, "
    "reward_explicit = excluded.reward_explicit, reward_reduction = excluded.reward_reduction, "
    "num_turns = excluded.num_turns, turns_explicit = excluded.turns_explicit, "
    "group_key = excluded.group_key, task_index = excluded.task_index, "
    "metadata = excluded.metadata, task_spec = excluded.task_spec, run_info = excluded.run_info, "
    "num_messages = excluded.num_messages, "
    "rollout_info = json_patch(IFNULL(rollouts.rollout_info, '{}'), "
    "IFNULL(excluded.rollout_info, '{}')) "
    "WHERE rollouts.run_id IS NULL"
)


@dataclass
class _PreparedRollout:
    """A `rollout` event turned into its row: everything that can fail has been done."""

    event_id: str
    run_name: str
    run_info: str | None
    row: tuple[Any, ...]  # the _INSERT_ROLLOUT_SQL values between run_id and updated_at
    group_key: str | None
    meta: dict[str, Any]  # without the token arrays
    arrays: dict[str, Any]
    prompt_length: Any
    complete: bool  # reward, status and turns are all stated: nothing to derive from messages

    @classmethod
    def of(cls, ev: RolloutEvent) -> _PreparedRollout:
        meta: dict[str, Any] = dict(ev.get("metadata") or {})
        arrays = {k: meta.pop(k) for k in ARRAY_KEYS if k in meta}
        prompt_length = meta.pop("prompt_length", None)
        reward = meta.get("reward")
        if isinstance(reward, bool) or not isinstance(reward, (int, float)):
            reward = None
        elif not (math.isfinite(reward) and abs(reward) <= MAX_ABS_REWARD):
            raise ValueError(f"metadata.reward must be a number within +-{MAX_ABS_REWARD:g}")
        else:
            reward = float(reward)
        status = meta.get("status") if isinstance(meta.get("status"), str) else None
        turns = _int64_or_none(meta.get("num_turns"), "metadata.num_turns")
        group = meta.get("group_index")
        group_key = None
        if group is not None:
            group_key = f"{'eval' if meta.get('evaluation') else 'train'}:{group}"
        task_index = meta.get("index")
        if not isinstance(task_index, int):
            task_index = (ev.get("rollout_info") or {}).get("task_index")
        task_index = _int64_or_none(task_index, "task index")
        run_info = _dumps(ev.get("run_info"))
        row = (
            _n(ev.get("rolloutName")),
            ev.get("environment") or "",
            _n(ev.get("environment_id")),
            _n(ev.get("split")),
            _n(ev.get("step")),
            ev["timestamp"] / 1000.0,
            status or "running",
            int(status is not None),
            _n(_str_or_none(meta.get("stop_reason"))),
            _n(reward),
            int(reward is not None),
            _n(_str_or_none(meta.get("reward_reduction"))),
            turns or 0,
            int(turns is not None),
            _n(group_key),
            NULL if task_index is None else task_index,
            _dumps(meta),
            _n(_dumps(ev.get("task_spec"))),
            _n(run_info),
            _n(_dumps(ev.get("rollout_info"))),
        )
        return cls(
            event_id=ev["eventId"],
            run_name=ev["runName"],
            run_info=run_info,
            row=row,
            group_key=group_key,
            meta=meta,
            arrays=arrays,
            prompt_length=prompt_length,
            complete=reward is not None and status is not None and turns is not None,
        )


# ---------------------------------------------------------------- reads


SortKey = Literal["time", "reward", "turns"]
_SORT_COLUMN = {"time": "ts", "reward": "reward_key", "turns": "num_turns"}
_SORT_INDEX = {
    "time": "rollouts_run_ts",
    "reward": "rollouts_run_reward",
    "turns": "rollouts_run_turns",
}
_FILTER_INDEX = {
    "stop_reason": "rollouts_run_stop_ts",
    "status": "rollouts_run_status_ts",
    "env": "rollouts_run_env_ts",
    "split": "rollouts_run_split_ts",
}
# Below this many matching rows, reading them through a filter index and sorting is cheaper than
# walking the sort index past non-matching rows.
_SORT_IN_MEMORY_ROWS = 20_000


def _pick_index(flt: RolloutFilter, sort: str, total: int) -> str:
    """The index a page query walks: the sort order's, or a filter's when that reads fewer rows."""
    eq = next((c for c in _FILTER_INDEX if getattr(flt, c)), None)
    if eq is not None and (sort == "time" or total <= _SORT_IN_MEMORY_ROWS):
        return _FILTER_INDEX[eq]
    if (
        eq is None
        and sort == "time"
        and total <= _SORT_IN_MEMORY_ROWS
        and (flt.min_reward is not None or flt.max_reward is not None)
    ):
        return _SORT_INDEX["reward"]
    return _SORT_INDEX[sort]


LIST_COLUMNS = (
    "id, event_id, name, env, split, step, ts, status, stop_reason, reward, "
    f"reward_reduction, num_turns, num_messages, group_key, task_index, {tripwires.LIST_COLUMN}"
)


@dataclass
class RolloutFilter:
    """Server-side filters of a run's rollout list."""

    env: str | None = None
    split: str | None = None
    status: str | None = None
    stop_reason: str | None = None
    min_reward: float | None = None
    max_reward: float | None = None
    tripwire: str | None = None  # a wire name, or tripwires.ANY

    def where(self, run_id: int | None = None) -> tuple[list[str], list[Any]]:
        clauses, args = [], []
        for col in ("env", "split", "status", "stop_reason"):
            value = getattr(self, col)
            if value:
                clauses.append(f"{col} = ?")
                args.append(value)
        if self.min_reward is not None:
            clauses.append("reward >= ?")
            args.append(self.min_reward)
        if self.max_reward is not None:
            clauses.append("reward <= ?")
            args.append(self.max_reward)
        if self.tripwire:
            clause, more = tripwires.filter_clause(run_id, self.tripwire)
            clauses.append(clause)
            args += more
        return clauses, args


@dataclass
class RolloutPage:
    rows: list[dict[str, Any]]
    total: int
    next_cursor: str | None
    prev_cursor: str | None


def encode_cursor(value: float, row_id: int) -> str:
    return f"{value!r}~{row_id}"


def decode_cursor(cursor: str) -> tuple[float, int]:
    """Parse a page cursor; raises ValueError with a readable message."""
    try:
        value, _, rid = cursor.partition("~")
        if len(value) > 40 or len(rid) > 20:
            raise ValueError
        v, row_id = float(value), int(rid)
        if not (math.isfinite(v) and 0 <= row_id < 2**63):
            raise ValueError
        return v, row_id
    except ValueError:
        raise ValueError(f"bad page cursor {cursor[:60]!r}") from None


class TrajectoryStore:
    """The SQLite store: `submit()` events to the writer thread, read with the query methods."""

    def __init__(self, path: str | Path) -> None:
        """Open (creating and migrating as needed) the database at `path`; StoreError if
        unusable."""
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = connect(self.path)
            try:
                migrate(conn)
            finally:
                conn.close()
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open trajectory database {self.path}: {e}") from None
        self._readers = _ReadPool(self.path, READ_CONNECTIONS)
        self._jobs: queue.SimpleQueue[_WriteJob | None] = (
            queue.SimpleQueue()
        )  # C queue: cheap put() on the event loop
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._checkpoint_stop = threading.Event()

    # -- writer

    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._write_loop, name="trajectory-writer", daemon=True
                )
                self._thread.start()
                self._checkpoint_stop.clear()
                threading.Thread(
                    target=self._checkpoint_loop, name="trajectory-checkpoint", daemon=True
                ).start()

    def _checkpoint_loop(self) -> None:
        """Copy the WAL into the database from here, so the writer never stalls on checkpoint I/O.

        PASSIVE checkpoints never block the writer; the writer's own auto-checkpoint is off.
        """
        conn = connect(self.path)
        conn.execute("PRAGMA cache_size=-2048")  # copies pages through; caching them buys nothing
        try:
            while not self._checkpoint_stop.wait(CHECKPOINT_INTERVAL_S):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as e:
                    log.warning("trajectory store: checkpoint failed: %s", e)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            pass
        finally:
            conn.close()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish queued writes and stop the writer thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join(timeout)
        self._checkpoint_stop.set()
        self._readers.close()

    def submit(self, events: list[Event]) -> Future:
        """Queue one batch for the writer; the future resolves to its IngestResult once
        committed."""
        if self._thread is None:
            self.start()
        job = _WriteJob(events)
        self._jobs.put(job)
        return job.future

    def write(
        self, events: list[Event], then: Callable[[sqlite3.Connection], None] | None = None
    ) -> IngestResult:
        """Write one batch synchronously on the calling thread (tools, benchmarks, evals); `then`
        runs inside the same transaction (rows that must exist exactly when the events do)."""
        with self._readers.connection() as conn:
            writer = _Writer(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = writer.apply(events)
                if then is not None:
                    then(conn)
                conn.execute("COMMIT")
                return result
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _write_loop(self) -> None:
        conn = connect(self.path)
        conn.execute(
            f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT_PAGES}"
        )  # the checkpoint thread does it
        writer = _Writer(conn)
        stopping = False
        busy = False  # the last commit carried several batches: wait a moment to gather more
        while not stopping:
            job = self._jobs.get()
            if job is None:
                break
            jobs = [job]
            n_events = len(job.events)
            deadline = time.monotonic() + (GROUP_COMMIT_LINGER_S if busy else 0.0)
            while n_events < GROUP_COMMIT_MAX_EVENTS:
                try:
                    wait = deadline - time.monotonic()
                    more = self._jobs.get(timeout=wait) if wait > 0 else self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                jobs.append(more)
                n_events += len(more.events)
            busy = len(jobs) > 1
            self._commit_group(conn, writer, jobs)
            # Drop the batch now: these names would keep its events (for a 60 MB upload, ~150 MB
            # of objects) alive until the next upload arrives.
            job = more = None
            jobs = []
        conn.close()

    def _commit_group(
        self, conn: sqlite3.Connection, writer: _Writer, jobs: list[_WriteJob]
    ) -> None:
        """One transaction for several batches; a failing batch is rolled back alone."""
        outcomes: list[tuple[_WriteJob, IngestResult | BaseException]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                conn.execute("SAVEPOINT batch")
                try:
                    outcomes.append((job, writer.apply(job.events)))
                    conn.execute("RELEASE batch")
                except Exception as e:  # bad data in one batch must not sink the others
                    conn.execute("ROLLBACK TO batch")
                    conn.execute("RELEASE batch")
                    writer.forget()
                    outcomes.append((job, e))
            conn.execute("COMMIT")
        except Exception as e:
            log.error("trajectory store: commit failed: %s", e)
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            writer.forget()
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        for job, outcome in outcomes:
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    # -- reads

    def _read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A connection of the fixed read pool for the duration of a `with` block."""
        return self._readers.connection()

    def list_runs(self) -> list[dict[str, Any]]:
        """Every run with its env mix, rollout count, mean reward and last update (newest first)."""
        with self._read() as conn:
            runs = {
                r["id"]: {
                    "id": r["id"],
                    "name": r["name"],
                    "created_at": r["created_at"],
                    "updated_at": r["updated_at"],
                    "rollouts": 0,
                    "reward_n": 0,
                    "reward_sum": 0.0,
                    "envs": {},
                }
                for r in conn.execute("SELECT id, name, created_at, updated_at FROM runs")
            }
            stats = conn.execute(
                "SELECT run_id, env, n, reward_n, reward_sum FROM run_env_stats WHERE n > 0"
            ).fetchall()
        for s in stats:
            run = runs.get(s["run_id"])
            if run is None:
                continue
            run["rollouts"] += s["n"]
            run["reward_n"] += s["reward_n"]
            run["reward_sum"] += s["reward_sum"]
            run["envs"][s["env"]] = s["n"]
        out = []
        for run in runs.values():
            n = run.pop("reward_n")
            total = run.pop("reward_sum")
            run["mean_reward"] = _mean(total, n)
            out.append(run)
        out.sort(key=lambda r: r["updated_at"], reverse=True)
        return out

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        """One run's summary (as in list_runs) plus its run_info and per-env stats."""
        with self._read() as conn:
            r = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if r is None:
                return None
            envs = [
                dict(s)
                for s in conn.execute(
                    "SELECT env, n, reward_n, reward_sum, last_ts FROM run_env_stats "
                    "WHERE run_id = ? AND n > 0 ORDER BY env",
                    (run_id,),
                )
            ]
        for e in envs:
            e["mean_reward"] = _mean(e["reward_sum"], e["reward_n"])
        n = sum(e["n"] for e in envs)
        rn = sum(e["reward_n"] for e in envs)
        return {
            "id": r["id"],
            "name": r["name"],
            "created_at": r["created_at"],
            "updated_at": r["updated_at"],
            "run_info": _loads(r["run_info"]),
            "envs": envs,
            "rollouts": n,
            "mean_reward": _mean(sum(e["reward_sum"] for e in envs), rn),
        }

    def run_id_by_name(self, name: str) -> int | None:
        with self._read() as conn:
            row = conn.execute("SELECT id FROM runs WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def facets(self, run_id: int) -> dict[str, list[str]]:
        """Values present in a run for each filterable column (for the filter form)."""
        with self._read() as conn:
            out: dict[str, list[str]] = {
                "env": [
                    r[0]
                    for r in conn.execute(
                        "SELECT env FROM run_env_stats WHERE run_id = ? AND n > 0 ORDER BY env",
                        (run_id,),
                    )
                ]
            }
            for col in ("split", "status", "stop_reason"):
                out[col] = []
            for col, value in conn.execute(
                "SELECT col, value FROM run_facets WHERE run_id = ? AND n > 0 ORDER BY col, value",
                (run_id,),
            ):
                out[col].append(value)
            out["tripwire"] = list(tripwires.counts(conn, run_id))
        return out

    def tripwire_counts(self, run_id: int) -> dict[str, int]:
        """wire -> rollouts of the run that tripped it."""
        with self._read() as conn:
            return tripwires.counts(conn, run_id)

    def list_rollouts(
        self,
        run_id: int,
        flt: RolloutFilter | None = None,
        sort: SortKey = "time",
        descending: bool = True,
        after: str | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> RolloutPage:
        """One page of a run's rollouts, keyset-paginated on (sort column, id)."""
        if sort not in _SORT_COLUMN:
            raise ValueError(f"unknown sort {sort!r}; use one of {', '.join(_SORT_COLUMN)}")
        limit = max(1, min(int(limit), PAGE_SIZE_MAX))
        col = _SORT_COLUMN[sort]
        flt = flt or RolloutFilter()
        clauses, args = flt.where(run_id)
        base_clauses = ["run_id = ?", *clauses]
        base_args = [run_id, *args]
        backwards = before is not None and after is None
        cursor = before if backwards else after
        page_clauses, page_args = list(base_clauses), list(base_args)
        # Walking "forward" means: in display order (desc or asc); "backwards" flips it.
        forward_desc = descending != backwards
        if cursor is not None:
            value, rid = decode_cursor(cursor)
            op = "<" if forward_desc else ">"
            page_clauses.append(f"({col}, id) {op} (?, ?)")  # row value: an index range, not a scan
            page_args += [value, rid]
        direction = "DESC" if forward_desc else "ASC"
        with self._read() as conn:
            total = conn.execute(
                f"SELECT COUNT(*) FROM rollouts WHERE {' AND '.join(base_clauses)}", base_args
            ).fetchone()[0]
            index = _pick_index(flt, sort, total)
            sql = (
                f"SELECT {LIST_COLUMNS}, {col} AS sort_value FROM rollouts INDEXED BY {index} "
                f"WHERE {' AND '.join(page_clauses)} ORDER BY {col} {direction}, id {direction} "
                "LIMIT ?"
            )
            rows = [dict(r) for r in conn.execute(sql, [*page_args, limit + 1])]
        more = len(rows) > limit
        rows = rows[:limit]
        if backwards:
            rows.reverse()
        next_cursor = prev_cursor = None
        if rows:
            first, last = rows[0], rows[-1]
            if more if not backwards else True:
                next_cursor = encode_cursor(last["sort_value"], last["id"])
            if (cursor is not None) if not backwards else more:
                prev_cursor = encode_cursor(first["sort_value"], first["id"])
        for r in rows:
            r.pop("sort_value", None)
        return RolloutPage(
            rows=rows, total=int(total), next_cursor=next_cursor, prev_cursor=prev_cursor
        )

    def rollout_head(self, event_id: str) -> dict[str, Any] | None:
        """A rollout's row and run name, or None; its JSON columns stay JSON text (`*_json`)."""
        with self._read() as conn:
            r = conn.execute(
                "SELECT rollouts.*, runs.name AS run_name FROM rollouts "
                "LEFT JOIN runs ON runs.id = rollouts.run_id WHERE event_id = ?",
                (event_id,),
            ).fetchone()
            if r is None or r["run_id"] is None:
                return None
            wires = tripwires.of_rollout(conn, event_id)
        out = dict(r)
        out.pop("reward_key", None)
        for key in JSON_COLUMNS:
            out[f"{key}_json"] = out.pop(key)
        out["tripwires"] = wires
        return out

    def get_rollout(
        self,
        event_id: str,
        max_messages: int | None = None,
        max_tokens: int | None = None,
        max_chars: int | None = None,
    ) -> dict[str, Any] | None:
        """A rollout with its messages (see `messages`) and token arrays (see `tokens`), or
        None; without limits, everything."""
        head = self.rollout_head(event_id)
        if head is None:
            return None
        for key in JSON_COLUMNS:
            head[key] = _loads(head.pop(f"{key}_json"))
        head["messages"] = self.messages(event_id, limit=max_messages, max_chars=max_chars)
        head["tokens"] = self.tokens(event_id, max_tokens=max_tokens)
        return head

    def message_rows(
        self, event_id: str, after: tuple[int, int] | None = None, limit: int = MESSAGE_PAGE
    ) -> list[sqlite3.Row]:
        """One page of a rollout's messages after the (idx, id) key `after` (metadata as text):
        at most `limit` rows, and no more once MESSAGE_PAGE_BYTES of text have been read."""
        key = after or (-1, -1)
        rows: list[sqlite3.Row] = []
        size = 0
        with self._read() as conn:
            cur = conn.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE rollout_event_id = ? "
                "AND (idx, id) > (?, ?) ORDER BY idx, id LIMIT ?",
                (event_id, key[0], key[1], limit),
            )
            try:
                for row in cur:  # SQLite reads a row only when it is asked for
                    rows.append(row)
                    size += sum(len(row[c] or "") for c in ("content", "summary", "metadata"))
                    if size >= MESSAGE_PAGE_BYTES:
                        break
            finally:
                cur.close()
        return rows

    def messages(
        self, event_id: str, limit: int | None = None, max_chars: int | None = None
    ) -> list[dict[str, Any]]:
        """A rollout's messages in index order: all, or the first `limit`. With `max_chars`,
        contents are cut once that much text has been kept (each keeps at least CUT_CHARS);
        a cut message says its full length in `content_chars`."""
        out: list[dict[str, Any]] = []
        after = None
        left = max_chars
        while limit is None or len(out) < limit:
            page = self.message_rows(event_id, after, MESSAGE_PAGE)
            for m in page:
                d = dict(m)
                d.pop("id")
                d["is_finished"] = bool(d["is_finished"])
                d["metadata"] = _loads(d["metadata"])
                content = d["content"]
                if left is not None and isinstance(content, str):
                    keep = max(left, CUT_CHARS)
                    if len(content) > keep:
                        d["content"], d["content_chars"] = content[:keep], len(content)
                    left = max(0, left - len(d["content"]))
                out.append(d)
            if not page:
                break
            after = (page[-1]["idx"], page[-1]["id"])
        return out if limit is None else out[:limit]

    def token_info(self, event_id: str) -> TokenInfo | None:
        """Where a rollout's token arrays are and how long they are, or None."""
        with self._read() as conn:
            t = conn.execute(
                "SELECT rowid, prompt_length, length(token_ids), length(loss_mask), "
                "length(logprobs) FROM rollout_tokens WHERE rollout_event_id = ?",
                (event_id,),
            ).fetchone()
        if t is None:
            return None
        return TokenInfo(t[0], t[1], t[2] // 4, t[3], t[4] // 4)

    def token_slice(self, info: TokenInfo, column: str, start: int, count: int) -> list[Any]:
        """Items [start, start + count) of one token array, read from its blob piecewise."""
        code, size = _ARRAY_CODES[column]
        total = {"token_ids": info.n_tokens, "loss_mask": info.n_mask, "logprobs": info.n_logprobs}
        count = max(0, min(count, total[column] - start))
        if count == 0:
            return []
        with self._read() as conn:
            blob = _read_blob(conn, column, info.rowid, start * size, count * size)
        a = array.array(code)
        a.frombytes(blob)
        return a.tolist()

    def tokens(self, event_id: str, max_tokens: int | None = None) -> dict[str, Any] | None:
        """Token arrays: all of them, or at most the last `max_tokens` prompt tokens and the
        first `max_tokens` response tokens; then `prompt_shown` and `response_length` say how
        many prompt tokens `token_ids` starts with and how long the response really is."""
        info = self.token_info(event_id)
        if info is None:
            return None
        plen = min(max(0, info.prompt_length), info.n_tokens)
        if max_tokens is None:
            first, n_resp = 0, info.n_tokens - plen
        else:
            first, n_resp = max(0, plen - max_tokens), min(info.n_tokens - plen, max_tokens)
        ids = self.token_slice(info, "token_ids", first, plen - first + n_resp)
        n_mask = min(info.n_mask, n_resp)
        logprobs = self.token_slice(info, "logprobs", 0, min(info.n_logprobs, n_resp))
        out = {
            "prompt_length": info.prompt_length,
            "token_ids": ids,
            "loss_mask": self.token_slice(info, "loss_mask", 0, n_mask),
            "logprobs": [None if math.isnan(v) else v for v in logprobs],
        }
        if max_tokens is not None:
            out["prompt_shown"] = plen - first
            out["response_length"] = info.n_tokens - plen
        return out

    def group(self, run_id: int, group_key: str, limit: int = 64) -> list[dict[str, Any]]:
        """The rollouts of one GRPO group, by sample index (then time), with their
        `sample_index`."""
        with self._read() as conn:
            return [
                dict(r)
                for r in conn.execute(
                    f"SELECT {LIST_COLUMNS}, json_extract(metadata, '$.sample_index') AS "
                    "sample_index "
                    "FROM rollouts WHERE run_id = ? AND group_key = ? "
                    "ORDER BY sample_index IS NULL, sample_index, ts, id LIMIT ?",
                    (run_id, group_key, limit),
                )
            ]

    def reward_series(self, run_id: int, buckets: int = 60) -> dict[str, Any]:
        """Mean reward per env in up to `buckets` equal time slices: {t0, t1, series: {env: [[t,
        mean, n]]}}.

        Reads the 10-second aggregates kept by triggers, so it costs the same for 1k or 1M rollouts.
        """
        with self._read() as conn:
            rows = conn.execute(
                "SELECT env, bucket, n, reward_sum FROM run_reward_buckets WHERE run_id = ? AND "
                "n > 0",
                (run_id,),
            ).fetchall()
        if not rows:
            return {"t0": None, "t1": None, "series": {}}
        t0 = min(r[1] for r in rows) * 10.0
        t1 = (max(r[1] for r in rows) + 1) * 10.0
        width = (t1 - t0) / buckets
        acc: dict[str, dict[int, list[float]]] = {}
        for env, bucket, n, total in rows:
            b = min(int((bucket * 10.0 - t0) / width), buckets - 1)
            slot = acc.setdefault(env, {}).setdefault(b, [0.0, 0.0])
            slot[0] += n
            slot[1] += total
        series = {
            env: [
                [t0 + (b + 0.5) * width, _mean(total, n), n]
                for b, (n, total) in sorted(slots.items())
            ]
            for env, slots in sorted(acc.items())
        }
        return {"t0": t0, "t1": t1, "series": series}

    def counts(self) -> dict[str, int]:
        with self._read() as conn:
            return {
                t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("runs", "rollouts", "messages", "rollout_tokens")
            }


def _mean(total: float, n: float) -> float | None:
    """total / n, or None when there is nothing to average or the sum is not finite."""
    return total / n if n and math.isfinite(total) else None


# ---------------------------------------------------------------- read plumbing

JSON_COLUMNS = ("metadata", "task_spec", "run_info", "rollout_info")
MESSAGE_COLUMNS = (
    "id, event_id, idx, type, content, summary, content_reference, name, call_id, reward, "
    "is_finished, metadata, ts"
)
_ARRAY_CODES = {"token_ids": ("i", 4), "loss_mask": ("B", 1), "logprobs": ("f", 4)}


@dataclass(frozen=True)
class TokenInfo:
    """A rollout's token arrays: the blob row and the length of each array."""

    rowid: int
    prompt_length: int
    n_tokens: int
    n_mask: int
    n_logprobs: int


def _read_blob(conn: sqlite3.Connection, column: str, rowid: int, offset: int, n: int) -> bytes:
    """Bytes [offset, offset + n) of a token blob, without loading the rest of it."""
    blobopen = getattr(conn, "blobopen", None)
    if blobopen is None:  # Python 3.10: substr still copies only the slice out of SQLite
        row = conn.execute(
            f"SELECT substr({column}, ?, ?) FROM rollout_tokens WHERE rowid = ?",
            (offset + 1, n, rowid),
        ).fetchone()
        return bytes(row[0]) if row else b""
    with blobopen("rollout_tokens", column, rowid, readonly=True) as blob:
        blob.seek(offset)
        return blob.read(n)


class _ReadPool:
    """A fixed set of read connections, handed out one `with` block at a time."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        self._slots.acquire()
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = connect(self.path)
                conn.execute(f"PRAGMA cache_size=-{READ_CACHE_KIB}")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.rollback()
                if self._closed:
                    conn.close()
                else:
                    self._idle.put(conn)
        finally:
            self._slots.release()

    def close(self) -> None:
        """Close the idle connections (ones in use close when they are returned)."""
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
