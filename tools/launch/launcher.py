"""`bash run.sh`: check prerequisites, start the env servers and Ray, submit slime's training
driver.

Everything is decided in `build_plan` (pure apart from probing the machine and the Ray
cluster), printed by `--dry-run`, and carried out by `execute`, which stops what it started on
exit. What a plan holds, in order:

- the cluster: an existing Ray cluster at --ray-address (its nodes, GPUs and vendor read from
  Ray), else this machine (nvidia-smi / amd-smi / rocm-smi) with a Ray head run.sh starts;
- the GPU layout fitted to it (`tools.launch.layout`), the mode's driver (`tools.launch.modes`),
  the checkpoint to load (`tools.launch.resume`);
- the env servers (`tools.launch.env_servers`): on this machine, or on the Ray cluster through
  the job's entrypoint (`tools.launch.ray_job`);
- slime's flags, each checked against the slime checkout (slime ignores unknown flags).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import yaml

from contract.config import TRAIN_CONFIG_ENV, TrainConfig, is_hosted
from tools.errors import (
    ClusterError,
    LaunchError,
    LayoutError,
    ModeError,
    ResumeError,
    ServiceError,
)
from tools.launch import prerequisites as pre
from tools.launch.cluster import (
    ClusterView,
    check_ray_address,
    default_ray_address,
    local_view,
    ray_dashboard_up,
    read_ray_cluster,
)
from tools.launch.env_servers import (
    ENV_SERVER_SECRETS,
    ENV_SERVER_VARS,
    EnvServerPlan,
    Placement,
    default_replicas,
    local_plan,
    ray_plan,
)
from tools.launch.gpus import (
    AMD_COLOCATE_FLAGS,
    AMD_MEGATRON_FLAGS,
    ROCM_JOB_ENV,
    GpuVendor,
    LocalGpus,
    detect_local_gpus,
)
from tools.launch.layout import Layout, LayoutRequest, fit_layout
from tools.launch.modes import ModePlan, TrainMode, mode_plan, resolve_colocate
from tools.launch.resume import LoadPlan, plan_load
from tools.launch.services import answers, is_loopback, managed_process, stop
from tools.launch.slime_flags import SGLANG_FLAGS, slime_checkout_flags, supported_train_backends

PROJECT_ROOT = Path(__file__).resolve().parents[2]

GENERATE_HOOK = "bridge.generate.generate"
ROLLOUT_LOG_HOOK = "bridge.metrics.log_rollout"
EVAL_LOG_HOOK = "bridge.metrics.log_eval_rollout"
# Groups with an episode lost to the env/network/engine are dropped and refilled
# (bridge/filters.py); a user's own --dynamic-sampling-filter-path after `--` replaces it (chain it
# via $BRIDGE_NEXT_DYNAMIC_FILTER instead).
INFRA_FILTER_HOOK = "bridge.filters.drop_infra_failures"

# Learning rate: slime's own Qwen3-4B recipes (scripts/run-qwen3-4B.sh and its AMD twin) train
# with Adam at 1e-6, constant schedule, no KL term: the optimizer settings run.sh emits. The
# public OpenReward example uses 1e-5, ten times the step this setup was tuned with; we keep
# the tested value (README: "Learning rate").
DEFAULT_LR = 1e-6
# Evaluate every N rollouts when an eval file is used, and save every N rollouts when --save is
# given without --save-interval (slime's Qwen3-4B scripts use 20 for both).
DEFAULT_EVAL_INTERVAL = 20
SAVE_INTERVAL = 20
# slime's default --sglang-server-concurrency (per engine), which fully-async keeps in flight.
SGLANG_SERVER_CONCURRENCY = 512
# Replicas run.sh picks without --env-servers (each is one process; more are fine, ask for them).
MAX_DEFAULT_REPLICAS = 16
RAY_HEAD_TIMEOUT = 180.0

# Megatron flags the launcher emits itself (slime parses its CLI with Megatron's parser).
# tests/test_run_sh.py checks them against the Megatron parser of the commits slime pins.
MEGATRON_FLAGS = frozenset(
    {
        "--tensor-model-parallel-size",
        "--sequence-parallel",
        "--pipeline-model-parallel-size",
        "--context-parallel-size",
        "--recompute-granularity",
        "--recompute-method",
        "--recompute-num-layers",
        "--optimizer",
        "--lr-decay-style",
        "--weight-decay",
        "--adam-beta1",
        "--adam-beta2",
        "--attention-dropout",
        "--hidden-dropout",
        "--accumulate-allreduce-grads-in-fp32",
        "--attention-softmax-in-fp32",
        "--attention-backend",
        *AMD_MEGATRON_FLAGS,
    }
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where one is set and the help text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.default in (None, False)
            or "default" in text
            or action.default is argparse.SUPPRESS
        ):
            return text
        return super()._get_help_string(action) or ""


def parse_options(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """run.sh's options, and the arguments after `--` (passed to slime unchanged)."""
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser(
        prog="bash run.sh",
        description="Train a model with slime on the environments in train_config.yaml.",
        epilog=(
            "Everything after `--` is passed to slime's driver unchanged. "
            "Rollout-only mode (no training, no GPU needed): bash run.sh --rollout-only --help. "
            "Evaluate and compare models: bash run.sh --eval-only --help"
        ),
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    a = ap.add_argument
    a(
        "--model",
        default="Qwen/Qwen3-4B",
        help="HF checkpoint (local dir or hub id): tokenizer, SGLang weights",
    )
    a(
        "--config",
        default="train_config.yaml",
        help="train_config.yaml (environments, env server, trajectories)",
    )
    a("--task-data", default="tasks.jsonl", help="training prompts written by prepare_tasks.py")
    a(
        "--mode",
        choices=[m.value for m in TrainMode],
        default=TrainMode.SYNC.value,
        help=(
            "sync: train.py; async: train_async.py (rollout k+1 overlaps training k); "
            "fully-async: train_async.py with slime's fully-async rollout worker"
        ),
    )
    a(
        "--eval-data",
        default=None,
        help=(
            "eval prompts (default: eval_<task-data name> beside --task-data when it exists, "
            "as prepare_tasks.py writes it)"
        ),
    )
    a(
        "--eval-interval",
        type=int,
        default=None,
        help=(
            f"evaluate every N rollouts (default: {DEFAULT_EVAL_INTERVAL} when there is eval data)"
        ),
    )
    a("--no-eval", action="store_true", help="no evaluation, even when an eval file exists")
    a("--lr", type=float, default=DEFAULT_LR, help="learning rate (slime's Qwen3-4B recipe)")
    a("--n-samples", type=int, default=16, help="samples per prompt (GRPO group size)")
    a("--rollout-batch-size", type=int, default=32, help="prompts per rollout")
    a(
        "--steps-per-rollout",
        type=int,
        default=1,
        help="optimizer steps per rollout; global batch = rollout batch * n-samples / this",
    )
    a(
        "--num-rollout",
        type=int,
        default=None,
        help="rollouts to train for (default: one epoch of the task data)",
    )
    a(
        "--max-response-len",
        type=int,
        default=4096,
        help="token budget of a whole episode's response",
    )
    a(
        "--max-context-len",
        type=int,
        default=None,
        help=(
            "context budget (prompt + response) of an episode; at most --max-tokens-per-gpu x --cp"
        ),
    )
    a(
        "--max-tokens-per-gpu",
        type=int,
        default=8192,
        help="dynamic batch size: tokens per GPU per micro batch",
    )
    a("--temperature", type=float, default=1.0, help="rollout sampling temperature (> 0)")
    a(
        "--train-backend",
        choices=["megatron", "fsdp"],
        default="megatron",
        help="fsdp exists in slime up to v0.2.2 only",
    )
    a(
        "--actor-gpus",
        type=int,
        default=None,
        help=(
            "training GPUs (default: every GPU when colocated, else half the nodes, or half "
            "of one node's GPUs)"
        ),
    )
    a(
        "--rollout-gpus",
        type=int,
        default=None,
        help="inference GPUs when not colocated (default: the GPUs the actor leaves)",
    )
    a("--tp", type=int, default=1, help="tensor parallel size of the Megatron actor")
    a("--cp", type=int, default=1, help="context parallel size of the Megatron actor")
    a("--rollout-tp", type=int, default=None, help="GPUs per SGLang engine (default: --tp)")
    a(
        "--colocate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="training and inference share the GPUs (default: on for --mode sync, off otherwise)",
    )
    a(
        "--update-weights-interval",
        type=int,
        default=None,
        help="async modes: push weights to the engines every N rollouts (slime's default: 1)",
    )
    a(
        "--mem-fraction",
        type=float,
        default=0.7,
        help="SGLang static memory fraction when colocated",
    )
    a(
        "--gpu-vendor",
        choices=["auto", *(v.value for v in GpuVendor)],
        default="auto",
        help="auto: from Ray's view of the cluster, else nvidia-smi / amd-smi / rocm-smi",
    )
    a(
        "--fault-tolerance",
        action="store_true",
        help="slime's --use-fault-tolerance: restart SGLang engines that die",
    )
    a(
        "--load",
        default=None,
        help=(
            "checkpoint to start from (default: the one in --save when there is one, else --model)"
        ),
    )
    a("--save", default=None, help="where to save checkpoints")
    a(
        "--save-interval",
        type=int,
        default=None,
        help=f"save every N rollouts (needs --save; default with --save: {SAVE_INTERVAL})",
    )
    a(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "continue the run in --save (default: when --save holds a checkpoint); "
            "--no-resume starts from the base weights"
        ),
    )
    a(
        "--wandb-project",
        default="slime-envs",
        help="W&B project (offline when WANDB_API_KEY is unset)",
    )
    a("--wandb-group", default=None, help="W&B group (default: the config's run_name)")
    a("--no-wandb", action="store_true", help="do not log to W&B")
    a(
        "--slime-path",
        default=os.environ.get("SLIME_PATH"),
        help="slime checkout (default: $SLIME_PATH)",
    )
    a(
        "--megatron-path",
        default=os.environ.get("MEGATRON_PATH"),
        help="Megatron-LM checkout (default: $MEGATRON_PATH)",
    )
    a(
        "--model-args",
        default=None,
        help=(
            "Megatron model flags: a .sh file defining MODEL_ARGS=(...) or a quoted flag string "
            "(default: slime's scripts/models/<model>.sh)"
        ),
    )
    a("--env-server", default=None, help="env server URL (default: env_server in the config)")
    a(
        "--env-servers",
        type=int,
        default=None,
        help=(
            "env-server replicas run.sh starts (default: one per 256 episodes in flight, "
            f"at most {MAX_DEFAULT_REPLICAS})"
        ),
    )
    a(
        "--env-server-cpus",
        type=float,
        default=1.0,
        help="CPUs each env-server replica reserves on a Ray cluster",
    )
    a(
        "--ray-address",
        default=default_ray_address(),
        help=(
            "Ray dashboard address for job submission (default: $RAY_ADDRESS, else "
            "http://127.0.0.1:8265); a running cluster there is used as it is"
        ),
    )
    a("--python", default="python3", help="python that runs slime's driver on the Ray cluster")
    a(
        "--db",
        default="runs/trajectories.db",
        help="trajectory store of the env servers run.sh starts",
    )
    a("--dry-run", action="store_true", help="print the commands and environment; run nothing")
    opts = ap.parse_args(argv)
    return opts, extra


