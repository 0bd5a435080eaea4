"""The trajectory spool dir shared with processes of another host (pid namespaces) or a
filesystem without locks: a file's owner is whoever holds its lock, not whoever has its pid.

On a cluster the spool dir sits on the shared filesystem (under the project directory, which
run.sh requires on every node): the rollout worker on one node, run.sh and the job's entrypoint
on another, and other runs of the same project all use it. Before, a file's writer was judged
alive by its pid on the judging host."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, env_server
from pidns import pid_dead_here, pid_namespace_unavailable, python_in_pid_namespace
from test_trajectory_sink import dead_pid, deliver_spool, run_rollouts

from bridge import owned_files
from bridge.trajectory_spool import Spool

WRITER = """
import asyncio, os, signal, sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from test_trajectory_sink import make_trajectory
from bridge.trajectory_uploader import SinkSettings, TrajectoryUploader

# the server is down and a batch waits an hour: what is submitted stays in the journal
HOLD = SinkSettings(max_age_s=3600.0, backoff_base_s=3600.0)

async def main():
    up = TrajectoryUploader("http://127.0.0.1:9", {spool!r}, {run!r}, settings=HOLD)
    print(os.getpid(), flush=True)
    while True:
        line = (await asyncio.to_thread(sys.stdin.readline)).split()
        if not line or line[0] == "die":
            os.kill(os.getpid(), signal.SIGKILL)  # as a node's worker dies: no close()
        a, b = int(line[0]), int(line[1])
        for i in range(a, b):
            up.submit(make_trajectory(i, run={run!r}))
        print("journaled", flush=True)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("hosts") / "trajectories.db"
    with env_server("--role", "trajectories", "--db", str(db)) as url:
        yield url


@pytest.fixture
def other_host() -> None:
    why = pid_namespace_unavailable()
    if why:
        pytest.skip(f"another host's pids need a pid namespace: {why}")


class Writer:
    """A sink journaling episodes in a pid namespace: a rollout worker on another node."""

    def __init__(self, spool: Path, run: str, pid: int) -> None:
        code = WRITER.format(repo=str(REPO), tests=str(REPO / "tests"), spool=str(spool), run=run)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = python_in_pid_namespace(code, pid, env, REPO)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().strip()
        assert first == str(pid), (first, self._stderr())

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read()[-2000:]

    def submit(self, a: int, b: int) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{a} {b}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "journaled", self._stderr()

    def die(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("die\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def test_a_live_writer_on_another_host_keeps_its_journal(
    other_host: None, store: str, tmp_path: Path
) -> None:
    """The writer's pid is dead here. Before, this host's sink took its live journal, delivered
    the 5 episodes in it and deleted it; the writer kept journaling into the deleted file, so
    the 5 episodes it journaled next were on no disk, and lost when it was killed."""
    spool, run = tmp_path / "spool", "live-elsewhere"
    writer = Writer(spool, run, pid_dead_here())
    try:
        writer.submit(0, 5)
        assert Spool(spool, run).held_by_live_processes() == 1  # run.sh's leftovers wait for it
        taken = deliver_spool(store, spool, run)
        assert taken["recovered"] == 0 and run_rollouts(store, run) == []
        writer.submit(5, 10)
        writer.die()
    finally:
        writer.stop()
    assert Spool(spool, run).held_by_live_processes() == 0
    stats = deliver_spool(store, spool, run)
    assert stats["recovered"] == 10, stats
    assert sorted(r["task_index"] for r in run_rollouts(store, run)) == list(range(10))
    assert sorted(p.name for p in spool.iterdir()) == []


def test_a_dead_writer_whose_pid_is_alive_here_is_recovered(
    other_host: None, store: str, tmp_path: Path
) -> None:
    """The writer's pid in its namespace is that of a live process here. Before, its journal
    looked alive to every process on this host and stayed undelivered for good."""
    spool, run = tmp_path / "spool", "dead-elsewhere"
    alive_here = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        writer = Writer(spool, run, alive_here.pid)
        try:
            writer.submit(0, 5)
            writer.die()
        finally:
            writer.stop()
        stats = deliver_spool(store, spool, run)  # while the pid is alive here
    finally:
        alive_here.kill()
        alive_here.wait()
    assert stats["recovered"] == 5, stats
    assert len(run_rollouts(store, run)) == 5
    assert list(spool.iterdir()) == []


FORKED = """
import os, sys, time
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from test_trajectory_sink import make_trajectory
from bridge.trajectory_spool import Spool
from bridge.trajectory_uploader import TrajectoryUploader

up = TrajectoryUploader("http://127.0.0.1:9", {spool!r}, "forked")
up.submit(make_trajectory(0, run="forked"))  # no loop: spooled at once, journal settled
read, write = os.pipe()
if os.fork() == 0:  # a child keeps the parent's descriptors open (a fork-started worker)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)  # but not the test's pipes
    # the parent's journal and spool file: its own to the parent, not the child's
    os.write(write, str(Spool({spool!r}, "forked").held_by_live_processes()).encode())
    up.spool.seal()  # an inherited sink closing: it must not move the parent's files
    up.journal.close()
    time.sleep(60)
    os._exit(0)
print("child sees the parent holding", os.read(read, 16).decode(), flush=True)
os._exit(0)  # the parent dies; its child lives on
"""


def test_a_forked_child_does_not_keep_a_dead_writers_files(store: str, tmp_path: Path) -> None:
    """A lock belongs to the process: a child forked with the descriptors open does not hold
    it, so the dead parent's spool file is delivered while the child still runs; and the child
    owns none of its parent's files (they are the live parent's; its inherited sink leaves them
    where they are)."""
    spool = tmp_path / "spool"
    code = FORKED.format(repo=str(REPO), tests=str(REPO / "tests"), spool=str(spool))
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == "child sees the parent holding 2", err
        os.killpg(proc.pid, 0)  # the child lives on, holding the dead parent's descriptors
        assert Spool(spool, "forked").held_by_live_processes() == 0
        stats = deliver_spool(store, spool, "forked")
        assert stats["delivered"] == 1 and len(run_rollouts(store, "forked")) == 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)  # the child, still sleeping


