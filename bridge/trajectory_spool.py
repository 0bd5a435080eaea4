"""The trajectory sink's files: a journal of submitted episodes and a spool of undelivered requests.

Files in `spool_dir` carry the pid of the process that writes them, and its lock while it owns
them (bridge/owned_files.py: the dir may be shared by the nodes of a cluster, where a pid says
nothing); a file whose owner died is taken over by the next process that uses the directory:

    {run}-{id}.{pid}.journal.jsonl     every episode handed to submit(), one JSON line each,
                                       written before submit() returns (the OS page cache
                                       survives a kill -9 of the trainer); deleted once each of
                                       its episodes is delivered, spooled or rejected
    {run}-{id}.{pid}.recovering.jsonl  a dead process's journal being turned into spool lines
    {run}-{id}.{pid}.active.jsonl      request units waiting for the server (fsynced)
    {run}-{id}.{pid}.ready|claimed.jsonl  sealed, or being delivered
    quarantine-{host}-{pid}.jsonl      lines that cannot be read (torn by a crash or a full
                                       disk): set aside, never retried, never blocking the rest
    rejected-{host}-{pid}.jsonl        (the sink) units the server refused as invalid
                                       (the host too: two nodes' processes can share a pid)

A hosted target's files sit in a folder of their own in `spool_dir` (`spool_area`), so that only
a sink with that target delivers them.

A write that fails (a full disk) never raises into the sink: `Spool.append` and `Journal.record`
say what was written, cut a partly written line off again, and log the failure.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bridge.owned_files import OWNED

__all__ = [
    "Journal",
    "JournalSegment",
    "Spool",
    "append_lines",
    "process_file",
    "quarantine",
    "read_lines",
    "spool_area",
]

log = logging.getLogger(__name__)

_NAME = re.compile(
    r"^(?P<stem>[\w.-]+?)\.(?P<pid>\d+)\.(?P<state>active|ready|claimed|journal|recovering)\.jsonl$"
)
_SPOOL_STATES = ("active", "ready", "claimed")
_LIVE_OWNED = ("active", "claimed", "journal", "recovering")
"""States of a file its writing process owns (and holds the lock of) while it lives."""
# One "cannot write" line per this many seconds per directory (a full disk fails every write).
_WARN_EVERY_S = 10.0
_last_warning: dict[str, float] = {}


def _warn_write_failed(what: Path, e: OSError) -> None:
    key = str(what.parent)
    now = time.monotonic()
    if now - _last_warning.get(key, -1e9) >= _WARN_EVERY_S:
        _last_warning[key] = now
        full = " (disk full)" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else ""
        log.error("trajectory sink: cannot write %s%s: %s", what, full, e)


def append_lines(path: Path, lines: Sequence[bytes], sync: bool = True) -> int:
    """Append `lines` (each + newline) to `path`; how many were written whole (and fsynced).

    On a failed write (a full disk) the partly written line is cut off again, so the file never
    holds a torn line of ours; lines before it stay."""
    if not lines:
        return 0
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        _warn_write_failed(path, e)
        return 0
    try:
        return _write_lines(fd, path, lines, sync)
    finally:
        os.close(fd)


def _write_lines(fd: int, path: Path, lines: Sequence[bytes], sync: bool = True) -> int:
    """`append_lines` through an open descriptor (appending) of `path`."""
    if not lines:
        return 0
    written = 0
    try:
        start = os.fstat(fd).st_size
        good = start
        try:
            for line in lines:
                data = memoryview(line + b"\n")
                while data:
                    n = os.write(fd, data)
                    data = data[n:]
                written += 1
                good += len(line) + 1
            if sync:
                os.fsync(fd)
        except OSError as e:
            _warn_write_failed(path, e)
            if sync and written == len(lines):  # every write went through but fsync failed
                good, written = start, 0
            try:
                os.ftruncate(fd, good)
            except OSError:
                pass
    except OSError as e:  # fstat
        _warn_write_failed(path, e)
    return written


def _name_part(text: str, limit: int, default: str) -> str:
    """`text` as it may stand in a spool file's name (letters, digits, `_.-`), at most `limit`
    characters."""
    return re.sub(r"[^\w.-]", "_", text)[:limit] or default


def _new_file(directory: Path, stem: str, state: str) -> Path:
    """A new file of this process in `directory`: `{stem}-{id}.{pid}.{state}.jsonl`."""
    return directory / f"{stem}-{uuid.uuid4().hex[:8]}.{os.getpid()}.{state}.jsonl"


def _deleted(fd: int | None) -> bool:
    """Whether the file behind `fd` has no name left."""
    try:
        return fd is None or os.fstat(fd).st_nlink == 0
    except OSError:
        return True


def read_lines(path: Path) -> list[bytes]:
    """The non-empty lines of a file (one this process owns: read through its descriptor)."""
    return [line for line in OWNED.read(path).splitlines() if line.strip()]


def spool_area(spool_dir: str | os.PathLike[str], hosted_url: str | None = None) -> Path:
    """The folder of a sink's files: `spool_dir` itself for this project's env servers (any of
    them: their ports change from run to run, the store stays), a folder of its own in it for
    each hosted target (`openreward-<host>-<hash of the URL>`), so that what was meant for a
    hosted account is never delivered to a local store by the next local run, nor a local
    run's episodes uploaded to a hosted account."""
    if hosted_url is None:
        return Path(spool_dir)
    url = hosted_url.rstrip("/")
    host = _name_part(urlsplit(url).hostname or "", 60, "host")
    digest = hashlib.sha256(url.encode()).hexdigest()[:10]
    return Path(spool_dir) / f"openreward-{host}-{digest}"


