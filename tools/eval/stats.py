"""Evaluation statistics: unbiased pass@k, bootstrap confidence intervals over tasks, paired
comparison.

The unit of resampling is the task: the k samples of one task are not independent (an easy task
is easy for all of them), so every interval resamples whole tasks. Two models are compared on
the same tasks with the same resamples (a paired bootstrap of the per-task difference). Every
function is deterministic given its `rng`, so a report recomputed from the same episodes is
identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import comb

import numpy as np

__all__ = [
    "CONFIDENCE",
    "RESAMPLES",
    "TIE_EPS",
    "Estimate",
    "Paired",
    "TaskResampler",
    "pass_at_k",
]

CONFIDENCE = 0.95
RESAMPLES = 4000
TIE_EPS = 1e-9  # per-task differences within this are ties


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one task with `n` samples of which `c` passed: 1 - C(n-c, k) / C(n, k).

    The estimator of Chen et al. (2021, "Evaluating Large Language Models Trained on Code"): the
    probability that at least one of k samples drawn without replacement from the n passes.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


@dataclass(frozen=True)
class Estimate:
    """A mean over tasks with its bootstrap confidence interval."""

    value: float
    lo: float
    hi: float
    n: int
    """Tasks the mean is over."""

    def to_json(self) -> dict[str, float | int]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "n": self.n}

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi


@dataclass(frozen=True)
class Paired:
    """Model B against model A on the tasks both ran: the mean per-task difference B - A."""

    delta: Estimate
    won: int
    """Tasks where B scored higher than A."""
    lost: int
    """Tasks where B scored lower than A."""
    tied: int

    @property
    def significant(self) -> bool:
        """The confidence interval of the difference excludes 0."""
        return self.delta.lo > 0 or self.delta.hi < 0

    def to_json(self) -> dict[str, object]:
        return {
            "delta": self.delta.to_json(),
            "won": self.won,
            "lost": self.lost,
            "tied": self.tied,
            "significant": self.significant,
        }


class TaskResampler:
    """One fixed set of bootstrap resamples of `n_tasks` tasks, shared by every metric and model.

    Resample b draws n_tasks tasks with replacement; it is stored as how often each task was
    drawn, so the mean of any per-task vector under every resample is one matrix product.
    """

    def __init__(
        self,
        n_tasks: int,
        rng: np.random.Generator,
        resamples: int = RESAMPLES,
        confidence: float = CONFIDENCE,
    ) -> None:
        if n_tasks < 1:
            raise ValueError("a bootstrap needs at least one task")
        self.n_tasks = n_tasks
        self.alpha = 1.0 - confidence
        draws = rng.integers(0, n_tasks, size=(resamples, n_tasks))
        draws += np.arange(resamples)[:, None] * n_tasks  # row b counts into its own n_tasks bins
        self.counts = np.bincount(draws.ravel(), minlength=resamples * n_tasks).reshape(
            resamples, n_tasks
        )

    def estimate(self, per_task: Sequence[float] | np.ndarray) -> Estimate:
        """The mean of `per_task` (one value per task, in the resampler's task order) with its
        CI."""
        v = np.asarray(per_task, dtype=float)
        if v.shape != (self.n_tasks,):
            raise ValueError(f"expected {self.n_tasks} per-task values, got shape {v.shape}")
        means = self.counts @ v / self.n_tasks
        lo, hi = np.quantile(means, [self.alpha / 2, 1 - self.alpha / 2])
        value = float(v.mean())
        # the percentile interval of a constant vector is that constant up to rounding: pin it
        return Estimate(value, min(float(lo), value), max(float(hi), value), self.n_tasks)

    def paired(self, a: Sequence[float], b: Sequence[float]) -> Paired:
        """B - A over the same tasks: bootstrap CI of the mean difference and won/lost/tied."""
        d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
        return Paired(
            delta=self.estimate(d),
            won=int((d > TIE_EPS).sum()),
            lost=int((d < -TIE_EPS).sum()),
            tied=int((np.abs(d) <= TIE_EPS).sum()),
        )
