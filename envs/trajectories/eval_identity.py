"""Whether two evals, or two models of one eval, are the same: the leaves where they differ.

A model's identity (target, served model, tokenizer, checkpoint, sampling arguments) is stored with
it (`envs/trajectories/evals.py`); a later run naming the same model with another identity, or the
same eval with another spec, is refused with the differing leaves named here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from envs.trajectories.errors import SpecMismatch

if TYPE_CHECKING:
    from envs.trajectories.evals import EvalModel

IDENTITY_VERSION = 1
"""Marks a stored model identity (`v`); models stored before it are compared by kind only."""


def identity_diffs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`leaf old -> new` for each leaf where two model identities differ: every static leaf, and
    the leaves of `served` (what the server reported) that both have."""
    diffs = leaf_diffs(
        {k: v for k, v in old.items() if k != "served"},
        {k: v for k, v in new.items() if k != "served"},
        "",
    )
    s_old, s_new = old.get("served"), new.get("served")
    if isinstance(s_old, dict) and isinstance(s_new, dict):
        common = set(s_old) & set(s_new)
        diffs += leaf_diffs({k: s_old[k] for k in common}, {k: s_new[k] for k in common}, "served")
    return diffs


def check_same_model(have: EvalModel, new: EvalModel) -> dict[str, Any]:
    """The stored endpoint with what the server reports now merged in; SpecMismatch when the
    stored model is another one (its kind, or any leaf of its identity, differs)."""
    if have.kind != new.kind:
        raise SpecMismatch(
            f"model {have.name!r} of this eval is a {have.kind} model, not {new.kind}: give the "
            "new one another name"
        )
    if have.endpoint.get("v") != IDENTITY_VERSION or new.endpoint.get("v") != IDENTITY_VERSION:
        return have.endpoint  # stored before identities: its kind is all that can be compared
    diffs = identity_diffs(have.endpoint, new.endpoint)
    if diffs:
        shown = "; ".join(diffs[:3]) + (f"; +{len(diffs) - 3} more" if len(diffs) > 3 else "")
        raise SpecMismatch(
            f"model {have.name} is not the model this eval evaluated ({shown}): its stored "
            "episodes are of the other one; evaluate it under a new --name (or drop --name) or "
            "give it another model name"
        )
    served = {**(have.endpoint.get("served") or {}), **(new.endpoint.get("served") or {})}
    return {**have.endpoint, **({"served": served} if served else {})}


def leaf_diffs(old: Any, new: Any, path: str) -> list[str]:
    """`path old -> new` for each leaf that differs (values shortened)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d
            for key in sorted(set(old) | set(new), key=str)
            for d in leaf_diffs(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
        ]
    if old == new:
        return []
    return [f"{path} {str(old)[:40]} -> {str(new)[:40]}"]


def describe_spec_mismatch(name: str, old: dict[str, Any], new: dict[str, Any]) -> str:
    """One line naming what differs between two specs."""
    diffs = []
    for key in ("k", "sampling", "solve_threshold", "settings"):
        diffs += leaf_diffs(old.get(key), new.get(key), key)
    if old.get("tasks") != new.get("tasks"):
        diffs.append(f"tasks ({len(old.get('tasks') or [])} -> {len(new.get('tasks') or [])})")
    what = "; ".join(diffs[:3]) + (f"; +{len(diffs) - 3} more" if len(diffs) > 3 else "")
    return (
        f"eval {name!r} exists with another spec ({what or 'spec version'}): "
        "rerun with its settings, or pick a new --name"
    )