def process_file(directory: Path, kind: str) -> Path:
    """This process's own file of `kind` in `directory`, named by host and pid: a file only it
    appends to, even in a dir other nodes share (their processes may have the same pid)."""
    host = _name_part(socket.gethostname(), 64, "host")
    return directory / f"{kind}-{host}-{os.getpid()}.jsonl"


def quarantine(directory: Path, lines: Sequence[bytes], why: str) -> int:
    """Set unreadable lines aside in quarantine-{host}-{pid}.jsonl; how many were kept there."""
    if not lines:
        return 0
    path = process_file(directory, "quarantine")
    kept = append_lines(path, lines)
    log.error(
        "trajectory sink: %d unreadable line(s) set aside in %s (%s)%s",
        len(lines),
        path,
        why,
        "" if kept == len(lines) else f"; {len(lines) - kept} could not be written",
    )
    return kept


class Spool:
    """Append-only JSONL files of undelivered request units, shared safely between processes
    (and hosts: whoever holds a file's lock owns it)."""

    def __init__(self, directory: str | os.PathLike[str], stem: str) -> None:
        self.dir = Path(directory)
        self.stem = _name_part(stem, 60, "spool")
        self._active: Path | None = None
        self._lock = threading.Lock()

    def append(self, lines: Sequence[bytes]) -> int:
        """Write units to this process's active file, fsynced; how many were written (fewer
        than given when the disk is full: the caller keeps the rest)."""
        if not lines:
            return 0
        with self._lock:
            if self._active is not None and _deleted(OWNED.fd(self._active)):
                OWNED.release(self._active)  # removed under us (the dir cleared): start anew
                self._active = None
            if self._active is None:
                path = _new_file(self.dir, self.stem, "active")
                try:
                    self.dir.mkdir(parents=True, exist_ok=True)
                    OWNED.create(path, self)
                except OSError as e:
                    _warn_write_failed(path, e)
                    return 0
                self._active = path
            fd = OWNED.fd(self._active)
            assert fd is not None, "the active spool file is owned here until sealed"
            return _write_lines(fd, self._active, lines)

    def seal(self) -> None:
        """Hand the active file to the deliverers (rename to .ready, lock released)."""
        with self._lock:
            active, self._active = self._active, None
            if active is None:
                return
            try:
                OWNED.release(
                    active,
                    rename_to=active.with_name(
                        active.name.replace(".active.jsonl", ".ready.jsonl")
                    ),
                )
            except FileNotFoundError:
                pass

    def done(self, path: Path) -> None:
        """A claimed file (or recovered journal) is delivered: delete it."""
        OWNED.release(path, delete=True)

    def _files(self) -> list[tuple[Path, re.Match[str]]]:
        try:
            paths = sorted(self.dir.glob("*.jsonl"))
        except OSError:
            return []
        return [(p, m) for p in paths if (m := _NAME.match(p.name)) is not None]

    def _take(self, states: tuple[str, ...], into: str) -> list[Path]:
        """Take the files in `states` no live process owns (renamed to `into` state, owned by
        this spool), with those this spool already holds in that state."""
        taken = []
        me = os.getpid()
        for path, m in self._files():
            if m["state"] not in states:
                continue
            holder = OWNED.owner(path)
            if holder is not None:
                if holder is self and m["state"] == into:
                    taken.append(path)  # ours from an earlier pass
                continue
            target = path.with_name(f"{m['stem']}.{me}.{into}.jsonl")
            if OWNED.take(path, target, int(m["pid"]), self):
                taken.append(target)
        return taken

    def claim(self) -> list[Path]:
        """Take every deliverable spool file in the dir (ours and those left by dead processes)."""
        self.seal()
        return self._take(_SPOOL_STATES, "claimed")

    def claim_journals(self) -> list[Path]:
        """Take the journals of dead processes (and closed journals of this one) to recover."""
        return self._take(("journal", "recovering"), "recovering")

    def held_by_live_processes(self) -> int:
        """How many of this stem's open files (spool, journal) other live processes hold, on
        this host or another one sharing the dir."""
        return sum(
            1
            for p, m in self._files()
            if m["stem"].startswith(f"{self.stem}-")
            and m["state"] in _LIVE_OWNED
            and OWNED.probe(p, int(m["pid"])) == "held"
        )

    def pending_files(self) -> bool:
        """Whether the dir holds files this process would deliver or recover (its own active
        spool file included; not another user's files, which it cannot take)."""
        states = (*_SPOOL_STATES, "journal", "recovering")
        for p, m in self._files():
            if m["state"] not in states:
                continue
            holder = OWNED.owner(p)
            if holder is self or (holder is None and OWNED.probe(p, int(m["pid"])) == "free"):
                return True
        return False


