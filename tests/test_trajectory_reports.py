"""Provenance and tripwires through the real sink encoding and the real SQLite store: provenance
round-trips, episode and group tripwires are stored and filtered in any arrival order, an older
database gets them on upgrade; GRPO advantages equal slime's own formula (torch)."""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from bridge.trajectory import Trajectory
from bridge.trajectory_codec import trajectory_events
from contract.trajectory_events import EventBatch
from envs.trajectories.advantages import group_advantages
from envs.trajectories.schema import connect, migrate
from envs.trajectories.store import RolloutFilter, TrajectoryStore

PROVENANCE = {
    "env": "whodunit",
    "env_version": "0.1.0+0123456789abcdef",
    "task_id": "whodunit/train/2455",
    "task_spec_hash": "fedcba9876543210",
    "tokenizer": "/models/qwen3",
    "tokenizer_hash": "00112233aabbccdd",
    "chat_template_hash": "ddccbbaa33221100",
    "sampling_params": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 512},
    "weight_versions": ["3", "3", "4"],
    "bridge_version": "0.1.0+abcdefabcdefabcd",
}


def traj(run: str = "run", group: int | None = 1, **kw: Any) -> Trajectory:
    base: dict[str, Any] = dict(
        run_name=run,
        env="haiku",
        split="train",
        index=7,
        task_spec=None,
        messages=[{"role": "user", "content": "write"}],
        turn_rewards=[1.0],
        reward=1.0,
        reward_reduction="mean",
        stop_reason="env_finished",
        status="completed",
        num_turns=1,
        num_tool_calls=1,
        tool_errors={},
        drift_count=0,
        token_ids=[1, 2, 3],
        prompt_length=2,
        loss_mask=[1],
        logprobs=[-0.5],
        timings={},
        group_index=group,
    )
    return Trajectory(**{**base, **kw})


def write(store: TrajectoryStore, t: Trajectory) -> str:
    events = EventBatch.model_validate({"events": trajectory_events(t)}).events
    store.write(events)
    return str(uuid.UUID(hex=t.rollout_id))


@pytest.fixture
def store(tmp_path: Path) -> TrajectoryStore:
    return TrajectoryStore(tmp_path / "t.db")


def test_provenance_round_trips_through_the_store(store: TrajectoryStore) -> None:
    drift = [{"turn": 2, "position": 40, "kind": "output_ids", "expected": "a", "got": "b"}]
    rid = write(store, traj(provenance=PROVENANCE, tripwires=[], drift=drift))
    meta = store.get_rollout(rid)["metadata"]
    assert meta["provenance"] == PROVENANCE
    assert meta["drift"] == drift and meta["tripwires"] == []
    # an episode whose env never reported: no provenance, tripwires "not checked" (absent)
    rid = write(store, traj())
    meta = store.get_rollout(rid)["metadata"]
    assert "provenance" not in meta and "tripwires" not in meta


def test_episode_tripwires_are_stored_filtered_and_counted(store: TrajectoryStore) -> None:
    cheat = write(store, traj(tripwires=["solved_without_evidence"], group=None))
    write(store, traj(tripwires=[], group=None))
    run_id = store.run_id_by_name("run")
    page = store.list_rollouts(run_id, RolloutFilter(tripwire="solved_without_evidence"))
    assert [r["event_id"] for r in page.rows] == [cheat] and page.total == 1
    assert page.rows[0]["tripwires"] == "solved_without_evidence"
    assert store.list_rollouts(run_id, RolloutFilter(tripwire="any")).total == 1
    assert store.list_rollouts(run_id).total == 2
    assert store.get_rollout(cheat)["tripwires"] == ["solved_without_evidence"]
    assert store.facets(run_id)["tripwire"] == ["solved_without_evidence"]
    assert store.tripwire_counts(run_id) == {"solved_without_evidence": 1}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_tripwires_match_in_any_arrival_order(store: TrajectoryStore, seed: int) -> None:
    same = {"duplicate_in_group": "k1"}
    members = [
        traj(group=5, tripwire_keys=same),
        traj(group=5, tripwire_keys=same),
        traj(group=5, tripwire_keys={"duplicate_in_group": "k2"}),
        traj(group=6, tripwire_keys=same),  # another group
        traj(run="other", group=5, tripwire_keys=same),  # another run
        traj(group=None, tripwire_keys=same),  # no group
    ]
    random.Random(seed).shuffle(members)
    ids = {id(t): write(store, t) for t in members}
    tripped = {
        ids[id(t)]
        for t in members
        if store.get_rollout(ids[id(t)])["tripwires"] == ["duplicate_in_group"]
    }
    expected = {
        ids[id(t)]
        for t in members
        if t.run_name == "run" and t.group_index == 5 and t.tripwire_keys == same
    }
    assert tripped == expected and len(expected) == 2
    run_id = store.run_id_by_name("run")
    assert store.tripwire_counts(run_id) == {"duplicate_in_group": 2}
    assert store.tripwire_counts(store.run_id_by_name("other")) == {}


