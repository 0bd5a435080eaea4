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

import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from tools.launch.services import env_server_command, free_port, is_loopback

# Episodes in flight one replica serves. bench/env_server.py: one replica sustains its peak
# calls/s from about 256 concurrent episodes on (WhoDunIt, 6 calls each); past that only its
# latency grows, so more episodes in flight want another replica (another CPU).
SESSIONS_PER_REPLICA = 256


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


def default_replicas(episodes_in_flight: int) -> int:
    """Replicas for this many concurrent episodes: one per SESSIONS_PER_REPLICA, at least one."""
    return max(1, math.ceil(episodes_in_flight / SESSIONS_PER_REPLICA))


def replica_command(config: str, url: str, db: str, index: int) -> list[str]:
    """`python -m envs.server` for replica `index`: replica 0 keeps the store, the rest serve envs
    only."""
    cmd = env_server_command(config, url, db)
    return cmd if index == 0 else [*cmd, "--role", "env"]


def local_plan(
    config: str, urls: list[str], replicas: int, db: str, running: frozenset[str] = frozenset()
) -> EnvServerPlan:
    """`replicas` loopback servers: the config's loopback URLs first, then free ports; those in
    `running` already answer and are used as they are."""
    chosen = [u for u in urls if is_loopback(u)][:replicas]
    while len(chosen) < replicas:
        chosen.append(f"http://127.0.0.1:{free_port()}")
    db = str(Path(db).resolve())
    commands = [
        (u, replica_command(config, u, db, i)) for i, u in enumerate(chosen) if u not in running
    ]
    return EnvServerPlan(Placement.LOCAL, replicas, chosen, commands, db=db)


def ray_plan(replicas: int, cpus: float, db: str) -> EnvServerPlan:
    """`replicas` servers the job starts on the Ray cluster."""
    return EnvServerPlan(Placement.RAY, replicas, cpus=cpus, db=str(Path(db).resolve()))
