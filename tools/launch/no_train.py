"""`bash run.sh --no-train`: slime's own driver with `--debug-rollout-only`: its rollouts, eval,
data source, trajectories and W&B, no training (no actor trains, no weights change).

With `--engine-addrs` (engines that already run) the job needs no GPU at all, so slime's whole
loop runs on a machine without one. What that takes from outside slime, and only then (when
neither this machine nor the Ray cluster has a GPU):

- the CPU import shims (`tools/slime_cpu.py`) in every process of the job: `tools/cpu_site/`
  first on the job's PYTHONPATH (its `sitecustomize.py` installs them at start-up);
- a Ray head that declares one GPU: slime's placement group still reserves the actor's GPU
  (a label here; its actor returns at once under `--debug-rollout-only`);
- the Python that runs run.sh for the head run.sh starts (Ray's workers run the head's Python)
  and for slime's driver, unless `--python` says otherwise.

Dumps: `--dump-rollouts DIR` passes slime's `--save-debug-rollout-data
DIR/rollout_{rollout_id}.pt`: each rollout's samples as slime would train them
(`rollout_<id>.pt`) and each eval's (`rollout_eval_<id>.pt`).

Resume: slime saves the data position (`SAVE/rollout/global_dataset_state_dict_<id>.pt`) every
`--save-interval` rollouts, but under `--debug-rollout-only` it never resumes from it by itself:
its idle actor reports rollout 0, and without a Megatron checkpoint marker in `--load` slime's
`parse_args` replaces `--load` (v0.3.1 also resets `--start-rollout-id` to 0). So when `--save`
holds saved positions, run.sh continues after the last one: it writes a marker directory
(`latest_checkpointed_iteration.txt`, and `rollout/` linked to `SAVE/rollout`) that `--load`
names, and passes `--start-rollout-id <last + 1>`. The user's `--save` is left as slime wrote
it. In fully-async mode the saved position is the worker's pull position, ahead of training:
prompts in flight at the stop are skipped after a restart.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from tools.errors import LaunchError
from tools.launch import prerequisites as pre
from tools.launch.cluster import ClusterView
from tools.launch.layout import Layout
from tools.launch.resume import TRACKER, LoadPlan

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CPU_SITE = PROJECT_ROOT / "tools" / "cpu_site"
"""Put first on the job's PYTHONPATH when it has no GPU: its sitecustomize installs the shims."""
DUMP_NAME = "rollout_{rollout_id}.pt"
STATE_DIR = "rollout"
STATE_FILE = re.compile(r"global_dataset_state_dict_(\d+)\.pt")
IDLE_ACTOR_GPUS = 1
"""GPUs slime's placement group reserves for the idle actor of a --no-train job."""


@dataclass(frozen=True)
class ResumeMarker:
    """The directory --load names to resume a --no-train run's data position."""

    path: Path
    last_rollout: int
    """The last rollout whose data position --save holds."""
    states: Path
    """SAVE/rollout, linked from path/rollout."""


def idle_actor_layout() -> Layout:
    """--no-train with external engines: one actor GPU (a label), no rollout GPUs."""
    return Layout(
        actor_nodes=1,
        actor_gpus_per_node=IDLE_ACTOR_GPUS,
        rollout_gpus=0,
        engine_gpus=1,
        gpus_per_node=IDLE_ACTOR_GPUS,
        colocate=False,
    )


def check_no_train_options(opts: argparse.Namespace) -> None:
    """Options a run without training cannot take: one line each."""
    if not opts.no_train:
        return
    if opts.colocate is not None:
        raise LaunchError(
            "--no-train trains nothing, so --colocate/--no-colocate mean nothing: drop it "
            "(the engines get every GPU)"
        )
    if opts.update_weights_interval is not None:
        raise LaunchError("--no-train never updates weights: drop --update-weights-interval")