def global_batch_size(rollout_batch_size: int, n_samples: int, steps_per_rollout: int) -> int:
    """Samples per optimizer step: every sample of a rollout is used once per rollout."""
    total = rollout_batch_size * n_samples
    if steps_per_rollout < 1 or total % steps_per_rollout:
        raise LaunchError(
            f"rollout batch {rollout_batch_size} x n-samples {n_samples} = {total} samples "
            f"is not divisible by --steps-per-rollout {steps_per_rollout}"
        )
    return total // steps_per_rollout


def model_args_script(slime_path: Path, model: str) -> Path | None:
    """slime's scripts/models/<name>.sh for a model id or path (matched case-insensitively)."""
    name = Path(model.rstrip("/")).name.lower()
    models = slime_path / "scripts" / "models"
    if not models.is_dir():
        return None
    for script in sorted(models.glob("*.sh")):
        if script.stem.lower() == name:
            return script
    return None


def read_model_args(script: Path) -> list[str]:
    """The MODEL_ARGS array a slime model script defines, read by sourcing it in bash."""
    cmd = 'source "$1" >/dev/null && printf "%s\\0" "${MODEL_ARGS[@]}"'
    out = subprocess.run(
        ["bash", "-c", cmd, "bash", str(script)], capture_output=True, text=True, timeout=30
    )
    if out.returncode != 0:
        raise LaunchError(
            f"{script}: could not read MODEL_ARGS: "
            f"{out.stderr.strip().splitlines()[-1:] or out.returncode}"
        )
    args = [x for x in out.stdout.split("\0") if x]
    if not args:
        raise LaunchError(f"{script}: defines no MODEL_ARGS array")
    return args


