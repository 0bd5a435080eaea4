"""A real Ray cluster on this machine for tests: a head and worker nodes, each its own raylet.

Every node is `ray start --block` on free ports with its own `--num-gpus` / `--num-cpus`, so
Ray's view (its state API, its scheduler) is a real multi-node cluster with GPUs this machine
does not have; nothing runs on those GPUs. Each node is stopped by terminating its
`ray start --block`, which stops exactly the processes it started (never `ray stop`, which
would stop every Ray on the machine).

    with ray_cluster([{"gpus": 8, "cpus": 4}, {"gpus": 8, "cpus": 4}]) as cluster:
        cluster.dashboard   # http://127.0.0.1:PORT, what run.sh's --ray-address takes
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

RAY = Path(sys.executable).parent / "ray"
WORKER_ATTEMPTS = 3


def ray_available() -> bool:
    return RAY.is_file()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    ports = []
    for flag in (
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
    ):
        ports += [flag, str(_free_port())]
    return ports


@dataclass
class RayCluster:
    dashboard: str
    gcs: str
    procs: list[subprocess.Popen]
    logs: Path

    def alive_nodes(self) -> list[dict]:
        r = httpx.get(f"{self.dashboard}/api/v0/nodes", params={"detail": "1"}, timeout=10)
        return [n for n in r.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]


def _wait(what: str, ok, procs: list[subprocess.Popen], logs: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"ray start exited with {p.returncode}; logs in {logs}")
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            if ok():
                return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready within {timeout:.0f}s; logs in {logs}")


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _start(nodes: list[dict], node_ip: str | None, tmp: Path, timeout: float) -> RayCluster:
    """One attempt: every node up and registered, or RuntimeError/TimeoutError (nodes stopped)."""
    logs = tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # RAY_AUTH_MODE: a token some other Ray left in ~/.ray/auth_token must not turn auth on here
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    gcs_port, dash_port = _free_port(), _free_port()
    ip = ["--node-ip-address", node_ip] if node_ip else []
    procs: list[subprocess.Popen] = []

    def start(i: int, spec: dict, head: bool) -> subprocess.Popen:
        argv = [str(RAY), "start", "--block", "--disable-usage-stats", *ip, *_node_ports()]
        argv += ["--num-gpus", str(spec.get("gpus", 0)), "--num-cpus", str(spec.get("cpus", 2))]
        argv += ["--object-store-memory", str(100 * 1024 * 1024)]
        if spec.get("resources"):
            argv += ["--resources", spec["resources"]]
        if head:
            argv += ["--head", "--port", str(gcs_port), "--temp-dir", str(tmp)]
            argv += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port)]
            argv += ["--ray-client-server-port", str(_free_port())]
        else:
            argv += ["--address", f"{node_ip or '127.0.0.1'}:{gcs_port}"]
        out = open(logs / f"node{i}.log", "a")
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        procs.append(proc)
        return proc

    dashboard = f"http://127.0.0.1:{dash_port}"
    cluster = RayCluster(dashboard, f"{node_ip or '127.0.0.1'}:{gcs_port}", procs, logs)
    try:
        start(0, nodes[0], head=True)
        _wait(
            "Ray head",
            lambda: httpx.get(f"{dashboard}/api/version", timeout=2).status_code == 200,
            procs,
            logs,
            timeout,
        )
        # The dashboard answers before the head's raylet has registered: a caller reading the
        # nodes then (run.sh's check) would find none alive.
        _wait("Ray head node", lambda: len(cluster.alive_nodes()) == 1, procs, logs, timeout)
        # One worker at a time, each retried alone: a raylet gets 30 s to register with the
        # GCS, which several starting at once on a loaded machine can miss.
        for i, spec in enumerate(nodes[1:], 1):
            for attempt in range(1, WORKER_ATTEMPTS + 1):
                proc = start(i, spec, head=False)
                try:
                    _wait(
                        f"Ray node {i}",
                        lambda i=i: len(cluster.alive_nodes()) == i + 1,
                        procs,
                        logs,
                        timeout,
                    )
                    break
                except RuntimeError:
                    if proc.poll() is None or attempt == WORKER_ATTEMPTS:
                        raise
                    procs.remove(proc)  # it exited: start this node again
    except BaseException:
        _stop(procs)
        raise
    return cluster


@contextlib.contextmanager
def ray_cluster(
    nodes: list[dict], node_ip: str | None = None, timeout: float = 240.0, attempts: int = 3
) -> Iterator[RayCluster]:
    """Start a head (nodes[0]) and workers (nodes[1:]); each dict: gpus, cpus, resources (JSON str).

    Ray gives a raylet 30 s to register, which a loaded machine can miss: a start that fails is
    retried from scratch (`attempts` in all). Callers talking to the cluster (`ray job submit`,
    run.sh) need RAY_AUTH_MODE=disabled too.
    """
    tmp = Path(tempfile.mkdtemp(prefix="rayt", dir="/tmp"))  # short: Ray's socket paths
    cluster = None
    for attempt in range(1, attempts + 1):
        try:
            cluster = _start(nodes, node_ip, tmp / f"a{attempt}", timeout)
            break
        except (RuntimeError, TimeoutError):
            if attempt == attempts:
                raise  # the logs stay in tmp
    assert cluster is not None
    try:
        yield cluster
    finally:
        _stop(cluster.procs)
        shutil.rmtree(tmp, ignore_errors=True)
