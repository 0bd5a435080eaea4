"""The store's read connections: a fixed pool every reader shares, and piecewise blob reads.

Each reading thread once had its own connection with a 64 MiB page cache: 20 readers of a 63 MB
rollout took the server to 6.3 GB.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from envs.trajectories.schema import connect

__all__ = ["READ_CONNECTIONS", "ReadPool", "read_blob"]

READ_CONNECTIONS = 4
READ_CACHE_KIB = 8 * 1024


def read_blob(conn: sqlite3.Connection, column: str, rowid: int, offset: int, n: int) -> bytes:
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


class ReadPool:
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