def resolve_model_args(opts: argparse.Namespace, slime_path: Path | None) -> tuple[list[str], str]:
    """Megatron model flags and where they came from; ([], reason) when they cannot be found yet."""
    if opts.model_args:
        p = Path(opts.model_args)
        if p.is_file():
            return read_model_args(p), str(p)
        return shlex.split(opts.model_args), "--model-args"
    if slime_path is None:
        return [], "unknown until a slime checkout is found"
    script = model_args_script(slime_path, opts.model)
    if script is None:
        known = sorted(s.stem for s in (slime_path / "scripts" / "models").glob("*.sh"))
        raise LaunchError(
            f"no Megatron model args for {opts.model!r}: slime's scripts/models has no "
            f"{Path(opts.model).name}.sh; pass --model-args FILE_OR_FLAGS "
            f"(known: {', '.join(known[:12])}{' ...' if len(known) > 12 else ''})"
        )
    return read_model_args(script), str(script)


@dataclass(frozen=True)
class TrainInputs:
    """What build_plan decided that slime's flags depend on."""

    layout: Layout
    load: LoadPlan
    mode: ModePlan
    vendor: GpuVendor
    model_args: list[str]
    eval_data: str | None
    eval_interval: int | None
    wandb_offline: bool
    wandb_group: str


def slime_train_args(opts: argparse.Namespace, t: TrainInputs) -> list[str]:
    """The flags for slime's driver (extra args after `--` not included)."""
    lay = t.layout
    args = [
        "--train-backend",
        opts.train_backend,
        # cluster
        "--actor-num-nodes",
        str(lay.actor_nodes),
        "--actor-num-gpus-per-node",
        str(lay.actor_gpus_per_node),
        "--num-gpus-per-node",
        str(lay.gpus_per_node),
        "--rollout-num-gpus-per-engine",
        str(lay.engine_gpus),
    ]
    if lay.colocate:
        args += ["--colocate", "--sglang-mem-fraction-static", str(opts.mem_fraction)]
        if t.vendor is GpuVendor.AMD:  # slime's AMD guide: no offloading when colocated on ROCm
            args += list(AMD_COLOCATE_FLAGS)
    else:
        args += ["--rollout-num-gpus", str(lay.rollout_gpus)]
    args += t.mode.flags
    if opts.fault_tolerance:
        args += ["--use-fault-tolerance"]
    # checkpoints
    args += ["--hf-checkpoint", opts.model, "--load", t.load.load, "--ref-load", t.load.ref_load]
    if opts.save:  # Megatron asserts a --save-interval whenever --save is given
        args += ["--save", opts.save, "--save-interval", str(opts.save_interval or SAVE_INTERVAL)]
    # data: the bridge renders the prompt itself from the task metadata (no --apply-chat-template)
    args += [
        "--prompt-data",
        str(Path(opts.task_data).resolve()),
        "--input-key",
        "prompt",
        "--label-key",
        "label",
        "--metadata-key",
        "metadata",
        "--tool-key",
        "tools",
        "--rollout-shuffle",
    ]
    if opts.num_rollout is not None:
        args += ["--num-rollout", str(opts.num_rollout)]
    else:
        args += ["--num-epoch", "1"]
    # rollout: the bridge is the generate function, it sets the reward itself (no --rm-type)
    args += [
        "--custom-generate-function-path",
        GENERATE_HOOK,
        "--custom-rollout-log-function-path",
        ROLLOUT_LOG_HOOK,
        "--custom-eval-rollout-log-function-path",
        EVAL_LOG_HOOK,
        "--dynamic-sampling-filter-path",
        INFRA_FILTER_HOOK,
        "--rollout-batch-size",
        str(opts.rollout_batch_size),
        "--n-samples-per-prompt",
        str(opts.n_samples),
        "--global-batch-size",
        str(global_batch_size(opts.rollout_batch_size, opts.n_samples, opts.steps_per_rollout)),
        "--rollout-max-response-len",
        str(opts.max_response_len),
        "--rollout-temperature",
        str(opts.temperature),
    ]
    if opts.max_context_len is not None:
        args += ["--rollout-max-context-len", str(opts.max_context_len)]
    # eval
    if t.eval_data:
        args += [
            "--eval-prompt-data",
            Path(t.eval_data).stem,
            str(Path(t.eval_data).resolve()),
            "--n-samples-per-eval-prompt",
            "1",
            "--eval-max-response-len",
            str(opts.max_response_len),
            "--eval-interval",
            str(t.eval_interval),
        ]
    # algorithm: GRPO with the clip-higher range, no KL term
    args += ["--advantage-estimator", "grpo", "--eps-clip", "0.2", "--eps-clip-high", "0.28"]
    # optimizer
    args += [
        "--optimizer",
        "adam",
        "--lr",
        repr(opts.lr),
        "--lr-decay-style",
        "constant",
        "--weight-decay",
        "0.1",
        "--adam-beta1",
        "0.9",
        "--adam-beta2",
        "0.98",
    ]
    # batching
    args += ["--use-dynamic-batch-size", "--max-tokens-per-gpu", str(opts.max_tokens_per_gpu)]
    if opts.train_backend == "megatron":
        args += ["--tensor-model-parallel-size", str(opts.tp)]
        if opts.tp > 1:
            args += ["--sequence-parallel"]
        args += [
            "--pipeline-model-parallel-size",
            "1",
            "--context-parallel-size",
            str(opts.cp),
            "--recompute-granularity",
            "full",
            "--recompute-method",
            "uniform",
            "--recompute-num-layers",
            "1",
            "--attention-dropout",
            "0.0",
            "--hidden-dropout",
            "0.0",
            "--accumulate-allreduce-grads-in-fp32",
            "--attention-softmax-in-fp32",
            "--attention-backend",
            "flash",
        ]
        if t.vendor is GpuVendor.AMD:
            args += list(AMD_MEGATRON_FLAGS)
        args += t.model_args
    else:
        args += ["--gradient-checkpointing"]
    # metrics
    if not opts.no_wandb:
        args += [
            "--use-wandb",
            "--wandb-project",
            opts.wandb_project,
            "--wandb-group",
            t.wandb_group,
        ]
        if t.wandb_offline:
            args += ["--wandb-mode", "offline"]
    return args


