"""The env servers a training job uses: servers that already run, replicas run.sh starts, or
replicas on Ray.

The bridge runs inside slime's rollout manager, which Ray may place on any node. Where the
env servers come from:

- external: every env_server URL of the config answers and is reachable from the cluster
  (on a Ray cluster: not a loopback address); they are used as they are.
- local: run.sh starts Ray on this machine (one node), so it also starts the replicas here,
  on loopback: the config's URLs first, then free ports.
- ray: an existing Ray cluster. The job's entrypoint (`tools.launch.ray_job`) starts the
  replicas as Ray actors, each reserving CPUs, binding its node's IP on a free port and
  guarded by a per-job API key, and writes their URLs into the job's TRAIN_CONFIG.

Replicas: one server is one Python event loop. `--env-servers N` spreads sessions over N
(the bridge pins each session to one URL); the default is one per SESSIONS_PER_REPLICA
episodes in flight. Replica 0 also keeps the trajectory store (`--db`), so every episode from
every node lands in one store; the others run `--role env`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from urllib.parse import urlparse

from contract.config import TrainConfig, is_hosted
from tools.errors import LaunchError
from tools.launch import prerequisites as pre
from tools.launch.filesystems import network_filesystem
from tools.launch.layout import Layout
from tools.launch.modes import TrainMode
from tools.launch.services import answers, env_server_command, free_port, is_loopback

# Episodes in flight one replica serves. bench/env_server.py: one replica sustains its peak
# calls/s from about 256 concurrent episodes on (WhoDunIt, 6 calls each); past that only its
# latency grows, so more episodes in flight want another replica (another CPU).
SESSIONS_PER_REPLICA = 256
# Replicas run.sh picks without --env-servers (each is one process; more are fine, ask for them).
MAX_DEFAULT_REPLICAS = 16
# slime's default --sglang-server-concurrency (per engine), which fully-async keeps in flight.
SGLANG_SERVER_CONCURRENCY = 512


# What the env servers read from their environment (envs/gsm8k.py DATA_DIR_ENV,
# envs/haiku/judge.py JUDGE_*_ENV, envs/trajectories/api.py, the Hub client): replicas on Ray get
# the launcher's values through the job's environment, as servers run.sh starts here inherit them.
ENV_SERVER_VARS = (
    "GSM8K_DATA_DIR",
    "LLM_JUDGE_URL",
    "LLM_JUDGE_MODEL",
    "TRAJECTORIES_TOKENIZER",
    "HF_HUB_OFFLINE",
    "HF_HOME",
)
ENV_SERVER_SECRETS = ("LLM_JUDGE_API_KEY",)


class Placement(str, Enum):
    """Where the job's env servers run."""

    EXTERNAL = "external"
    LOCAL = "local"
    RAY = "ray"


@dataclass
class EnvServerPlan:
    """The env servers of one job."""

    placement: Placement
    replicas: int
    urls: list[str] = field(default_factory=list)
    """external/local: the URLs the bridge gets; ray: empty (the job learns them)."""
    commands: list[tuple[str, list[str]]] = field(default_factory=list)
    """local: (url, command) of each replica run.sh starts."""
    cpus: float = 1.0
    """ray: CPUs each replica reserves."""
    db: str = ""
    """The trajectory store replica 0 keeps."""
    tokenizers: list[str] = field(default_factory=list)
    """ray: what the replicas' token view may load (the model's tokenizer)."""
    gpu_bundles: int = 0
    """ray: the GPUs slime's placement group claims, one CPU each (the replicas leave them)."""


def default_replicas(episodes_in_flight: int) -> int:
    """Replicas for this many concurrent episodes: one per SESSIONS_PER_REPLICA, at least one."""
    return max(1, math.ceil(episodes_in_flight / SESSIONS_PER_REPLICA))


def replica_command(
    config: str, url: str, db: str, index: int, tokenizers: Sequence[str] = ()
) -> list[str]:
    """`python -m envs.server` for replica `index`: replica 0 keeps the store, the rest serve envs
    only; the web UI's token view may load `tokenizers` (the model's), nothing an upload names."""
    cmd = env_server_command(config, url, db, tokenizers)
    return cmd if index == 0 else [*cmd, "--role", "env"]


def local_plan(
    config: str,
    urls: list[str],
    replicas: int,
    db: str,
    running: frozenset[str] = frozenset(),
    tokenizers: Sequence[str] = (),
) -> EnvServerPlan:
    """`replicas` loopback servers: the config's loopback URLs first, then free ports; those in
    `running` already answer and are used as they are."""
    chosen = [u for u in urls if is_loopback(u)][:replicas]
    while len(chosen) < replicas:
        chosen.append(f"http://127.0.0.1:{free_port()}")
    db = str(Path(db).resolve())
    commands = [
        (u, replica_command(config, u, db, i, tokenizers))
        for i, u in enumerate(chosen)
        if u not in running
    ]
    return EnvServerPlan(Placement.LOCAL, replicas, chosen, commands, db=db)


