"""Embedded SQLite store of rollouts: versioned schema, one writer thread, fast indexed reads.

Data model (what the OpenReward rollout-upload events become):
  runs            one row per run name
  rollouts        one row per `rollout` event; trainer fields pulled out of its metadata
  messages        one row per `message` event, keyed by eventId (ingest is idempotent)
  rollout_tokens  token ids / loss mask / logprobs packed as arrays (kept off the list rows)
  run_env_stats   per run and env: rollout count, reward sum, last update (kept by triggers)

The schema and its migrations live in `schema.py`, the upload events in `events.py`, their rows
in `event_rows.py`. Writes go through `submit()` to the single writer thread (`writer.py`),
which commits several request batches in one transaction (group commit); reads
(`queries.py`, `rollout_list.py`) share a fixed pool of connections (`read_pool.py`, WAL). The
processes that use one store must run on one machine (`host_guard.py`).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from contract.trajectory_events import Event, IngestResult
from envs.trajectories import host_guard
from envs.trajectories.errors import StoreError
from envs.trajectories.queries import JSON_COLUMNS, RUNS_PAGE, RunsPage, StoreQueries, TokenInfo
from envs.trajectories.read_pool import READ_CONNECTIONS, ReadPool
from envs.trajectories.rollout_list import (
    PAGE_SIZE_MAX,
    RolloutFilter,
    RolloutPage,
    SortKey,
    decode_cursor,
    encode_cursor,
)
from envs.trajectories.schema import connect, migrate
from envs.trajectories.writer import Writer, WriterThread

__all__ = [
    "JSON_COLUMNS",
    "PAGE_SIZE_MAX",
    "READ_CONNECTIONS",
    "RUNS_PAGE",
    "RolloutFilter",
    "RolloutPage",
    "RunsPage",
    "SortKey",
    "TokenInfo",
    "TrajectoryStore",
    "decode_cursor",
    "encode_cursor",
]


class TrajectoryStore(StoreQueries):
    """The SQLite store: `submit()` events to the writer thread, read with the query methods."""

    def __init__(self, path: str | Path) -> None:
        """Open (creating and migrating as needed) the database at `path`; StoreError if
        unusable."""
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot open trajectory database {self.path}: {e}") from None
        host_guard.hold(self.path)  # StoreError when another machine has it open
        self._guarded = True
        try:
            conn = connect(self.path)
            try:
                migrate(conn)
            finally:
                conn.close()
        except (OSError, sqlite3.Error) as e:
            self._unguard()
            raise StoreError(f"cannot open trajectory database {self.path}: {e}") from None
        except BaseException:
            self._unguard()
            raise
        self._readers = ReadPool(self.path, READ_CONNECTIONS)
        self._writer = WriterThread(self.path)

    def _unguard(self) -> None:
        if self._guarded:
            self._guarded = False
            host_guard.release(self.path)

    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        self._writer.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish queued writes, stop the writer thread, and close the store."""
        self._writer.stop(timeout)
        self._readers.close()
        self._unguard()

    def submit(self, events: list[Event]) -> Future[IngestResult]:
        """Queue one batch for the writer; the future resolves to its IngestResult once
        committed."""
        return self._writer.submit(events)

    def write(
        self, events: list[Event], then: Callable[[sqlite3.Connection], None] | None = None
    ) -> IngestResult:
        """Write one batch synchronously on the calling thread (tools, benchmarks, evals); `then`
        runs inside the same transaction (rows that must exist exactly when the events do)."""
        with self._readers.connection() as conn:
            writer = Writer(conn)
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

    def _read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A connection of the fixed read pool for the duration of a `with` block."""
        return self._readers.connection()
