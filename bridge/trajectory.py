"""A finished episode as the bridge hands it to a trajectory sink.

The sink (bridge/trajectory_sink.py) turns it into OpenReward rollout events and
delivers them without ever blocking generation.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


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
    stop_reason: str  # a bridge.vocab.StopReason value
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
    group_index: int | None = None  # GRPO group
    sample_index: int | None = None
    rollout_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    """What produced the episode (bridge/provenance.py)."""
    tripwires: list[str] | None = None
    """Episode tripwires the env reported tripped ([]: none); None when the env never checked."""
    tripwire_keys: dict[str, str] = field(default_factory=dict)
    """Group tripwire keys the env reported (bridge/env_report.py)."""
    drift: list[dict[str, Any]] = field(default_factory=list)
    """Where the token context diverged, one entry per drift counted (bridge/drift.py)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrajectorySink(Protocol):
    """Accepts finished episodes. `submit` must return at once and never raise."""

    def submit(self, trajectory: Trajectory) -> None: ...