def ray_plan(
    replicas: int, cpus: float, db: str, tokenizers: Sequence[str] = (), gpu_bundles: int = 0
) -> EnvServerPlan:
    """`replicas` servers the job starts on the Ray cluster, beside `gpu_bundles` of slime's."""
    return EnvServerPlan(
        Placement.RAY,
        replicas,
        cpus=cpus,
        db=str(Path(db).resolve()),
        tokenizers=list(tokenizers),
        gpu_bundles=gpu_bundles,
    )


def episodes_in_flight(
    opts: argparse.Namespace,
    mode: TrainMode,
    layout: Layout,
    extra: list[str],
    external_engines: int = 0,
) -> int:
    """Concurrent episodes the job runs: a rollout's samples, or fully-async's pool (per engine:
    the layout's, or `external_engines` that already run)."""
    if (
        mode is TrainMode.FULLY_ASYNC
    ):  # slime keeps --sglang-server-concurrency per engine in flight
        per_engine = SGLANG_SERVER_CONCURRENCY
        if "--sglang-server-concurrency" in extra:
            i = extra.index("--sglang-server-concurrency")
            with contextlib.suppress(IndexError, ValueError):
                per_engine = int(extra[i + 1])
        return per_engine * (external_engines or layout.engines)
    return opts.rollout_batch_size * opts.n_samples


def plan_env_servers(
    opts: argparse.Namespace,
    cfg: TrainConfig | None,
    on_ray: bool,
    probe: bool,
    episodes: int,
    gpu_bundles: int,
    checks: list[pre.Check],
    notes: list[str],
) -> EnvServerPlan | None:
    """The job's env servers: running ones, replicas on this machine, or replicas on the Ray
    cluster (beside `gpu_bundles` of slime's, one CPU each)."""
    if cfg is None or all(is_hosted(n) for n in cfg.environments):
        return None
    urls = [opts.env_server.rstrip("/")] if opts.env_server else cfg.env_server_urls
    running = frozenset(u for u in urls if probe and answers(u))
    replicas = opts.env_servers or max(
        min(default_replicas(episodes), MAX_DEFAULT_REPLICAS),
        0 if on_ray else sum(1 for u in urls if is_loopback(u)),
    )
    reachable = [u for u in urls if not on_ray or not is_loopback(u)]
    top_up = not on_ray and (opts.env_servers or 0) > len(urls)  # asked for more than run
    if reachable == urls and set(urls) <= running and not top_up:
        notes += [f"env server already answers at {u}" for u in urls]
        if opts.env_servers and opts.env_servers != len(urls):
            notes.append(f"--env-servers {opts.env_servers} ignored: the running servers are used")
        return EnvServerPlan(Placement.EXTERNAL, len(urls), urls)
    for u in urls:
        if not is_loopback(u) and u not in running:
            checks.append(
                pre.Check(
                    "env server",
                    False,
                    f"{u} does not answer /health",
                    f"start it there: python -m envs.server --config {opts.config} "
                    f"--host 0.0.0.0 --port {urlparse(u).port or 80} (or drop it from env_server "
                    "and let run.sh start replicas)",
                )
            )
    if not on_ray:
        plan = local_plan(opts.config, urls, replicas, opts.db, running, [opts.model])
        notes += [f"env server already answers at {u}" for u in plan.urls if u in running]
        return plan
    if opts.env_server and is_loopback(opts.env_server):
        raise LaunchError(
            f"--env-server {opts.env_server} is a loopback address, which other nodes of the Ray "
            "cluster do not reach: drop it (the job starts replicas on the cluster) or give an "
            "address they reach"
        )
    loopback = [u for u in urls if is_loopback(u)]
    if loopback:
        notes.append(
            f"env_server {', '.join(loopback)} is loopback, which other nodes do not reach: the "
            f"job starts {replicas} replica(s) on the Ray cluster instead"
        )
    shared = network_filesystem(opts.db)
    if shared:
        notes.append(
            f"the trajectory store {opts.db} is on {shared}, shared by the nodes: replica 0 keeps "
            "it, and a web UI, eval or replay of another machine is refused while the job runs "
            "(SQLite's WAL stays with one machine); a local disk of the head node is faster and "
            "safer: --db /local/path/trajectories.db"
        )
    return ray_plan(replicas, opts.env_server_cpus, opts.db, [opts.model], gpu_bundles)
