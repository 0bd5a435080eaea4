"""run.sh's command line: the options, their defaults, and the values refused before anything is
planned.

`parse_options` splits off the arguments after `--` (for slime's driver), takes from them the
slime flags run.sh has options for (`tools.launch.slime_names`), and parses the rest;
`check_options` refuses, one line each, values slime would refuse or could not train with.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from typing import Any

from tools.errors import LaunchError
from tools.launch.cluster import default_ray_address
from tools.launch.env_servers import MAX_DEFAULT_REPLICAS
from tools.launch.gpus import GpuVendor
from tools.launch.modes import TrainMode
from tools.launch.slime_names import aliases, take_run_sh_settings

# Learning rate: slime's own Qwen3-4B recipes (scripts/run-qwen3-4B.sh and its AMD twin) train
# with Adam at 1e-6, constant schedule, no KL term: the optimizer settings run.sh emits. The
# public OpenReward example uses 1e-5, ten times the step this setup was tuned with; we keep
# the tested value (README: "Learning rate").
DEFAULT_LR = 1e-6
# Evaluate every N rollouts when an eval file is used, and save every N rollouts when --save is
# given without --save-interval (slime's Qwen3-4B scripts use 20 for both).
DEFAULT_EVAL_INTERVAL = 20
SAVE_INTERVAL = 20

AddArgument = Callable[..., Any]
"""`ArgumentParser.add_argument` of the parser being built."""


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
    """run.sh's options, and the arguments after `--` left for slime. slime's own names of
    run.sh's options are taken as those options, before `--` or after it; LaunchError when a
    setting is given twice or after `--` names one run.sh decides."""
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    taken, extra = take_run_sh_settings(extra)
    ap = _parser()
    _refuse_settings_given_twice(ap, argv, taken)
    opts = ap.parse_args([*argv, *taken])
    opts.taken_from_slime_args = taken
    return opts, extra


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bash run.sh",
        description="Train a model with slime on the environments in train_config.yaml.",
        epilog=(
            "Everything after `--` is passed to slime's driver, except slime's own names of "
            "the options above (--rollout-temperature, --hf-checkpoint, ...: taken as those "
            "options and checked) and the flags run.sh decides itself (the layout, the bridge's "
            "hooks: refused). Exit codes: 2 when an option is refused or a prerequisite is "
            "MISSING (--dry-run too), else slime's. "
            "Rollout-only mode (no training, no GPU needed): bash run.sh --rollout-only --help. "
            "Evaluate and compare models: bash run.sh --eval-only --help"
        ),
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )

    def add(*names: str, **kwargs: Any) -> None:
        ap.add_argument(*names, *(s for n in names for s in aliases(n)), **kwargs)

    for group in (
        _add_inputs,
        _add_training,
        _add_no_train,
        _add_gpus,
        _add_checkpoints,
        _add_metrics,
        _add_checkouts,
        _add_services,
    ):
        group(add)
    return ap


def _refuse_settings_given_twice(
    ap: argparse.ArgumentParser, argv: list[str], taken: list[str]
) -> None:
    """One value per setting: refused when two names of one option are both given, or an option
    is given before `--` and again after it (the same name twice before `--` is argparse's
    usual last-wins)."""
    seen: dict[str, tuple[str, bool, str]] = {}  # dest -> (name, after `--`, as given)
    for tokens, after in ((argv, False), (taken, True)):
        for i, token in enumerate(tokens):
            name, _, inline = token.partition("=")
            action = ap._option_string_actions.get(name) if token.startswith("--") else None
            if action is None:
                continue
            value = inline or (tokens[i + 1] if action.nargs != 0 and i + 1 < len(tokens) else "")
            said = " ".join(filter(None, [name, value, "after `--`" if after else ""]))
            if action.dest not in seen:
                seen[action.dest] = (name, after, said)
                continue
            first_name, first_after, first_said = seen[action.dest]
            if first_name == name and not (first_after or after):
                continue
            raise LaunchError(
                f"{first_said} and {said} set the same option ({action.option_strings[0]}): "
                "give it once"
            )


def _add_inputs(a: AddArgument) -> None:
    """The model, the config, the task and eval data, the training mode."""
    a(
        "--model",
        default="Qwen/Qwen3-4B",
        help=(
            "Hugging Face checkpoint: a local directory, or a Hub id (from the local Hugging Face "
            "cache, else downloaded before the job): tokenizer, SGLang weights, base weights"
        ),
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
        action="append",
        default=None,
        help=(
            "eval prompts, repeatable (default: eval_<task-data name> beside --task-data when it "
            "exists, as prepare_tasks.py writes it)"
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


def _add_training(a: AddArgument) -> None:
    """Rollout and optimizer settings."""
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


def _add_no_train(a: AddArgument) -> None:
    """Runs without training, engines that already run, slime's rollout dumps."""
    a(
        "--no-train",
        action="store_true",
        help=(
            "slime's driver with --debug-rollout-only: its rollouts, eval, trajectories and W&B, "
            "no training; with --engine-addrs it needs no GPU (the whole loop on a CPU machine)"
        ),
    )
    a(
        "--engine-addrs",
        default=None,
        metavar="HOST:PORT[,HOST:PORT...]",
        help=(
            "SGLang engines that already run (slime's --rollout-external-engine-addrs): no "
            "rollout GPUs are planned; each must answer /server_info"
        ),
    )
    a(
        "--dump-rollouts",
        default=None,
        metavar="DIR",
        help=(
            "save slime's per-rollout samples (--save-debug-rollout-data): "
            "DIR/rollout_<id>.pt and DIR/rollout_eval_<id>.pt"
        ),
    )


