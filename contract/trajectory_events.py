"""The rollout-upload wire events (`POST /v1/rollouts`), validated into plain dicts.

OpenReward's upload format: `rollout` (one per episode, trainer fields in its metadata),
`message` (one per conversation item) and `rollout_update` (a later status or reward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, with_config
from typing_extensions import NotRequired, TypedDict

__all__ = [
    "MAX_ABS_REWARD",
    "MAX_TIMESTAMP_MS",
    "NULL",
    "Event",
    "EventBatch",
    "IngestResult",
    "MessageEvent",
    "Rejected",
    "RolloutEvent",
    "RolloutUpdateEvent",
]


# Events are validated into plain dicts (TypedDicts), not model instances: ~30% less validation
# CPU per event and fewer objects for the garbage collector. Optional keys may be absent: use
# .get().
_EVENT_CONFIG = ConfigDict(extra="ignore", allow_inf_nan=False)
# An id is a path segment of the UI's links: "." and ".." would be resolved away by any browser.
_Id = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^(?:[^.]|\.[^.]|\.\.[\s\S])")]
_Json = dict[str, Any] | None
_Int64 = Annotated[
    int, Field(ge=-(2**63), lt=2**63)
]  # SQLite integers: larger ones get a 422, not a failed write
# Event times in ms since the epoch, up to the last millisecond of year 9999 (a later one once
# made its run's pages 500: dates past 9999 cannot be shown).
MAX_TIMESTAMP_MS = 253_402_300_799_999
_Timestamp = Annotated[int, Field(ge=0, le=MAX_TIMESTAMP_MS)]
# Rewards (a message's, and the trainer's in a rollout's metadata): two of 1e308 once summed to
# inf and made every run page 500. Far beyond any real reward, and sums of them stay finite.
MAX_ABS_REWARD = 1e12
_Reward = Annotated[float, Field(ge=-MAX_ABS_REWARD, le=MAX_ABS_REWARD)]


@with_config(_EVENT_CONFIG)
class RolloutEvent(TypedDict):
    """`eventType: "rollout"`: starts a rollout (the SDK's RolloutStartedEvent)."""

    eventType: Literal["rollout"]
    eventId: _Id
    timestamp: _Timestamp
    runName: Annotated[str, Field(min_length=1, max_length=512)]
    step: NotRequired[_Int64 | None]
    environment: NotRequired[str | None]
    environment_id: NotRequired[str | None]
    rolloutName: NotRequired[str | None]
    variant: NotRequired[str | None]
    variant_id: NotRequired[str | None]
    split: NotRequired[str | None]
    metadata: NotRequired[_Json]
    task_spec: NotRequired[_Json]
    run_info: NotRequired[_Json]
    rollout_info: NotRequired[_Json]


MessageType = Literal[
    "system_message", "user_message", "reasoning", "assistant_message", "tool_call", "tool_result"
]


# Optional message fields are always present after validation; an absent one holds NULL (NaN, which
# SQLite stores as NULL), so the writer binds a message's fields straight from the dict.
NULL = math.nan
_OptStr = Annotated[str | None, Field(default=NULL)]


@with_config(_EVENT_CONFIG)
class MessageEvent(TypedDict):
    """`eventType: "message"`: one message of a rollout (the SDK's LogMessageEvent).

    Optional fields the sender left out hold `NULL` (NaN) rather than None."""

    eventType: Literal["message"]
    eventId: _Id
    timestamp: _Timestamp
    index: Annotated[int, Field(ge=0, lt=2**63)]
    rolloutEventId: _Id
    type: MessageType
    content: _OptStr
    contentReference: _OptStr
    summary: _OptStr
    name: _OptStr
    callId: _OptStr
    environment_id: _OptStr
    reward: Annotated[_Reward | None, Field(default=NULL)]
    isFinished: Annotated[bool | None, Field(default=NULL)]
    metadata: Annotated[dict[str, Any] | None, Field(default=None)]


@with_config(_EVENT_CONFIG)
class RolloutUpdateEvent(TypedDict):
    """`eventType: "rollout_update"`: merges `rollout_info` onto the rollout `eventId`."""

    eventType: Literal["rollout_update"]
    eventId: _Id
    timestamp: _Timestamp
    rollout_info: NotRequired[_Json]


Event = Annotated[
    RolloutEvent | MessageEvent | RolloutUpdateEvent, Field(discriminator="eventType")
]


class EventBatch(BaseModel):
    """The body of `POST /v1/rollouts`."""

    # Event ids and texts are unique: caching parsed strings only costs hashing (~10% of
    # validation).
    model_config = ConfigDict(extra="ignore", cache_strings="none")
    events: list[Event] = Field(max_length=20_000)


@dataclass
class Rejected:
    """One event of a batch that was not stored, and why (one line)."""

    index: int
    eventId: str | None
    error: str


@dataclass
class IngestResult:
    """What one batch did: new rows, events already stored (ignored), and events refused."""

    rollouts: int = 0
    messages: int = 0
    updates: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)

    def add(self, other: IngestResult) -> None:
        self.rollouts += other.rollouts
        self.messages += other.messages
        self.updates += other.updates
        self.duplicates += other.duplicates
        self.rejected += other.rejected

    def counts(self) -> dict[str, int]:
        return {
            "rollouts": self.rollouts,
            "messages": self.messages,
            "updates": self.updates,
            "duplicates": self.duplicates,
        }
