"""slime's whole training loop on this CPU machine, in every mode, on slime v0.3.1 and main:
`bash run.sh --no-train --engine-addrs ...` as a user types it (issue 20), with faults injected
during the run, and the fully-async seams of issue 21 (1: infra failures kept out of GRPO
groups; 2: engine aborts for weight updates handed back to slime's worker; 8: evaluation).

Each run is slime's real driver (train.py / train_async.py from the vendored sources) on a real
local Ray head, slime's router in front of the engine, the real env server; tests/loop_world.py
says how. A run does 3 rollouts of 2 prompts x 2 samples with eval after every rollout, while:
the env server loses every session of one task (an infra failure reaching slime), one session
in 9 at creation and one in 5 mid-episode (replayed by the bridge); the engine answers HTTP 500
for a while, aborts some turns (moving its weight version on, as a weight update does), and
takes 50 ms a turn, so slime's over-sampling abort (sync, async) finds episodes in flight.

Each run must show, from slime's own dumps, the trajectory store and the engine's record: the
rollouts and eval points, every trained sample token-exact with what the engine sent, no
infra-failed (or unfinished) sample in any group slime normalises, every trained sample and
every eval episode in the store when run.sh returns (what the job's sink left on disk delivered
by run.sh after the job), the faults fired, and run.sh's exit code 0 (slime's). Two of them are
restarted after a lost save of their last rollout: the data position resumes (run.sh's
--no-train resume). Those runs use the world's env server, which run.sh finds running; one more
(main, fully-async) finds none and runs against the replicas run.sh starts and stops itself.

Cost: one world per module and worker (Ray head, engine, env server: ~30 s), then 108-184 s per
run on two cores at load 11 (the prototype measured 45-82 s at load 5; most of it is slime's
fixed start: imports, actors, router). CI runs two cells, three runs (CELLS), and the run on
run.sh's own env servers; `pytest -m loop` runs them alone, `pytest -m heavy_loop` the other four.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import free_port, wait_http
from launch_world import port_open
from loop_checks import (
    infra_problems,
    load_dumps,
    rollout_problems,
    store_problems,
    stored_rollouts,
    token_problems,
)
from loop_world import BATCH, N_SAMPLES, Cell, LoopWorld, deliver_spool, loop_world, run_cell
from slime_vendor import missing_reason

from contract.config import load_config

pytestmark = [
    pytest.mark.long(10),
    pytest.mark.vendored,
    pytest.mark.loop,
    pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason())),
    pytest.mark.timeout(3600),
]

ROLLOUTS = 3
FAULTS = {"fail": [12, 18], "abort_every": 5, "delay": 0.05}
OVER_SAMPLING = ("--over-sampling-batch-size", str(2 * BATCH))
PARTIAL = ("--partial-rollout", "--mask-offpolicy-in-partial-rollout")
CELLS = {
    # (version, mode): slime flags after `--`, whether the run is restarted, whether CI runs it
    ("v0.3.1", "sync"): (OVER_SAMPLING, True, True),
    ("main", "sync"): ((*OVER_SAMPLING, *PARTIAL), False, False),
    ("v0.3.1", "async"): (OVER_SAMPLING, False, False),
    ("main", "async"): (OVER_SAMPLING, False, False),
    ("v0.3.1", "fully-async"): ((), True, False),
    ("main", "fully-async"): (PARTIAL, False, True),
}
"""CI runs two cells (three runs of run.sh): sync with a restart on v0.3.1 and fully-async on
main; the other four are marked `heavy_loop` (`pytest -m heavy_loop` runs them)."""


HEAVY = (
    pytest.mark.heavy_loop,
    pytest.mark.skipif(
        "'heavy_loop' not in (config.option.markexpr or '')",
        reason="a heavy whole-loop cell (minutes): pytest -m heavy_loop runs it",
    ),
)
"""A cell CI leaves out: it runs only when the marker expression names it."""


def _params() -> list[Any]:
    return [
        pytest.param(v, m, marks=() if ci else HEAVY, id=f"{v}-{m}")
        for (v, m), (_, _, ci) in CELLS.items()
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopWorld]:
    with loop_world(tmp_path_factory.mktemp("loop")) as w:
        yield w


def eval_episodes(mode: str, evals_per_point: int) -> int:
    """Eval episodes the store gets: after every rollout, and in sync also before training
    (slime's train.py evaluates rollout 0 twice; the second dump replaces the first)."""
    points = ROLLOUTS + (1 if mode == "sync" else 0)
    return points * evals_per_point


def cell_problems(cell: Cell, world: LoopWorld, rollout_ids: list[int]) -> list[str]:
    """Everything a run must show; [] when it does."""
    if cell.rc != 0:
        return [f"run.sh exited {cell.rc}:\n{cell.tail()}"]
    train, evals = load_dumps(cell.dump)
    offpolicy = "--mask-offpolicy-in-partial-rollout" in CELLS[(cell.version, cell.mode)][0]
    problems = rollout_problems(train, rollout_ids, BATCH, N_SAMPLES)
    if sorted(evals) != rollout_ids:
        problems.append(f"eval points {sorted(evals)}, expected {rollout_ids}")
    problems += infra_problems(train)
    problems += token_problems(train, cell.exchanges, offpolicy)
    return problems


def store_check(cell: Cell, world: LoopWorld, n_eval: int) -> list[str]:
    """The store gets every trained sample and every eval episode when run.sh returns: those the
    job delivered, and those its sink left on disk, which run.sh delivers after the job
    (tools/launch/leftovers.py). The next run (tests/loop_world.py) finds none left."""
    train, _ = load_dumps(cell.dump)
    problems = store_problems(stored_rollouts(world.db, cell.run_name), train, n_eval)
    stats = deliver_spool(cell.config)
    if stats["delivered"] or stats["recovered"]:
        problems.append(f"run.sh left trajectories in the job's spool: {stats}")
    return problems


def fault_problems(cell: Cell) -> list[str]:
    """The faults the run was meant to meet did happen (else the checks prove nothing)."""
    out = []
    if not cell.proxy.get("poisoned"):
        out.append("the poisoned task's sessions were never lost (it was never drawn)")
    if not (cell.proxy.get("create_failed") or cell.proxy.get("call_failed")):
        out.append("the env server lost no session")
    if not cell.engine.get("failed"):
        out.append("the engine never answered 500")
    if not cell.engine.get("aborts"):
        out.append("the engine aborted no turn")
    return out


def fully_async_problems(cell: Cell) -> list[str]:
    """Fully-async: each trained sample whose episode met an engine abort (a weight update) went
    back to slime's worker and resumed there (issue 21.2), never re-sent in place; one did."""
    train, _ = load_dumps(cell.dump)
    met = [s for ss in train.values() for s in ss if int(s["metadata"].get("engine_aborts") or 0)]
    if not met:
        return ["no trained sample met an engine abort"]
    in_place = [s["index"] for s in met if not int(s["metadata"].get("resumed") or 0)]
    return [f"samples {in_place} met an engine abort and were re-sent in place"] * bool(in_place)


def resume_problems(first: Cell, again: Cell) -> list[str]:
    """The restart (its last save lost) ran only rollout 2, from the data position saved after
    rollout 1."""
    if again.rc != 0:
        return [f"the restart exited {again.rc}:\n{again.tail()}"]
    assert first.save is not None
    state = torch.load(first.save / "rollout" / "global_dataset_state_dict_1.pt")
    train, evals = load_dumps(again.dump)
    out = []
    if sorted(train) != [ROLLOUTS - 1] or sorted(evals) != [ROLLOUTS - 1]:
        out.append(f"the restart ran rollouts {sorted(train)} / evals {sorted(evals)}, not [2]")
    if "resuming the data position after rollout 1" not in again.log:
        out.append("run.sh did not say it resumes after rollout 1")
    if "global_dataset_state_dict_1.pt" not in again.log:
        out.append("slime's data source did not load the position saved after rollout 1")
    start = int(state["sample_index"])
    early = [s["index"] for ss in train.values() for s in ss if s["index"] < start]
    if start == 0 or early:
        out.append(f"samples {early[:4]} come from before the saved position {start}")
    return out


@pytest.mark.parametrize(("version", "mode"), _params())
def test_slimes_loop_through_run_sh(
    world: LoopWorld, tmp_path: Path, version: str, mode: str
) -> None:
    flags, restart, _ = CELLS[(version, mode)]
    save = tmp_path / "save" if restart else None
    cell = run_cell(
        world,
        version,
        mode,
        tmp_path,
        num_rollout=ROLLOUTS,
        slime_flags=flags,
        save=save,
        faults=FAULTS,
    )
    print(f"loop {version} {mode}: {cell.seconds:.1f} s, engine {cell.engine}, env {cell.proxy}")
    ids = list(range(ROLLOUTS))
    problems = cell_problems(cell, world, ids)
    assert not problems, "\n".join(problems)
    problems = store_check(cell, world, eval_episodes(mode, 3)) + fault_problems(cell)
    if mode == "fully-async":
        problems += fully_async_problems(cell)
    assert not problems, "\n".join(problems)
    if not restart:
        return
    assert save is not None
    (save / "rollout" / f"global_dataset_state_dict_{ROLLOUTS - 1}.pt").unlink()
    again = run_cell(
        world,
        version,
        mode,
        tmp_path,
        num_rollout=ROLLOUTS,
        slime_flags=flags,
        save=save,
        run_name=cell.run_name + "-again",
        faults=FAULTS,
    )
    print(f"loop {version} {mode} restarted: {again.seconds:.1f} s")
    problems = resume_problems(cell, again)
    problems += cell_problems(again, world, [ROLLOUTS - 1])
    assert not problems, "\n".join(problems)


def test_slimes_loop_with_the_env_servers_run_sh_starts(world: LoopWorld, tmp_path: Path) -> None:
    """A first run's path: no env server answers at the config's address, so run.sh starts the
    replicas itself (`--env-servers 2`, replica 0 keeping the store `--db`); slime's fully-async
    driver plays its rollouts and evals against them with the engine's faults, and replica 0
    (sessions and the store) is killed -9 once episodes are in flight: run.sh restarts it on its
    URL, no episode fails to reach it after that (without the restart, every episode pinned to it
    failed for the rest of the run, each after ~8 s of replays), and the store loses nothing.
    When the job ends, run.sh delivers what its sink left and stops the replicas. Every other
    cell runs against a server run.sh found running."""
    db = tmp_path / "own-store" / "trajectories.db"
    config = tmp_path / f"loop-replicas-{os.getpid()}.yaml"
    killed: dict[str, Any] = {}
    killer = threading.Thread(target=_kill_replica_0, args=(world, config, killed), daemon=True)
    killer.start()
    cell = run_cell(
        world,
        "main",
        "fully-async",
        tmp_path,
        num_rollout=ROLLOUTS,
        slime_flags=PARTIAL,
        faults=FAULTS,
        run_name=config.stem,
        env_server=f"http://127.0.0.1:{free_port()}",
        run_sh_args=("--env-servers", "2", "--db", str(db)),
    )
    killer.join(timeout=5)
    print(f"loop main fully-async, run.sh's env servers: {cell.seconds:.1f} s, {killed}")
    started = re.findall(r"run\.sh: env server up at http://127\.0\.0\.1:(\d+)", cell.log)
    assert len(started) == 2, cell.tail()
    assert killed.get("back_at"), f"replica 0 was not back after its kill: {killed}\n{cell.tail()}"
    assert f"{killed['url']} exited (-9); restarting it there" in cell.log
    problems = cell_problems(cell, world, list(range(ROLLOUTS)))
    problems += _unreachable_after(cell.log, killed["url"], killed["back_at"] + 2)
    assert not problems, "\n".join(problems)
    train, _ = load_dumps(cell.dump)
    problems = store_problems(stored_rollouts(db, cell.run_name), train, eval_episodes("", 3))
    # (whether an engine-aborted sample resumed in slime's worker is the main-fully-async cell's
    # check: here the kill replays episodes from their start, aborted ones included)
    problems += [p for p in fault_problems(cell) if "engine" in p]
    assert not problems, "\n".join(problems)
    for port in started:  # stopped with the job
        assert not port_open(int(port)), f"replica on {port} still up"
    left = list(Path(load_config(cell.config).trajectories.spool_dir).glob("**/*.jsonl"))
    assert not left, f"run.sh left trajectories in the job's spool: {left}"


def _kill_replica_0(world: LoopWorld, config: Path, out: dict[str, Any]) -> None:
    """Once run.sh's replica 0 (the env server of `config` that keeps the store: no `--role`)
    runs and the engine has answered a turn, kill it -9; record its URL and when it answers
    /health again (at most 120 s)."""
    deadline = time.monotonic() + 600
    pid = None
    while time.monotonic() < deadline and pid is None:
        found = [
            int(p)
            for p in subprocess.run(
                ["pgrep", "-f", f"envs.server --config {config} "], capture_output=True, text=True
            ).stdout.split()
            if (cmd := _cmdline(int(p))) and b"--role" not in cmd
        ]
        if found and world.control().get("count", 0) > 0:
            pid = found[0]
        else:
            time.sleep(0.5)
    if pid is None:
        return
    cmd = _cmdline(pid).split(b"\0")
    port = cmd[cmd.index(b"--port") + 1].decode()
    out["url"] = f"http://127.0.0.1:{port}"
    os.kill(pid, signal.SIGKILL)
    out["killed_at"] = time.time()
    try:
        wait_http(f"{out['url']}/health", timeout=120)
    except TimeoutError:
        return
    out["back_at"] = time.time()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""


def _unreachable_after(log: str, url: str, since: float) -> list[str]:
    """The bridge's lines (slime's log, stamped to the second) saying an episode could not
    connect to `url` at or after `since` (epoch seconds)."""
    out = []
    stamp = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] play\.py")
    for line in log.splitlines():
        m = stamp.search(line)
        if m and f"on {url} failed: cannot connect" in line:
            at = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
            if at >= since:
                out.append(f"after the restart: {line.strip()[:300]}")
    return out
