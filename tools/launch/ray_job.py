"""The Ray job's entrypoint on an existing cluster: env-server replicas as Ray actors, around slime.

    python -m tools.launch.ray_job --replicas N --config CFG --db DB --job-config OUT \\
        [--cpus 1] [--timeout 300] -- python3 train.py ...

run.sh submits this when training runs on a Ray cluster it did not start. It runs where Ray
runs the job's entrypoint (a driver, normally on the head node), and:

1. starts N replicas of `python -m envs.server`, each inside a Ray actor that reserves `--cpus`
   CPUs on the node `tools.launch.replica_placement` picks (hard node affinity): replica 0,
   keeping the trajectory store (`--db`), on this node when it has CPUs to spare, the others
   (`--role env`) spread over the nodes, leaving the CPUs of slime's `--gpu-bundles`. Each
   binds its node's IP, as Ray knows it, on a free port, so slime's rollout manager reaches it
   from whichever node Ray put it on; all of them require the job's ENV_SERVER_API_KEY (the
   bridge sends it), and their token view may load the model's `--tokenizer`.
2. writes OUT, the config with `env_server: [their URLs]`. The job's TRAIN_CONFIG names OUT, so
   the bridge pins each session to one replica and sends every trajectory to replica 0.
3. runs the command after `--` (slime's driver) and exits with its code; before the replicas
   stop, it delivers the trajectories the job's sink left in the spool dir
   (tools/launch/leftovers.py; on the shared filesystem, those of every node's dead processes).
   The replicas stop when it ends or fails, when the job is stopped (SIGTERM), and, since this
   driver owns the actors, when it dies: Ray then kills the actors and their servers die with
   them. The command dies with this process too (SIGKILL on its parent's death, even a
   `kill -9`): slime's driver never outlives the job's entrypoint.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from contract.config import TRAIN_CONFIG_ENV, load_config
from contract.errors import ConfigError
from tools.errors import ClusterError, ServiceError
from tools.launch.env_servers import replica_command
from tools.launch.leftovers import report_leftovers
from tools.launch.replica_placement import NodeRoom, place_replicas
from tools.launch.services import (
    SupervisedService,
    free_port,
    http_url,
    is_loopback,
    parent_death_signal,
)

START_ATTEMPTS = 3


class EnvServerReplica:
    """One env-server process on the node Ray placed this actor on.

    It is restarted on the same URL if it crashes or is killed (`SupervisedService`: the sessions
    it held are lost; the bridge counts those episodes as env failures); it stops with the actor,
    and dies with the actor's process even when that is killed outright.
    """

    def __init__(
        self, config: str, db: str, index: int, timeout: float, tokenizers: Sequence[str] = ()
    ) -> None:
        self._config, self._db, self._index, self._timeout = config, db, index, timeout
        self._tokenizers = list(tokenizers)
        self._name = f"env server replica {index}"
        self._service: SupervisedService | None = None

    @property
    def restarts(self) -> int:
        return self._service.restarts if self._service is not None else 0

    def start(self, host: str | None = None) -> str:
        """Start the server on `host` (default: this node's IP, as Ray knows it) and a free port;
        its URL."""
        if host is None:
            import ray

            host = ray.util.get_node_ip_address()
        last: Exception | None = None
        for _ in range(START_ATTEMPTS):  # a port can be taken between probing and binding it
            url = http_url(host, free_port(host))
            cmd = replica_command(self._config, url, self._db, self._index, self._tokenizers)
            # The parent-death signal follows the thread that forks: the actor's task thread
            # here, the service's watchdog for a restart; both live as long as the actor.
            service = SupervisedService(self._name, cmd, url, self._timeout, prefix="ray_job")
            try:
                service.start()
            except ServiceError as e:
                last = e
                continue
            self._service = service
            return url
        raise ServiceError(f"{self._name} on {host}: {last}")

    def pid(self) -> int | None:
        return self._service.pid() if self._service is not None else None

    def stop(self) -> None:
        if self._service is not None:
            self._service.stop()


def parse_options(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        raise SystemExit("ray_job: give the command to run after `--`")
    i = argv.index("--")
    ap = argparse.ArgumentParser(
        prog="python -m tools.launch.ray_job",
        description="Start env-server replicas as Ray actors, run a command, stop them.",
    )
    ap.add_argument("--replicas", type=int, required=True)
    ap.add_argument("--config", required=True, help="train_config.yaml to serve")
    ap.add_argument("--db", required=True, help="trajectory store of replica 0")
    ap.add_argument("--job-config", required=True, help="where to write the config with their URLs")
    ap.add_argument("--cpus", type=float, default=1.0, help="CPUs each replica reserves")
    ap.add_argument(
        "--gpu-bundles",
        type=int,
        default=0,
        help="GPUs slime's placement group will claim (one CPU each; the replicas leave them)",
    )
    ap.add_argument(
        "--tokenizer",
        action="append",
        default=[],
        help="a tokenizer the replicas' token view may load (repeatable)",
    )
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for them")
    opts = ap.parse_args(argv[:i])
    cmd = argv[i + 1 :]
    if opts.replicas < 1 or not cmd:
        ap.error("--replicas must be >= 1 and a command must follow `--`")
    return opts, cmd


def write_job_config(config: str, urls: list[str], out: Path) -> None:
    """The config with env_server set to the replicas (and a loopback trajectories.url dropped)."""
    cfg = load_config(config)
    data = cfg.model_dump(mode="json")
    data["env_server"] = urls
    url = cfg.trajectories.url
    if url and is_loopback(url):  # not this store on other nodes: replica 0 keeps the store
        print(f"ray_job: trajectories.url {url} is loopback; replica 0 keeps the store", flush=True)
        data["trajectories"]["url"] = None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(out)


def replica_nodes(gpu_bundles: int, replicas: int, cpus: float) -> list[tuple[str, str]]:
    """(Ray node id, its address) of each replica, replica 0 first, from the live cluster
    (`tools.launch.replica_placement`); ClusterError when they do not fit."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    rooms = [
        NodeRoom(
            f"{n['NodeManagerAddress']} (node {n['NodeID'][:8]})",
            float(n.get("Resources", {}).get("CPU", 0)),
            int(n.get("Resources", {}).get("GPU", 0)),
            n["NodeID"] == here,
        )
        for n in alive
    ]
    placed = place_replicas(rooms, replicas, cpus, gpu_bundles)
    return [(alive[k]["NodeID"], alive[k]["NodeManagerAddress"]) for k in placed]


