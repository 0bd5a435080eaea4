"""The store's single writer: one thread applies upload batches, several per transaction
(group commit), while another copies the WAL into the database.

`Writer.apply` turns one request's events into rows (the caller owns the transaction);
`WriterThread` takes every batch waiting (up to GROUP_COMMIT_MAX_EVENTS) into one transaction,
each batch in its own savepoint, so bad data in one batch never sinks the others. Readers never
wait for it (WAL).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.trajectory_events import Event, IngestResult, Rejected
from envs.trajectories import tripwires
from envs.trajectories.event_rows import (
    INSERT_MESSAGES_SQL,
    INSERT_ROLLOUT_SQL,
    PreparedRollout,
    message_row,
)
from envs.trajectories.packing import json_text, pack_floats, pack_ints
from envs.trajectories.schema import connect

__all__ = ["WriteJob", "Writer", "WriterThread"]

log = logging.getLogger(__name__)

# Group commit: one transaction takes every batch waiting (up to this many events), and while
# uploads keep coming it lingers this long for more (fewer, larger commits: ~40% less CPU per
# event).
GROUP_COMMIT_MAX_EVENTS = 50_000
GROUP_COMMIT_LINGER_S = 0.003
# WAL checkpoints run on their own thread every CHECKPOINT_INTERVAL_S; the writer checkpoints
# itself only if the WAL grows past this many pages (a safety net against an unbounded WAL).
CHECKPOINT_INTERVAL_S = 1.0
WRITER_AUTOCHECKPOINT_PAGES = 50_000


@dataclass
class WriteJob:
    events: list[Event]
    future: Future[IngestResult] = field(default_factory=Future)


class Writer:
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
                    msg_rows.append(message_row(ev))  # type: ignore[arg-type]
                    touched.add(ev["rolloutEventId"])  # type: ignore[typeddict-item]
                elif kind == "rollout":
                    ordered.append((kind, PreparedRollout.of(ev)))  # type: ignore[arg-type]
                else:
                    ordered.append((kind, (ev["eventId"], json_text(ev.get("rollout_info") or {}))))
            except (TypeError, ValueError, OverflowError) as e:
                result.rejected.append(Rejected(i, ev.get("eventId"), _one_line(e)))
        if msg_rows:
            before = self.conn.total_changes
            self.conn.executemany(INSERT_MESSAGES_SQL, msg_rows)
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
                self._update_rollout(event_id, info)
                result.updates += 1
        for event_id in touched:
            run = self._refresh_rollout(event_id, now)
            if run is not None:
                touched_runs.add(run)
        for rid in touched_runs:
            self.conn.execute("UPDATE runs SET updated_at = ? WHERE id = ?", (now, rid))
        return result

    def _insert_rollout(self, p: PreparedRollout, run_id: int, now: float) -> bool | None:
        """Insert (or fill a placeholder); None if already stored, else whether it needs no
        refresh."""
        cur = self.conn.execute(INSERT_ROLLOUT_SQL, (p.event_id, run_id, *p.row, now, p.event_id))
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

    def _update_rollout(self, event_id: str, info: str | None) -> None:
        """Append a rollout_update as it came (read merges them in order): its cost is its own
        size, whatever the rollout's info has grown to."""
        self.conn.execute(
            "INSERT INTO rollout_updates(event_id, info) VALUES (?, ?)", (event_id, info or "{}")
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


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[:limit] + "..."


class WriterThread:
    """The one thread that writes submitted batches, and the one that checkpoints the WAL."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._jobs: queue.SimpleQueue[WriteJob | None] = (
            queue.SimpleQueue()
        )  # C queue: cheap put() on the event loop
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._checkpoint_stop = threading.Event()

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

    def submit(self, events: list[Event]) -> Future[IngestResult]:
        """Queue one batch for the writer; the future resolves to its IngestResult once
        committed."""
        if self._thread is None:
            self.start()
        job = WriteJob(events)
        self._jobs.put(job)
        return job.future

    def _write_loop(self) -> None:
        conn = connect(self.path)
        conn.execute(
            f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT_PAGES}"
        )  # the checkpoint thread does it
        writer = Writer(conn)
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

    def _commit_group(self, conn: sqlite3.Connection, writer: Writer, jobs: list[WriteJob]) -> None:
        """One transaction for several batches; a failing batch is rolled back alone."""
        outcomes: list[tuple[WriteJob, IngestResult | BaseException]] = []
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
