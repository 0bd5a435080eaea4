"""`bash run.sh`: check prerequisites, start the env servers and Ray, submit slime's training
driver.

One data flow: the options (`tools.launch.cli`) -> the plan (`tools.launch.plan.build_plan`,
every check and command decided before anything runs) -> printed by `--dry-run`
(`format_plan`) or carried out (`tools.launch.execute`), which stops what it started on exit.
"""

from __future__ import annotations

import sys

from tools.errors import LaunchError
from tools.launch.cli import parse_options
from tools.launch.execute import execute
from tools.launch.plan import build_plan, format_plan


def main(argv: list[str] | None = None) -> int:
    """run.sh's exit code: 2 for a refused option or a MISSING prerequisite (a dry run too), else
    the job's (slime's driver's)."""
    try:
        opts, extra = parse_options(sys.argv[1:] if argv is None else argv)
        plan = build_plan(opts, extra)
    except LaunchError as e:
        print(f"run.sh: {e}", file=sys.stderr)
        return 2
    if opts.dry_run:
        print(format_plan(plan))
        missing = sum(not c.ok for c in plan.checks)
        if missing:
            print(f"run.sh: dry run: {missing} prerequisite(s) MISSING (above)", file=sys.stderr)
        return 2 if missing else 0
    if not plan.ok:
        for c in plan.checks:
            if not c.ok:
                print(f"run.sh: {c.line()}", file=sys.stderr)
        return 2
    for note in plan.notes:  # what the plan decided for the user (resuming, servers reused...)
        print(f"run.sh: note: {note}", flush=True)
    return execute(plan)
