"""The one place where per-turn tool rewards become a sample's scalar reward."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


def reduce_rewards(
    turn_rewards: Sequence[float | None], env_finished: bool, settings: RewardSettings
) -> RewardOutcome:
    """Reduce per-tool-call rewards to one float.

    `None` entries (tools that gave no reward) are ignored. When the environment never
    finished the episode, `nonterminal_reward` is appended as the episode's final value.
    An empty list reduces to 0.0. The result is clamped to [min_reward, max_reward].
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
    return RewardOutcome(reward=reward, unclamped=unclamped, values=values)
