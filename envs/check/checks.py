"""The conformance checks, each one verdict line with the fix when it fails.

    options       an unknown option is refused by name, the configured ones accepted (in-process)
    tasks         every split has tasks; the same index gives the same task spec, prompt and
                  tools, twice; an index past the end is refused, not crashed on
    tool_schemas  every tool has a usable name, a description and a valid JSON Schema object
    finishes      episodes played with schema-valid arguments end (`finished`) within a bound
    isolation     a session's outputs are the same alone, twice, and beside other sessions
    budget        no hostile input keeps a tool past the server's per-call time budget
    bad_input     no hostile input makes an exception escape a tool (the model sees an error)
    rewards       every reward is a finite number within the declared range
    provenance    every tool output carries `env_provenance` (envs/reporting.py)

The played checks go through the real env server (envs/check/runner.py starts it; the episode
checks are in envs/check/episodes.py); `rewards` and `provenance` judge every tool output the
other checks saw.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from contract.env_report import PROVENANCE_FIELDS, PROVENANCE_KEY
from envs.check.client import CallOutcome, CheckClient, Session

__all__ = ["CHECKS", "Play", "Result", "Settings", "check_options", "run_played_checks", "short"]

CHECKS = (
    "options",
    "tasks",
    "tool_schemas",
    "finishes",
    "isolation",
    "budget",
    "bad_input",
    "rewards",
    "provenance",
)
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what OpenAI-style function calling accepts
PROBE_OPTION = "__envs_check_unknown_option__"

FIX_OPTIONS_UNCHECKED = (
    "validate options with a pydantic model that forbids extra keys "
    "(envs.options.parse_options(Model, options, name), Model with extra='forbid')"
)
FIX_OPTIONS_DEFAULTS = "give every option a default and accept the documented ones"
FIX_OPTIONS_NAME = "name the offending key in the error (envs.options.parse_options does)"
FIX_SPLITS = "list at least one split, and give every listed split tasks"
FIX_GET_TASK = "make get_task work for every index below num_tasks"
FIX_SAME_TASK = "make a task a pure function of (split, index): seed randomness from the index"
FIX_SAME_PROMPT = "build the prompt and the task tools from the task spec alone"
FIX_PAST_END = "raise IndexError for an index out of range"
FIX_TOOLS = "type each tool's input with a pydantic model and give the tool a docstring"
FIX_REWARDS = (
    "keep every reward finite and inside the range, or declare the range the env really uses "
    "(REWARD_RANGE on the class)"
)
FIX_PROVENANCE = (
    "subclass envs.reporting.ReportingEnvironment (it adds provenance to every tool output)"
)


@dataclass(frozen=True)
class Settings:
    """How hard the check plays one environment."""

    tasks_per_split: int = 3
    episodes: int = 4
    max_calls: int = 32
    fuzz_per_tool: int = 80
    tool_budget_s: float = 0.25
    seed: int = 0


@dataclass
class Result:
    """One check's verdict: what was found and, when it failed, the fix."""

    check: str
    ok: bool
    found: str
    fix: str = ""

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        tail = f" -> fix: {self.fix}" if self.fix and not self.ok else ""
        return f"  {mark}  {self.check:<13} {self.found}{tail}"


@dataclass
class Play:
    """One environment on the server, and everything the played checks saw of it."""

    client: CheckClient
    settings: Settings
    reward_range: tuple[float, float]
    range_source: str
    tasks: list[tuple[str, int]] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[CallOutcome] = field(default_factory=list)
    episode: tuple[tuple[str, int], list[tuple[str, dict[str, Any]]]] = (("", 0), [])
    """The longest episode `finishes` played: its task and calls (`isolation` replays them)."""

    def call(self, session: Session, tool: str, args: dict[str, Any]) -> CallOutcome:
        out = session.call(tool, args)
        self.outcomes.append(out)
        return out


