"""A process in its own pid namespace, with the pid a test picks: another host's process table.

Processes on two nodes of a cluster (or in two containers) that share a directory know nothing
of each other's pids: a live process there can have a pid that is dead here, and a dead one a
pid that is alive here. A pid namespace (`unshare --pid`, needs root) gives a process exactly
that: its own numbering, the same filesystem.

    proc = python_in_pid_namespace(code, pid=31001)   # os.getpid() is 31001 inside
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def pid_namespace_unavailable() -> str | None:
    """Why a pid namespace with a chosen pid cannot be made here, or None."""
    if shutil.which("unshare") is None:
        return "no `unshare` command (util-linux)"
    if os.geteuid() != 0:
        return "pid namespaces need root"
    probe = subprocess.run(
        [*_unshare(), "sh", "-c", "echo 99 > /proc/sys/kernel/ns_last_pid && sh -c 'echo $$'"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0 or probe.stdout.strip() != "100":
        return f"unshare --pid with a chosen pid failed: {(probe.stderr or probe.stdout).strip()}"
    return None


def _unshare() -> list[str]:
    return ["unshare", "--pid", "--fork", "--mount-proc"]


def in_own_pid_namespace(argv: list[str]) -> list[str]:
    """`argv` as a command that runs it in a new pid namespace (not as its init: it can be
    killed, or kill itself, like any process); its pid there is small (2), alive here."""
    return [*_unshare(), "sh", "-c", '"$@"; exit $?', "sh", *argv]


def pid_dead_here() -> int:
    """A pid no process on this host has (from the top of the pid range, checked now)."""
    top = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in range(top - 1, top // 2, -1):
        if not Path(f"/proc/{pid}").exists():
            return pid
    raise RuntimeError("no free pid in the upper half of the range")


def python_in_pid_namespace(
    code: str, pid: int, env: dict[str, str], cwd: str | os.PathLike[str]
) -> subprocess.Popen[str]:
    """`python -c code` in a new pid namespace, where its pid is `pid`; stdin and stdout are
    text pipes. It is not the namespace's init (a shell is), so it can be killed like any
    process; the namespace ends with it."""
    shell = f'echo {pid - 1} > /proc/sys/kernel/ns_last_pid && "$0" -c "$1"; exit $?'
    return subprocess.Popen(
        [*_unshare(), "sh", "-c", shell, sys.executable, code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )
