"""A finished episode as OpenReward rollout-upload events, and the sink's lines: one episode's
request unit (the spool line), its journal line, and request bodies joined from units.

Event shapes are the `openreward` SDK's (RolloutStartedEvent, LogMessageEvent, RolloutUpdateEvent),
as `contract.trajectory_events` validates them on the receiving side; what only the trainer knows
rides in the rollout event's `metadata` (bridge/trajectory_sink.py lists it). Tool results say
in their metadata whether the env executed the call (`executed`: false for calls the bridge
answered itself).
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from bridge.trajectory import Trajectory
from contract.trajectory_events import MessageType

__all__ = [
    "HARNESS",
    "encode",
    "encode_line",
    "is_unit",
    "journal_line",
    "message_events",
    "request_bodies",
    "trajectory_events",
    "trajectory_from_journal",
]

HARNESS = "slime-envs"


def _event_uuid(rollout_id: str, n: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"slime-envs:{rollout_id}:{n}"))


def _rollout_uuid(rollout_id: str) -> str:
    try:
        return str(uuid.UUID(hex=rollout_id))
    except ValueError:
        return rollout_id


def _args_text(arguments: Any) -> str:
    if isinstance(arguments, str):
        return arguments if arguments.strip() else "{}"
    try:
        return orjson.dumps(arguments).decode()
    except TypeError:
        return str(arguments)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal content parts
        return "\n".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def _strip_none(d: dict[str, Any]) -> dict[str, Any]:
    """Drop None values (recursively in dicts) the way the SDK does before sending."""
    return {k: _strip_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


def message_events(
    rollout_event_id: str,
    messages: list[dict[str, Any]],
    ts: int,
    environment_id: str | None = None,
) -> list[dict[str, Any]]:
    """Chat messages (the bridge's format) as SDK `message` events, in order."""
    out: list[dict[str, Any]] = []
    turn = 0

    def add(kind: MessageType, content: str | None, **fields: Any) -> None:
        n = len(out)
        out.append(
            _strip_none(
                {
                    "eventType": "message",
                    "eventId": _event_uuid(rollout_event_id, n),
                    "timestamp": ts,
                    "index": n,
                    "rolloutEventId": rollout_event_id,
                    "environment_id": environment_id,
                    "type": kind,
                    "content": content,
                    **fields,
                }
            )
        )

    for m in messages:
        role = m.get("role")
        if role == "system":
            add("system_message", _content_text(m.get("content")))
        elif role == "user":
            add("user_message", _content_text(m.get("content")))
        elif role == "assistant":
            turn += 1
            if m.get("reasoning_content"):
                add("reasoning", _content_text(m["reasoning_content"]), metadata={"turn": turn})
            calls = m.get("tool_calls") or []
            text = _content_text(m.get("content"))
            if text or not calls:
                add("assistant_message", text, metadata={"turn": turn})
            for c in calls:
                fn = c.get("function") if isinstance(c.get("function"), dict) else c
                add(
                    "tool_call",
                    # a malformed call has no arguments: show what the model wrote
                    _args_text(fn["arguments"] if "arguments" in fn else fn.get("raw")),
                    name=str(fn.get("name") or "<unnamed>"),
                    callId=c.get("id"),
                    metadata={"turn": turn},
                )
        elif role == "tool":
            add(
                "tool_result",
                _content_text(m.get("content")),
                callId=m.get("tool_call_id"),
                reward=m.get("reward"),
                isFinished=bool(m.get("finished", False)),
                metadata={
                    "turn": turn,
                    "tool": m.get("name"),
                    "is_error": bool(m.get("is_error", False)),
                    "executed": m.get("executed"),
                },
            )
        else:
            add("user_message", _content_text(m.get("content")), metadata={"role": role})
    return out


def trajectory_events(traj: Trajectory, environment_id: str | None = None) -> list[dict[str, Any]]:
    """One finished episode as SDK events: `rollout`, its `message`s, then a `rollout_update`."""
    rid = _rollout_uuid(traj.rollout_id)
    ts = int(traj.created_at * 1000)
    metadata = {
        "source": HARNESS,
        "reward": traj.reward,
        "reward_reduction": traj.reward_reduction,
        "turn_rewards": traj.turn_rewards,
        "stop_reason": traj.stop_reason,
        "status": traj.status,
        "num_turns": traj.num_turns,
        "num_tool_calls": traj.num_tool_calls,
        "tool_errors": traj.tool_errors,
        "drift_count": traj.drift_count,
        "evaluation": traj.evaluation,
        "group_index": traj.group_index,
        "invocation": traj.invocation,
        "sample_index": traj.sample_index,
        "index": traj.index,
        "timings": traj.timings,
        "prompt_length": traj.prompt_length,
        "token_ids": traj.token_ids,
        "loss_mask": traj.loss_mask,
        "logprobs": traj.logprobs,
        "extra": traj.extra or None,
        "provenance": traj.provenance or None,
        "tripwires": traj.tripwires,
        "tripwire_keys": traj.tripwire_keys or None,
        "drift": traj.drift or None,
        "reward_parts": traj.reward_parts or None,
    }
    if isinstance(traj.extra.get("tokenizer"), str):
        metadata["tokenizer"] = traj.extra["tokenizer"]
    name = f"{traj.env}/{traj.split}/{traj.index}" if traj.index is not None else traj.env
    rollout = _strip_none(
        {
            "eventType": "rollout",
            "eventId": rid,
            "timestamp": ts,
            "runName": traj.run_name,
            "rolloutName": name,
            "environment": traj.env,
            "environment_id": environment_id,
            "split": traj.split,
            "metadata": metadata,
            "task_spec": traj.task_spec,
            "run_info": {
                "model_name": str(traj.extra.get("model_name") or "unknown"),
                "run_type": "eval" if traj.evaluation else "train",
                "training_stage": "rl",
                "framework": "slime",
            },
        }
    )
    events = [rollout, *message_events(rid, traj.messages, ts, environment_id)]
    total = traj.timings.get("total") if traj.timings else None
    events.append(
        _strip_none(
            {
                "eventType": "rollout_update",
                "eventId": rid,
                "timestamp": ts,
                "rollout_info": _strip_none(
                    {
                        "task_index": traj.index if traj.index is not None else -1,
                        "duration_ms": int(total * 1000)
                        if isinstance(total, (int, float))
                        else None,
                        "harness": HARNESS,
                    }
                ),
            }
        )
    )
    return events


_UNIT_HEAD = b'{"events":['
_UNIT_TAIL = b"]}"


def encode(traj: Trajectory, environment_id: str | None) -> tuple[list[dict[str, Any]], bytes]:
    """One episode's events and its request unit."""
    events = trajectory_events(traj, environment_id)
    return events, encode_line(events)


def encode_line(events: list[dict[str, Any]]) -> bytes:
    """One spool line / one request unit: {"events": [...]} as JSON (NaN and inf become null)."""
    return orjson.dumps({"events": events}, option=orjson.OPT_SERIALIZE_NUMPY)


def _without_token_arrays(event: dict[str, Any]) -> dict[str, Any]:
    """A rollout event too big for one request (hosted limit): drop the token arrays, say so."""
    meta = {
        k: v
        for k, v in (event.get("metadata") or {}).items()
        if k not in ("token_ids", "loss_mask", "logprobs")
    }
    meta["tokens_omitted"] = "rollout event exceeded the upload size limit"
    return {**event, "metadata": meta}


def is_unit(line: bytes) -> bool:
    """Whether a spool line is a whole request unit ({"events": [{...}, ...]}); torn lines and
    lines of another shape are not."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    events = obj.get("events") if isinstance(obj, dict) else None
    return isinstance(events, list) and all(isinstance(e, dict) for e in events)


def journal_line(traj: Trajectory) -> bytes:
    """One trajectory as its journal line (JSON of the dataclass: ~50 us for a 20-turn episode)."""
    return orjson.dumps(traj, option=orjson.OPT_SERIALIZE_NUMPY)


def trajectory_from_journal(line: bytes) -> Trajectory:
    """A journal line back into its Trajectory; raises ValueError/TypeError on a torn line."""
    obj = orjson.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return Trajectory(**obj)


def request_bodies(
    lines: list[bytes], max_events: int, max_bytes: int, hosted: bool
) -> list[bytes]:
    """Join units (spool lines) into request bodies of at most `max_events` / `max_bytes`; for a
    hosted server event by event, a rollout event too big alone losing its token arrays."""
    if not hosted:
        return _join_units(lines, max_events, max_bytes)
    bodies: list[bytes] = []
    events: list[Any] = []
    size = 0
    for line in lines:
        unit = orjson.loads(line)["events"]
        for ev in unit:
            enc = orjson.dumps(ev)
            if hosted and len(enc) > max_bytes and ev.get("eventType") == "rollout":
                enc = orjson.dumps(_without_token_arrays(ev))
            if events and (len(events) >= max_events or size + len(enc) > max_bytes):
                bodies.append(b'{"events":[' + b",".join(events) + b"]}")
                events, size = [], 0
            events.append(enc)
            size += len(enc) + 1
    if events:
        bodies.append(b'{"events":[' + b",".join(events) + b"]}")
    return bodies


def _join_units(lines: list[bytes], max_events: int, max_bytes: int) -> list[bytes]:
    """Local server: whole trajectories per request, joined without re-parsing the JSON."""
    bodies: list[bytes] = []
    parts: list[bytes] = []
    size = n_events = 0
    for line in lines:
        inner = line[len(_UNIT_HEAD) : -len(_UNIT_TAIL)] if line.startswith(_UNIT_HEAD) else None
        if inner is None or not line.endswith(_UNIT_TAIL):
            inner = orjson.dumps(orjson.loads(line)["events"])[1:-1]
        count = inner.count(b'"eventType":')  # exact: a quote inside a string is escaped
        if parts and (n_events + count > max_events or size + len(inner) > max_bytes):
            bodies.append(_UNIT_HEAD + b",".join(parts) + _UNIT_TAIL)
            parts, size, n_events = [], 0, 0
        if inner:
            parts.append(inner)
            size += len(inner) + 1
            n_events += count
    if parts:
        bodies.append(_UNIT_HEAD + b",".join(parts) + _UNIT_TAIL)
    return bodies
