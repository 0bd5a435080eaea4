"""One machine at a time on a trajectory store.

SQLite's WAL shares memory (`<db>-shm`) between the processes that use a database, which works
only among the processes of one machine: "WAL does not work over a network filesystem". On a
cluster the store's file sits on the shared filesystem by default (`runs/trajectories.db` in the
project directory, which run.sh requires on every node), so a web UI or an eval started on a
login node against the file replica 0 is writing on the head node would read garbage or corrupt
it. The guard refuses that, with a StoreError naming the machine that has the store open.

Every process with the store open holds a shared POSIX lock on byte 0 of `<db>.host`; the first
user of an idle store writes its machine there (its kernel's boot id, which containers of one
machine share, and its hostname, for people). A process of another machine finds the lock held
and another boot id, and is refused. Locks go with their process however it ends (on NFS, with
the lock manager's lease; NFSv3 keeps a crashed client's locks until it is back, and the error
says to delete `<db>.host` then: a new file has no locks). A filesystem without locks turns the
guard off (logged once per store). POSIX locks belong to the process, and closing any
descriptor of the file drops them, so one descriptor per store file is kept here for the whole
process, counted.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import threading
import time
from pathlib import Path

from envs.trajectories.errors import StoreError

__all__ = ["hold", "machine", "release"]

log = logging.getLogger(__name__)

_USERS, _MUTEX = 0, 1
"""Byte offsets: every user's shared lock; the lock held while one joins or leaves."""
MUTEX_WAIT_S = 10.0
_HELD_ELSEWHERE = (errno.EAGAIN, errno.EACCES)

_held: dict[str, list[int]] = {}  # <db>.host path -> [descriptor, users in this process]
_lock = threading.Lock()


def machine() -> tuple[str, str]:
    """(boot id, hostname) of this machine: one boot id per running kernel."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    host = socket.gethostname()
    return boot or f"host:{host}", host


def _sidecar(db: Path) -> Path:
    return db.with_name(db.name + ".host")


def hold(db: Path) -> None:
    """Register this process as a user of the store at `db`; StoreError when processes of
    another machine have it open."""
    path = _sidecar(db)
    with _lock:
        key = str(path.resolve())
        if key in _held:
            _held[key][1] += 1
            return
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a read-only folder: SQLite will say what it can do there
            log.warning("trajectory store: no host guard for %s: %s", db, e)
            return
        try:
            _join(fd, db)
        except StoreError:
            os.close(fd)
            raise
        except OSError as e:  # no locks on this filesystem
            os.close(fd)
            log.warning("trajectory store: no host guard for %s (no file locks: %s)", db, e)
            return
        _held[key] = [fd, 1]


def _join(fd: int, db: Path) -> None:
    deadline = time.monotonic() + MUTEX_WAIT_S
    while not _try(fd, fcntl.LOCK_EX, _MUTEX):  # another process joining or leaving: brief
        if time.monotonic() > deadline:
            raise StoreError(f"{db}: its host lock {_sidecar(db)} stayed taken {MUTEX_WAIT_S:g}s")
        time.sleep(0.05)
    try:
        boot, host = machine()
        if _try(fd, fcntl.LOCK_EX, _USERS):  # no user at all: the store is ours to name
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{boot} {host}\n".encode(), 0)
            fcntl.lockf(fd, fcntl.LOCK_SH, 1, _USERS)  # and share it
            return
        theirs = os.pread(fd, 4096, 0).decode(errors="replace").split()
        if not theirs or theirs[0] != boot:
            where = theirs[1] if len(theirs) > 1 else "another machine"
            raise StoreError(
                f"{db} is open on another machine ({where}): SQLite's WAL works only among the "
                "processes of one machine: use the web UI it serves there, another database "
                "file here, or wait until its processes close the store (if that machine "
                f"crashed and its lock outlived it, delete {_sidecar(db)})"
            )
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, _USERS)  # beside the other users
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, _MUTEX)


def _try(fd: int, kind: int, byte: int) -> bool:
    try:
        fcntl.lockf(fd, kind | fcntl.LOCK_NB, 1, byte)
        return True
    except OSError as e:
        if e.errno in _HELD_ELSEWHERE:
            return False
        raise


def release(db: Path) -> None:
    """This process stops using the store at `db` (its last user here drops the lock)."""
    path = _sidecar(db)
    with _lock:
        key = str(path.resolve())
        held = _held.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            del _held[key]
            os.close(held[0])


def _forget_after_fork() -> None:
    """A forked child holds none of its parent's locks."""
    global _lock
    for fd, _ in _held.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
