"""The one place where per-turn tool rewards become a sample's scalar reward (and the parts the
env reported with them become the episode's reward parts)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from contract.config import RewardSettings

_REDUCERS: dict[str, Callable[[list[float]], float]] = {
    "sum": lambda v: float(sum(v)),
    "mean": lambda v: float(sum(v)) / len(v),
    "max": lambda v: float(max(v)),
    "min": lambda v: float(min(v)),
    "last": lambda v: float(v[-1]),
}


@dataclass(frozen=True)
class RewardOutcome:
    reward: float  # reduced and clamped: what the trainer sees
    unclamped: float  # reduced, before clamping
    values: list[float]  # the values that went into the reduction
    parts: dict[str, float] = field(default_factory=dict)
    """The env's reward parts, reduced as the rewards (`reduce_reward_parts`); unclamped."""


def reduce_reward_parts(
    rewarded: Sequence[tuple[float, dict[str, float]]], reduction: str
) -> dict[str, float]:
    """The episode's reward parts from (reward, parts) of each rewarded output that reported
    some: `sum` and `mean` reduce each part over the outputs that reported it; `last`, `max`
    and `min` take the parts of the output whose reward they take. No output: no parts."""
    if not rewarded:
        return {}
    if reduction in ("sum", "mean"):
        out: dict[str, list[float]] = {}
        for _, parts in rewarded:
            for name, v in parts.items():
                out.setdefault(name, []).append(v)
        reduce = _REDUCERS[reduction]
        return {name: reduce(vs) for name, vs in out.items()}
    if reduction == "max":
        return dict(max(rewarded, key=lambda rp: rp[0])[1])
    if reduction == "min":
        return dict(min(rewarded, key=lambda rp: rp[0])[1])
    return dict(rewarded[-1][1])


def reduce_rewards(
    turn_rewards: Sequence[float | None],
    env_finished: bool,
    settings: RewardSettings,
    rewarded_parts: Sequence[tuple[float, dict[str, float]]] = (),
) -> RewardOutcome:
    """Reduce per-tool-call rewards to one float (and `rewarded_parts`, the env's reward parts,
    to the episode's: `reduce_reward_parts`).

    `None` entries (tools that gave no reward) are ignored. When the environment never
    finished the episode, `nonterminal_reward` is appended as the episode's final value (it has
    no parts). An empty list reduces to 0.0. The result is clamped to [min_reward, max_reward].
    """
    values = [float(r) for r in turn_rewards if r is not None]
    if not env_finished:
        values.append(float(settings.nonterminal_reward))
    try:
        reducer = _REDUCERS[settings.reward_reduction]
    except KeyError:
        raise ValueError(
            f"unknown reward_reduction {settings.reward_reduction!r}; "
            f"use one of {', '.join(_REDUCERS)}"
        ) from None
    unclamped = reducer(values) if values else 0.0
    lo, hi = settings.min_reward, settings.max_reward
    reward = min(max(unclamped, lo), hi)
    parts = reduce_reward_parts(rewarded_parts, settings.reward_reduction)
    return RewardOutcome(reward=reward, unclamped=unclamped, values=values, parts=parts)