def emitted_flags(args: list[str]) -> list[str]:
    return [a for a in args if a.startswith("--")]


def unknown_flags(args: list[str], known: set[str]) -> list[str]:
    """Flags in `args` that are not in `known` (slime would ignore them silently)."""
    return sorted({f for f in emitted_flags(args) if f not in known})


@dataclass
class LaunchPlan:
    """Everything `execute` does, in order; `--dry-run` prints it."""

    checks: list[pre.Check]
    notes: list[str]
    env_plan: EnvServerPlan | None
    """None: hosted envs only."""
    ray_start_cmd: list[str] | None
    """`ray start --head --block ...` run.sh runs here; None: a Ray cluster answers at
    ray_address."""
    ray_address: str
    slime_dir: Path
    job_wrapper: list[str]
    """Runs before the driver in the job (tools.launch.ray_job starting replicas on Ray), or []."""
    train_cmd: list[str]
    """slime's driver and its flags."""
    train_script_path: Path
    submit_cmd: list[str]
    submission_id: str
    job_env: dict[str, str]
    """The Ray job's runtime_env env_vars."""
    secret_env: list[str] = field(default_factory=list)
    """Keys in job_env whose values are secrets (masked in the dry run)."""
    config_override: dict | None = None
    """Written to job_env[TRAIN_CONFIG] before the job when --env-server or extra replicas
    change the config's env_server."""
    ray_start_env: dict[str, str] = field(default_factory=dict)
    """Extra environment of the Ray head run.sh starts (ROCm)."""

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def env_servers(self) -> list[tuple[str, list[str]]]:
        """(url, command) of each env server run.sh starts on this machine."""
        return self.env_plan.commands if self.env_plan is not None else []

    @property
    def env_server_url(self) -> str | None:
        if self.env_plan is None:
            return None
        return self.env_plan.urls[0] if self.env_plan.urls else "(replica 0 on the Ray cluster)"

    @property
    def train_script(self) -> str:
        """The shell script the Ray job runs: every argument quoted once, so nothing is re-split."""
        cmd = [*self.job_wrapper, *self.train_cmd]
        return (
            "#!/usr/bin/env bash\n# Written by run.sh; the Ray job runs it.\nset -e\n"
            f"cd {shlex.quote(str(self.slime_dir))}\nexec " + " \\\n  ".join(_pairs(cmd)) + "\n"
        )


def default_eval_path(task_data: str) -> Path:
    """Where prepare_tasks.py puts the eval rows of `task_data`: eval_<name> beside it."""
    p = Path(task_data)
    return p.with_name("eval_" + p.name)


def _check_options(opts: argparse.Namespace, mode: TrainMode) -> None:
    """Option values slime would refuse or could not train with: one line each, before anything
    runs."""
    if opts.temperature <= 0:
        raise LaunchError(
            f"--temperature {opts.temperature:g}: must be > 0 (slime rejects greedy decoding as an "
            "RL policy)"
        )
    if opts.save_interval is not None and not opts.save:
        raise LaunchError("--save-interval needs --save DIR")
    if mode is TrainMode.SYNC and opts.update_weights_interval is not None:
        raise LaunchError(
            "--update-weights-interval only applies to --mode async/fully-async "
            "(sync updates the weights after every rollout)"
        )
    for name in ("tp", "cp", "env_servers", "rollout_tp", "actor_gpus", "rollout_gpus"):
        value = getattr(opts, name)
        if value is not None and value < 1:
            raise LaunchError(f"--{name.replace('_', '-')} must be >= 1")
    if opts.env_server_cpus <= 0:
        raise LaunchError("--env-server-cpus must be > 0")
    if opts.cp > 1 and opts.train_backend != "megatron":
        raise LaunchError("--cp (context parallelism) needs --train-backend megatron")
    budget = opts.max_tokens_per_gpu * opts.cp
    flag, tokens = (
        ("--max-context-len", opts.max_context_len)
        if opts.max_context_len is not None
        else ("--max-response-len", opts.max_response_len)
    )
    if tokens > budget:
        cp_hint = (
            f" or --cp {math.ceil(tokens / opts.max_tokens_per_gpu)}"
            if opts.train_backend == "megatron"
            else ""
        )
        raise LaunchError(
            f"{flag} {tokens} exceeds --max-tokens-per-gpu {opts.max_tokens_per_gpu}"
            + (f" x --cp {opts.cp}" if opts.cp > 1 else "")
            + f": one episode must fit a GPU's micro batch; pass --max-tokens-per-gpu {tokens}"
            + cp_hint
        )