@dataclass(eq=False)
class JournalSegment:
    """One journal file: how many of its episodes are not yet delivered, spooled or rejected."""

    path: Path
    size: int = 0
    pending: int = 0
    sealed: bool = False


class Journal:
    """Every submitted episode, on disk before submit() returns; forgotten once it is safe."""

    SEGMENT_BYTES = 64 << 20

    def __init__(self, directory: str | os.PathLike[str], stem: str) -> None:
        self.dir = Path(directory)
        self.stem = _name_part(stem, 60, "spool")
        self._active: JournalSegment | None = None
        self._fd = -1  # the active segment's descriptor (owned: bridge/owned_files.py)
        self._waiting: set[JournalSegment] = set()  # sealed, with episodes still pending
        self.failed = 0  # episodes that could not be journaled (logged)

    def record(self, line: bytes) -> JournalSegment | None:
        """Append one episode (no fsync: the page cache survives the process); its segment, or
        None when it could not be written (full disk: logged, counted in `failed`)."""
        seg = self._active
        try:
            if seg is None:
                seg = self._open()
            data = line + b"\n"
            n = os.write(self._fd, data)
            if n != len(data):  # a short write: the disk filled up under us
                raise OSError(errno.ENOSPC, "short write")
        except OSError as e:
            self.failed += 1
            _warn_write_failed(seg.path if seg else self.dir, e)
            if seg is not None and self._fd >= 0:
                try:
                    os.ftruncate(self._fd, seg.size)
                except OSError:
                    pass
            return None
        seg.size += n
        seg.pending += 1
        if seg.size >= self.SEGMENT_BYTES:
            self._seal()
        return seg

    def settle(self, seg: JournalSegment | None, n: int = 1) -> None:
        """`n` episodes of `seg` are safe elsewhere; a sealed segment with none left is deleted."""
        if seg is None:
            return
        seg.pending -= n
        if seg.pending > 0:
            return
        if seg.sealed:
            self._drop(seg)
        elif seg is self._active and self._fd >= 0:  # all safe: start the file over
            try:
                os.ftruncate(self._fd, 0)
                seg.size = 0
            except OSError:
                pass

    def close(self) -> None:
        """Seal the active segment; segments still holding unsettled episodes stay on disk and
        become recoverable (by the next process, or the next sink in this one)."""
        self._seal()
        for seg in list(self._waiting):
            self._waiting.discard(seg)
            OWNED.release(seg.path)

    def _drop(self, seg: JournalSegment) -> None:
        self._waiting.discard(seg)
        try:
            OWNED.release(seg.path, delete=True)
        except OSError:
            pass

    def _open(self) -> JournalSegment:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = _new_file(self.dir, self.stem, "journal")
        self._fd = OWNED.create(path, self)
        self._active = JournalSegment(path)
        return self._active

    def _seal(self) -> None:
        seg, self._active = self._active, None
        if seg is None:
            return
        self._fd = -1  # still owned (and locked) until its episodes settle
        seg.sealed = True
        if seg.pending <= 0:
            self._drop(seg)
        else:  # still ours until its episodes settle: not recoverable while we run
            self._waiting.add(seg)