def _add_gpus(a: AddArgument) -> None:
    """The GPU layout, the engines and their fault tolerance."""
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


def _add_checkpoints(a: AddArgument) -> None:
    """Where to load from and save to, and resuming."""
    a(
        "--load",
        default=None,
        help=(
            "checkpoint to start from (default: the one in --save when there is one, else --model)"
        ),
    )
    a(
        "--ref-load",
        default=None,
        help="reference weights (default: the base weights, --load's or --model's)",
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


def _add_metrics(a: AddArgument) -> None:
    """W&B."""
    a(
        "--wandb-project",
        default="slime-envs",
        help="W&B project (offline when WANDB_API_KEY is unset)",
    )
    a("--wandb-group", default=None, help="W&B group (default: the config's run_name)")
    a("--no-wandb", action="store_true", help="do not log to W&B")


def _add_checkouts(a: AddArgument) -> None:
    """slime, Megatron-LM and the model's Megatron flags."""
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


def _add_services(a: AddArgument) -> None:
    """The env servers, Ray, and the dry run."""
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
    a(
        "--dry-run",
        action="store_true",
        help=(
            "print the prerequisites, the commands and the environment; run nothing (exit 2 "
            "when a prerequisite is MISSING)"
        ),
    )


# Counts that must be >= 1 when given, and floats with their allowed (low, high] range.
_COUNTS = (
    "n_samples",
    "rollout_batch_size",
    "steps_per_rollout",
    "num_rollout",
    "max_response_len",
    "max_context_len",
    "max_tokens_per_gpu",
    "eval_interval",
    "save_interval",
    "update_weights_interval",
    "tp",
    "cp",
    "rollout_tp",
    "actor_gpus",
    "rollout_gpus",
    "env_servers",
)
_FLOAT_RANGES: dict[str, tuple[float, float, str]] = {
    "temperature": (0.0, math.inf, "(slime rejects greedy decoding as an RL policy)"),
    "lr": (0.0, 1.0, ""),
    "mem_fraction": (0.0, 1.0, "(a fraction of each GPU's memory)"),
    "env_server_cpus": (0.0, math.inf, ""),
}


def check_options(opts: argparse.Namespace, mode: TrainMode) -> None:
    """Option values slime would refuse or could not train with: one line each, before anything
    runs."""
    _check_numbers(opts)
    if opts.save_interval is not None and not opts.save:
        raise LaunchError("--save-interval needs --save DIR")
    if mode is TrainMode.SYNC and opts.update_weights_interval is not None:
        raise LaunchError(
            "--update-weights-interval only applies to --mode async/fully-async "
            "(sync updates the weights after every rollout)"
        )
    if opts.cp > 1 and opts.train_backend != "megatron":
        raise LaunchError("--cp (context parallelism) needs --train-backend megatron")
    _check_token_budget(opts)


def _check_numbers(opts: argparse.Namespace) -> None:
    """Counts >= 1; floats finite and in range (NaN compares false with everything, so each
    bound is checked as what it must be)."""
    for name in _COUNTS:
        value = getattr(opts, name)
        if value is not None and value < 1:
            raise LaunchError(f"--{name.replace('_', '-')} {value}: must be >= 1")
    for name, (low, high, why) in _FLOAT_RANGES.items():
        value = getattr(opts, name)
        if not (math.isfinite(value) and low < value <= high):
            bound = f"> {low:g}" if high == math.inf else f"in ({low:g}, {high:g}]"
            raise LaunchError(
                " ".join(
                    filter(None, [f"--{name.replace('_', '-')} {value:g}: must be", bound, why])
                )
            )


def _check_token_budget(opts: argparse.Namespace) -> None:
    """One episode must fit a GPU's micro batch (--max-tokens-per-gpu x --cp)."""
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
