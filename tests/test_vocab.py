"""contract.vocab: every stop reason, status and tool-error kind reads, serialises and is stored as
its plain value, so metadata, W&B keys and store columns stay the text they were before enums."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import orjson
import pytest

from bridge import metrics
from bridge.sample import FallbackSample
from bridge.trajectory import Trajectory
from bridge.trajectory_codec import trajectory_events
from contract.trajectory_events import EventBatch
from contract.vocab import (
    FAILURE_STOPS,
    INFRA_STOPS,
    SERVER_TOOL_ERRORS,
    EpisodeStatus,
    OrsReason,
    StopReason,
    ToolErrorKind,
    ToolRefusal,
)
from envs.server.errors import OrsError
from envs.trajectories.store import TrajectoryStore

VOCABS = (StopReason, EpisodeStatus, ToolErrorKind, OrsReason, ToolRefusal)
MEMBERS = [m for vocab in VOCABS for m in vocab]


@pytest.mark.parametrize("member", MEMBERS, ids=lambda m: f"{type(m).__name__}.{m.name}")
def test_a_member_is_its_value_as_text(member: Any) -> None:
    value = member.value
    assert type(value) is str and member == value and hash(member) == hash(value)
    assert str(member) == f"{member}" == f"{member:>1}" == format(member) == value
    assert "%s" % member == value  # noqa: UP031 (how logging formats its arguments)
    assert json.dumps({member: member}) == json.dumps({value: value})
    assert orjson.dumps([member]) == orjson.dumps([value])
    assert pickle.loads(pickle.dumps(member)) is member
    assert type(member)(value) is member
    assert {value: 1}.get(member) == 1


def test_vocabularies_are_closed_and_documented() -> None:
    for vocab in VOCABS:
        values = [m.value for m in vocab]
        assert len(set(values)) == len(values)
        assert all(m.value == m.name.lower() for m in vocab)
    assert INFRA_STOPS < FAILURE_STOPS <= set(StopReason)
    # the status each member maps to on slime's Sample exists on our stand-in too
    assert {m.name for m in EpisodeStatus} <= set(FallbackSample.Status.__members__)
    from tools.eval.report import FAILURE_KINDS

    assert set(FAILURE_KINDS) == FAILURE_STOPS
    undocumented = {f"{type(m).__name__}.{m.name}" for m in MEMBERS} - _documented_members()
    assert undocumented == set()  # a docstring under every member


def _documented_members() -> set[str]:
    """`Class.NAME` of every class attribute in contract/vocab.py followed by a docstring."""
    import ast

    tree = ast.parse((Path(__file__).parents[1] / "contract" / "vocab.py").read_text())
    found = set()
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for stmt, after in zip(cls.body, cls.body[1:], strict=False):
            documented = (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            )
            if isinstance(stmt, ast.Assign) and documented:
                found |= {f"{cls.name}.{t.id}" for t in stmt.targets if isinstance(t, ast.Name)}
    return found


def test_the_sdk_refusals_are_one_table_for_server_and_client() -> None:
    """Every reason the SDK's tools raise is a ToolRefusal; the server's status for it and the
    client's error kind for it are read from the same member."""
    from typing import get_args

    from openreward.environments import types as sdk_types

    sdk_reasons = set(get_args(sdk_types.RunToolErrorReason))
    assert sdk_reasons
    assert sdk_reasons <= {r.value for r in ToolRefusal}
    for refusal in ToolRefusal:
        assert isinstance(refusal.error_kind, ToolErrorKind)
        if refusal.error_kind in SERVER_TOOL_ERRORS:  # the server's doing: a 5xx, never a 4xx
            assert refusal.status == 503
        else:
            assert 400 <= refusal.status < 500


def test_an_ors_error_body_carries_the_plain_reason() -> None:
    for reason in OrsReason:
        body = orjson.loads(OrsError(400, reason, "msg").body())
        assert body == {"ok": False, "error": "msg", "reason": reason.value, "detail": "msg"}
        assert OrsError(400, reason, "msg").body() == OrsError(400, reason.value, "msg").body()


def _trajectory(stop: StopReason, status: EpisodeStatus, i: int) -> Trajectory:
    """A trajectory carrying enum members where a writer could leak them."""
    return Trajectory(
        run_name="vocab",
        env="gsm8k",
        split="train",
        index=i,
        task_spec=None,
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_calls": []},
        ],
        turn_rewards=[],
        reward=0.0,
        reward_reduction="sum",
        stop_reason=stop,
        status=status,
        num_turns=1,
        num_tool_calls=len(ToolErrorKind),
        tool_errors={k.value: 1 for k in ToolErrorKind},
        drift_count=0,
        token_ids=[1, 2, 3],
        prompt_length=1,
        loss_mask=[1, 1],
        logprobs=[-0.1, -0.2],
        timings={},
        group_index=i,
        sample_index=i,
    )


def test_every_value_round_trips_into_the_store(tmp_path: Path) -> None:
    statuses = list(EpisodeStatus)
    pairs = [(stop, statuses[i % len(statuses)]) for i, stop in enumerate(StopReason)]
    store = TrajectoryStore(tmp_path / "t.db")
    store.start()
    try:
        ids = []
        for i, (stop, status) in enumerate(pairs):
            events = trajectory_events(_trajectory(stop, status, i))
            wire = orjson.loads(orjson.dumps({"events": events}))
            store.submit(EventBatch.model_validate(wire).events).result(10)
            ids.append(events[0]["eventId"])
        for rid, (stop, status) in zip(ids, pairs, strict=True):
            r = store.get_rollout(rid)
            assert type(r["stop_reason"]) is str and r["stop_reason"] == stop.value
            assert type(r["status"]) is str and r["status"] == status.value
            kinds = r["metadata"]["tool_errors"]
            assert list(kinds) == [k.value for k in ToolErrorKind]
    finally:
        store.stop()


def test_every_value_round_trips_into_the_metric_keys() -> None:
    def batch(text: bool) -> list[FallbackSample]:
        out = []
        for i, stop in enumerate(StopReason):
            status = list(EpisodeStatus)[i % len(EpisodeStatus)]
            md = {
                "env": "gsm8k",
                "stop_reason": stop.value if text else stop,
                "num_turns": 1,
                "num_tool_calls": 1,
                "tool_errors": {(k.value if text else k): 1 for k in ToolErrorKind},
            }
            s = FallbackSample(metadata=md, reward=0.0)
            s.status = FallbackSample.Status[status.name]
            out.append(s)
        return out

    with_members = metrics.episode_metrics(batch(text=False))["all"]
    with_text = metrics.episode_metrics(batch(text=True))["all"]
    assert with_members == with_text
    assert all(type(k) is str for k in with_members)
    keys = set(with_text)
    assert {f"stop/{m.value}" for m in StopReason} <= keys
    assert {f"status/{m.value}" for m in EpisodeStatus} <= keys
    assert {f"tool_errors/{m.value}" for m in ToolErrorKind} <= keys
    assert with_text["parse_errors"] == float(len(StopReason))
