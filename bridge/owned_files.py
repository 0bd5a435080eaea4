"""Which process owns a file in the trajectory spool dir: the one holding a lock on it.

The spool dir is shared: by the processes of one machine, and on a cluster by every node when it
sits on the shared filesystem (the project directory, as run.sh requires there). A pid says
nothing across machines (or container pid namespaces): a live writer on another node can carry
a pid that is dead here, and a dead one a pid that is alive here. So a writer holds a POSIX
record lock (`fcntl.lockf`) on every file it owns for as long as it owns it; the kernel (and the
NFS lock manager across hosts) drops the lock when the process dies, however it dies. Another
process takes a file over only after taking its lock.

POSIX locks belong to a process and go when it closes *any* descriptor of the file, so this
process never opens a file it owns but through the one descriptor kept here (`fd` for writing,
`read`): every probe and take checks the registry first, under one lock. They are not inherited by
forked children (a child holding the descriptor does not keep a dead parent's file alive, and a
child owns none of its parent's files: it forgets them).
On a filesystem without locks the pid in the file's name decides, for this host only (logged
once per directory).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from pathlib import Path

__all__ = ["OWNED", "OwnedFiles", "pid_alive"]

log = logging.getLogger(__name__)

_HELD_ELSEWHERE = (errno.EAGAIN, errno.EACCES)


def pid_alive(pid: int) -> bool:
    """Whether `pid` names a live process on this host."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OwnedFiles:
    """The files this process owns, each through one open descriptor holding its lock."""

    def __init__(self) -> None:
        self._fds: dict[str, tuple[int, object]] = {}  # path -> (descriptor, owner object)
        self._lock = threading.RLock()
        self._no_locks_warned: set[str] = set()

    def _try_lock(self, fd: int, path: Path) -> bool | None:
        """Lock without waiting: True when taken, False when another process holds it, None
        when the filesystem has no locks (logged once per directory)."""
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno in _HELD_ELSEWHERE:
                return False
            key = str(path.parent)
            if key not in self._no_locks_warned:
                self._no_locks_warned.add(key)
                log.warning(
                    "trajectory sink: %s has no file locks (%s); whether a file's writer is "
                    "alive is judged by its pid, on this host only",
                    key,
                    e,
                )
            return None

    def _owner_gone(self, fd: int, path: Path, pid: int) -> bool:
        """Whether no live process owns the file open at `fd` (its lock taken here, now); on a
        filesystem without locks, whether `pid` is dead on this host."""
        free = self._try_lock(fd, path)
        return not pid_alive(pid) if free is None else free

    def create(self, path: Path, owner: object) -> int:
        """Create `path`, owned by `owner` here; its descriptor (read-write, appending). The
        file is locked before it appears under its name, so no other process can take it."""
        tmp = path.with_name(f".{path.name}.{time.monotonic_ns()}.new")
        with self._lock:
            fd = os.open(tmp, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                self._try_lock(fd, tmp)
                self._fds[str(path)] = (fd, owner)
                os.rename(tmp, path)
            except BaseException:
                self._fds.pop(str(path), None)
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
            return fd

    def take(self, path: Path, target: Path, pid: int, owner: object) -> bool:
        """Own `path` as `target` (renamed) when no live process holds it; False when one does,
        or the file went (another process took it first)."""
        with self._lock:
            if str(path) in self._fds:
                return False
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND)
            except OSError:
                return False
            if self._owner_gone(fd, path, pid):
                self._fds[str(target)] = (fd, owner)
                try:
                    os.rename(path, target)
                    return True
                except OSError:
                    self._fds.pop(str(target), None)
            os.close(fd)
            return False

    def probe(self, path: Path, pid: int) -> str:
        """What `path` is to this process: "ours" (owned here), "held" (another live process
        owns it), "free" (no live owner: this process may take it), or "out of reach" (gone, or
        not this process's to open: another user's file in a shared dir)."""
        with self._lock:
            if str(path) in self._fds:
                return "ours"
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError:
                return "out of reach"
            try:
                return "free" if self._owner_gone(fd, path, pid) else "held"
            finally:
                os.close(fd)  # drops the probe's lock with it

    def owner(self, path: Path) -> object | None:
        """Who owns `path` in this process; None when nobody here does."""
        with self._lock:
            held = self._fds.get(str(path))
            return held[1] if held else None

    def fd(self, path: Path) -> int | None:
        with self._lock:
            held = self._fds.get(str(path))
            return held[0] if held else None

    def read(self, path: Path) -> bytes:
        """The whole content of `path`, through the descriptor this process owns it by when it
        does (opening it again would drop the lock)."""
        fd = self.fd(path)
        if fd is None:
            return path.read_bytes()
        size = os.fstat(fd).st_size
        chunks, at = [], 0
        while at < size:
            chunk = os.pread(fd, size - at, at)
            if not chunk:
                break
            chunks.append(chunk)
            at += len(chunk)
        return b"".join(chunks)

    def release(self, path: Path, delete: bool = False, rename_to: Path | None = None) -> None:
        """Give up `path` (deleted, or renamed to `rename_to`, first): its lock goes with the
        descriptor. A file this process does not own is left as it is (an object a forked child
        inherited must not move its parent's files)."""
        with self._lock:
            held = self._fds.pop(str(path), None)
            if held is None:
                return
            try:
                if delete:
                    path.unlink(missing_ok=True)
                elif rename_to is not None:
                    path.rename(rename_to)
            finally:
                os.close(held[0])

    def forget_after_fork(self) -> None:
        """In a forked child: it holds none of its parent's locks, so it owns none of its files
        (their descriptors stay open, for objects it inherited that still write to them)."""
        self._fds = {}
        self._lock = threading.RLock()


OWNED = OwnedFiles()
"""This process's owned files (one registry: a lock is per process, not per sink)."""
os.register_at_fork(after_in_child=OWNED.forget_after_fork)
