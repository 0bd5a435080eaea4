"""`python -m tools.eval --rescore EVAL`: the stored episodes of an eval, scored again by the
current environment code, without any model.

Each episode's stored tool calls are re-executed in a fresh in-process session of its task (the
replay of tools/replay.py, with the env options the eval recorded in its spec), and its reward
and reward parts are reduced again with the eval's reward settings. The report says, per
environment and model, how many episodes changed and the mean reward and parts before and after,
then lists the changed episodes: the way to check that an environment change did not shift a
result. Failed episodes (lost to the env or the engine) have nothing to re-score. Nothing is
written.

Exit status: 0 nothing changed, 1 some episode's reward or parts changed, 2 it could not run.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENREWARD_LOG_LEVEL", "ERROR")  # the in-process envs' per-call log lines

import argparse
import asyncio
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bridge.rewards import reduce_rewards
from contract.config import RewardSettings
from contract.env_report import EnvReport
from contract.vocab import EpisodeStatus
from envs.trajectories.errors import StoreError
from envs.trajectories.evals import EpisodeRow, EvalRecords
from envs.trajectories.store import TrajectoryStore
from tools.errors import EvalError, ReplayError

__all__ = ["Rescored", "rescore", "rescore_episode"]

TOLERANCE = 1e-9
SHOW_CHANGED = 20


@dataclass
class Rescored:
    """One stored episode, scored again."""

    row: EpisodeRow
    reward: float
    parts: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def changes(self) -> list[str]:
        out = []
        if abs(self.reward - self.row.reward) > TOLERANCE:
            out.append(f"reward {self.row.reward:.4g} -> {self.reward:.4g}")
        for name in dict.fromkeys([*self.row.parts, *self.parts]):
            a, b = self.row.parts.get(name), self.parts.get(name)
            if a is None or b is None or abs(a - b) > TOLERANCE:
                out.append(f"{name} {_fmt(a)} -> {_fmt(b)}")
        return out


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


async def rescore_episode(
    store: TrajectoryStore, row: EpisodeRow, settings: RewardSettings
) -> Rescored:
    """Re-execute one stored episode's tool calls in-process and reduce its rewards again."""
    from tools.replay import replay_rollout

    rollout = await asyncio.to_thread(store.get_rollout, row.rollout_event_id)
    if rollout is None:
        raise EvalError(f"eval episode {row.model} {row.env} {row.task} has no stored rollout")
    try:
        replay = await replay_rollout(rollout, None)
    except ReplayError as e:
        raise EvalError(f"{row.env} {row.task}: {e}") from None
    report, rewards, finished = EnvReport(), [], False
    for diff in replay.calls:
        res = diff.result
        if res is None:
            continue
        report.read(res.metadata, res.reward)
        rewards.append(res.reward)
        finished = finished or res.finished
    outcome = reduce_rewards(rewards, finished, settings, report.rewarded)
    return Rescored(row, outcome.reward, outcome.parts, list(replay.notes))


def _configure(envs: dict[str, Any]) -> None:
    """Apply the env options the eval recorded to the in-process env classes."""
    from envs.errors import UnknownEnvironment
    from envs.registry import configure_env, load_env_class

    for name, settings in envs.items():
        options = settings.get("options") if isinstance(settings, dict) else None
        if not options:
            continue
        try:
            configure_env(load_env_class(name), options)
        except UnknownEnvironment:
            continue  # a hosted env: replay says it cannot run in-process
        except Exception as e:
            raise EvalError(f"the eval's options of {name} no longer apply: {e}") from None


def _find(records: EvalRecords, which: str) -> dict[str, Any]:
    found = records.find(which)
    if found is None and which.isdigit():
        found = records.get(int(which))
    if found is None:
        names = ", ".join(e["name"] for e in records.list_evals()[:5]) or "none"
        raise EvalError(f"no eval {which!r} in {records.store.path} (evals: {names})")
    return found


