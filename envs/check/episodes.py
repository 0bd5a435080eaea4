"""The checks that play episodes: they end, their sessions are isolated, hostile input is bounded.

finishes    round-robin over the tools with schema-valid arguments until `finished`
isolation   the first episode's calls replayed on two fresh sessions, then on two more
            interleaved with a session of another task: every output the same
budget      every tool on the fuzzer's hostile inputs: the server stopped none at its
            per-call time budget (its /metrics count) and none took 10x the budget
bad_input   the same calls: none crashed (HTTP 500, an exception out of the tool)
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from envs.check.checks import Play, Result, short
from envs.check.client import CallOutcome, Session
from envs.check.fuzz import hostile, plausible

__all__ = ["check_finishes", "check_isolation", "run_fuzz"]

Calls = list[tuple[str, dict[str, Any]]]
RETRIES = 2
"""Fresh tries of a call that ran past the budget before it counts (each must run past it too)."""

FIX_FINISH = (
    "end the episode from a tool (ToolOutput(finished=True)): on a final answer, or after a "
    "limit of attempts"
)
FIX_ISOLATION = (
    "keep episode state on self (set in __init__ or setup), never on the class or a module; "
    "seed randomness from the task"
)
FIX_BUDGET = (
    "bound the tool's work on its input (sizes, exponents, loop counts) and answer with an "
    "error message beyond the bounds"
)
FIX_BAD_INPUT = (
    "check the input in the tool and answer with an error message (type the input with a "
    "pydantic model; return ToolOutput with the error)"
)


def _args(tool: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    return plausible(tool.get("input_schema") or {}, rng)


def _play_episode(
    play: Play, split: str, index: int, start: int, rng: random.Random
) -> tuple[bool, Calls]:
    """Round-robin over the tools, from tool `start` on, with plausible arguments until the
    episode ends."""
    calls: Calls = []
    session = play.client.open(split, index)
    try:
        for n in range(play.settings.max_calls):
            tool = play.tools[(start + n) % len(play.tools)]
            args = _args(tool, rng)
            calls.append((tool["name"], args))
            if play.call(session, tool["name"], args).finished:
                return True, calls
        return False, calls
    finally:
        session.close()


def check_finishes(play: Play) -> Result:
    s = play.settings
    rng = random.Random(s.seed + 1)
    tasks = play.tasks[: s.episodes]
    for k, (split, index) in enumerate(tasks):
        done, calls = _play_episode(play, split, index, k, rng)
        if len(calls) > len(play.episode[1]):
            play.episode = ((split, index), calls)
        if not done:
            counts = ", ".join(f"{t} x{k}" for t, k in Counter(t for t, _ in calls).items())
            found = (
                f"{split}[{index}] did not finish after {s.max_calls} calls with schema-valid "
                f"arguments ({counts})"
            )
            return Result("finishes", False, found, FIX_FINISH)
    return Result(
        "finishes",
        True,
        f"{len(tasks)} of {len(tasks)} episodes finished within {s.max_calls} calls",
    )


def _replay(play: Play, session: Session, calls: Calls) -> list[tuple[Any, ...]]:
    return [play.call(session, tool, args).observed() for tool, args in calls]


def _first_difference(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> int:
    return next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)


def check_isolation(play: Play) -> Result:
    (split, index), calls = play.episode
    if not calls:
        return Result("isolation", False, "no episode was played", "fix 'finishes' first")
    other = next((t for t in play.tasks if t != (split, index)), (split, index))
    fresh = [play.client.open(split, index) for _ in range(2)]
    try:
        alone = [_replay(play, x, calls) for x in fresh]
    finally:
        for x in fresh:
            x.close()
    if alone[0] != alone[1]:
        k = _first_difference(alone[0], alone[1])
        found = (
            f"two sessions of {split}[{index}] answered call {k + 1} ({calls[k][0]}) "
            f"differently: {short(alone[0][k][1])} / {short(alone[1][k][1])}"
        )
        return Result("isolation", False, found, FIX_ISOLATION)
    a, b, d = (play.client.open(*t) for t in ((split, index), (split, index), other))
    seen: list[list[tuple[Any, ...]]] = [[], []]
    rng = random.Random(play.settings.seed + 2)
    try:
        for tool, args in calls:
            seen[0].append(play.call(a, tool, args).observed())
            if not d.finished:
                t = play.tools[rng.randrange(len(play.tools))]
                play.call(d, t["name"], _args(t, rng))
            seen[1].append(play.call(b, tool, args).observed())
    finally:
        for x in (a, b, d):
            x.close()
    for got in seen:
        if got != alone[0]:
            k = _first_difference(got, alone[0])
            found = (
                f"call {k + 1} of {split}[{index}] ({calls[k][0]}) answered {short(got[k][1])} "
                f"beside other sessions, {short(alone[0][k][1])} alone"
            )
            return Result("isolation", False, found, FIX_ISOLATION)
    found = f"{len(calls)} calls gave the same outputs alone, twice, and beside 2 other sessions"
    return Result("isolation", True, found)


def _over_budget(play: Play, session: Session, tool: str, args: dict[str, Any]) -> CallOutcome:
    """The call, and whether the server stopped it at its budget (or it took 10x the budget)."""
    before = play.client.budget_stops()
    out = play.call(session, tool, args)
    over = play.client.budget_stops() > before or out.seconds > 10 * play.settings.tool_budget_s
    out.over_budget = over
    return out


def _stays_over_budget(play: Play, tool: str, args: dict[str, Any]) -> bool:
    """A call over the budget, tried again on fresh sessions: over every time (a busy machine can
    stall one step; a slow input is slow on every try)."""
    for _ in range(RETRIES):
        session = play.client.open(*play.tasks[0])
        try:
            if not _over_budget(play, session, tool, args).over_budget:
                return False
        finally:
            session.close()
    return True


def run_fuzz(play: Play) -> tuple[Result, Result]:
    """(budget, bad_input): every tool on hostile inputs; a new session when one finishes."""
    s = play.settings
    rng = random.Random(s.seed + 3)
    task = play.tasks[0]
    session = play.client.open(*task)
    total, slow, crashes = 0, [], []
    slowest = (0.0, "")
    try:
        for tool in play.tools:
            for args in hostile(tool.get("input_schema") or {}, rng, s.fuzz_per_tool):
                if session.finished:
                    session.close()
                    session = play.client.open(*task)
                out = _over_budget(play, session, tool["name"], args)
                total += 1
                what = f"{tool['name']} {short(args)}"
                if out.over_budget and _stays_over_budget(play, tool["name"], args):
                    slow.append(f"{what} ({out.seconds:.2f} s)")
                if out.crashed:
                    crashes.append(f"{what} raised {short(out.error, 100)}")
                slowest = max(slowest, (out.seconds, tool["name"]))
    finally:
        session.close()
    budget = f"the {s.tool_budget_s:g} s budget"
    if slow:
        found = f"{len(slow)} of {total} hostile calls ran past {budget}, e.g. {slow[0]}"
        over = Result("budget", False, found, FIX_BUDGET)
    else:
        found = f"{total} hostile calls, all within {budget} (slowest {slowest[0] * 1000:.0f} ms"
        over = Result("budget", True, f"{found}, {slowest[1]})")
    if crashes:
        found = f"{len(crashes)} of {total} hostile calls raised out of the tool, e.g. {crashes[0]}"
        bad = Result("bad_input", False, found, FIX_BAD_INPUT)
    else:
        found = f"{total} hostile calls: each answered or refused, none raised out of a tool"
        bad = Result("bad_input", True, found)
    return over, bad
