"""A trajectory store on a filesystem two machines share (a cluster's project directory): one
machine at a time, since SQLite's WAL works only among the processes of one machine.

The other machine is a process with its own kernel boot id (bind-mounted over
/proc/sys/kernel/random/boot_id in a mount namespace) and hostname (a UTS namespace): what a
process of another node sees. Before, it opened the store replica 0 was writing as if nothing
were wrong."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, free_port, wait_http

from envs.trajectories.errors import StoreError
from envs.trajectories.store import TrajectoryStore

OTHER_BOOT_ID = "0badc0de-0000-4000-8000-000000000001"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OPENREWARD_DISABLE_UPDATE_CHECK": "1"}

OPEN_STORE = """
import sys
from envs.trajectories.errors import StoreError
from envs.trajectories.store import TrajectoryStore
try:
    TrajectoryStore(sys.argv[1]).stop()
except StoreError as e:
    print("refused:", e)
else:
    print("opened")
"""


def _other_machine_unavailable() -> str | None:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return "needs root and `unshare` (util-linux)"
    probe = subprocess.run(
        _on_other_machine(["cat", "/proc/sys/kernel/random/boot_id"], Path("/dev/null")),
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"a mount and UTS namespace could not be made: {probe.stderr.strip()}"
    return None


def _on_other_machine(argv: list[str], boot_id: Path) -> list[str]:
    """`argv` as run on a machine named node-b with another boot id."""
    shell = 'mount --bind "$0" /proc/sys/kernel/random/boot_id && hostname node-b && exec "$@"'
    return ["unshare", "--mount", "--uts", "sh", "-c", shell, str(boot_id), *argv]


@pytest.fixture
def boot_id(tmp_path: Path) -> Path:
    why = _other_machine_unavailable()
    if why:
        pytest.skip(f"another machine's view: {why}")
    path = tmp_path / "boot_id"
    path.write_text(OTHER_BOOT_ID + "\n")
    return path


def _trajectory_server(db: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "envs.server", "--role", "trajectories", "--db", str(db),
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip


def _open_from(db: Path, boot_id: Path | None) -> str:
    argv = [sys.executable, "-c", OPEN_STORE, str(db)]
    if boot_id is not None:
        argv = _on_other_machine(argv, boot_id)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_a_store_open_on_another_machine_is_refused(boot_id: Path, tmp_path: Path) -> None:
    """Replica 0 (a trajectory server) writes the store on node-b; a web UI, an eval or a
    replay started here on the same file gets one line naming node-b, and a server started
    here exits with it; once node-b's server is gone the store opens here, its rows intact."""
    db = tmp_path / "runs" / "trajectories.db"
    port = free_port()
    server = subprocess.Popen(
        _on_other_machine(
            _trajectory_server(db, port),
            boot_id,
        ),
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=server)
        with pytest.raises(StoreError, match=r"open on another machine \(node-b\)") as refused:
            TrajectoryStore(db)
        assert f"delete {db}.host" in str(refused.value)  # the way out when node-b crashed
        assert _open_from(db, None).startswith("refused:")
        started = time.monotonic()
        here = subprocess.run(
            _trajectory_server(db, free_port()),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            env=ENV,
        )
        assert here.returncode != 0 and time.monotonic() - started < 60
        assert "open on another machine (node-b)" in here.stderr, here.stderr[-2000:]
        assert len(here.stderr.strip().splitlines()) == 1, here.stderr
    finally:
        server.terminate()
        server.wait(timeout=60)
    store = TrajectoryStore(db)  # node-b has let go of it
    try:
        assert store.list_runs() is not None
    finally:
        store.stop()


def test_the_processes_of_one_machine_share_a_store(boot_id: Path, tmp_path: Path) -> None:
    """Two stores in this process and one in another process here use one file side by side;
    another machine is refused until the last user here has closed it (a store closed here
    does not let go of the other one's hold)."""
    db = tmp_path / "trajectories.db"
    first, second = TrajectoryStore(db), TrajectoryStore(db)
    try:
        assert _open_from(db, None) == "opened"
        first.stop()
        assert _open_from(db, boot_id).startswith("refused:")
    finally:
        second.stop()
    assert _open_from(db, boot_id) == "opened"
    assert _open_from(db, None) == "opened"  # and back: node-b has closed it