def test_an_older_database_gets_its_tripwires_on_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    conn = connect(path)
    assert migrate(conn, target=2) == 2
    conn.execute("INSERT INTO runs(id, name, created_at, updated_at) VALUES (1, 'old', 0, 0)")
    rows = [
        ("a", "train:1", '{"tripwires": ["solved_without_evidence"]}'),
        ("b", "train:1", '{"tripwire_keys": {"duplicate_in_group": "k"}}'),
        ("c", "train:1", '{"tripwire_keys": {"duplicate_in_group": "k"}}'),
        ("d", "train:2", '{"tripwire_keys": {"duplicate_in_group": "k"}}'),
        ("e", "train:1", '{"tripwires": "x", "tripwire_keys": {"duplicate_in_group": 3}}'),
        ("f", "train:1", "not json"),
    ]
    for event_id, group, meta in rows:
        conn.execute(
            "INSERT INTO rollouts(event_id, run_id, env, group_key, metadata) VALUES (?, 1, 'x', "
            "?, ?)",
            (event_id, group, meta),
        )
    conn.close()
    store = TrajectoryStore(path)
    got = {e: store.get_rollout(e)["tripwires"] for e in "abcde"}
    assert got == {
        "a": ["solved_without_evidence"],
        "b": ["duplicate_in_group"],
        "c": ["duplicate_in_group"],
        "d": [],
        "e": [],
    }
    conn = connect(path)
    assert (
        conn.execute("SELECT COUNT(*) FROM rollout_tripwires WHERE event_id = 'f'").fetchone()[0]
        == 0
    )


@pytest.mark.parametrize(
    "rewards",
    [[1.0, 0.0, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0], [0.25, 0.0, 1.0, 0.75, 1 / 3, 0.0, 0.1, 0.9]],
)
def test_advantages_are_slimes(rewards: list[float]) -> None:
    """slime's _post_process_rewards for grpo: (r - mean) / (std + 1e-6), torch's unbiased std."""
    torch = pytest.importorskip("torch", reason="torch is installed by setup.sh --test")
    t = torch.tensor(rewards, dtype=torch.float).reshape(1, -1)
    centered = t - t.mean(dim=-1, keepdim=True)
    normalized = centered / (centered.std(dim=-1, keepdim=True) + 1e-6)
    adv = group_advantages(rewards)
    assert [a.centered for a in adv] == pytest.approx(centered.flatten().tolist(), abs=1e-6)
    assert [a.normalized for a in adv] == pytest.approx(normalized.flatten().tolist(), abs=1e-4)


def test_advantages_of_odd_groups() -> None:
    assert group_advantages([0.7]) == [group_advantages([0.7])[0]]
    assert group_advantages([0.7])[0].normalized is None  # torch's std of one sample is NaN
    assert group_advantages([None, None])[0].centered is None
    mixed = group_advantages([1.0, None, 0.0])
    assert mixed[1].centered is None and mixed[0].centered == 0.5
