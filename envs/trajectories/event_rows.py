"""What the rollout-upload events become in the store: the row of a `message` event, the row of
a `rollout` event (trainer fields pulled out of its metadata, token arrays set apart), and the
INSERT statements they feed. Everything that can fail on bad data fails here, before a write.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import orjson

from contract.trajectory_events import MAX_ABS_REWARD, NULL, MessageEvent, RolloutEvent
from envs.trajectories.packing import json_text

__all__ = [
    "ARRAY_KEYS",
    "INSERT_MESSAGES_SQL",
    "INSERT_ROLLOUT_SQL",
    "PreparedRollout",
    "message_row",
]

# Metadata keys the bridge's sink sends that become columns or packed arrays.
ARRAY_KEYS = ("token_ids", "loss_mask", "logprobs")


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) else None


# SQLite stores a bound NaN as NULL. Python's sqlite3 binds a float directly but sends None (and
# bytes) through its adapter lookup first (~0.4 us per parameter), which made NULL columns the
# largest per-row cost of message ingest; nullable parameters are therefore bound as NULL.
# (No column receives a real NaN: events reject NaN, and token logprobs are packed into blobs.)


def _n(value: Any) -> Any:
    """A nullable parameter for a hot INSERT: None becomes NULL (stored as NULL)."""
    return NULL if value is None else value


_MESSAGE_FIELDS = operator.itemgetter(
    "eventId",
    "rolloutEventId",
    "index",
    "type",
    "content",
    "summary",
    "contentReference",
    "name",
    "callId",
    "reward",
    "isFinished",
    "timestamp",
)
INSERT_MESSAGES_SQL = (
    "INSERT OR IGNORE INTO messages(event_id, rollout_event_id, idx, type, content, summary, "
    "content_reference, "
    "name, call_id, reward, is_finished, ts, metadata) VALUES (?,?,?,?,?,?,?,?,?,?,IFNULL(?, "
    "0),? / 1000.0,?)"
)


def message_row(ev: MessageEvent) -> tuple[Any, ...]:
    """The `messages` row of one event, for INSERT_MESSAGES_SQL (raises on unstorable metadata)."""
    meta = ev["metadata"]
    return (*_MESSAGE_FIELDS(ev), NULL if meta is None else orjson.dumps(meta).decode())


def _int64_or_none(value: Any, what: str) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"{what} {value} does not fit a 64-bit integer")
    return value


INSERT_ROLLOUT_SQL = (
    "INSERT INTO rollouts(event_id, run_id, name, env, environment_id, split, step, ts, "
    "status, status_explicit, stop_reason, reward, reward_explicit, "
    "reward_reduction, num_turns, turns_explicit, group_key, task_index, metadata, "
    "task_spec, run_info, rollout_info, updated_at, num_messages) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,"
    "(SELECT COUNT(*) FROM messages WHERE rollout_event_id = ?)) "
    "ON CONFLICT(event_id) DO UPDATE SET run_id = excluded.run_id, name = excluded.name, "
    "env = excluded.env, environment_id = excluded.environment_id, split = excluded.split, "
    "step = excluded.step, ts = excluded.ts, updated_at = excluded.updated_at, "
    "status = excluded.status, status_explicit = excluded.status_explicit, "
    "stop_reason = excluded.stop_reason, reward = excluded.reward, "
    "reward_explicit = excluded.reward_explicit, reward_reduction = excluded.reward_reduction, "
    "num_turns = excluded.num_turns, turns_explicit = excluded.turns_explicit, "
    "group_key = excluded.group_key, task_index = excluded.task_index, "
    "metadata = excluded.metadata, task_spec = excluded.task_spec, run_info = excluded.run_info, "
    "num_messages = excluded.num_messages, "
    "rollout_info = json_patch(IFNULL(rollouts.rollout_info, '{}'), "
    "IFNULL(excluded.rollout_info, '{}')) "
    "WHERE rollouts.run_id IS NULL"
)


@dataclass
class PreparedRollout:
    """A `rollout` event turned into its row: everything that can fail has been done."""

    event_id: str
    run_name: str
    run_info: str | None
    row: tuple[Any, ...]  # the INSERT_ROLLOUT_SQL values between run_id and updated_at
    group_key: str | None
    meta: dict[str, Any]  # without the token arrays
    arrays: dict[str, Any]
    prompt_length: Any
    complete: bool  # reward, status and turns are all stated: nothing to derive from messages

    @classmethod
    def of(cls, ev: RolloutEvent) -> PreparedRollout:
        meta: dict[str, Any] = dict(ev.get("metadata") or {})
        arrays = {k: meta.pop(k) for k in ARRAY_KEYS if k in meta}
        prompt_length = meta.pop("prompt_length", None)
        reward = meta.get("reward")
        if isinstance(reward, bool) or not isinstance(reward, (int, float)):
            reward = None
        elif not (math.isfinite(reward) and abs(reward) <= MAX_ABS_REWARD):
            raise ValueError(f"metadata.reward must be a number within +-{MAX_ABS_REWARD:g}")
        else:
            reward = float(reward)
        status = meta.get("status") if isinstance(meta.get("status"), str) else None
        turns = _int64_or_none(meta.get("num_turns"), "metadata.num_turns")
        group_key = _group_key(meta)
        task_index = meta.get("index")
        if not isinstance(task_index, int):
            task_index = (ev.get("rollout_info") or {}).get("task_index")
        task_index = _int64_or_none(task_index, "task index")
        run_info = json_text(ev.get("run_info"))
        row = (
            _n(ev.get("rolloutName")),
            ev.get("environment") or "",
            _n(ev.get("environment_id")),
            _n(ev.get("split")),
            _n(ev.get("step")),
            ev["timestamp"] / 1000.0,
            status or "running",
            int(status is not None),
            _n(_str_or_none(meta.get("stop_reason"))),
            _n(reward),
            int(reward is not None),
            _n(_str_or_none(meta.get("reward_reduction"))),
            turns or 0,
            int(turns is not None),
            _n(group_key),
            NULL if task_index is None else task_index,
            json_text(meta),
            _n(json_text(ev.get("task_spec"))),
            _n(run_info),
            _n(json_text(ev.get("rollout_info"))),
        )
        return cls(
            event_id=ev["eventId"],
            run_name=ev["runName"],
            run_info=run_info,
            row=row,
            group_key=group_key,
            meta=meta,
            arrays=arrays,
            prompt_length=prompt_length,
            complete=reward is not None and status is not None and turns is not None,
        )


def _group_key(meta: dict[str, Any]) -> str | None:
    """`train|eval:<invocation>:<group_index>`: one prompt's samples from one rollout step of one
    process (slime's group indices start over in every process); `train|eval:<group_index>` for
    senders that name no invocation."""
    group = meta.get("group_index")
    if group is None:
        return None
    kind = "eval" if meta.get("evaluation") else "train"
    inv = meta.get("invocation")
    if isinstance(inv, str) and inv and len(inv) <= 64 and ":" not in inv:
        return f"{kind}:{inv}:{group}"
    return f"{kind}:{group}"
