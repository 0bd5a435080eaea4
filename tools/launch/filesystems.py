"""Which filesystem a path is on, from this machine's mount table: whether it is shared over
the network (NFS, Lustre, GPFS, ...), where SQLite's WAL must stay with one machine."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MOUNTINFO", "network_filesystem"]

MOUNTINFO = Path("/proc/self/mountinfo")
NETWORK_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ceph",
        "glusterfs",
        "afs",
        "9p",
        "wekafs",
        "fuse.glusterfs",
        "fuse.sshfs",
        "fuse.juicefs",
        "fuse.s3fs",
        "fuse.gcsfuse",
        "fuse.ceph-fuse",
    }
)


def _unescape(field: str) -> str:
    """A mount point as mountinfo writes it (space, tab, newline and backslash as octal)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _mounts(text: str) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of each line of a mountinfo table."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields or len(fields) < 5:
            continue
        dash = fields.index("-")
        if dash + 1 < len(fields):
            out.append((_unescape(fields[4]), fields[dash + 1]))
    return out


def network_filesystem(path: str | os.PathLike[str]) -> str | None:
    """The type of the network filesystem `path` (or the folder it would be made in) is on;
    None for a local one, or when the mount table cannot be read."""
    try:
        mounts = _mounts(MOUNTINFO.read_text())
    except OSError:
        return None
    p = Path(os.path.abspath(path))
    while not p.exists() and p.parent != p:
        p = p.parent
    target = str(p.resolve())
    best, kind = -1, ""
    for point, fstype in mounts:
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:  # of equal mount points, the last is the one seen
            best, kind = len(point), fstype
    return kind if kind in NETWORK_TYPES else None
