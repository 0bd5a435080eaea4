"""Every path run.sh hands on is absolute.

slime's driver runs in its checkout (the job `cd`s there), the env servers in the project root,
the Ray job on whichever node: a relative `--save ckpt` would mean a directory under slime's
checkout, and `--model ./Qwen3-4B` nothing at all. So each path option means what it meant
where run.sh was started, made absolute before anything is planned (`--model` is resolved by
`tools.launch.model_source`, which also knows Hub ids; the paths after `--` by
`tools.launch.slime_names.absolute_path_values`).
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

from tools.errors import LaunchError

# Options whose values are filesystem paths (None when not given).
PATH_OPTIONS = (
    "config",
    "task_data",
    "load",
    "ref_load",
    "save",
    "db",
    "slime_path",
    "megatron_path",
)


def absolute(path: str, cwd: str | None = None) -> str:
    """`path` with `~` expanded, relative to `cwd` (default: this process's), symlinks resolved."""
    return str(Path(cwd or os.getcwd(), os.path.expanduser(path)).resolve())


def absolute_options(opts: argparse.Namespace, cwd: str | None = None) -> argparse.Namespace:
    """A copy of `opts` with every path option absolute; LaunchError (one line) for a path that
    cannot be what it names: a --save that is a file, a --model-args path with no file there."""
    out = copy.copy(opts)
    for name in PATH_OPTIONS:
        value = getattr(out, name, None)
        if value:
            setattr(out, name, absolute(value, cwd))
    if out.eval_data:
        out.eval_data = [absolute(p, cwd) for p in out.eval_data]
    if out.save and Path(out.save).exists() and not Path(out.save).is_dir():
        raise LaunchError(f"--save {out.save} is a file: give a directory for the checkpoints")
    if out.model_args and _names_a_file(out.model_args):
        path = absolute(out.model_args, cwd)
        if not Path(path).is_file():
            raise LaunchError(
                f"--model-args {out.model_args}: no such file ({path}); give a script that "
                "defines MODEL_ARGS=(...), or the flags themselves in quotes"
            )
        out.model_args = path
    return out


def _names_a_file(value: str) -> bool:
    """--model-args is a script path unless it reads as flags (`--num-layers 36 ...`)."""
    return not value.lstrip().startswith("-")
