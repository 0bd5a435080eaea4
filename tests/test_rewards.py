"""Reward reduction (bridge/rewards.py): every reduction, None ignored, nonterminal reward,
clamping."""

from __future__ import annotations

import pytest

from bridge.rewards import reduce_rewards
from contract.config import RewardSettings


def _s(**kw) -> RewardSettings:
    return RewardSettings(**{"min_reward": -10.0, "max_reward": 10.0, **kw})


@pytest.mark.parametrize(
    "reduction,expected",
    [("sum", 1.75), ("mean", 1.75 / 3), ("max", 1.0), ("min", 0.0), ("last", 0.75)],
)
def test_each_reduction_ignores_none(reduction: str, expected: float) -> None:
    out = reduce_rewards([None, 1.0, 0.0, None, 0.75], True, _s(reward_reduction=reduction))
    assert out.reward == pytest.approx(expected)
    assert out.values == [1.0, 0.0, 0.75]


def test_nonterminal_reward_is_added_when_env_never_finished() -> None:
    s = _s(reward_reduction="sum", nonterminal_reward=-0.5)
    assert reduce_rewards([0.25, None], False, s).reward == pytest.approx(-0.25)
    assert reduce_rewards([0.25, None], True, s).reward == pytest.approx(0.25)
    assert (
        reduce_rewards([], False, _s(reward_reduction="last", nonterminal_reward=-1.0)).reward
        == -1.0
    )


def test_empty_is_zero_and_clamping() -> None:
    assert reduce_rewards([None, None], True, _s()).reward == 0.0
    clamped = reduce_rewards([3.0, 4.0], True, RewardSettings(reward_reduction="sum"))
    assert clamped.reward == 1.0 and clamped.unclamped == 7.0
    low = reduce_rewards([-3.0], True, RewardSettings(reward_reduction="min", min_reward=-1.0))
    assert low.reward == -1.0
