"""An eval's report, computed from its stored episodes: per-environment scores and model
comparisons.

Per environment (and `all`, every task pooled) and model: mean reward, solve rate, unbiased
pass@k, mean turns and tool calls, error rates by kind (the share of episodes with at least one
error of that kind, or that failed with it), the mean of each reward part the environment reports
(`components`: WhoDunIt who/what/where/why, GSM8K answer/format, haiku structure/topic/...), each
with a 95% bootstrap CI over tasks; stop reasons as counts. For every pair of models (B listed
after A): the paired difference B - A of the per-task mean reward, solve rate and each reward
part (bootstrap CI over the tasks both ran), tasks won / lost / tied, and the tasks where they
disagree most. The same episodes always give the same report.

A reward part counts on the tasks where an episode reported it; there, an episode that failed or
never reached the reward counts 0, as its reward does. Rendering: tools/eval/render.py.
"""

from __future__ import annotations

import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from contract.vocab import EpisodeStatus, StopReason
from envs.trajectories.evals import EpisodeRow
from tools.eval.stats import CONFIDENCE, Estimate, Paired, TaskResampler, pass_at_k

__all__ = ["ALL", "FAILURE_KINDS", "build_report", "reward_estimate"]

ALL = "all"
FAILURE_KINDS = tuple(
    k.value
    for k in (
        StopReason.ENV_ERROR,
        StopReason.ENGINE_ERROR,
        StopReason.SETUP_ERROR,
        StopReason.BRIDGE_ERROR,
    )
)
"""The stop reasons of a failed episode (`contract.vocab.FAILURE_STOPS`), in report order."""
# stop reasons counted as errors of the episode: failures, and a turn that called no tool
EPISODE_ERRORS = (*FAILURE_KINDS, StopReason.NO_TOOL_CALL.value)
DISAGREE_TOP = 10


@dataclass
class _TaskStats:
    """One model's episodes of one task."""

    n: int = 0
    solved: int = 0
    reward: float = 0.0
    turns: float = 0.0
    calls: float = 0.0
    rollouts: list[str] | None = None
    parts: dict[str, float] | None = None

    def add(self, row: EpisodeRow, applicable: list[str]) -> None:
        self.n += 1
        self.solved += int(row.solved)
        self.reward += row.reward
        self.turns += row.num_turns
        self.calls += row.num_tool_calls
        if self.rollouts is None:
            self.rollouts = []
        self.rollouts.append(row.rollout_event_id)
        if self.parts is None:
            self.parts = {}
        failed = row.status == EpisodeStatus.FAILED
        for name in applicable:
            self.parts[name] = self.parts.get(name, 0.0) + (
                0.0 if failed else row.parts.get(name, 0.0)
            )


def _pass_ks(k: int) -> list[int]:
    ks = {k}
    p = 1
    while p < k:
        ks.add(p)
        p *= 2
    return sorted(ks)


def _error_kinds(row: EpisodeRow) -> set[str]:
    kinds = {k for k, v in row.tool_errors.items() if v}
    if row.stop_reason in EPISODE_ERRORS:
        kinds.add(row.stop_reason)
    return kinds


class _Resamplers:
    """TaskResamplers by task count: the resample counts depend only on how many tasks there are,
    so models that ran the same tasks share them (which makes their comparison paired)."""

    def __init__(self, seed: int, scope: str) -> None:
        self.rng = np.random.default_rng([seed, zlib.crc32(scope.encode())])
        self.by_n: dict[int, TaskResampler] = {}

    def __call__(self, n: int) -> TaskResampler:
        if n not in self.by_n:
            self.by_n[n] = TaskResampler(n, self.rng)
        return self.by_n[n]


def _model_scores(
    tasks: list[tuple[str, str]],
    stats: dict[tuple[str, str], _TaskStats],
    rows: list[EpisodeRow],
    k: int,
    resample: _Resamplers,
    kinds: list[str],
    part_names: list[str],
) -> dict[str, Any] | None:
    ran = [t for t in tasks if stats.get(t) and stats[t].n]
    if not ran:
        return None
    res = resample(len(ran))
    per = [stats[t] for t in ran]

    def est(values: Sequence[float]) -> dict[str, Any]:
        return res.estimate(values).to_json()

    n_min = min(s.n for s in per)
    pass_at = {
        str(kk): est([pass_at_k(s.n, s.solved, kk) for s in per])
        for kk in _pass_ks(k)
        if kk <= n_min
    }
    by_task_kind: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    stops: Counter[str] = Counter()
    for r in rows:
        by_task_kind[(r.env, r.task)].update(_error_kinds(r))
        stops[r.stop_reason] += 1
    errors = {
        kind: est([by_task_kind[t][kind] / stats[t].n for t in ran])
        for kind in kinds
        if any(by_task_kind[t][kind] for t in ran)
    }
    components = {}
    for name in part_names:
        over = [t for t in ran if name in (stats[t].parts or {})]
        if over:
            values = [(stats[t].parts or {})[name] / stats[t].n for t in over]
            components[name] = resample(len(over)).estimate(values).to_json()
    return {
        "tasks": len(ran),
        "episodes": sum(s.n for s in per),
        "reward": est([s.reward / s.n for s in per]),
        "solve_rate": est([s.solved / s.n for s in per]),
        "pass_at": pass_at,
        "turns": est([s.turns / s.n for s in per]),
        "tool_calls": est([s.calls / s.n for s in per]),
        "errors": errors,
        "components": components,
        "stop_reasons": dict(sorted(stops.items())),
    }