def saved_rollouts(save: str | None) -> list[int]:
    """Rollout ids whose data position `save` holds, ascending."""
    if not save:
        return []
    states = Path(save) / STATE_DIR
    if not states.is_dir():
        return []
    found = (STATE_FILE.fullmatch(p.name) for p in states.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def plan_data_resume(
    opts: argparse.Namespace, marker_dir: Path
) -> tuple[LoadPlan, ResumeMarker | None]:
    """--load/--ref-load of a --no-train run, and the marker to write when it resumes."""
    base = opts.load or opts.model
    saved = saved_rollouts(opts.save)
    if opts.resume is True and not saved:
        raise LaunchError(
            f"--resume: {opts.save or '(no --save)'} holds no saved data position "
            f"({STATE_DIR}/global_dataset_state_dict_<id>.pt); pass the --save of the run to "
            "continue"
        )
    if not saved or opts.resume is False:
        note = (
            f"--no-resume: starting at rollout 0; {opts.save} holds positions up to rollout "
            f"{saved[-1]}, which new saves replace"
            if saved
            else None
        )
        return LoadPlan(base, base, note), None
    last = saved[-1]
    if opts.num_rollout is not None and last + 1 >= opts.num_rollout:
        raise LaunchError(
            f"{opts.save} already holds rollout {last} of --num-rollout {opts.num_rollout}: "
            "nothing left to run (raise --num-rollout, or --no-resume to start over)"
        )
    marker = ResumeMarker(marker_dir, last, (Path(opts.save) / STATE_DIR).resolve())
    note = (
        f"resuming the data position after rollout {last} from {opts.save} (slime starts at "
        f"rollout {last + 1}; --no-resume starts over)"
    )
    return LoadPlan(str(marker_dir), base, note), marker


def write_resume_marker(marker: ResumeMarker) -> None:
    """The --load directory slime's parse_args accepts as a checkpoint: the marker file naming
    the last rollout, and `rollout/` (where slime's data source loads) linked to SAVE/rollout."""
    marker.path.mkdir(parents=True, exist_ok=True)
    (marker.path / TRACKER).write_text(f"{marker.last_rollout}\n")
    link = marker.path / STATE_DIR
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(marker.states, target_is_directory=True)


def no_train_flags(opts: argparse.Namespace, marker: ResumeMarker | None) -> list[str]:
    """slime's flags for --no-train (and --dump-rollouts, which training runs may use too)."""
    flags = ["--debug-rollout-only"] if opts.no_train else []
    if opts.dump_rollouts:
        flags += ["--save-debug-rollout-data", str(Path(opts.dump_rollouts).resolve() / DUMP_NAME)]
    if marker is not None:
        flags += ["--start-rollout-id", str(marker.last_rollout + 1)]
    return flags


def cpu_head_cpus(layout: Layout, engines: int) -> int:
    """CPUs the head run.sh starts declares on a machine without a GPU: what slime's job reserves
    (one per placement-group bundle, one for its rollout manager, 0.2 per engine actor) and one
    to spare, at least this machine's cores (Ray's CPUs are a scheduling count; the job's
    processes mostly wait on the engines and the env servers)."""
    need = layout.gpus_used + 1 + math.ceil(0.2 * engines) + 1
    return max(os.cpu_count() or 1, need)


def cpu_python(opts: argparse.Namespace) -> str:
    """The driver's Python in a job without a GPU: --python when given, else this one."""
    return sys.executable if opts.python == "python3" else str(opts.python)


def cpu_ray(ray_cmd: str) -> str:
    """The `ray` run.sh starts a head with on a machine without a GPU: the one beside this Python
    (its workers then run this Python, with the project's dependencies), else `ray_cmd`."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.is_file() else ray_cmd


def check_idle_actor_gpu(
    view: ClusterView | None, cpu_job: bool, checks: list[pre.Check], notes: list[str]
) -> None:
    """--no-train with external engines: slime still reserves the idle actor's one GPU."""
    if view is not None and view.on_ray and not view.gpu_nodes:
        checks.append(
            pre.Check(
                "GPUs",
                False,
                f"{view.source} declares no GPU; slime's placement group reserves one for the "
                "idle actor of a --no-train run (nothing runs on it)",
                "start the Ray head with --num-gpus 1 (on a machine without GPUs it is a label)",
            )
        )
    elif cpu_job:
        checks.append(
            pre.Check(
                "GPUs",
                True,
                "none needed: the engines run elsewhere and nothing trains (slime's CPU import "
                "shims go on the job's PYTHONPATH)",
            )
        )
        if view is None:
            notes.append(
                "no GPU here: the Ray head run.sh starts declares 1 GPU for slime's idle actor "
                "(a label; nothing runs on it)"
            )
    else:
        checks.append(pre.Check("GPUs", True, "none needed: the engines run elsewhere"))