def short(value: Any, limit: int = 60) -> str:
    """A value cut to `limit` characters for a verdict line."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...")


# --------------------------------------------------------------------------- options


def check_options(
    cls: type, configure: Callable[[type, dict[str, Any]], None], options: dict[str, Any]
) -> Result:
    """An unknown option must be refused with an error naming it; the given ones accepted."""
    try:
        configure(cls, {PROBE_OPTION: 1})
    except Exception as e:
        refused = str(e)
    else:
        configure(cls, options)
        found = f"configure() accepted the unknown option {PROBE_OPTION!r}"
        return Result("options", False, found, FIX_OPTIONS_UNCHECKED)
    try:
        configure(cls, options)
    except Exception as e:
        found = f"configure({short(options)}) raised {type(e).__name__}: {short(str(e), 120)}"
        return Result("options", False, found, FIX_OPTIONS_DEFAULTS)
    if PROBE_OPTION not in refused:
        found = f"an unknown option was refused without naming it: {short(refused, 100)}"
        return Result("options", False, found, FIX_OPTIONS_NAME)
    given = f" and {short(options)} accepted" if options else ""
    return Result("options", True, f"an unknown option is refused by name{given}")


# --------------------------------------------------------------------------- tasks


def _same_views(play: Play, split: str, index: int) -> Result | None:
    """Two sessions of one task: the same prompt and tools, else the failing Result."""
    views = []
    for _ in range(2):
        session = play.client.open(split, index)
        try:
            views.append((session.prompt(), session.tools()))
        finally:
            session.close()
    (p1, t1), (p2, t2) = views
    if p1 != p2:
        found = f"{split}[{index}] gave two different prompts: {short(p1)} / {short(p2)}"
        return Result("tasks", False, found, FIX_SAME_PROMPT)
    if t1 != t2:
        return Result("tasks", False, f"{split}[{index}] gave two tool lists", FIX_SAME_PROMPT)
    return None


def _same_spec(play: Play, split: str, index: int) -> Result | None:
    answers = [play.client.task(split, index) for _ in range(2)]
    bad = next((r for r in answers if r.status_code != 200), None)
    if bad is not None:
        found = f"get_task({split!r}, {index}) failed: HTTP {bad.status_code} {short(bad.text)}"
        return Result("tasks", False, found, FIX_GET_TASK)
    if answers[0].json() != answers[1].json():
        found = f"{split}[{index}] gave two different task specs"
        return Result("tasks", False, found, FIX_SAME_TASK)
    return None


def check_tasks(play: Play) -> Result:
    c, s = play.client, play.settings
    rng = random.Random(s.seed)
    splits = c.splits()
    if not splits:
        return Result("tasks", False, "no splits listed", FIX_SPLITS)
    problem: Result | None = None
    for split in splits:
        n = c.num_tasks(split)
        if n < 1:
            problem = problem or Result("tasks", False, f"split {split!r} has no tasks", FIX_SPLITS)
            continue
        extra = (rng.randrange(n) for _ in range(max(0, s.tasks_per_split - 2)))
        for index in sorted({0, n - 1, *extra})[: s.tasks_per_split]:
            unusable = _same_spec(play, split, index)
            if unusable is None:  # it opens: later checks may play it, whatever it shows
                play.tasks.append((split, index))
            problem = problem or unusable or _same_views(play, split, index)
        past = c.task(split, n)
        if past.status_code >= 500 and problem is None:
            found = f"get_task({split!r}, {n}) (past the end) crashed: {short(past.text)}"
            problem = Result("tasks", False, found, FIX_PAST_END)
    if problem is not None:
        return problem
    found = f"{len(splits)} split(s); {len(play.tasks)} tasks fetched and opened twice: "
    return Result("tasks", True, found + "same spec, prompt and tools")


# --------------------------------------------------------------------------- tool schemas


def schema_problem(tool: dict[str, Any]) -> str | None:
    """What makes a listed tool unusable by a model, or None."""
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    name, schema = tool.get("name"), tool.get("input_schema")
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        return f"tool name {short(name)} is not 1-64 letters, digits, _ or -"
    if not str(tool.get("description") or "").strip():
        return f"tool {name!r} has no description (the model reads it to choose the tool)"
    if schema is None:
        return None  # a tool without arguments
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return f"tool {name!r}: input_schema is not a JSON Schema object (type: object)"
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as e:
        return f"tool {name!r}: invalid JSON Schema: {short(e.message, 120)}"
    props = schema.get("properties") or {}
    missing = [r for r in schema.get("required") or [] if r not in props]
    if missing:
        return f"tool {name!r}: required {missing} are not among its properties"
    return None


def check_tool_schemas(play: Play) -> Result:
    tools = play.client.tools()
    session = play.client.open(*play.tasks[0])
    try:
        known = {t.get("name") for t in tools}
        tools += [t for t in session.tools() if t.get("name") not in known]
    finally:
        session.close()
    play.tools = tools
    if not tools:
        return Result("tool_schemas", False, "no tools", FIX_TOOLS)
    twice = [n for n, k in Counter(t.get("name") for t in tools).items() if k > 1]
    if twice:
        return Result("tool_schemas", False, f"tool names listed twice: {twice}", FIX_TOOLS)
    for tool in tools:
        problem = schema_problem(tool)
        if problem:
            return Result("tool_schemas", False, problem, FIX_TOOLS)
    found = f"{len(tools)} tool(s), each a valid JSON Schema object with a description"
    return Result("tool_schemas", True, found)


# --------------------------------------------------------------------------- every output


def check_rewards(play: Play) -> Result:
    lo, hi = play.reward_range
    where = f"[{lo:g}, {hi:g}] ({play.range_source})"
    n = 0
    for out in play.outcomes:
        if not out.ok or out.reward is None:
            continue
        n += 1
        r = out.reward
        number = isinstance(r, (int, float)) and not isinstance(r, bool)
        if not number or not math.isfinite(r) or not lo <= r <= hi:
            what = f"{out.tool} {short(out.arguments)} gave reward {str(r)[:40]}"
            found = f"{what}, not a finite number within {where}"
            return Result("rewards", False, found, FIX_REWARDS)
    return Result("rewards", True, f"{n} rewards, all finite and within {where}")


def check_provenance(play: Play) -> Result:
    ok = [o for o in play.outcomes if o.ok]
    if not ok:
        return Result("provenance", False, "no tool call succeeded", "fix the checks above first")
    for out in ok:
        prov = out.metadata.get(PROVENANCE_KEY) if isinstance(out.metadata, dict) else None
        if not isinstance(prov, dict) or not all(
            isinstance(prov.get(k), str) and prov[k] for k in PROVENANCE_FIELDS
        ):
            found = f"{out.tool}'s output carries no {PROVENANCE_KEY} {list(PROVENANCE_FIELDS)}"
            return Result("provenance", False, found, FIX_PROVENANCE)
    return Result("provenance", True, f"all {len(ok)} tool outputs carry {PROVENANCE_KEY}")


def run_played_checks(play: Play) -> list[Result]:
    """The checks that go through the server, in order; a check that cannot run because one
    before it failed says so."""
    from envs.check.episodes import check_finishes, check_isolation, run_fuzz

    results = [check_tasks(play)]
    if not play.tasks:
        why = "not run: no task could be opened"
        return results + [Result(c, False, why, "fix 'tasks' first") for c in CHECKS[2:]]
    results.append(check_tool_schemas(play))
    if not play.tools:
        why = "not run: no tools"
        return results + [Result(c, False, why, "fix 'tool_schemas' first") for c in CHECKS[3:]]
    results.append(check_finishes(play))
    results.append(check_isolation(play))
    results.extend(run_fuzz(play))
    results.append(check_rewards(play))
    results.append(check_provenance(play))
    return results