def _plan_eval(
    opts: argparse.Namespace, checks: list[pre.Check], notes: list[str]
) -> tuple[str | None, int | None]:
    """The eval file and interval: --eval-data, else the prepared eval file when it exists."""
    if opts.no_eval:
        if opts.eval_data or opts.eval_interval is not None:
            raise LaunchError("--no-eval contradicts --eval-data/--eval-interval: drop one")
        return None, None
    data = opts.eval_data
    interval = opts.eval_interval or DEFAULT_EVAL_INTERVAL
    if data:
        checks.append(pre.check_task_file(data, opts.config, "eval task file", "--eval-output"))
    else:
        default = default_eval_path(opts.task_data)
        if default.is_file() and default.stat().st_size > 0:
            data = str(default)
            notes.append(
                f"eval: {default} every {interval} rollouts (prepared by prepare_tasks.py; "
                "--no-eval skips it)"
            )
        elif opts.eval_interval is not None:
            raise LaunchError(
                f"--eval-interval needs --eval-data FILE, or {default} (python prepare_tasks.py "
                f"--config {opts.config} --output {opts.task_data} writes it)"
            )
    return (data, interval) if data else (None, None)


def _read_cluster(
    opts: argparse.Namespace, probe: bool, gpus: int | None, checks: list[pre.Check]
) -> tuple[str, bool, ClusterView | None]:
    """The Ray dashboard address, whether a cluster answers there, and the machines to plan for."""
    try:
        address = check_ray_address(opts.ray_address)
    except ClusterError as e:
        raise LaunchError(str(e)) from None
    if probe and ray_dashboard_up(address):
        try:
            view = read_ray_cluster(address)
        except ClusterError as e:
            checks.append(
                pre.Check("Ray cluster", False, str(e), f"ray status (on {address}'s head)")
            )
            return address, True, None
        checks.append(pre.Check("Ray cluster", True, f"running at {address}: {view.describe()}"))
        return address, True, view
    if not is_loopback(address):
        checks.append(
            pre.Check(
                "Ray cluster",
                False,
                f"nothing answers at {address}",
                "start it (ray start --head on its head node) or pass the --ray-address of a "
                "running one; without --ray-address run.sh starts Ray on this machine",
            )
        )
    if gpus is not None or not probe:
        local = LocalGpus(GpuVendor.NVIDIA, gpus, "the caller") if gpus else None
    else:
        local = detect_local_gpus()
    return address, False, local_view(local)


def _fit_layout(
    opts: argparse.Namespace,
    view: ClusterView | None,
    colocate: bool,
    checks: list[pre.Check],
    notes: list[str],
) -> Layout:
    """The layout for the cluster; a MISSING check (and a best-effort layout to print) when none
    fits."""
    req = LayoutRequest(
        opts.actor_gpus, opts.rollout_gpus, colocate, opts.tp, opts.cp, opts.rollout_tp or opts.tp
    )
    if view is None or not view.gpu_nodes:
        checks.append(pre.check_no_gpus(view.source if view is not None and view.on_ray else None))
        assumed = max(8, (opts.actor_gpus or 0) + (0 if colocate else opts.rollout_gpus or 0))
        notes.append(f"no GPUs found: the plan below assumes one node of {assumed}")
        counts = [assumed]
    else:
        counts = [n.gpus for n in view.gpu_nodes]
        checks.append(pre.Check("GPUs", True, view.describe()))
    try:
        layout = fit_layout(counts, req)
    except LayoutError as e:
        checks.append(pre.Check("GPU layout", False, str(e)))
        actor = opts.actor_gpus or counts[0]
        return Layout(1, actor, opts.rollout_gpus or actor, req.engine_gpus, counts[0], colocate)
    checks.append(pre.Check("GPU layout", True, layout.describe()))
    return layout


def _gpu_vendor(
    opts: argparse.Namespace, view: ClusterView | None, checks: list[pre.Check]
) -> GpuVendor:
    if opts.gpu_vendor != "auto":
        return GpuVendor(opts.gpu_vendor)
    try:
        return (view.vendor if view is not None else None) or GpuVendor.NVIDIA
    except ClusterError as e:
        checks.append(pre.Check("GPU vendor", False, str(e), "pass --gpu-vendor to pick one"))
        return GpuVendor.NVIDIA


def _episodes_in_flight(
    opts: argparse.Namespace, mode: TrainMode, layout: Layout, extra: list[str]
) -> int:
    """Concurrent episodes the job runs: a rollout's samples, or fully-async's pool."""
    if (
        mode is TrainMode.FULLY_ASYNC
    ):  # slime keeps --sglang-server-concurrency per engine in flight
        per_engine = SGLANG_SERVER_CONCURRENCY
        if "--sglang-server-concurrency" in extra:
            i = extra.index("--sglang-server-concurrency")
            with contextlib.suppress(IndexError, ValueError):
                per_engine = int(extra[i + 1])
        return per_engine * layout.engines
    return opts.rollout_batch_size * opts.n_samples


def _plan_env_servers(
    opts: argparse.Namespace,
    cfg: TrainConfig | None,
    on_ray: bool,
    probe: bool,
    episodes: int,
    checks: list[pre.Check],
    notes: list[str],
) -> EnvServerPlan | None:
    """The job's env servers: running ones, replicas on this machine, or replicas on the Ray
    cluster."""
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
        plan = local_plan(opts.config, urls, replicas, opts.db, running)
        # the web UI's token view may load the model's tokenizer, nothing an upload names
        at = 5  # after `python -m envs.server --config FILE`
        plan.commands = [
            (u, [*cmd[:at], "--tokenizer", opts.model, *cmd[at:]]) for u, cmd in plan.commands
        ]
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
    return ray_plan(replicas, opts.env_server_cpus, opts.db)


