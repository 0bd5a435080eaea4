"""The flags run.sh gives slime's driver, assembled from the options and the plan's decisions.

Every flag emitted here must be one the slime checkout (or the Megatron parser it wraps)
defines: slime ignores unknown flags silently, so `check_emitted_flags` reads the checkout's
own argument definitions and names any flag it lacks.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from pathlib import Path

from tools.errors import LaunchError
from tools.launch import prerequisites as pre
from tools.launch.cli import SAVE_INTERVAL
from tools.launch.gpus import AMD_COLOCATE_FLAGS, AMD_MEGATRON_FLAGS, GpuVendor
from tools.launch.layout import Layout
from tools.launch.modes import ModePlan
from tools.launch.resume import LoadPlan
from tools.launch.slime_flags import SGLANG_FLAGS, slime_checkout_flags

GENERATE_HOOK = "bridge.generate.generate"
ROLLOUT_LOG_HOOK = "bridge.metrics.log_rollout"
EVAL_LOG_HOOK = "bridge.metrics.log_eval_rollout"
# Groups with an episode lost to the env/network/engine are dropped and refilled
# (bridge/filters.py); a user's own --dynamic-sampling-filter-path after `--` replaces it (chain it
# via $BRIDGE_NEXT_DYNAMIC_FILTER instead).
INFRA_FILTER_HOOK = "bridge.filters.drop_infra_failures"

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


@dataclass(frozen=True)
class TrainInputs:
    """What build_plan decided that slime's flags depend on."""

    layout: Layout
    load: LoadPlan
    mode: ModePlan
    vendor: GpuVendor
    model_args: list[str]
    eval_data: list[str]
    """Absolute paths of the eval files ([]: no eval)."""
    eval_interval: int | None
    wandb_offline: bool
    wandb_group: str
    engine_addrs: tuple[str, ...] = ()
    """--engine-addrs: engines that already run (slime launches none)."""
    no_train: tuple[str, ...] = ()
    """tools.launch.no_train's flags: --debug-rollout-only, the dumps, the resumed rollout id."""


def global_batch_size(rollout_batch_size: int, n_samples: int, steps_per_rollout: int) -> int:
    """Samples per optimizer step: every sample of a rollout is used once per rollout."""
    total = rollout_batch_size * n_samples
    if steps_per_rollout < 1 or total % steps_per_rollout:
        raise LaunchError(
            f"rollout batch {rollout_batch_size} x n-samples {n_samples} = {total} samples "
            f"is not divisible by --steps-per-rollout {steps_per_rollout}"
        )
    return total // steps_per_rollout


def slime_train_args(opts: argparse.Namespace, t: TrainInputs) -> list[str]:
    """The flags for slime's driver (extra args after `--` not included)."""
    return [
        "--train-backend",
        opts.train_backend,
        *_cluster_flags(opts, t),
        *t.mode.flags,
        *(["--use-fault-tolerance"] if opts.fault_tolerance else []),
        *_checkpoint_flags(opts, t.load),
        *_data_flags(opts),
        *_rollout_flags(opts),
        *_eval_flags(opts, t),
        # algorithm: GRPO with the clip-higher range, no KL term
        *t.no_train,
        *["--advantage-estimator", "grpo", "--eps-clip", "0.2", "--eps-clip-high", "0.28"],
        *_optimizer_flags(opts),
        *_backend_flags(opts, t),
        *_wandb_flags(opts, t),
    ]


def _cluster_flags(opts: argparse.Namespace, t: TrainInputs) -> list[str]:
    """The layout: actor nodes x GPUs, engines, colocated or split."""
    lay = t.layout
    args = [
        "--actor-num-nodes",
        str(lay.actor_nodes),
        "--actor-num-gpus-per-node",
        str(lay.actor_gpus_per_node),
        "--num-gpus-per-node",
        str(lay.gpus_per_node),
        "--rollout-num-gpus-per-engine",
        str(lay.engine_gpus),
    ]
    if t.engine_addrs:  # slime launches no engine: it reads theirs (/server_info)
        args += ["--rollout-external-engine-addrs", *t.engine_addrs]
    elif lay.colocate:
        args += ["--colocate", "--sglang-mem-fraction-static", str(opts.mem_fraction)]
        if t.vendor is GpuVendor.AMD:  # slime's AMD guide: no offloading when colocated on ROCm
            args += list(AMD_COLOCATE_FLAGS)
    else:
        args += ["--rollout-num-gpus", str(lay.rollout_gpus)]
    return args