def _compare(
    a: str,
    b: str,
    tasks: list[tuple[str, str]],
    stats: dict[str, dict[tuple[str, str], _TaskStats]],
    resample: _Resamplers,
    part_names: list[str],
) -> dict[str, Any] | None:
    sa, sb = stats.get(a, {}), stats.get(b, {})
    both = [t for t in tasks if t in sa and t in sb and sa[t].n and sb[t].n]
    if not both:
        return None
    res = resample(len(both))
    ra = [sa[t].reward / sa[t].n for t in both]
    rb = [sb[t].reward / sb[t].n for t in both]
    reward: Paired = res.paired(ra, rb)
    solve: Paired = res.paired(
        [sa[t].solved / sa[t].n for t in both], [sb[t].solved / sb[t].n for t in both]
    )
    components = {}
    for name in part_names:
        over = [t for t in both if name in (sa[t].parts or {}) and name in (sb[t].parts or {})]
        if over:
            components[name] = (
                resample(len(over))
                .paired(
                    [(sa[t].parts or {})[name] / sa[t].n for t in over],
                    [(sb[t].parts or {})[name] / sb[t].n for t in over],
                )
                .to_json()
            )
    order = sorted(range(len(both)), key=lambda i: (-abs(rb[i] - ra[i]), i))
    disagree = [
        {
            "env": both[i][0],
            "task": both[i][1],
            "a": ra[i],
            "b": rb[i],
            "diff": rb[i] - ra[i],
            "a_rollouts": sa[both[i]].rollouts,
            "b_rollouts": sb[both[i]].rollouts,
        }
        for i in order[:DISAGREE_TOP]
        if abs(rb[i] - ra[i]) > 1e-9
    ]
    return {
        "a": a,
        "b": b,
        "tasks": len(both),
        "reward": reward.to_json(),
        "solve_rate": solve.to_json(),
        "components": components,
        "disagree": disagree,
    }


def build_report(
    header: dict[str, Any],
    models: list[str],
    tasks: list[tuple[str, str]],
    k: int,
    rows: list[EpisodeRow],
    seed: int,
) -> dict[str, Any]:
    """The report of `models` on `tasks` from their stored episodes (a JSON-able dict)."""
    envs = list(dict.fromkeys(env for env, _ in tasks))
    wanted = set(models)
    rows = [r for r in rows if r.model in wanted]
    task_set = set(tasks)
    # a fixed order: sums, sample lists and tie-breaks never depend on how the rows were read
    rows = sorted(
        (r for r in rows if (r.env, r.task) in task_set),
        key=lambda r: (r.env, r.task, r.model, r.sample),
    )
    kinds = sorted({kind for r in rows for kind in _error_kinds(r)})
    applicable = _applicable_parts(rows)
    out_envs: dict[str, Any] = {}
    for scope in [*envs, ALL]:
        scope_tasks = tasks if scope == ALL else [t for t in tasks if t[0] == scope]
        scope_rows = rows if scope == ALL else [r for r in rows if r.env == scope]
        resample = _Resamplers(seed, scope)
        stats: dict[str, dict[tuple[str, str], _TaskStats]] = defaultdict(dict)
        for r in scope_rows:
            stats[r.model].setdefault((r.env, r.task), _TaskStats()).add(
                r, applicable.get((r.env, r.task), [])
            )
        part_names = list(dict.fromkeys(n for t in scope_tasks for n in applicable.get(t, [])))
        per_model = {}
        for m in models:
            scores = _model_scores(
                scope_tasks,
                stats.get(m, {}),
                [r for r in scope_rows if r.model == m],
                k,
                resample,
                kinds,
                part_names,
            )
            if scores is not None:
                per_model[m] = scores
        comparisons = [
            c
            for i, a in enumerate(models)
            for b in models[i + 1 :]
            if (c := _compare(a, b, scope_tasks, stats, resample, part_names)) is not None
        ]
        out_envs[scope] = {
            "tasks": len(scope_tasks),
            "models": per_model,
            "comparisons": comparisons,
        }
    expected = len(tasks) * k * len(models)
    return {
        **header,
        "confidence": CONFIDENCE,
        "models": models,
        "k": k,
        "episodes": len(rows),
        "episodes_expected": expected,
        "complete": len(rows) >= expected,
        "envs": out_envs,
        "warnings": _warnings(models, rows),
    }


def _applicable_parts(rows: list[EpisodeRow]) -> dict[tuple[str, str], list[str]]:
    """Per task, the reward parts any of its episodes reported (in the order reported)."""
    out: dict[tuple[str, str], dict[str, None]] = defaultdict(dict)
    for r in rows:
        if r.status != EpisodeStatus.FAILED:
            for name in r.parts:
                out[(r.env, r.task)].setdefault(name, None)
    return {t: list(names) for t, names in out.items()}


def _warnings(models: list[str], rows: list[EpisodeRow]) -> list[str]:
    out = []
    for m in models:
        mine = [r for r in rows if r.model == m]
        if mine and not any(r.num_tool_calls for r in mine):
            out.append(
                f"model {m} never called a tool in {len(mine)} episodes: check its tool-call "
                "format "
                "(an OpenAI endpoint must parse tool calls, e.g. vLLM --enable-auto-tool-choice "
                "--tool-call-parser ...)"
            )
        failed = Counter(r.stop_reason for r in mine if r.status == EpisodeStatus.FAILED)
        if failed:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(failed.items()))
            out.append(
                f"model {m}: {sum(failed.values())} episodes failed ({kinds}), counted as reward "
                "0; "
                "rerun with --retry-errors to run them again"
            )
    return out


def reward_estimate(report: dict[str, Any], env: str, model: str) -> Estimate:
    """A model's mean-reward estimate from a report (for tests and scripts)."""
    e = report["envs"][env]["models"][model]["reward"]
    return Estimate(e["value"], e["lo"], e["hi"], e["n"])