def _check_cluster_cpus(
    plan: EnvServerPlan, layout: Layout, view: ClusterView | None, checks: list[pre.Check]
) -> None:
    """Ray reserves CPUs: the replicas, one per GPU bundle of slime's placement group, and two
    drivers."""
    if view is None or not view.on_ray:
        return
    need = plan.replicas * plan.cpus + layout.gpus_used + 2
    ok = view.total_cpus >= need
    detail = (
        f"{plan.replicas} replica(s) x {plan.cpus:g} CPU, placed by Ray; replica 0 keeps the "
        f"store {plan.db} on the job's node"
        if ok
        else f"{plan.replicas} replica(s) x {plan.cpus:g} CPU + {layout.gpus_used} GPU bundles "
        f"(1 CPU each) + 2 drivers need {need:g} CPUs, the cluster has {view.total_cpus}"
    )
    checks.append(
        pre.Check(
            "env servers", ok, detail, "" if ok else "lower --env-servers or --env-server-cpus"
        )
    )


def _check_emitted_flags(
    train_args: list[str],
    model_args: list[str],
    backend: str,
    slime_path: Path | None,
    checks: list[pre.Check],
    notes: list[str],
) -> None:
    """Every flag we emit must be one this slime (or Megatron) defines: slime ignores unknown flags
    silently."""
    if slime_path is None:
        notes.append("emitted flags not checked: no slime checkout")
        return
    known = slime_checkout_flags(slime_path) | SGLANG_FLAGS
    if backend == "megatron":
        known |= MEGATRON_FLAGS | set(emitted_flags(model_args))
    bad = unknown_flags(train_args, known)
    if bad:
        checks.append(
            pre.Check(
                "slime flags",
                False,
                f"this slime does not define {', '.join(bad)}; it would ignore them",
                "use a slime version this launcher supports (v0.2.2, v0.3.1, main)",
            )
        )
    else:
        notes.append(
            f"all {len(set(emitted_flags(train_args)))} emitted flags are defined by this "
            "slime/Megatron"
        )


def _job_env(
    pythonpath: list[str],
    train_config: Path,
    cfg: TrainConfig | None,
    environ: dict[str, str],
    use_wandb: bool,
    env_servers_in_job: bool = False,
) -> tuple[dict[str, str], list[str]]:
    """The Ray job's env_vars (project on PYTHONPATH, TRAIN_CONFIG, keys) and which of them are
    secrets; with `env_servers_in_job`, also what the env servers read (they see only this)."""
    env = {
        "PYTHONPATH": ":".join(pythonpath),
        TRAIN_CONFIG_ENV: str(train_config),
        "OPENREWARD_DISABLE_UPDATE_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
        "CUDA_DEVICE_MAX_CONNECTIONS": "1",
    }
    wandb_key = environ.get("WANDB_API_KEY")
    if use_wandb and not wandb_key:
        env["WANDB_MODE"] = "offline"
    if env_servers_in_job:
        env.update({k: environ[k] for k in ENV_SERVER_VARS if environ.get(k)})
    secrets_ = []
    for name in (
        (["WANDB_API_KEY"] if wandb_key else [])
        + (pre.required_api_keys(cfg) if cfg else [])
        + ["ENV_SERVER_API_KEY"]
        + (list(ENV_SERVER_SECRETS) if env_servers_in_job else [])
    ):
        if environ.get(name):
            env[name] = environ[name]
            secrets_.append(name)
    return env, secrets_


