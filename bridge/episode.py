"""The multi-turn loop of one episode: task -> session -> turns -> model context.

Each turn asks the model for its next assistant turn, executes every tool call it wrote (in
order), and appends the results to the model's context. Env or engine failures end the episode
with a reason, never an exception; the session is deleted at the end, also on cancellation,
unless the episode is suspended for a partial rollout (then `run()` continues it later, same
session).

The loop is the same for every kind of model; only the model step differs (`ModelStep`):

- `TokenModel` (bridge/token_model.py, what slime trains): token ids in and out of SGLang's
  `/generate`, the chat template's turns appended as token deltas, every token accounted in a
  `TokenLedger`;
- the eval's chat model (`tools/eval/chat_model.py`): messages in and out of an
  OpenAI-compatible `/v1/chat/completions`, tool calls parsed by the server.

Check order, each turn:
  1. slime's abort (its `GenerateState.aborted`): stop at once, status aborted (`slime_abort`);
  2. `max_turns`; 3. the remaining context budget (`context_budget`);
  4. the model's turn: an engine-side abort that slime did not ask for (engine restart, weight
     update pause) discards the partial turn and re-sends it, `ENGINE_ABORT_ATTEMPTS` times at
     most, then fails as `engine_error`; an abort while slime aborts ends the episode as in 1.
     In fully-async mode (`hand_back_engine_aborts`) the turn is not re-sent: the episode stops
     as `engine_abort` (status aborted), for slime's worker to requeue and resume;
  5. finish_reason `length` (`response_length`, or `context_budget` when the budget cut it);
  6. no tool call: nudge once or end (`no_tool_call`); 7. the tool calls; env finished
     (`env_finished`); `max_turns`; 8. the appended results must fit the budget
     (`context_budget`).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.env_session import EnvSession
from bridge.errors import EngineError, EnvFailure, LedgerError
from bridge.model_step import ModelStep, ModelTurn
from bridge.rewards import RewardOutcome, reduce_rewards
from bridge.slime_state import slime_aborted
from bridge.tokens import TokenLedger
from bridge.toolcalls import ParsedCall, ParsedTurn, ToolCall, ToolCallError
from contract.env_report import EnvReport
from contract.task import TaskMeta, ors_tool_to_openai
from contract.vocab import HANDED_BACK_STOPS, INFRA_STOPS, EpisodeStatus, StopReason, ToolErrorKind

NUDGE_TEXT = "You did not call a tool. Continue the task by calling one of the available tools."
ENGINE_ABORT_ATTEMPTS = 3
"""Tries per turn when the engine aborts a generation slime did not abort."""
ENGINE_ABORT_BACKOFF = 0.5
"""Seconds before re-sending an engine-aborted turn (doubled each time)."""
ABORT_POLL_S = 0.05
"""How often a turn's tool calls look at slime's abort state while they run."""
_STOP_ABORT = (StopReason.SLIME_ABORT, EpisodeStatus.ABORTED)
_STOP_ENGINE_ABORT = (StopReason.ENGINE_ABORT, EpisodeStatus.ABORTED)


@dataclass
class Budget:
    """Context limits: `max_context_len` if set, else prompt length + `max_response_len`."""

    max_context_len: int | None = None
    max_response_len: int | None = None

    def limit(self, prompt_len: int, fallback_response_len: int) -> int:
        """The total token budget (prompt + response) of an episode with this prompt length."""
        if self.max_context_len:
            return self.max_context_len
        return prompt_len + (self.max_response_len or fallback_response_len)


@dataclass
class EpisodeResult:
    """Everything one episode produced, before it is written into the sample."""

    ledger: TokenLedger | None
    messages: list[dict[str, Any]]
    turn_rewards: list[float | None]
    env_finished: bool
    stop_reason: StopReason
    status: EpisodeStatus
    num_turns: int
    num_tool_calls: int
    tool_errors: dict[str, int]
    """Tool errors by kind (`ToolErrorKind` values)."""
    reward: RewardOutcome
    failure: str | None = None
    session_url: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    env_report: EnvReport = field(default_factory=EnvReport)
    drift: list[dict[str, Any]] = field(default_factory=list)
    weight_versions: list[str | None] = field(default_factory=list)
    """The policy weight version that sampled each turn, in order (None: not reported)."""
    engine_aborts: int = 0
    """Engine-side aborts slime did not ask for; their turns were re-sent."""
    suspended: bool = False
    """Handed back to slime unfinished and kept (session open), to resume later."""

    @property
    def infra_failure(self) -> bool:
        """Lost to the environment, the network or the engine: must never reach the advantages."""
        return self.stop_reason in INFRA_STOPS


class Episode:
    """One episode's state; `run()` drives it to the end, or until slime aborts."""

    def __init__(
        self,
        session: EnvSession,
        model: ModelStep,
        task: TaskMeta,
        sampling_params: dict[str, Any],
        budget: Budget,
        aborted: Callable[[], bool] = slime_aborted,
        hand_back_engine_aborts: bool = False,
    ) -> None:
        self.session = session
        self.model = model
        self.task = task
        self.sampling_params = sampling_params  # never mutated: each turn gets a copy
        self.budget = budget
        self.aborted = aborted
        self.hand_back_engine_aborts = hand_back_engine_aborts
        """Fully-async mode: an engine abort hands the sample back (`engine_abort`), unsent."""
        self._engine_aborted = False
        self.messages: list[dict[str, Any]] = []
        self.turn_rewards: list[float | None] = []
        self.weight_versions: list[str | None] = []
        self.env_finished = False
        self.num_turns = 0
        self.num_tool_calls = 0
        self.engine_aborts = 0
        self.tool_errors: Counter[ToolErrorKind] = Counter()
        self.t_generate = 0.0
        self.t_env = 0.0
        self.t_total = 0.0
        self.env_report = EnvReport()
        self._known_tools: set[str] = set()
        self._started = False
        self._nudged = False
        self._keep_on_abort = False
        self._tools: asyncio.Task[list[str]] | None = None
        """The turn's tool calls, still running when slime aborted a kept episode."""

    @property
    def ledger(self) -> TokenLedger | None:
        """The model's token ledger (token models), else None."""
        return self.model.ledger

    async def run(self, keep_on_abort: bool = False) -> EpisodeResult:
        """Play until the episode ends (or slime aborts); never raises for env or engine failures.
        A suspended episode continues where it stopped. `keep_on_abort`: when the episode is
        handed back to slime (its abort, or an engine abort in fully-async mode) keep the session
        for a later `run()`."""
        t0 = time.perf_counter()
        failure: str | None = None
        stop, status = StopReason.ENGINE_ERROR, EpisodeStatus.FAILED
        self._keep_on_abort = keep_on_abort
        try:
            if not self._started and not self.aborted():  # no new episode once slime aborts
                await self._open()
            stop, status = await self._loop() if self._started else _STOP_ABORT
        except EnvFailure as e:
            stop, status, failure = StopReason.ENV_ERROR, EpisodeStatus.FAILED, str(e)
        except (EngineError, LedgerError) as e:
            stop, status, failure = StopReason.ENGINE_ERROR, EpisodeStatus.FAILED, str(e)
        finally:
            suspended = keep_on_abort and stop in HANDED_BACK_STOPS and self._started
            if not suspended:
                t_close = time.perf_counter()
                await asyncio.shield(self.close())
                self.t_env += time.perf_counter() - t_close
            self.t_total += time.perf_counter() - t0
        reward = reduce_rewards(
            self.turn_rewards, self.env_finished, self.task.reward, self.env_report.rewarded
        )
        return EpisodeResult(
            ledger=self.model.ledger,
            messages=self.messages,
            turn_rewards=self.turn_rewards,
            env_finished=self.env_finished,
            stop_reason=stop,
            status=status,
            num_turns=self.num_turns,
            num_tool_calls=self.num_tool_calls,
            tool_errors={kind.value: n for kind, n in self.tool_errors.items()},
            reward=reward,
            failure=failure,
            session_url=self.session.url,
            env_report=self.env_report,
            drift=self.model.drift,
            timings={"generate": self.t_generate, "env": self.t_env, "total": self.t_total},
            weight_versions=list(self.weight_versions),
            engine_aborts=self.engine_aborts,
            suspended=suspended,
        )

    async def close(self) -> None:
        """Cancel tool calls still running and delete the env session."""
        if self._tools is not None:
            self._tools.cancel()
            await asyncio.gather(self._tools, return_exceptions=True)
            self._tools = None
        await self.session.close()

    async def _open(self) -> None:
        t = time.perf_counter()
        await self.session.open()
        # prepare_tasks.py wrote the task's tool schemas: no need to ask the env
        if self.task.tools:
            prompt_text, ors_tools = await self.session.prompt_text(), []
            tools = self.task.tools
        else:
            prompt_text, ors_tools = await asyncio.gather(
                self.session.prompt_text(), self.session.tools()
            )
            tools = [ors_tool_to_openai(s) for s in ors_tools]
        self.t_env += time.perf_counter() - t
        self._known_tools = {s["name"] for s in ors_tools} or {
            t["function"]["name"] for t in tools if "function" in t
        }
        self.messages = self.model.start(prompt_text, tools)
        self._started = True

    def _turn_params(self, remaining: int, per_turn_cap: int | None) -> dict[str, Any]:
        params = dict(self.sampling_params)
        params["max_new_tokens"] = min(per_turn_cap, remaining) if per_turn_cap else remaining
        floor = params.get("min_new_tokens")
        if isinstance(floor, int) and floor > params["max_new_tokens"]:
            params["min_new_tokens"] = params["max_new_tokens"]  # SGLang rejects min > max
        return params

    async def _sample_turn(self, params: dict[str, Any]) -> ModelTurn | None:
        """One model turn; None when slime aborted. Engine-side aborts are re-sent (bounded)."""
        for attempt in range(ENGINE_ABORT_ATTEMPTS):
            if self.aborted():
                return None
            t = time.perf_counter()
            turn = await self.model.sample(params, self._known_tools)
            self.t_generate += time.perf_counter() - t
            if turn.finish_reason != "abort":
                return turn
            if self.aborted():
                return None  # slime's own abort: the partial turn is dropped, resumed later whole
            self.engine_aborts += 1
            if self.hand_back_engine_aborts:
                self._engine_aborted = True
                return None  # fully-async: back to slime's worker, resumed on the new weights
            if attempt + 1 < ENGINE_ABORT_ATTEMPTS:
                await asyncio.sleep(ENGINE_ABORT_BACKOFF * 2**attempt)
        raise EngineError(
            f"the engine aborted turn {self.num_turns + 1} {ENGINE_ABORT_ATTEMPTS} times "
            "(finish_reason abort)"
        )

    async def _tool_results(self, limit: int) -> tuple[StopReason, EpisodeStatus] | None:
        """Wait for the turn's tool calls and append their results; the episode's end if it
        ends here. slime's abort does not wait for them (issue 21.4): a kept episode leaves
        them running with its session and waits for them when it resumes, otherwise they are
        cancelled."""
        task = self._tools
        assert task is not None
        while not task.done():
            await asyncio.wait((task,), timeout=ABORT_POLL_S)
            if not task.done() and self.aborted():
                if not self._keep_on_abort:  # nobody will read their results
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    self._tools = None
                return _STOP_ABORT
        self._tools = None
        contents = task.result()  # an env failure ends the episode here, as before
        if self.env_finished:
            return StopReason.ENV_FINISHED, EpisodeStatus.COMPLETED
        if self.num_turns >= self.task.max_turns:
            return StopReason.MAX_TURNS, EpisodeStatus.TRUNCATED
        if not self.model.append_tool_results(contents, limit):
            return StopReason.CONTEXT_BUDGET, EpisodeStatus.TRUNCATED
        return None

    async def _loop(self) -> tuple[StopReason, EpisodeStatus]:
        model = self.model
        per_turn_cap = int(self.sampling_params.get("max_new_tokens") or 0) or None
        while True:
            if self._tools is not None:  # a turn's calls, maybe from before a suspension
                limit = self.budget.limit(model.prompt_length, per_turn_cap or 0)
                end = await self._tool_results(limit)
                if end is not None:
                    return end
            if self.aborted():
                return _STOP_ABORT
            if self.num_turns >= self.task.max_turns:
                return StopReason.MAX_TURNS, EpisodeStatus.TRUNCATED
            # a chat model learns its prompt length from the first answer: recompute every turn
            limit = self.budget.limit(model.prompt_length, per_turn_cap or 0)
            remaining = limit - model.context_length
            if remaining <= 0:
                return StopReason.CONTEXT_BUDGET, EpisodeStatus.TRUNCATED
            params = self._turn_params(remaining, per_turn_cap)
            self._engine_aborted = False
            turn = await self._sample_turn(params)
            if turn is None:
                return _STOP_ENGINE_ABORT if self._engine_aborted else _STOP_ABORT
            self.num_turns += 1
            self.weight_versions.append(turn.weight_version)
            parsed = turn.parsed
            if parsed is None:
                raise EngineError(f"turn {self.num_turns}: the model step returned no parse")
            msg = self._assistant_message(parsed)
            if turn.weight_version is not None:
                msg["weight_version"] = turn.weight_version
            self.messages.append(msg)
            if turn.finish_reason == "length":
                cut = params["max_new_tokens"] == remaining
                stop = StopReason.CONTEXT_BUDGET if cut else StopReason.RESPONSE_LENGTH
                return stop, EpisodeStatus.TRUNCATED
            if not parsed.calls:
                if self.task.on_no_tool_call == "nudge" and not self._nudged:
                    self._nudged = True
                    if not model.append_user(NUDGE_TEXT, limit):
                        return StopReason.CONTEXT_BUDGET, EpisodeStatus.TRUNCATED
                    self.messages.append({"role": "user", "content": NUDGE_TEXT})
                    continue
                return StopReason.NO_TOOL_CALL, EpisodeStatus.COMPLETED
            self._tools = asyncio.ensure_future(self._execute(parsed.calls))

    def _assistant_message(self, parsed: ParsedTurn) -> dict[str, Any]:
        """The turn as a chat message; every call gets the episode's id `call_<turn>_<i>`."""
        calls: list[dict[str, Any]] = []
        for i, c in enumerate(parsed.calls):
            c.call_id = f"call_{self.num_turns}_{i}"
            if isinstance(c, ToolCall):
                calls.append({"id": c.call_id, "name": c.name, "arguments": c.arguments})
            else:
                calls.append({"id": c.call_id, "name": c.name, "raw": c.raw, "error": c.kind.value})
        msg: dict[str, Any] = {"role": "assistant", "content": parsed.content}
        if parsed.reasoning is not None:
            msg["reasoning_content"] = parsed.reasoning
        if calls:
            msg["tool_calls"] = calls
        return msg

    async def _execute(self, calls: list[ParsedCall]) -> list[str]:
        """Run the turn's calls in order; malformed ones become error responses the model sees."""
        contents: list[str] = []
        for call in calls:
            self.num_tool_calls += 1
            tool_msg: dict[str, Any] = {
                "role": "tool",
                "tool_call_id": call.call_id,
                "name": call.name,
            }
            error: ToolErrorKind | None
            if self.env_finished:
                text, reward, finished, error = (
                    "Error: the episode has already finished.",
                    None,
                    True,
                    ToolErrorKind.AFTER_FINISH,
                )
            elif isinstance(call, ToolCallError):
                text, reward, finished, error = f"Error: {call.message}", None, False, call.kind
            else:
                t = time.perf_counter()
                res = await self.session.call(call.name, call.arguments)
                self.t_env += time.perf_counter() - t
                text, reward, finished, error = res.text, res.reward, res.finished, res.error_kind
                self.env_report.read(res.metadata, reward)
                tool_msg["executed"] = True
                self.turn_rewards.append(reward)
                if finished:
                    self.env_finished = True
            if error:
                self.tool_errors[error] += 1
            tool_msg.setdefault("executed", False)
            tool_msg.update(content=text, reward=reward, finished=finished, is_error=bool(error))
            self.messages.append(tool_msg)
            contents.append(text)
        return contents