def test_without_file_locks_the_pid_decides_on_this_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A filesystem with no locks (ENOLCK): a file of a live pid here stays, one of a dead pid
    is taken, and the log says once that liveness is judged by pids."""

    def no_locks(fd: int, cmd: int, *a: object) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(owned_files.fcntl, "lockf", no_locks)
    spool = tmp_path / "spool"
    spool.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        unit = json.dumps({"x": 1}).encode()
        (spool / f"nolock-a.{sleeper.pid}.active.jsonl").write_bytes(unit + b"\n")
        (spool / f"nolock-b.{dead_pid()}.active.jsonl").write_bytes(unit + b"\n")
        s = Spool(spool, "nolock")
        with caplog.at_level(logging.WARNING, logger="bridge.owned_files"):
            assert s.held_by_live_processes() == 1
            claimed = s.claim()
            assert [p.name for p in claimed] == [f"nolock-b.{os.getpid()}.claimed.jsonl"]
            s.claim()
        assert sum("has no file locks" in r.message for r in caplog.records) == 1
        for p in claimed:
            s.done(p)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_an_active_spool_file_removed_under_its_writer_is_started_again(tmp_path: Path) -> None:
    """The writer keeps its spool file open (to hold its lock): when the file is removed under
    it (the spool dir cleared by hand), the next units go to a new file, not a deleted one."""
    spool = Spool(tmp_path / "spool", "cleared")
    assert spool.append([b'{"a": 1}']) == 1
    for p in (tmp_path / "spool").iterdir():
        p.unlink()
    assert spool.append([b'{"a": 2}']) == 1
    [left] = (tmp_path / "spool").iterdir()
    assert left.read_bytes() == b'{"a": 2}\n'
    spool.seal()


ANOTHER_USER = """
import asyncio, sys, time
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from test_trajectory_sink import FAST, make_trajectory
from bridge.trajectory_uploader import TrajectoryUploader

async def main():
    up = TrajectoryUploader({url!r}, {spool!r}, "mine", settings=FAST)
    up.submit(make_trajectory(0, run="mine"))
    t = time.monotonic()
    ok = await up.flush(20)
    await up.close()
    print(ok, round(time.monotonic() - t, 1), up.stats["delivered"], flush=True)

