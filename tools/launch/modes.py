"""Training modes: which slime driver runs, with which flags (`--mode sync|async|fully-async`).

- sync: `train.py`; rollout k, then training on it; colocated by default.
- async: `train_async.py`; rollout k+1 overlaps training on k, so engines and actor need their
  own GPUs (slime asserts `not args.colocate`); weights reach the engines every
  `--update-weights-interval` rollouts.
- fully-async: `train_async.py` with slime's fully-async rollout function: a background worker
  keeps generations in flight across rollouts and puts ABORTED groups back into the data
  buffer. slime v0.3+ ships it as `slime.rollout.fully_async_rollout`; v0.2.2 only as
  `examples/fully_async/fully_async_rollout.py`, which the job then gets on its PYTHONPATH.
  run.sh names the bridge's wrapper around it (`bridge.fully_async`: infra failures and engine
  aborts handed back to the worker, a lasting outage stops the job) and, with eval data, the
  bridge's eval function (slime's fully-async function refuses evaluation, and slime's own eval
  cannot share the worker's event loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from bridge.fully_async import EVAL_FUNCTION, WRAPPER
from tools.errors import ModeError


class TrainMode(str, Enum):
    """How rollout and training take turns."""

    SYNC = "sync"
    ASYNC = "async"
    FULLY_ASYNC = "fully-async"

    @property
    def overlaps(self) -> bool:
        """Rollout runs while the actor trains: separate GPUs needed."""
        return self is not TrainMode.SYNC


FULLY_ASYNC_MODULE = "slime/rollout/fully_async_rollout.py"
FULLY_ASYNC_FUNCTION = WRAPPER
"""The bridge's wrapper of slime's fully-async rollout (either of the two below)."""
FULLY_ASYNC_EVAL_FUNCTION = EVAL_FUNCTION
FULLY_ASYNC_EXAMPLE_DIR = "examples/fully_async"


@dataclass(frozen=True)
class ModePlan:
    """The driver script, its mode flags, and extra PYTHONPATH entries for the job."""

    driver: str
    flags: list[str] = field(default_factory=list)
    pythonpath: list[str] = field(default_factory=list)
    eval_flags: list[str] = field(default_factory=list)
    """Emitted with the eval flags (when there is eval data)."""


def mode_plan(
    mode: TrainMode, slime_path: Path | None, update_weights_interval: int | None
) -> ModePlan:
    """What `mode` needs from the slime checkout at `slime_path` (None: not found yet, assume
    main)."""
    if mode is TrainMode.SYNC:
        if update_weights_interval is not None:
            raise ModeError(
                "--update-weights-interval only applies to --mode async/fully-async "
                "(sync updates the weights after every rollout)"
            )
        return ModePlan("train.py")
    flags = (
        ["--update-weights-interval", str(update_weights_interval)]
        if update_weights_interval is not None
        else []
    )
    if mode is TrainMode.ASYNC:
        return ModePlan("train_async.py", flags)
    rollout = ["--rollout-function-path", FULLY_ASYNC_FUNCTION, *flags]
    evals = ["--eval-function-path", FULLY_ASYNC_EVAL_FUNCTION]
    if slime_path is None or (slime_path / FULLY_ASYNC_MODULE).is_file():
        return ModePlan("train_async.py", rollout, eval_flags=evals)
    example = slime_path / FULLY_ASYNC_EXAMPLE_DIR
    if (example / "fully_async_rollout.py").is_file():
        return ModePlan("train_async.py", rollout, [str(example)], evals)
    raise ModeError(
        f"the slime at {slime_path} has no fully-async rollout ({FULLY_ASYNC_MODULE} or "
        f"{FULLY_ASYNC_EXAMPLE_DIR}/); use --mode async or a slime with it (v0.2.2+)"
    )


def resolve_colocate(mode: TrainMode, colocate: bool | None) -> bool:
    """--colocate as given, else on for sync and off for the overlapping modes."""
    if colocate is None:
        return not mode.overlaps
    if colocate and mode.overlaps:
        raise ModeError(
            f"--mode {mode.value} overlaps rollout and training, so it cannot --colocate "
            "(slime's train_async.py refuses it): drop --colocate"
        )
    return colocate