def _rocm_env(
    view: ClusterView | None, environ: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """(job env, env of a Ray head run.sh starts) on AMD GPUs, as slime's run-qwen3-4B-amd.sh sets
    them."""
    job = dict(ROCM_JOB_ENV)
    if environ.get("HIP_VISIBLE_DEVICES"):
        job["HIP_VISIBLE_DEVICES"] = environ["HIP_VISIBLE_DEVICES"]
    head = dict(job)
    if "HIP_VISIBLE_DEVICES" not in head and view is not None and view.gpu_nodes:
        head["HIP_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(view.gpu_nodes[0].gpus))
    return job, head


def _ray_head_cmd(
    ray_cmd: str, address: str, view: ClusterView | None, layout: Layout
) -> list[str] | None:
    """`ray start --head --block` for this machine when nothing answers at a loopback address
    (a remote address with nothing behind it is a MISSING check instead)."""
    if not is_loopback(address):
        return None
    gpus = (view.total_gpus if view is not None else 0) or layout.gpus_used
    return [
        ray_cmd,
        "start",
        "--head",
        "--num-gpus",
        str(gpus),
        "--disable-usage-stats",
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(urlparse(address).port or 8265),
        "--block",
    ]


def _job_config(
    opts: argparse.Namespace, cfg: TrainConfig | None, plan: EnvServerPlan | None, job: Path
) -> tuple[Path, dict | None, list[str]]:
    """The job's TRAIN_CONFIG, the config run.sh writes there first (None: the user's file as it
    is), and the entrypoint that precedes slime's driver ([] or tools.launch.ray_job, which
    writes TRAIN_CONFIG on the cluster once the replicas have URLs)."""
    config = Path(opts.config).resolve()
    if plan is not None and plan.placement is Placement.RAY:
        wrapper = [opts.python, "-m", "tools.launch.ray_job", "--replicas", str(plan.replicas)]
        wrapper += ["--cpus", f"{plan.cpus:g}", "--config", str(config), "--db", plan.db]
        wrapper += ["--job-config", str(job.with_suffix(".yaml")), "--"]
        return job.with_suffix(".yaml"), None, wrapper
    if plan is not None and cfg is not None and plan.urls != cfg.env_server_urls:
        return job.with_suffix(".yaml"), _config_with_env_server(cfg, plan.urls), []
    return config, None, []


def build_plan(
    opts: argparse.Namespace,
    extra: list[str],
    environ: dict[str, str] | None = None,
    gpus: int | None = None,
    probe: bool = True,
) -> LaunchPlan:
    """Check prerequisites and decide every command. `gpus`/`probe` let tests fix the machine
    state."""
    environ = dict(os.environ if environ is None else environ)
    checks: list[pre.Check] = []
    notes: list[str] = []
    mode = TrainMode(opts.mode)
    try:
        colocate = resolve_colocate(mode, opts.colocate)
    except ModeError as e:
        raise LaunchError(str(e)) from None
    _check_options(opts, mode)
    try:
        load = plan_load(opts.model, opts.load, opts.save, opts.resume)
    except ResumeError as e:
        raise LaunchError(str(e)) from None
    if load.note:
        notes.append(load.note)

    cfg_check, cfg = pre.check_config(opts.config)
    checks.append(cfg_check)
    checks.append(pre.check_task_file(opts.task_data, opts.config))
    eval_data, eval_interval = _plan_eval(opts, checks, notes)
    if cfg is not None:
        checks.append(pre.check_api_keys(cfg, environ))

    slime = pre.check_slime(opts.slime_path)
    checks.append(slime)
    slime_path = Path(opts.slime_path).resolve() if slime.ok else None
    backend_ok = True
    if slime_path is not None:
        backend = pre.check_train_backend(
            opts.train_backend, supported_train_backends(slime_path), str(slime_path)
        )
        checks.append(backend)
        backend_ok = backend.ok
    megatron_path: Path | None = None
    if opts.train_backend == "megatron":
        meg = pre.check_megatron(opts.megatron_path)
        checks.append(meg)
        if meg.ok and opts.megatron_path:
            megatron_path = Path(opts.megatron_path).resolve()
    try:
        modes = mode_plan(mode, slime_path, opts.update_weights_interval)
    except ModeError as e:
        checks.append(pre.Check("training mode", False, str(e)))
        modes = ModePlan("train_async.py")

    ray_address, cluster_up, view = _read_cluster(opts, probe, gpus, checks)
    layout = _fit_layout(opts, view, colocate, checks, notes)
    vendor = _gpu_vendor(opts, view, checks)
    checks.append(pre.check_checkpoint(load.load, opts.model, from_load=load.load != opts.model))
    checks.append(pre.check_ray())
    ray_cmd = pre.ray_executable() or "ray"

    model_args: list[str] = []
    if opts.train_backend == "megatron":
        try:
            model_args, source = resolve_model_args(opts, slime_path)
            notes.append(f"Megatron model args: {source}")
        except LaunchError as e:
            checks.append(pre.Check("model args", False, str(e), "pass --model-args"))
            source = None
        if slime_path is not None and Path(load.load).is_dir():
            script = source if source and source.endswith(".sh") else None
            checks.append(pre.check_megatron_weights(load.load, slime_path, script))

    on_ray = cluster_up and view is not None
    env_plan = _plan_env_servers(
        opts, cfg, on_ray, probe, _episodes_in_flight(opts, mode, layout, extra), checks, notes
    )
    if env_plan is not None and env_plan.placement is Placement.RAY:
        _check_cluster_cpus(env_plan, layout, view, checks)

    ray_start = None if cluster_up else _ray_head_cmd(ray_cmd, ray_address, view, layout)
    run_name = cfg.run_name if cfg is not None else "slime-envs"
    train_args = slime_train_args(
        opts,
        TrainInputs(
            layout=layout,
            load=load,
            mode=modes,
            vendor=vendor,
            model_args=model_args,
            eval_data=eval_data,
            eval_interval=eval_interval,
            wandb_offline=not environ.get("WANDB_API_KEY"),
            wandb_group=opts.wandb_group or run_name,
        ),
    )
    if backend_ok:  # flags of an unsupported backend are moot
        _check_emitted_flags(train_args, model_args, opts.train_backend, slime_path, checks, notes)

    sid = f"slime-envs-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_dir = PROJECT_ROOT / "runs" / run_name
    train_config, config_override, job_wrapper = _job_config(opts, cfg, env_plan, run_dir / sid)
    if job_wrapper:  # replicas on a cluster network: guarded by a key of this job's
        environ.setdefault("ENV_SERVER_API_KEY", secrets.token_urlsafe(24))
    pythonpath = [str(PROJECT_ROOT)] + ([str(megatron_path)] if megatron_path else [])
    job_env, secret_env = _job_env(
        pythonpath + modes.pythonpath,
        train_config,
        cfg,
        environ,
        use_wandb=not opts.no_wandb,
        env_servers_in_job=bool(job_wrapper),
    )
    ray_start_env: dict[str, str] = {}
    if vendor is GpuVendor.AMD:
        rocm_job, ray_start_env = _rocm_env(view, environ)
        job_env.update(rocm_job)
        notes.append("AMD GPUs: ROCm environment and flags as slime's scripts/run-qwen3-4B-amd.sh")

    slime_dir = slime_path or Path("${SLIME_PATH}")
    train_cmd = [opts.python, str(slime_dir / modes.driver), *train_args, *extra]
    script_path = run_dir / f"{sid}.sh"
    submit = [
        ray_cmd,
        "job",
        "submit",
        "--address",
        ray_address,
        "--submission-id",
        sid,
        "--runtime-env-json",
        json.dumps({"env_vars": job_env}),
        "--",
        "bash",
        str(script_path),
    ]
    if extra:
        notes.append(f"passed to slime unchanged: {shlex.join(extra)}")
    return LaunchPlan(
        checks=checks,
        notes=notes,
        env_plan=env_plan,
        ray_start_cmd=ray_start,
        ray_address=ray_address,
        slime_dir=slime_dir,
        job_wrapper=job_wrapper,
        train_cmd=train_cmd,
        train_script_path=script_path,
        submit_cmd=submit,
        submission_id=sid,
        job_env=job_env,
        secret_env=secret_env,
        config_override=config_override,
        ray_start_env=ray_start_env,
    )


def _pairs(cmd: list[str]) -> list[str]:
    """Shell-quoted command, one `--flag value...` per line for reading."""
    lines: list[str] = []
    for tok in cmd:
        q = shlex.quote(tok)
        if tok.startswith("--") or not lines:
            lines.append(q)
        else:
            lines[-1] += " " + q
    return lines


def _config_with_env_server(cfg: TrainConfig, urls: list[str]) -> dict:
    data = cfg.model_dump(mode="json")
    data["env_server"] = urls[0] if len(urls) == 1 else urls
    return data


def _masked(plan: LaunchPlan, env: dict[str, str]) -> dict[str, str]:
    return {k: ("***" if k in plan.secret_env else v) for k, v in env.items()}


def format_plan(plan: LaunchPlan) -> str:
    """The dry-run text: prerequisites, environment, and every command in order."""
    out = ["# prerequisites"] + [c.line() for c in plan.checks]
    out += [f"# note: {n}" for n in plan.notes]
    out.append("# Ray job environment (runtime_env env_vars)")
    out += [f"export {k}={shlex.quote(v)}" for k, v in _masked(plan, plan.job_env).items()]
    out.append("# commands")
    if plan.config_override is not None:
        urls = plan.env_plan.urls if plan.env_plan is not None else []
        out.append(
            f"# write {plan.job_env[TRAIN_CONFIG_ENV]} (the config with env_server: "
            f"{', '.join(urls)})"
        )
    for url, cmd in plan.env_servers:
        out.append(shlex.join(cmd) + " &   # stopped on exit")
        out.append(f"# wait for {url}/health")
    if plan.env_plan is not None and plan.env_plan.placement is Placement.RAY:
        out.append(
            f"# on the Ray cluster, the job's entrypoint starts {plan.env_plan.replicas} "
            "env-server "
            f"replica(s) as Ray actors ({plan.env_plan.cpus:g} CPU each; replica 0 keeps the store "
            f"{plan.env_plan.db}), writes their URLs to {plan.job_env[TRAIN_CONFIG_ENV]}, and "
            "stops them when the job ends"
        )
    if plan.ray_start_cmd:
        env = "".join(f"{k}={shlex.quote(v)} " for k, v in plan.ray_start_env.items())
        out.append(env + shlex.join(plan.ray_start_cmd) + " &   # stopped on exit")
    out.append(f"# write {plan.train_script_path}:")
    out += ["    " + line for line in plan.train_script.splitlines()]
    masked_submit = list(plan.submit_cmd)
    i = masked_submit.index("--runtime-env-json") + 1
    masked_submit[i] = json.dumps({"env_vars": _masked(plan, plan.job_env)})
    out.append(shlex.join(masked_submit))
    return "\n".join(out)


def _stop_job(plan: LaunchPlan) -> None:
    try:
        subprocess.run(
            [plan.submit_cmd[0], "job", "stop", "--address", plan.ray_address, plan.submission_id],
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"run.sh: could not stop Ray job {plan.submission_id}: {e}", file=sys.stderr)


@contextlib.contextmanager
def _ray_head(plan: LaunchPlan):
    """`ray start --head --block` in the background until the dashboard answers; stopped on exit
    (only this head: never `ray stop`, which stops every Ray on the machine)."""
    assert plan.ray_start_cmd is not None
    print(f"run.sh: starting Ray head: {shlex.join(plan.ray_start_cmd)}", flush=True)
    proc = subprocess.Popen(
        plan.ray_start_cmd, env={**os.environ, **plan.ray_start_env}, start_new_session=True
    )
    try:
        deadline = time.monotonic() + RAY_HEAD_TIMEOUT
        while not ray_dashboard_up(plan.ray_address):
            if proc.poll() is not None:
                raise ServiceError(f"ray start exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                raise ServiceError(f"Ray's dashboard did not answer at {plan.ray_address}")
            time.sleep(0.5)
        yield proc
    finally:
        stop(proc, timeout=60)
        print("run.sh: Ray head stopped", flush=True)


def execute(plan: LaunchPlan) -> int:
    """Run the plan; stop the env servers and the Ray head it started, also on Ctrl-C/SIGTERM."""

    def _term(signum, frame):  # SIGTERM takes the same cleanup path as Ctrl-C
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _term)
    try:
        with contextlib.ExitStack() as stack:
            if plan.config_override is not None:
                p = Path(plan.job_env[TRAIN_CONFIG_ENV])
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(yaml.safe_dump(plan.config_override, sort_keys=False))
            for url, cmd in plan.env_servers:
                print(f"run.sh: starting env server: {shlex.join(cmd)}", flush=True)
                Path(cmd[cmd.index("--db") + 1]).parent.mkdir(parents=True, exist_ok=True)
                stack.enter_context(managed_process("env server", cmd, url))
                stack.callback(print, f"run.sh: env server {url} stopped", flush=True)
                print(f"run.sh: env server up at {url}", flush=True)
            if plan.ray_start_cmd:
                stack.enter_context(_ray_head(plan))
            plan.train_script_path.parent.mkdir(parents=True, exist_ok=True)
            plan.train_script_path.write_text(plan.train_script)
            print(f"run.sh: submitting Ray job {plan.submission_id}", flush=True)
            try:
                return subprocess.run(plan.submit_cmd).returncode
            except KeyboardInterrupt:
                if not plan.ray_start_cmd:  # a cluster we did not start keeps running: stop our job
                    _stop_job(plan)
                raise
    except KeyboardInterrupt:
        print("run.sh: interrupted; stopped what it started", file=sys.stderr)
        return 130
    except subprocess.CalledProcessError as e:
        print(f"run.sh: {shlex.join(e.cmd)} failed with exit code {e.returncode}", file=sys.stderr)
        return 1
    except ServiceError as e:
        print(f"run.sh: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    opts, extra = parse_options(sys.argv[1:] if argv is None else argv)
    try:
        plan = build_plan(opts, extra)
    except LaunchError as e:
        print(f"run.sh: {e}", file=sys.stderr)
        return 2
    if opts.dry_run:
        print(format_plan(plan))
        return 0
    if not plan.ok:
        for c in plan.checks:
            if not c.ok:
                print(f"run.sh: {c.line()}", file=sys.stderr)
        return 2
    return execute(plan)
