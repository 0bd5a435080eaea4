"""The whole-loop harness: slime's real driver, through `bash run.sh --no-train --engine-addrs`,
on this CPU machine (tests/test_loop.py).

One world per test session (per xdist worker): a real Ray head on free ports declaring one GPU
(a label: slime's placement group reserves it for the idle actor), the real env server with its
trajectory store behind a fault proxy (tests/fault_proxy.py), and the engine: the scripted
player of the three environments served by the tests' SGLang stub with faults on command
(tests/loop_engine.py). slime's router (sglang-router) runs inside the job, in front of the
engine, as slime starts it. `run_cell` runs run.sh once, as a user types it, and collects what
the checks (tests/loop_checks.py) read: slime's own per-rollout dumps, the trajectory store, the
engine's record of what it sent, the faults that fired, run.sh's exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from conftest import REPO, free_port, wait_http
from fault_proxy import FaultProxy
from ray_cluster import ray_cluster
from slime_vendor import MEGATRON, VERSIONS, unpack

TOKENIZER_DIR = REPO / ".cache" / "qwen3-tokenizer"
SLIME_TARBALL = {"v0.3.1": "v0.3.1", "main": "main-624b824"}
NO_AUTH = {"RAY_AUTH_MODE": "disabled"}
BATCH, N_SAMPLES, CONCURRENCY = 2, 2, 2
"""Prompts per rollout, samples per prompt, and --sglang-server-concurrency (fully-async keeps
that many groups in flight per engine)."""
RUN_TIMEOUT = 900


@dataclass
class LoopWorld:
    """The servers every run of a session shares."""

    tmp: Path
    ray: str
    """The Ray dashboard run.sh submits to."""
    engine: str
    """The engine's URL (its address is what --engine-addrs gets)."""
    env_url: str
    """The real env server (its store is `db`)."""
    proxy: FaultProxy
    """In front of the env server: the config's env_server."""
    db: Path
    tasks: Path
    evals: Path
    poison: tuple[str, int]
    """The task whose sessions the proxy loses, every time."""

    @property
    def engine_addr(self) -> str:
        return self.engine.removeprefix("http://")

    def control(self, **body: Any) -> dict[str, Any]:
        """Set the engine's faults (tests/loop_engine.py) and read its counters."""
        r = httpx.post(f"{self.engine}/stub/control", json=body, timeout=30)
        r.raise_for_status()
        return dict(r.json())

    def exchanges(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.engine}/stub/exchanges", timeout=120)
        r.raise_for_status()
        return list(r.json())


@dataclass
class Cell:
    """One `run.sh --no-train` run and what it left."""

    version: str
    mode: str
    run_name: str
    rc: int
    seconds: float
    log: str
    dump: Path
    save: Path | None
    config: Path
    """The run's config (its trajectory spool is beside it)."""
    engine: dict[str, Any] = field(default_factory=dict)
    """The engine's fault counters after the run: count, aborts, failed."""
    proxy: dict[str, int] = field(default_factory=dict)
    """The env server's injected failures: poisoned, create_failed, call_failed."""
    exchanges: list[dict[str, Any]] = field(default_factory=list)

    def tail(self, n: int = 6000) -> str:
        return self.log[-n:]


def _tasks(tmp: Path) -> tuple[Path, Path, tuple[str, int]]:
    """2 training tasks per environment, 1 eval task per environment; the first gsm8k training
    task is the poisoned one."""
    from tools.prepare_tasks import main as prepare

    cfg = tmp / "prepare.yaml"
    cfg.write_text((REPO / "train_config.yaml").read_text())
    tasks, evals_all = tmp / "tasks.jsonl", tmp / "eval_tasks.jsonl"
    code = prepare(["--config", str(cfg), "--output", str(tasks), "--max-tasks", "2"])
    assert code == 0, "prepare_tasks failed"
    evals, seen = tmp / "eval_small.jsonl", set()
    with evals.open("w") as out:
        for line in evals_all.read_text().splitlines():
            env = json.loads(line)["metadata"]["env"]
            if env not in seen:
                seen.add(env)
                out.write(line + "\n")
    rows = [json.loads(line) for line in tasks.read_text().splitlines()]
    first = next(r["metadata"] for r in rows if r["metadata"]["env"] == "gsm8k")
    return tasks, evals, ("gsm8k", int(first["index"]))


