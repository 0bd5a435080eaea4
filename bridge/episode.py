"""The multi-turn loop of one episode: task -> session -> turns -> model context.

Each turn asks the model for its next assistant turn, executes every tool call it wrote (in
order), and appends the results to the model's context. Env or engine failures end the episode
with a reason, never an exception; the session is deleted at the end, also on cancellation,
unless the episode is suspended for a partial rollout (then `run()` continues it later, same
session).

The loop is the same for every kind of model; only the model step differs (`ModelStep`):

- `TokenModel` (here, what slime trains): token ids in and out of SGLang's `/generate`, the chat
  template's turns appended as token deltas, every token accounted in a `TokenLedger`;
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
from typing import Any, Protocol

from bridge import drift
from bridge.chat import ChatRenderer
from bridge.engine import EngineClient, EngineTurn
from bridge.env_client import EnvSession
from bridge.errors import EngineError, EnvFailure, LedgerError
from bridge.rewards import RewardOutcome, reduce_rewards
from bridge.slime_state import slime_aborted
from bridge.tokens import TokenLedger
from bridge.toolcalls import ParsedCall, ParsedTurn, ToolCall, ToolCallError, parse_turn
from contract.env_report import EnvReport
from contract.task import TaskMeta, ors_tool_to_openai
from contract.vocab import HANDED_BACK_STOPS, INFRA_STOPS, EpisodeStatus, StopReason, ToolErrorKind

NUDGE_TEXT = "You did not call a tool. Continue the task by calling one of the available tools."
ENGINE_ABORT_ATTEMPTS = 3
"""Tries per turn when the engine aborts a generation slime did not abort."""
ENGINE_ABORT_BACKOFF = 0.5
"""Seconds before re-sending an engine-aborted turn (doubled each time)."""
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
class ModelTurn:
    """One assistant turn as the loop sees it, whatever the kind of model."""

    text: str
    """What the model wrote (the decoded sampled tokens, or the message content)."""
    finish_reason: str
    """stop | length | abort"""
    parsed: ParsedTurn | None = None
    """Reasoning, visible content and tool calls in order; None when the turn was aborted."""
    weight_version: str | None = None
    """The policy weight version that sampled the turn, when the engine reports it."""


class ModelStep(Protocol):
    """The model's side of one episode: the only part that differs between kinds of model.

    Lengths are in tokens as far as the model kind knows them (0 until known).
    """

    ledger: TokenLedger | None
    """The episode's token ledger (token models), else None."""
    drift: list[dict[str, Any]]
    """Where the token context diverged (bridge/drift.py; token models), else empty."""

    def start(self, prompt_text: str, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Build the first context; returns the first chat messages (system, user)."""
        ...

    @property
    def prompt_length(self) -> int: ...

    @property
    def context_length(self) -> int:
        """Tokens in the context the next turn continues."""
        ...

    async def sample(self, params: dict[str, Any], known_tools: set[str]) -> ModelTurn:
        """The next assistant turn; `params` are SGLang sampling params with this turn's
        `max_new_tokens`. An aborted turn (finish_reason `abort`) leaves the context as it was,
        so it can be re-sent. Raises EngineError (or LedgerError) when the model fails."""
        ...

    def append_tool_results(self, contents: list[str], limit: int) -> bool:
        """Append the last turn's tool results (one per call, in order); False (and nothing
        appended) when they would reach `limit` tokens."""
        ...

    def append_user(self, text: str, limit: int) -> bool:
        """Like `append_tool_results`, for a user message (the nudge)."""
        ...


class TokenModel:
    """SGLang's /generate, token-exact: the context is a token ledger that only ever appends."""

    def __init__(
        self,
        engine: EngineClient,
        renderer: ChatRenderer,
        routing_key: str,
        routed_experts: bool = False,
    ) -> None:
        self.engine = engine
        self.renderer = renderer
        self.routing_key = routing_key
        self.routed_experts = routed_experts
        self.ledger: TokenLedger | None = None
        self.drift: list[dict[str, Any]] = []
        self._turns = 0
        self._last_text = ""

    def start(self, prompt_text: str, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.ledger = TokenLedger(self.renderer.prompt_ids(prompt_text, tools))
        return self.renderer.prompt_messages(prompt_text)

    @property
    def prompt_length(self) -> int:
        return len(self._ledger.prompt_ids)

    @property
    def context_length(self) -> int:
        return len(self._ledger.ids)

    @property
    def _ledger(self) -> TokenLedger:
        assert self.ledger is not None, "start() first"
        return self.ledger

    async def sample(self, params: dict[str, Any], known_tools: set[str]) -> ModelTurn:
        ledger = self._ledger
        sent_len = len(ledger.ids)
        out = await self.engine.generate(
            ledger.ids, params, self.routing_key, return_routed_experts=self.routed_experts
        )
        if out.aborted:  # the partial turn is dropped: the ledger stays as it was
            return ModelTurn("", "abort", weight_version=out.weight_version)
        ledger.check_context(sent_len, out.meta_info.get("prompt_tokens"))
        if out.ids_mismatch:
            ledger.drift_count += 1
        self._turns += 1  # 1-based, as the episode counts its turns
        self._describe_drift(sent_len, out)
        text = self.renderer.decode(out.output_ids) if out.output_ids else ""
        if out.output_ids:
            ledger.add_sampled(out.output_ids, out.logprobs, text, out.meta_info)
        self._last_text = text
        parsed = parse_turn(text, known_tools, self.renderer.eos_text)
        return ModelTurn(text, out.finish_reason, parsed, out.weight_version)

    def _describe_drift(self, sent_len: int, out: EngineTurn) -> None:
        """Say where this turn's context diverged, when it did (bridge/drift.py)."""
        ledger, decode = self._ledger, self.renderer.tokenizer.decode
        reported = out.meta_info.get("prompt_tokens")
        if isinstance(reported, int) and reported != sent_len:
            event = drift.prompt_mismatch(self._turns, ledger.ids[:sent_len], reported, decode)
            drift.keep(self.drift, event)
        if out.ids_mismatch and out.reported_ids is not None:
            event = drift.output_mismatch(
                self._turns, sent_len, out.output_ids, out.reported_ids, decode
            )
            drift.keep(self.drift, event)

    def append_tool_results(self, contents: list[str], limit: int) -> bool:
        return self._append(*self.renderer.tool_delta(contents, self._last_text), limit)

    def append_user(self, text: str, limit: int) -> bool:
        return self._append(*self.renderer.user_delta(text, self._last_text), limit)

    def _append(self, ids: list[int], text: str, limit: int) -> bool:
        ledger = self._ledger
        if len(ledger.ids) + len(ids) >= limit:
            return False
        ledger.add_appended(ids, text)
        return True


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
                await asyncio.shield(self.session.close())
                self.t_env += time.perf_counter() - t_close
            self.t_total += time.perf_counter() - t0
        reward = reduce_rewards(self.turn_rewards, self.env_finished, self.task.reward)
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

    async def _loop(self) -> tuple[StopReason, EpisodeStatus]:
        model = self.model
        per_turn_cap = int(self.sampling_params.get("max_new_tokens") or 0) or None
        while True:
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
            contents = await self._execute(parsed.calls)
            if self.env_finished:
                return StopReason.ENV_FINISHED, EpisodeStatus.COMPLETED
            if self.num_turns >= self.task.max_turns:
                return StopReason.MAX_TURNS, EpisodeStatus.TRUNCATED
            if not model.append_tool_results(contents, limit):
                return StopReason.CONTEXT_BUDGET, EpisodeStatus.TRUNCATED

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
                self.env_report.read(res.metadata)
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
