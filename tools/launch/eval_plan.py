"""The eval run.sh plans with a training run: which files slime evaluates, and how often.

`--eval-data FILE` (repeatable), else the eval file prepare_tasks.py wrote beside the task file
(`eval_<name>`), every `--eval-interval` rollouts; `--no-eval` turns it off.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tools.errors import LaunchError
from tools.launch import prerequisites as pre
from tools.launch.cli import DEFAULT_EVAL_INTERVAL


def default_eval_path(task_data: str) -> Path:
    """Where prepare_tasks.py puts the eval rows of `task_data`: eval_<name> beside it."""
    p = Path(task_data)
    return p.with_name("eval_" + p.name)


def plan_eval(
    opts: argparse.Namespace, checks: list[pre.Check], notes: list[str]
) -> tuple[list[str], int | None]:
    """The eval files and interval: --eval-data, else the prepared eval file when it exists."""
    if opts.no_eval:
        if opts.eval_data or opts.eval_interval is not None:
            raise LaunchError("--no-eval contradicts --eval-data/--eval-interval: drop one")
        return [], None
    interval = opts.eval_interval or DEFAULT_EVAL_INTERVAL
    if opts.eval_data:
        for path in opts.eval_data:
            checks.append(pre.check_task_file(path, opts.config, "eval task file", "--eval-output"))
        return list(opts.eval_data), interval
    default = default_eval_path(opts.task_data)
    if default.is_file() and default.stat().st_size > 0:
        notes.append(
            f"eval: {default} every {interval} rollouts (prepared by prepare_tasks.py; "
            "--no-eval skips it)"
        )
        return [str(default)], interval
    if opts.eval_interval is not None:
        raise LaunchError(
            f"--eval-interval needs --eval-data FILE, or {default} (python prepare_tasks.py "
            f"--config {opts.config} --output {opts.task_data} writes it)"
        )
    return [], None