@contextlib.contextmanager
def loop_world(tmp: Path) -> Iterator[LoopWorld]:
    """Start the session's servers (engine and env server first, Ray while they load); stop them
    all on exit."""
    tasks, evals, poison = _tasks(tmp)
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}", **NO_AUTH}
    engine_port, env_port = free_port(), free_port()
    engine_cmd = [
        sys.executable,
        str(REPO / "tests" / "sglang_stub.py"),
        "--port",
        str(engine_port),
        "--tokenizer",
        str(TOKENIZER_DIR),
        "--responder",
        f"{REPO / 'tests' / 'loop_engine.py'}:RESPONDER",
    ]
    db = tmp / "store" / "trajectories.db"
    db.parent.mkdir()
    cfg = tmp / "server.yaml"
    cfg.write_text((REPO / "train_config.yaml").read_text())
    server_cmd = [sys.executable, "-m", "envs.server", "--config", str(cfg), "--db", str(db)]
    server_cmd += ["--host", "127.0.0.1", "--port", str(env_port), "--log-level", "warning"]
    logs = tmp / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []
    with contextlib.ExitStack() as stack:
        for name, cmd in (("engine", engine_cmd), ("env-server", server_cmd)):
            out = stack.enter_context(open(logs / f"{name}.log", "w"))
            procs.append(
                subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
            )
        stack.callback(_stop, procs)
        old = {k: os.environ.get(k) for k in NO_AUTH}
        os.environ.update(NO_AUTH)
        stack.callback(_restore, old)
        cluster = stack.enter_context(ray_cluster([{"gpus": 1, "cpus": 8}]))
        engine, env_url = f"http://127.0.0.1:{engine_port}", f"http://127.0.0.1:{env_port}"
        wait_http(f"{engine}/health", timeout=180, proc=procs[0])
        wait_http(f"{env_url}/health", timeout=180, proc=procs[1])
        # the engine reads SGLang's server arguments on the first /server_info: load them now
        httpx.get(f"{engine}/server_info", timeout=300).raise_for_status()
        proxy = stack.enter_context(FaultProxy(env_url, {poison}, create_every=9, call_every=5))
        yield LoopWorld(tmp, cluster.dashboard, engine, env_url, proxy, db, tasks, evals, poison)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _restore(old: dict[str, str | None]) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def slime_checkout(version: str) -> tuple[Path, Path]:
    """The vendored slime `version` and the Megatron it runs with."""
    return unpack(VERSIONS[SLIME_TARBALL[version]]), unpack(MEGATRON)


def run_cell(
    world: LoopWorld,
    version: str,
    mode: str,
    tmp: Path,
    *,
    num_rollout: int = 3,
    slime_flags: tuple[str, ...] = (),
    save: Path | None = None,
    run_name: str | None = None,
    faults: dict[str, Any] | None = None,
    env_server: str | list[str] | None = None,
    run_sh_args: tuple[str, ...] = (),
) -> Cell:
    """`bash run.sh --no-train --engine-addrs ENGINE --mode MODE ...` with eval after every
    rollout and slime's dumps, against the session's world; the engine's and the env server's
    faults set first (`faults`: tests/loop_engine.py's control body). `env_server` replaces the
    config's (the fault proxy); `run_sh_args` go to run.sh before slime's flags."""
    slime, megatron = slime_checkout(version)
    run_name = run_name or f"loop-{version}-{mode}-{uuid.uuid4().hex[:6]}"
    config = tmp / f"{run_name}.yaml"
    data = yaml.safe_load((REPO / "train_config.yaml").read_text())
    data.update(env_server=env_server or world.proxy.url, run_name=run_name)
    config.write_text(yaml.safe_dump(data))
    dump = tmp / f"{run_name}-dump"
    world.control(reset=True, **(faults or {}))
    world.proxy.counts.clear()
    args = [
        "--no-train",
        "--engine-addrs",
        world.engine_addr,
        "--mode",
        mode,
        *("--model", str(TOKENIZER_DIR), "--config", str(config)),
        *("--slime-path", str(slime), "--megatron-path", str(megatron)),
        *("--task-data", str(world.tasks), "--eval-data", str(world.evals)),
        *("--eval-interval", "1", "--num-rollout", str(num_rollout)),
        *("--rollout-batch-size", str(BATCH), "--n-samples", str(N_SAMPLES)),
        *("--ray-address", world.ray, "--python", sys.executable, "--no-wandb"),
        *("--dump-rollouts", str(dump)),
        *run_sh_args,
        *(("--save", str(save), "--save-interval", "1") if save is not None else ()),
        "--",
        "--sglang-server-concurrency",
        str(CONCURRENCY),
        *slime_flags,
    ]
    env = {**os.environ, **NO_AUTH, "OPENREWARD_DISABLE_UPDATE_CHECK": "1"}
    for k in ("RAY_ADDRESS", "TRAIN_CONFIG", "SLIME_PATH", "MEGATRON_PATH", "WANDB_API_KEY"):
        env.pop(k, None)
    started = time.monotonic()
    out = subprocess.run(
        ["bash", str(REPO / "run.sh"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    seconds = time.monotonic() - started
    (tmp / f"{run_name}.log").write_text(out.stdout + out.stderr)  # kept for a failing test
    shutil.rmtree(REPO / "runs" / run_name, ignore_errors=True)  # run.sh's job script, marker
    exchanges = world.exchanges()
    (tmp / f"{run_name}-exchanges.json").write_text(json.dumps(exchanges))
    return Cell(
        version=version,
        mode=mode,
        run_name=run_name,
        rc=out.returncode,
        seconds=seconds,
        log=out.stdout + out.stderr,
        dump=dump,
        save=save,
        config=config,
        engine=world.control(),
        proxy=dict(world.proxy.counts),
        exchanges=exchanges,
    )


def deliver_spool(config: Path) -> dict[str, int]:
    """Deliver what the job's trajectory sink left in its spool (the sink spools what it has not
    delivered when its process exits, for the next process with that config to deliver), as
    that next process does; its counters (`recovered`, `delivered`, `lost`...) come back."""
    from bridge.trajectory_sink import make_sink
    from contract.config import load_config

    sink: Any = make_sink(load_config(config))

    async def deliver() -> bool:
        return bool(await sink.close(timeout=60))

    if not asyncio.run(deliver()):
        raise AssertionError(f"the job's spooled trajectories were not delivered: {sink.stats}")
    return dict(sink.stats)
