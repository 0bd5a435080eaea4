"""`bridge.episode.Episode`'s loop on its own: a scripted env session and a scripted model step.

The whole-episode tests (tests/test_episode.py) run the loop through real servers; these pin the
order of its checks (the `bridge/episode.py` docstring) in milliseconds, each with the check it
must win over set up to fire at the same time: slime's abort, `max_turns`, the context budget, the
engine's own aborts, `length`, no tool call (end or nudge once), the tool calls and the env's
finish, and the budget for the appended results. Every test also checks what reached the env
session (opened once, closed once unless suspended) and what the model was asked.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

import bridge.episode as episode_mod
from bridge.env_session import ToolResult
from bridge.episode import ENGINE_ABORT_ATTEMPTS, NUDGE_TEXT, Budget, Episode
from bridge.errors import EngineError, EnvFailure
from bridge.model_step import ModelTurn
from bridge.toolcalls import ParsedTurn, ToolCall, ToolCallError
from contract.task import TaskMeta
from contract.vocab import EpisodeStatus, StopReason, ToolErrorKind

PROMPT_LEN = 10


@dataclass
class FakeSession:
    """An env session: each call answers from `results` in order; every request is logged."""

    results: list[ToolResult | Exception] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    sid: str | None = None
    url: str = "fake://env"

    async def open(self) -> None:
        self.log.append("open")
        self.sid = "s1"

    async def prompt_text(self) -> str:
        self.log.append("prompt")
        return "Solve it."

    async def tools(self) -> list[dict[str, Any]]:
        self.log.append("tools")
        return [{"name": "act", "description": "", "input_schema": {}}]

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        self.log.append(f"call {name} {arguments}")
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    async def alive(self) -> bool:
        return self.sid is not None

    async def close(self) -> None:
        self.log.append("close")
        self.sid = None


def done(text: str = "ok", reward: float | None = 1.0) -> ToolResult:
    return ToolResult(text=text, reward=reward, finished=True)


def going(text: str = "more", reward: float | None = 0.0) -> ToolResult:
    return ToolResult(text=text, reward=reward, finished=False)


@dataclass
class Say:
    """One scripted model turn: `calls` tool calls (or errors), `tokens` sampled."""

    calls: list[ToolCall | ToolCallError] = field(default_factory=list)
    finish: str = "stop"
    tokens: int = 5
    content: str = "thinking aloud"


def act(n: int = 0) -> ToolCall:
    return ToolCall("act", {"n": n})


class FakeModel:
    """A model step whose context is a count of tokens: the prompt, then each turn's `tokens` and
    each appended message's `append_len`. Logs what the loop asked of it."""

    def __init__(self, turns: list[Say], append_len: int = 3) -> None:
        self.turns = list(turns)
        self.append_len = append_len
        self.ledger = None
        self.drift: list[dict[str, Any]] = []
        self.log: list[str] = []
        self.context = 0

    def start(self, prompt_text: str, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.log.append(f"start {[t['function']['name'] for t in tools]}")
        self.context = PROMPT_LEN
        return [{"role": "user", "content": prompt_text}]

    @property
    def prompt_length(self) -> int:
        return PROMPT_LEN

    @property
    def context_length(self) -> int:
        return self.context

    async def sample(self, params: dict[str, Any], known_tools: set[str]) -> ModelTurn:
        self.log.append(f"sample {params['max_new_tokens']}")
        say = self.turns.pop(0)
        if say.finish == "abort":  # the partial turn is dropped: the context stays as it was
            return ModelTurn("", "abort")
        self.context += say.tokens
        parsed = ParsedTurn(reasoning=None, content=say.content, calls=list(say.calls))
        return ModelTurn(say.content, say.finish, parsed, weight_version="w1")

    def append_tool_results(self, contents: list[str], limit: int) -> bool:
        return self._append(f"tools {contents}", limit)

    def append_user(self, text: str, limit: int) -> bool:
        return self._append(f"user {text}", limit)

    def _append(self, what: str, limit: int) -> bool:
        if self.context + self.append_len >= limit:
            self.log.append(f"refused {what}")
            return False
        self.context += self.append_len
        self.log.append(f"appended {what}")
        return True


class Abort:
    """slime's abort flag: False for the first `after` reads, True from then on."""

    def __init__(self, after: int | None = None) -> None:
        self.after = after
        self.reads = 0

    def __call__(self) -> bool:
        self.reads += 1
        return self.after is not None and self.reads > self.after


def make(
    turns: list[Say],
    results: list[ToolResult | Exception] | None = None,
    *,
    max_turns: int = 5,
    max_context_len: int | None = 1000,
    max_new_tokens: int | None = 100,
    on_no_tool_call: str = "end",
    aborted: Abort | None = None,
    append_len: int = 3,
) -> tuple[Episode, FakeSession, FakeModel]:
    session = FakeSession(list(results or []))
    model = FakeModel(turns, append_len)
    task = TaskMeta(
        env="fake", split="train", index=0, max_turns=max_turns, on_no_tool_call=on_no_tool_call
    )
    params: dict[str, Any] = {"temperature": 1.0}
    if max_new_tokens is not None:
        params["max_new_tokens"] = max_new_tokens
    ep = Episode(
        session, model, task, params, Budget(max_context_len=max_context_len), aborted or Abort()
    )
    return ep, session, model


def run(ep: Episode, **kw: Any):
    return asyncio.run(ep.run(**kw))


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Engine-abort retries re-send at once (the backoff is a wait, not part of the order)."""
    monkeypatch.setattr(episode_mod, "ENGINE_ABORT_BACKOFF", 0.0)


# --- 1. slime's abort --------------------------------------------------------------------------
def test_no_session_is_opened_once_slime_aborts() -> None:
    ep, session, model = make([Say([act()])], aborted=Abort(after=0))
    res = run(ep)
    assert (res.stop_reason, res.status) == (StopReason.SLIME_ABORT, EpisodeStatus.ABORTED)
    assert session.log == ["close"]  # never opened (closing an unopened session is a no-op)
    assert model.log == [] and res.num_turns == 0


def test_slime_abort_wins_over_max_turns_and_the_budget() -> None:
    """1 before 2 and 3: a turn limit already reached and a spent budget lose to slime's abort."""
    ep, session, model = make(
        [Say([act()])], max_turns=0, max_context_len=PROMPT_LEN, aborted=Abort(after=1)
    )
    res = run(ep)
    assert res.stop_reason == StopReason.SLIME_ABORT and res.status == EpisodeStatus.ABORTED
    assert session.log == ["open", "prompt", "tools", "close"]
    assert model.log == ["start ['act']"]  # never sampled


def test_slime_abort_between_turns_keeps_the_session_when_asked_and_resumes_there() -> None:
    # reads: run(), loop turn 1, _sample_turn turn 1, loop turn 2 -> aborted
    abort = Abort(after=3)
    ep, session, _ = make([Say([act(1)]), Say([act(2)])], [going("r1"), done("r2")], aborted=abort)
    first = run(ep, keep_on_abort=True)
    assert first.stop_reason == StopReason.SLIME_ABORT and first.suspended
    assert "close" not in session.log and first.num_turns == 1
    abort.after = None  # slime hands the sample back: the same episode goes on, same session
    second = run(ep, keep_on_abort=True)
    assert (second.stop_reason, second.status) == (StopReason.ENV_FINISHED, EpisodeStatus.COMPLETED)
    assert not second.suspended and second.num_turns == 2
    assert session.log.count("open") == 1 and session.log[-1] == "close"
    assert second.turn_rewards == [0.0, 1.0]


# --- 2. max_turns, 3. the budget -------------------------------------------------------------
def test_max_turns_wins_over_a_spent_budget() -> None:
    ep, _, model = make([Say([act()])], max_turns=0, max_context_len=PROMPT_LEN)
    res = run(ep)
    assert (res.stop_reason, res.status) == (StopReason.MAX_TURNS, EpisodeStatus.TRUNCATED)
    assert model.log == ["start ['act']"]


def test_a_spent_budget_ends_the_episode_before_the_model_is_asked() -> None:
    ep, session, model = make([Say([act()])], max_context_len=PROMPT_LEN)
    res = run(ep)
    assert (res.stop_reason, res.status) == (StopReason.CONTEXT_BUDGET, EpisodeStatus.TRUNCATED)
    assert model.log == ["start ['act']"] and session.log[-1] == "close"


def test_each_turn_asks_for_at_most_what_the_budget_has_left() -> None:
    ep, _, model = make(
        [Say([act()], tokens=20), Say([act()], tokens=20), Say([act()])],
        [going(), going(), done()],
        max_context_len=80,
        max_new_tokens=50,
        append_len=3,
    )
    res = run(ep)
    # 80 - 10 (prompt) = 70 -> the per-turn cap 50; then 80 - 33 = 47; then 80 - 56 = 24
    assert [x for x in model.log if x.startswith("sample")] == [
        "sample 50",
        "sample 47",
        "sample 24",
    ]
    assert res.stop_reason == StopReason.ENV_FINISHED


# --- 4. the engine's own aborts --------------------------------------------------------------
def test_an_engine_abort_resends_the_turn() -> None:
    ep, _, model = make([Say(finish="abort"), Say([act()])], [done()])
    res = run(ep)
    assert res.stop_reason == StopReason.ENV_FINISHED and res.engine_aborts == 1
    assert res.num_turns == 1 and [x for x in model.log if x.startswith("sample")] == [
        "sample 100",
        "sample 100",
    ]


def test_an_engine_that_keeps_aborting_fails_the_episode_as_an_engine_error() -> None:
    ep, session, _ = make([Say(finish="abort")] * ENGINE_ABORT_ATTEMPTS)
    res = run(ep)
    assert (res.stop_reason, res.status) == (StopReason.ENGINE_ERROR, EpisodeStatus.FAILED)
    assert res.infra_failure and res.engine_aborts == ENGINE_ABORT_ATTEMPTS
    assert f"aborted turn 1 {ENGINE_ABORT_ATTEMPTS} times" in (res.failure or "")
    assert res.num_turns == 0 and session.log[-1] == "close"


def test_an_abort_while_slime_aborts_is_slimes_not_the_engines() -> None:
    # reads: run(), loop, _sample_turn before sampling, _sample_turn after the aborted turn
    ep, _, _ = make([Say(finish="abort")], aborted=Abort(after=3))
    res = run(ep)
    assert res.stop_reason == StopReason.SLIME_ABORT and res.engine_aborts == 0


def test_an_engine_error_fails_the_episode_and_closes_the_session() -> None:
    ep, session, model = make([])

    async def broken(params: dict[str, Any], known: set[str]) -> ModelTurn:
        raise EngineError("engine down")

    model.sample = broken  # type: ignore[method-assign]
    res = run(ep)
    assert (res.stop_reason, res.failure) == (StopReason.ENGINE_ERROR, "engine down")
    assert session.log[-1] == "close"


# --- 5. length ---------------------------------------------------------------------------------
def test_length_wins_over_the_turns_tool_calls() -> None:
    """A cut turn's calls are never executed, even complete ones."""
    ep, session, _ = make([Say([act()], finish="length")], [done()])
    res = run(ep)
    assert (res.stop_reason, res.status) == (StopReason.RESPONSE_LENGTH, EpisodeStatus.TRUNCATED)
    assert not [x for x in session.log if x.startswith("call")] and res.num_tool_calls == 0
    assert res.num_turns == 1 and res.messages[-1]["role"] == "assistant"


def test_length_at_the_budgets_edge_is_the_budget() -> None:
    ep, _, model = make([Say([], finish="length")], max_context_len=40, max_new_tokens=100)
    res = run(ep)
    assert model.log[-1] == "sample 30"  # the budget, not the per-turn cap, set max_new_tokens
    assert res.stop_reason == StopReason.CONTEXT_BUDGET


# --- 6. no tool call -------------------------------------------------------------------------
def test_no_tool_call_ends_the_episode() -> None:
    ep, _, _ = make([Say([])])
    res = run(ep)
    assert (res.stop_reason, res.status) == (StopReason.NO_TOOL_CALL, EpisodeStatus.COMPLETED)
    assert res.reward.values == [0.0]  # the env never finished: nonterminal_reward


def test_no_tool_call_nudges_once_then_ends() -> None:
    ep, _, model = make([Say([]), Say([]), Say([act()])], on_no_tool_call="nudge")
    res = run(ep)
    assert res.stop_reason == StopReason.NO_TOOL_CALL and res.num_turns == 2
    assert model.log.count(f"appended user {NUDGE_TEXT}") == 1
    assert [m["role"] for m in res.messages] == ["user", "assistant", "user", "assistant"]


def test_a_nudge_that_does_not_fit_is_the_budget() -> None:
    ep, _, model = make([Say([], tokens=5)], on_no_tool_call="nudge", max_context_len=18)
    res = run(ep)
    assert res.stop_reason == StopReason.CONTEXT_BUDGET and model.log[-1].startswith("refused")


# --- 7. the tool calls, the env's finish, max_turns ---------------------------------------------
def test_calls_run_in_order_and_malformed_ones_become_errors_the_model_sees() -> None:
    bad = ToolCallError(ToolErrorKind.PARSE_ERROR, "not JSON", raw="{oops")
    ep, session, model = make(
        [Say([act(1), bad, act(2)]), Say([act(3)])], [going(), going(), done()]
    )
    res = run(ep)
    assert [x for x in session.log if x.startswith("call")] == [
        "call act {'n': 1}",
        "call act {'n': 2}",
        "call act {'n': 3}",
    ]
    assert model.log[2] == "appended tools ['more', 'Error: not JSON', 'more']"
    assert res.tool_errors == {"parse_error": 1} and res.num_tool_calls == 4
    tool_msgs = [m for m in res.messages if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_msgs] == [
        "call_1_0",
        "call_1_1",
        "call_1_2",
        "call_2_0",
    ]
    assert [m["executed"] for m in tool_msgs] == [True, False, True, True]


def test_the_envs_finish_wins_over_max_turns_and_later_calls_are_refused() -> None:
    ep, session, model = make([Say([act(1), act(2)])], [done()], max_turns=1)
    res = run(ep)
    assert (res.stop_reason, res.status) == (StopReason.ENV_FINISHED, EpisodeStatus.COMPLETED)
    assert [x for x in session.log if x.startswith("call")] == ["call act {'n': 1}"]
    assert res.tool_errors == {ToolErrorKind.AFTER_FINISH.value: 1} and res.turn_rewards == [1.0]
    assert not [x for x in model.log if "tools" in x]  # nothing appended after the end


def test_max_turns_after_the_calls_appends_nothing() -> None:
    ep, session, model = make([Say([act()])], [going()], max_turns=1)
    res = run(ep)
    assert (res.stop_reason, res.status) == (StopReason.MAX_TURNS, EpisodeStatus.TRUNCATED)
    assert len([x for x in session.log if x.startswith("call")]) == 1
    assert not [x for x in model.log if "tools" in x]


def test_an_env_failure_fails_the_episode_as_an_env_error() -> None:
    ep, session, _ = make([Say([act()])], [EnvFailure("env gone")])
    res = run(ep)
    assert (res.stop_reason, res.status) == (StopReason.ENV_ERROR, EpisodeStatus.FAILED)
    assert res.failure == "env gone" and res.infra_failure and session.log[-1] == "close"


# --- 8. the appended results must fit ---------------------------------------------------------
def test_tool_results_that_do_not_fit_are_the_budget() -> None:
    ep, _, model = make([Say([act()], tokens=5)], [going()], max_context_len=18)
    res = run(ep)
    assert (res.stop_reason, res.status) == (StopReason.CONTEXT_BUDGET, EpisodeStatus.TRUNCATED)
    assert model.log[-1].startswith("refused tools") and res.num_tool_calls == 1


# --- the session ends with the episode -------------------------------------------------------
def test_cancellation_still_closes_the_session() -> None:
    ep, session, model = make([])
    started = asyncio.Event()

    async def hang(params: dict[str, Any], known: set[str]) -> ModelTurn:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    model.sample = hang  # type: ignore[method-assign]

    async def main() -> None:
        task = asyncio.create_task(ep.run())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert session.log[-1] == "close"


def test_task_tools_skip_the_envs_tool_listing() -> None:
    ep, session, model = make([Say([])])
    ep.task.tools = [{"type": "function", "function": {"name": "given"}}]
    run(ep)
    assert session.log[:2] == ["open", "prompt"] and "tools" not in session.log
    assert model.log[0] == "start ['given']"
