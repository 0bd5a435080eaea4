"""The eval's statistics and report: unbiased pass@k against enumeration, bootstrap CIs (including
their coverage on simulated data, with a fixed seed), paired comparisons, and the report built from
episode rows."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from envs.trajectories.evals import EpisodeRow
from tools.eval.render import format_markdown, format_table
from tools.eval.report import build_report
from tools.eval.stats import TaskResampler, pass_at_k


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    items = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(items[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_is_the_unbiased_estimator() -> None:
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k))
        assert pass_at_k(n, 1, 1) == pytest.approx(1 / n)
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)


def test_bootstrap_estimate_and_paired_difference() -> None:
    res = TaskResampler(40, np.random.default_rng(0))
    const = res.estimate([0.25] * 40)
    assert (const.value, const.lo, const.hi, const.n) == (0.25, 0.25, 0.25, 40)
    v = np.random.default_rng(1).random(40)
    e = res.estimate(v)
    assert e.value == pytest.approx(v.mean()) and e.lo < e.value < e.hi
    p = res.paired(v, v + 0.2)
    assert p.delta.value == pytest.approx(0.2) and p.delta.lo == pytest.approx(0.2)
    assert (p.won, p.lost, p.tied) == (40, 0, 0) and p.significant
    a = [1.0, 0.0, 0.5, 0.5]
    b = [0.0, 1.0, 0.5, 1.0]
    q = TaskResampler(4, np.random.default_rng(2)).paired(a, b)
    assert (q.won, q.lost, q.tied) == (2, 1, 1)
    with pytest.raises(ValueError):
        res.estimate([1.0, 2.0])


def test_bootstrap_intervals_cover_the_truth_about_95_percent() -> None:
    """500 simulated evals (fixed seed) of 60 tasks: Bernoulli rewards, p = 0.6; and two models of
    rates 0.7 and 0.4 on the same tasks, true difference -0.3."""
    rng = np.random.default_rng(1234)
    cover_mean = cover_diff = 0
    trials = 500
    for _ in range(trials):
        res = TaskResampler(60, rng, resamples=1000)
        x = rng.random(60) < 0.6
        cover_mean += res.estimate(x.astype(float)).contains(0.6)
        difficulty = rng.random(60)  # paired: per-task difficulty shared by both models
        a = (rng.random(60) < 0.7 + 0.2 * (difficulty - 0.5)).astype(float)
        b = (rng.random(60) < 0.4 + 0.2 * (difficulty - 0.5)).astype(float)
        cover_diff += res.paired(a, b).delta.contains(-0.3)
    assert 0.90 <= cover_mean / trials <= 0.99
    assert 0.90 <= cover_diff / trials <= 0.99


def rows_for(model: str, solved_tasks: set[int], n_tasks: int, k: int, **extra) -> list[EpisodeRow]:
    out = []
    for t in range(n_tasks):
        for j in range(k):
            ok = t in solved_tasks
            out.append(
                EpisodeRow(
                    model=model,
                    env="e",
                    task=f"test/{t}",
                    sample=j,
                    rollout_event_id=f"{model}-{t}-{j}",
                    reward=1.0 if ok else 0.0,
                    solved=ok,
                    num_turns=2,
                    num_tool_calls=1 if ok else 0,
                    stop_reason="env_finished" if ok else "no_tool_call",
                    status="completed",
                    **extra,
                )
            )
    return out


def test_report_scores_comparison_and_rendering() -> None:
    tasks = [("e", f"test/{t}") for t in range(10)]
    rows = rows_for("a", set(range(5)), 10, 2) + rows_for("b", set(range(10)), 10, 2)
    rows[0] = EpisodeRow(**{**rows[0].__dict__, "tool_errors": {"parse_error": 2}})
    header = {"name": "t", "sampling": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 9}}
    report = build_report(header, ["a", "b"], tasks, 2, rows, seed=7)
    again = build_report(header, ["a", "b"], tasks, 2, list(reversed(rows)), seed=7)
    assert report == again  # the same episodes always give the same report
    e = report["envs"]["e"]
    assert e["models"]["a"]["reward"]["value"] == 0.5 and e["models"]["b"]["reward"]["value"] == 1.0
    assert e["models"]["a"]["pass_at"]["2"]["value"] == 0.5
    assert e["models"]["a"]["errors"]["parse_error"]["value"] == pytest.approx(0.05)
    assert e["models"]["a"]["errors"]["no_tool_call"]["value"] == 0.5
    assert e["models"]["a"]["stop_reasons"] == {"env_finished": 10, "no_tool_call": 10}
    (c,) = e["comparisons"]
    assert (c["a"], c["b"]) == ("a", "b")
    assert (c["reward"]["won"], c["reward"]["lost"], c["reward"]["tied"]) == (5, 0, 5)
    assert c["reward"]["delta"]["value"] == 0.5 and c["reward"]["significant"]
    assert [d["task"] for d in c["disagree"]] == [f"test/{t}" for t in range(5, 10)]
    assert c["disagree"][0]["a_rollouts"] == ["a-5-0", "a-5-1"]
    assert report["complete"] and report["warnings"] == []
    text = format_table(report)
    assert "b - a" in text and "5/0/5" in text and "test/5" in text
    assert "| e | a | 10 | 20 | 0.500" in format_markdown(report)
    # missing episodes: flagged incomplete; a model without tool calls and failures are warned about
    part = build_report(header, ["a", "b"], tasks, 2, rows[:25], seed=7)
    assert not part["complete"] and "INCOMPLETE: 25/40" in format_table(part)
    mute = rows_for("m", set(), 10, 1, failure="x")
    mute[0] = EpisodeRow(**{**mute[0].__dict__, "status": "failed", "stop_reason": "engine_error"})
    warned = build_report(header, ["m"], tasks, 1, mute, seed=7)["warnings"]
    assert any("never called a tool in 10 episodes" in w for w in warned)
    assert any("1 episodes failed (engine_error 1)" in w for w in warned)
