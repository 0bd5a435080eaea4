"""Resuming a run: which checkpoint `--load` names, given what `--save` already holds.

slime saves (Megatron and FSDP alike) as `SAVE/latest_checkpointed_iteration.txt`, holding the
last iteration (or `release`), next to `SAVE/iter_NNNNNNN/` (or `SAVE/release/`). Loading such a
directory makes slime continue from the next rollout id and, with a global dataset, from the
saved data position. So when `--save` holds a checkpoint, `--load` defaults to it; `--resume`
insists on it and `--no-resume` starts from the base weights anyway. `--ref-load` stays the
base weights either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tools.errors import ResumeError

TRACKER = "latest_checkpointed_iteration.txt"


@dataclass(frozen=True)
class SavedCheckpoint:
    """A checkpoint slime wrote under --save."""

    path: Path
    iteration: str
    """The tracker's content: an iteration number or `release`."""


@dataclass(frozen=True)
class LoadPlan:
    """What --load and --ref-load become, and a note for the plan when it matters."""

    load: str
    ref_load: str
    note: str | None = None


def saved_checkpoint(save: str | None) -> SavedCheckpoint | None:
    """The checkpoint in `save`, None when there is none; ResumeError when its tracker is broken."""
    if not save:
        return None
    root = Path(save)
    tracker = root / TRACKER
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    if text == "release":
        step_dir = root / "release"
    elif text.isdigit():
        step_dir = root / f"iter_{int(text):07d}"
    else:
        raise ResumeError(
            f"{tracker} holds {text[:40]!r}, not an iteration: fix or remove it, or pass "
            "--no-resume"
        )
    if not step_dir.is_dir():
        raise ResumeError(
            f"{tracker} names iteration {text} but {step_dir} is missing; "
            "restore it, point --save elsewhere, or pass --no-resume"
        )
    return SavedCheckpoint(root, text)


def plan_load(
    model: str,
    load: str | None,
    save: str | None,
    resume: bool | None,
    ref_load: str | None = None,
) -> LoadPlan:
    """--load/--ref-load for these options: the checkpoint in --save when resuming, else the base
    weights; --ref-load, when given, is the reference either way."""
    plan = _plan_load(model, load, save, resume)
    return LoadPlan(plan.load, ref_load, plan.note) if ref_load else plan


def _plan_load(model: str, load: str | None, save: str | None, resume: bool | None) -> LoadPlan:
    base = load or model
    found = saved_checkpoint(save)
    if resume is True:
        if load:
            raise ResumeError("--resume loads the checkpoint in --save; drop --load")
        if found is None:
            raise ResumeError(
                f"--resume: {save or '(no --save)'} holds no checkpoint ({TRACKER}); "
                "pass the --save of the run to continue"
            )
    if found is None:
        return LoadPlan(base, base)
    if resume is False:
        return LoadPlan(
            base,
            base,
            f"--no-resume: starting from {base}; new checkpoints in {save} replace iteration "
            f"{found.iteration}",
        )
    if load and resume is None:
        return LoadPlan(
            base,
            base,
            f"{save} holds iteration {found.iteration} but --load {load} is given: starting from "
            "--load (pass --resume instead of --load to continue that run)",
        )
    return LoadPlan(
        str(found.path),
        base,
        f"resuming from {found.path} (iteration {found.iteration}): slime continues at the next "
        "rollout; --no-resume starts over",
    )
