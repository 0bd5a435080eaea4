"""GRPO advantages of a group's rewards, as slime computes them (`_post_process_rewards`).

For `--advantage-estimator` grpo, gspo or cispo with rewards normalization (slime's default),
a sample trains on (reward - group mean) / (group std + 1e-6), the std being torch's unbiased
one (n - 1); with `--disable-grpo-std-normalization` or reinforce_plus_plus_baseline on
reward - group mean; with `--disable-rewards-normalization` on the reward itself. slime
counts every sample of the group, removed ones (reward 0.0) included.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

STD_EPS = 1e-6


@dataclass(frozen=True)
class Advantage:
    """One sample's advantage under slime's two group normalisations (None: no reward yet)."""

    centered: float | None
    """reward - group mean."""
    normalized: float | None
    """(reward - group mean) / (unbiased group std + 1e-6); None for a group of one (NaN in
    torch)."""


def group_advantages(rewards: Sequence[float | None]) -> list[Advantage]:
    """Each reward's advantage within its group; samples without a reward are left out of the
    stats."""
    known = [r for r in rewards if r is not None and math.isfinite(r)]
    if not known:
        return [Advantage(None, None) for _ in rewards]
    mean = statistics.fmean(known)
    std = statistics.stdev(known) if len(known) > 1 else None
    out = []
    for r in rewards:
        if r is None or not math.isfinite(r):
            out.append(Advantage(None, None))
            continue
        centered = r - mean
        out.append(Advantage(centered, None if std is None else centered / (std + STD_EPS)))
    return out