def start_replicas(opts: argparse.Namespace) -> tuple[list[Any], list[str]]:
    """The replica actors, started on the nodes placed for them, and their URLs (replica 0
    first)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        nodes = replica_nodes(opts.gpu_bundles, opts.replicas, opts.cpus)
    except ClusterError as e:
        raise ServiceError(str(e)) from None
    for i, (node_id, address) in enumerate(nodes):
        print(f"ray_job: replica {i} goes on node {node_id} ({address})", flush=True)
    replica = ray.remote(EnvServerReplica)
    config, db = str(Path(opts.config).resolve()), str(Path(opts.db).resolve())
    actors: list[Any] = [  # Ray actor handles
        replica.options(
            num_cpus=opts.cpus,
            max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(config, db, i, opts.timeout, opts.tokenizer)
        for i, (node_id, _) in enumerate(nodes)
    ]
    try:
        urls = ray.get([a.start.remote() for a in actors], timeout=opts.timeout)
    except ray.exceptions.GetTimeoutError:
        stop_replicas(actors)
        raise ServiceError(
            f"{opts.replicas} env-server replica(s) of {opts.cpus:g} CPU(s) did not start within "
            f"{opts.timeout:.0f}s: too few free CPUs on the cluster? lower --env-servers"
        ) from None
    except ray.exceptions.RayError as e:
        stop_replicas(actors)
        cause = getattr(e, "cause", None) or e
        raise ServiceError(" ".join(str(cause).split())[:500]) from None
    return actors, urls


def stop_replicas(actors: list[Any]) -> None:
    import ray

    for a in actors:
        with contextlib.suppress(Exception):
            ray.get(a.stop.remote(), timeout=30)
        with contextlib.suppress(Exception):
            ray.kill(a)


def run_child(cmd: list[str]) -> int:
    """Run `cmd`, passing SIGTERM/SIGINT on to it; its exit code. It gets SIGKILL if this process
    dies first, however it dies (Linux)."""
    on_linux = sys.platform == "linux"
    child = subprocess.Popen(
        cmd, preexec_fn=parent_death_signal(signal.SIGKILL) if on_linux else None
    )

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    opts, cmd = parse_options(sys.argv[1:] if argv is None else argv)
    try:
        load_config(opts.config)
    except ConfigError as e:
        print(f"ray_job: {e}", file=sys.stderr)
        return 2
    import ray

    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=True)
    try:
        actors, urls = start_replicas(opts)
    except ServiceError as e:
        print(f"ray_job: {e}", file=sys.stderr)
        return 1
    try:
        for i, url in enumerate(urls):
            role = "envs + trajectory store " + opts.db if i == 0 else "envs"
            print(f"ray_job: env server replica {i} ({role}) at {url}", flush=True)
        out = Path(opts.job_config)
        write_job_config(opts.config, urls, out)
        os.environ[TRAIN_CONFIG_ENV] = str(out)
        print(f"ray_job: wrote {out}; running {' '.join(cmd[:2])} ...", flush=True)
        code = run_child(cmd)
        report_leftovers(out, "ray_job")  # while replica 0 (the store) is still up
        return code
    finally:
        stop_replicas(actors)
        print("ray_job: env server replicas stopped", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
