"""A finished episode as the bridge hands it to a trajectory sink.

The sink (bridge/trajectory_sink.py) turns it into OpenReward rollout events and
delivers them without ever blocking generation.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bridge.provenance import episode_provenance

if TYPE_CHECKING:
    from bridge.episode import EpisodeResult
    from bridge.tokens import TokenLedger
    from contract.task import TaskMeta

INVOCATION = uuid.uuid4().hex[:12]
"""This process's id (one rollout-only invocation, one training job's rollout process): GRPO
groups are keyed by it, since slime's group indices start over in every process."""


@dataclass
class Trajectory:
    """One episode: the conversation plus what only the trainer knows."""

    run_name: str
    env: str
    split: str | None
    index: int | None
    task_spec: dict[str, Any] | None
    # Chat messages in the tokenizer's format: role, content, and for assistants
    # reasoning_content and tool_calls [{id, name, arguments}]; tool messages carry
    # tool_call_id, name, reward, finished, is_error.
    messages: list[dict[str, Any]]
    turn_rewards: list[float | None]  # raw per-tool-call rewards, None = no reward
    reward: float  # after reduction and clamping
    reward_reduction: str
    stop_reason: str  # a contract.vocab.StopReason value
    status: str  # slime Sample.Status value: completed | truncated | aborted | failed
    num_turns: int
    num_tool_calls: int
    tool_errors: dict[
        str, int
    ]  # kind -> count (parse_error, unknown_tool, invalid_arguments, env_error, ...)
    drift_count: int
    token_ids: list[int]  # prompt + response
    prompt_length: int
    loss_mask: list[int]  # response only
    logprobs: list[float]  # response only
    timings: dict[str, float]  # seconds: generate, env, total, ...
    evaluation: bool = False
    group_index: int | None = None  # GRPO group (within its invocation)
    invocation: str = field(default_factory=lambda: INVOCATION)
    """The process that played it (INVOCATION): with group_index, one prompt's group."""
    sample_index: int | None = None
    rollout_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    """What produced the episode (bridge/provenance.py)."""
    tripwires: list[str] | None = None
    """Episode tripwires the env reported tripped ([]: none); None when the env never checked."""
    tripwire_keys: dict[str, str] = field(default_factory=dict)
    """Group tripwire keys the env reported (contract/env_report.py)."""
    drift: list[dict[str, Any]] = field(default_factory=list)
    """Where the token context diverged, one entry per drift counted (bridge/drift.py)."""
    reward_parts: dict[str, float] = field(default_factory=dict)
    """The env's reward parts, reduced over the episode (contract/env_report.py)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EpisodeTokens:
    """The token side of a trajectory (empty for a chat model, whose server tokenizes)."""

    token_ids: list[int] = field(default_factory=list)  # prompt + response
    prompt_length: int = 0
    loss_mask: list[int] = field(default_factory=list)  # response only
    logprobs: list[float] = field(default_factory=list)  # response only
    drift_count: int = 0

    @classmethod
    def from_ledger(cls, ledger: TokenLedger | None) -> EpisodeTokens:
        """An episode's own ledger (eval); training reads slime's sample instead."""
        if ledger is None:
            return cls()
        return cls(
            list(ledger.ids),
            len(ledger.prompt_ids),
            ledger.loss_mask(),
            ledger.logprobs(),
            ledger.drift_count,
        )


def episode_trajectory(
    run_name: str,
    task: TaskMeta,
    result: EpisodeResult,
    *,
    reward: float,
    status: str,
    tokens: EpisodeTokens,
    tokenizer: dict[str, str],
    sampling_params: dict[str, Any],
    evaluation: bool,
    group_index: int | None,
    sample_index: int | None,
    extra: dict[str, Any],
) -> Trajectory:
    """A finished episode as a trajectory, with its provenance, the env's tripwire verdict and
    drift: what training (bridge/generate.py) and eval (tools/launch/eval) both record."""
    report = result.env_report
    return Trajectory(
        run_name=run_name,
        env=task.env,
        split=task.split,
        index=task.index,
        task_spec=task.task_spec,
        messages=result.messages,
        turn_rewards=list(result.turn_rewards),
        reward=reward,
        reward_reduction=task.reward.reward_reduction,
        stop_reason=result.stop_reason.value,
        status=status,
        num_turns=result.num_turns,
        num_tool_calls=result.num_tool_calls,
        tool_errors=dict(result.tool_errors),
        drift_count=tokens.drift_count,
        token_ids=tokens.token_ids,
        prompt_length=tokens.prompt_length,
        loss_mask=tokens.loss_mask,
        logprobs=tokens.logprobs,
        timings=dict(result.timings),
        evaluation=evaluation,
        group_index=group_index,
        sample_index=sample_index,
        extra=extra,
        provenance=episode_provenance(
            env=task.env,
            split=task.split,
            index=task.index,
            task_spec=task.task_spec,
            env_reported=report.provenance,
            tokenizer=tokenizer,
            sampling_params=sampling_params,
            turn_weight_versions=result.weight_versions,
        ),
        tripwires=list(report.tripwires) if report.checked else None,
        tripwire_keys=dict(report.tripwire_keys),
        drift=list(result.drift),
        reward_parts=dict(result.reward.parts),
    )


class TrajectorySink(Protocol):
    """Accepts finished episodes. `submit` must return at once and never raise."""

    def submit(self, trajectory: Trajectory) -> None: ...