async def _rescore_all(
    store: TrajectoryStore, rows: list[EpisodeRow], spec: dict[str, Any]
) -> list[Rescored]:
    envs = (spec.get("settings") or {}).get("envs") or {}
    out = []
    for row in rows:
        settings = RewardSettings.model_validate((envs.get(row.env) or {}).get("reward") or {})
        out.append(await rescore_episode(store, row, settings))
    return out


def summarize(eval_name: str, results: list[Rescored], skipped: int) -> dict[str, Any]:
    """Per env and model: episodes, changed, mean reward and parts before and after; and the
    changed episodes."""
    groups: dict[tuple[str, str], list[Rescored]] = defaultdict(list)
    for r in results:
        groups[(r.row.env, r.row.model)].append(r)
    rows = []
    for (env, model), rs in sorted(groups.items()):
        n = len(rs)
        names = list(dict.fromkeys(p for r in rs for p in [*r.row.parts, *r.parts]))
        rows.append(
            {
                "env": env,
                "model": model,
                "episodes": n,
                "changed": sum(1 for r in rs if r.changes),
                "reward_before": sum(r.row.reward for r in rs) / n,
                "reward_after": sum(r.reward for r in rs) / n,
                "parts_before": {p: sum(r.row.parts.get(p, 0.0) for r in rs) / n for p in names},
                "parts_after": {p: sum(r.parts.get(p, 0.0) for r in rs) / n for p in names},
            }
        )
    changed = [
        {
            "env": r.row.env,
            "model": r.row.model,
            "task": r.row.task,
            "sample": r.row.sample,
            "rollout_id": r.row.rollout_event_id,
            "changes": r.changes,
            "notes": r.notes,
        }
        for r in results
        if r.changes
    ]
    return {
        "eval": eval_name,
        "rescored": len(results),
        "skipped_failed": skipped,
        "changed": len(changed),
        "groups": rows,
        "episodes": changed,
    }


def format_summary(s: dict[str, Any]) -> str:
    out = [
        f"rescore {s['eval']}: {s['rescored']} episodes scored again by the current env code "
        f"({s['skipped_failed']} failed ones skipped): "
        + ("nothing changed" if not s["changed"] else f"{s['changed']} changed")
    ]
    for g in s["groups"]:
        parts = ", ".join(
            f"{p} {g['parts_before'][p]:.3f} -> {g['parts_after'][p]:.3f}" for p in g["parts_after"]
        )
        out.append(
            f"  {g['env']} {g['model']}: {g['changed']}/{g['episodes']} changed, reward "
            f"{g['reward_before']:.3f} -> {g['reward_after']:.3f}" + (f"; {parts}" if parts else "")
        )
    for e in s["episodes"][:SHOW_CHANGED]:
        out.append(
            f"  changed: {e['env']} {e['task']} {e['model']} sample {e['sample']}: "
            + "; ".join(e["changes"])
            + (f" ({'; '.join(e['notes'])})" if e["notes"] else "")
        )
    if len(s["episodes"]) > SHOW_CHANGED:
        out.append(f"  ... {len(s['episodes']) - SHOW_CHANGED} more (--json lists them all)")
    return "\n".join(out)


def rescore(opts: argparse.Namespace) -> int:
    """Re-score eval `opts.rescore` in `opts.db` (module docstring); the exit status."""
    db = Path(opts.db)
    if not db.is_file():
        raise EvalError(f"no trajectory store at {db} (give --db)")
    try:
        store = TrajectoryStore(db)
    except StoreError as e:
        raise EvalError(str(e)) from None
    records = EvalRecords(store)
    found = _find(records, opts.rescore)
    _configure((found["spec"].get("settings") or {}).get("envs") or {})
    rows = records.episodes(int(found["id"]), parts=True)
    kept = [r for r in rows if r.status != EpisodeStatus.FAILED]
    results = asyncio.run(_rescore_all(store, kept, found["spec"]))
    summary = summarize(found["name"], results, len(rows) - len(kept))
    if opts.json:
        print(orjson.dumps(summary).decode())
    else:
        print(format_summary(summary))
    sys.stdout.flush()
    return 1 if summary["changed"] else 0