def _checkpoint_flags(opts: argparse.Namespace, load: LoadPlan) -> list[str]:
    args = ["--hf-checkpoint", opts.model, "--load", load.load, "--ref-load", load.ref_load]
    if opts.save:  # Megatron asserts a --save-interval whenever --save is given
        args += ["--save", opts.save, "--save-interval", str(opts.save_interval or SAVE_INTERVAL)]
    return args


def _data_flags(opts: argparse.Namespace) -> list[str]:
    """The task rows: the bridge renders the prompt itself from the metadata (no
    --apply-chat-template)."""
    args = [
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
        return [*args, "--num-rollout", str(opts.num_rollout)]
    return [*args, "--num-epoch", "1"]


def _rollout_flags(opts: argparse.Namespace) -> list[str]:
    """The bridge is the generate function and sets the reward itself (no --rm-type)."""
    args = [
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
    return args


def _eval_flags(opts: argparse.Namespace, t: TrainInputs) -> list[str]:
    """Each eval file as slime's NAME PATH pair (its stem; numbered when two share one)."""
    if not t.eval_data:
        return []
    pairs: list[str] = []
    names: set[str] = set()
    for i, path in enumerate(t.eval_data):
        name = Path(path).stem
        name = name if name not in names else f"{name}_{i}"
        names.add(name)
        pairs += [name, path]
    return [
        "--eval-prompt-data",
        *pairs,
        "--n-samples-per-eval-prompt",
        "1",
        "--eval-max-response-len",
        str(opts.max_response_len),
        "--eval-interval",
        str(t.eval_interval),
        *t.mode.eval_flags,
    ]


def _optimizer_flags(opts: argparse.Namespace) -> list[str]:
    """Adam as slime's Qwen3-4B recipes, constant schedule; dynamic batches."""
    return [
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
        "--use-dynamic-batch-size",
        "--max-tokens-per-gpu",
        str(opts.max_tokens_per_gpu),
    ]


def _backend_flags(opts: argparse.Namespace, t: TrainInputs) -> list[str]:
    """Megatron's parallelism, recompute and kernels, then the model's own flags; FSDP's
    checkpointing."""
    if opts.train_backend != "megatron":
        return ["--gradient-checkpointing"]
    args = ["--tensor-model-parallel-size", str(opts.tp)]
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
    return args + t.model_args


def _wandb_flags(opts: argparse.Namespace, t: TrainInputs) -> list[str]:
    """W&B under the group as given: slime's random group suffix calls wandb.util.generate_id,
    which wandb 0.31 no longer has (every launch died in slime's init_tracking)."""
    if opts.no_wandb:
        return []
    args = ["--use-wandb", "--wandb-project", opts.wandb_project, "--wandb-group", t.wandb_group]
    args.append("--disable-wandb-random-suffix")
    return args + (["--wandb-mode", "offline"] if t.wandb_offline else [])


# Passed on as given even though run.sh emits it too: composing a user's dynamic filter with the
# bridge's is the bridge's filter work (issue 21 item 3), not a replacement.
AS_GIVEN = frozenset({"--dynamic-sampling-filter-path"})


def take_overrides(
    args: list[str], extra: list[str], decided: list[str]
) -> tuple[list[str], list[str]]:
    """(`args` without each flag, and its values, that `extra` gives again; those flags as
    run.sh would have given them). The user's value replaces run.sh's instead of overriding it
    unseen; LaunchError for a flag in `decided` (set by the mode)."""
    given = {t.split("=", 1)[0] for t in extra if t.startswith("--")}
    for flag in emitted_flags(decided):
        if flag in given:
            raise LaunchError(
                f"{flag} after `--`: run.sh's --mode sets it ({shlex.join(decided)}); drop it, "
                "or pick the --mode whose driver you want"
            )
    kept: list[str] = []
    replaced: list[str] = []
    i = 0
    while i < len(args):
        end = i + 1
        while end < len(args) and not args[end].startswith("--"):
            end += 1
        if args[i] in given and args[i] not in AS_GIVEN:
            replaced.append(shlex.join(args[i:end]))
        else:
            kept += args[i:end]
        i = end
    return kept, replaced


def emitted_flags(args: list[str]) -> list[str]:
    return [a for a in args if a.startswith("--")]


def unknown_flags(args: list[str], known: set[str]) -> list[str]:
    """Flags in `args` that are not in `known` (slime would ignore them silently)."""
    return sorted({f for f in emitted_flags(args) if f not in known})


def check_emitted_flags(
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