asyncio.run(main())
"""


def test_another_users_files_in_a_shared_dir_do_not_hold_up_a_flush(
    store: str, tmp_path: Path
) -> None:
    """Another user's dead run left a spool file (mode 644, theirs) in a dir both write to.
    Before, this user's sink counted it as its own to deliver, could not take it, and every
    flush waited out its whole timeout (20 s here) and said not everything was delivered. (This
    user is root without the capability to override file permissions: `setpriv`.)"""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux), to drop the right to open any file")
    spool = tmp_path / "spool"
    spool.mkdir()
    theirs = spool / f"their-run-aaaa0000.{dead_pid()}.active.jsonl"
    theirs.write_bytes(b'{"kind": "left by another user"}\n')
    os.chown(theirs, 65534, 65534)
    theirs.chmod(0o644)
    code = ANOTHER_USER.format(
        repo=str(REPO), tests=str(REPO / "tests"), url=store, spool=str(spool)
    )
    no_override = "--bounding-set=-dac_override,-dac_read_search,-fowner"
    done = subprocess.run(
        ["setpriv", no_override, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ok, took, delivered = done.stdout.split()
    assert ok == "True" and float(took) < 10 and delivered == "1", done.stdout
    assert len(run_rollouts(store, "mine")) == 1
    assert theirs.exists()  # theirs to deliver


KILLED_WRITER = """
import asyncio, random, sys
sys.path[:0] = [{repo!r}, {tests!r}]
from test_trajectory_sink import FAST, make_trajectory
from bridge.trajectory_uploader import TrajectoryUploader

async def main():
    up = TrajectoryUploader("http://127.0.0.1:9", {spool!r}, "churn", settings=FAST)
    for i in range({k} * 1000, {k} * 1000 + 200):
        up.submit(make_trajectory(i, run="churn"))
        print(i, flush=True)  # journaled
        await asyncio.sleep(random.random() * 0.02)
    await asyncio.sleep(120)  # until killed

asyncio.run(main())
"""

DELIVERER = """
import asyncio, sys, time
sys.path[:0] = [{repo!r}, {tests!r}]
from test_trajectory_sink import FAST
from bridge.trajectory_uploader import TrajectoryUploader

async def main():
    end = time.monotonic() + {seconds}
    while time.monotonic() < end:  # one sink after another, as runs and run.sh come and go
        up = TrajectoryUploader({url!r}, {spool!r}, "deliverer", settings=FAST)
        await up.flush(2)
        await up.close(1)

asyncio.run(main())
"""


def test_writers_killed_at_random_while_two_sinks_take_over_lose_nothing(
    store: str, tmp_path: Path
) -> None:
    """Four writers (server down: journal, spool, retries) are killed -9 one after another at
    random points while two other processes keep opening sinks on the dir: every episode a
    writer had journaled is stored exactly once, and nothing is left in the dir. (The takeover's
    races: a file taken between its creation and its lock, a journal read while its writer still
    appends, two takers on one file.)"""
    spool = tmp_path / "spool"
    fmt = {"repo": str(REPO), "tests": str(REPO / "tests"), "spool": str(spool), "url": store}
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start(code: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", code], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True
        )

    writers = [start(KILLED_WRITER.format(k=k, **fmt)) for k in range(4)]
    takers = [start(DELIVERER.format(seconds=10, **fmt)) for _ in range(2)]
    try:
        time.sleep(1.0)
        for w in writers:
            time.sleep(random.random())
            w.kill()
        for t in takers:
            t.wait(timeout=120)
        journaled: set[int] = set()
        for w in writers:
            out, _ = w.communicate(timeout=30)
            journaled |= {int(x) for x in out.split()}
    finally:
        for p in (*writers, *takers):
            if p.poll() is None:
                p.kill()
    deliver_spool(store, spool, "deliverer")  # the next run
    stored = [r["task_index"] for r in run_rollouts(store, "churn")]
    # a writer killed between submit() and its print: one episode stored that it did not report
    assert len(stored) == len(set(stored)) and journaled <= set(stored), (
        len(stored),
        len(journaled),
        sorted(journaled - set(stored))[:10],
    )
    assert len(set(stored) - journaled) <= len(writers)
    assert 0 < len(journaled) and list(spool.iterdir()) == []
