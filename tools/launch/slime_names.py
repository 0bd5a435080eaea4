"""run.sh's options and slime's own flags for the same settings, and what becomes of slime's
flags given after `--`.

run.sh checks its options before anything runs. A slime flag after `--` for the same setting
would reach slime unchecked and win silently (slime's parser keeps the last value), so after
`--`:

- a slime flag run.sh has an option for (`SLIME_NAMES`: `--rollout-temperature` is
  `--temperature`, `--hf-checkpoint` is `--model`, ...) is taken as that option and checked like
  it; run.sh accepts these names before `--` too. Giving one setting twice (under both names, or
  before and after `--`) is refused;
- a flag run.sh decides with no option of its own (`DECIDED_BY_RUN_SH`: the layout, the
  bridge's hooks and keys, the global batch) is refused, naming the option to use instead;
- any other flag run.sh also emits (the recipe: optimizer, GRPO clip, recompute...) replaces
  run.sh's value (`tools.launch.slime_args.take_overrides`), and the plan says so;
- everything else goes to slime unchanged, the values of slime's path flags (`PATH_FLAGS`)
  made absolute first: the job runs in slime's checkout, not where run.sh was started.
"""

from __future__ import annotations

import os
from pathlib import Path

from tools.errors import LaunchError

# run.sh option -> slime's flag for the same setting (README: "run.sh's options and slime's
# flags"). The options whose name slime shares are in SAME_NAMES.
SLIME_NAMES: dict[str, str] = {
    "--model": "--hf-checkpoint",
    "--task-data": "--prompt-data",
    "--n-samples": "--n-samples-per-prompt",
    "--max-response-len": "--rollout-max-response-len",
    "--max-context-len": "--rollout-max-context-len",
    "--temperature": "--rollout-temperature",
    "--rollout-gpus": "--rollout-num-gpus",
    "--tp": "--tensor-model-parallel-size",
    "--cp": "--context-parallel-size",
    "--rollout-tp": "--rollout-num-gpus-per-engine",
    "--mem-fraction": "--sglang-mem-fraction-static",
    "--fault-tolerance": "--use-fault-tolerance",
}
SAME_NAMES = (
    "--lr",
    "--rollout-batch-size",
    "--num-rollout",
    "--max-tokens-per-gpu",
    "--train-backend",
    "--colocate",
    "--update-weights-interval",
    "--load",
    "--ref-load",
    "--save",
    "--save-interval",
    "--eval-interval",
    "--wandb-project",
    "--wandb-group",
)
# slime flags that take no value among those above.
_NO_VALUE = frozenset({"--colocate", "--use-fault-tolerance"})

_LAYOUT = "run.sh fits the layout to the cluster: use --actor-gpus N (and --rollout-gpus N)"
_BRIDGE_HOOK = "the bridge is run.sh's {what}: drop it"
_BRIDGE_KEY = "the bridge reads prepare_tasks.py's rows by run.sh's keys: drop it"
# slime flags run.sh sets itself with no option of its own: refused after `--`, with what to do.
DECIDED_BY_RUN_SH: dict[str, str] = {
    "--actor-num-nodes": _LAYOUT,
    "--actor-num-gpus-per-node": _LAYOUT,
    "--num-gpus-per-node": "run.sh reads the GPUs per node from the cluster: drop it",
    "--global-batch-size": (
        "use --steps-per-rollout N (global batch = --rollout-batch-size x --n-samples / N)"
    ),
    "--eval-prompt-data": "use --eval-data FILE (and --eval-interval N)",
    "--custom-generate-function-path": _BRIDGE_HOOK.format(what="generate function"),
    "--custom-rollout-log-function-path": _BRIDGE_HOOK.format(what="rollout metrics hook"),
    "--custom-eval-rollout-log-function-path": _BRIDGE_HOOK.format(what="eval metrics hook"),
    "--input-key": _BRIDGE_KEY,
    "--label-key": _BRIDGE_KEY,
    "--metadata-key": _BRIDGE_KEY,
    "--tool-key": _BRIDGE_KEY,
}

# slime (and Megatron) flags whose values are filesystem paths: made absolute after `--`.
PATH_FLAGS = frozenset(
    {
        "--critic-load",
        "--critic-save",
        "--custom-config-path",
        "--eval-config",
        "--load-debug-rollout-data",
        "--megatron-config-path",
        "--memory-snapshot-dir",
        "--opd-teacher-load",
        "--save-debug-rollout-data",
        "--save-debug-train-data",
        "--save-hf",
        "--sglang-config",
        "--tensorboard-dir",
        "--update-weight-disk-dir",
        "--update-weight-local-checkpoint-dir",
        "--wandb-dir",
    }
)


def aliases(option: str) -> list[str]:
    """slime's name for a run.sh option, when it has another one."""
    return [SLIME_NAMES[option]] if option in SLIME_NAMES else []


def _flag(token: str) -> str | None:
    """The flag a token names (`--x` or `--x=value`), None for a value."""
    return token.split("=", 1)[0] if token.startswith("--") else None


def take_run_sh_settings(extra: list[str]) -> tuple[list[str], list[str]]:
    """Split the arguments after `--`: (slime flags that are run.sh options, with their values;
    the rest, for slime). LaunchError for a flag run.sh decides itself."""
    known = set(SLIME_NAMES.values()) | set(SAME_NAMES)
    taken: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(extra):
        token = extra[i]
        flag = _flag(token)
        if flag in DECIDED_BY_RUN_SH:
            raise LaunchError(f"{flag} after `--`: {DECIDED_BY_RUN_SH[flag]}")
        if flag not in known:
            rest.append(token)
            i += 1
            continue
        width = 1 if "=" in token or flag in _NO_VALUE else 2
        taken += extra[i : i + width]
        i += width
    return taken, rest


def absolute_path_values(extra: list[str], cwd: str | None = None) -> list[str]:
    """`extra` with the relative values of PATH_FLAGS made absolute (relative to `cwd`)."""
    base = cwd or os.getcwd()
    out: list[str] = []
    for i, token in enumerate(extra):
        flag = _flag(token)
        if flag in PATH_FLAGS and "=" in token:
            value = token.split("=", 1)[1]
            out.append(f"{flag}={_absolute(value, base)}")
        elif i > 0 and _flag(extra[i - 1]) in PATH_FLAGS and "=" not in extra[i - 1]:
            out.append(token if _flag(token) else _absolute(token, base))
        else:
            out.append(token)
    return out


def _absolute(value: str, base: str) -> str:
    return str(Path(base, os.path.expanduser(value)).resolve())
