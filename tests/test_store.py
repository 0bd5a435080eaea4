"""The SQLite trajectory store: schema versioning, idempotent ingest, derived fields, paging,
stats."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from pathlib import Path

import pytest

from contract.trajectory_events import EventBatch
from envs.trajectories.errors import StoreError
from envs.trajectories.schema import SCHEMA_VERSION, connect, migrate, schema_version
from envs.trajectories.store import RolloutFilter, TrajectoryStore, decode_cursor


def rollout_events(
    run: str = "run-a",
    env: str = "gsm8k",
    reward: float | None = 0.5,
    *,
    split: str = "train",
    status: str = "completed",
    stop: str = "env_finished",
    group: int | None = None,
    ts: int = 1_700_000_000_000,
    n_messages: int = 3,
    explicit: bool = True,
    rid: str | None = None,
) -> tuple[str, list]:
    """One rollout as parsed SDK events (rollout + messages)."""
    rid = rid or uuid.uuid4().hex
    meta = (
        {
            "reward": reward,
            "status": status,
            "stop_reason": stop,
            "num_turns": 1,
            "group_index": group,
            "token_ids": [5, 6, 7, 8],
            "loss_mask": [1, 0],
            "logprobs": [-0.25, None],
            "prompt_length": 2,
        }
        if explicit
        else {"note": "sdk"}
    )
    events = [
        {
            "eventType": "rollout",
            "eventId": rid,
            "timestamp": ts,
            "runName": run,
            "environment": env,
            "split": split,
            "metadata": meta,
        }
    ]
    for i in range(n_messages):
        events.append(
            {
                "eventType": "message",
                "eventId": f"{rid}-m{i}",
                "timestamp": ts,
                "index": i,
                "rolloutEventId": rid,
                "type": "user_message" if i == 0 else "assistant_message",
                "content": f"message {i}",
            }
        )
    return rid, EventBatch.model_validate({"events": events}).events


@pytest.fixture
def store(tmp_path: Path):
    s = TrajectoryStore(tmp_path / "t.db")
    s.start()
    yield s
    s.stop()


def test_schema_is_versioned_and_migration_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    TrajectoryStore(path)
    conn = connect(path)
    assert schema_version(conn) == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert migrate(conn) == SCHEMA_VERSION  # second run: nothing to do
    assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(StoreError, match="newer than this code"):
        TrajectoryStore(path)


def test_unusable_database_gets_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "not.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"cannot open trajectory database .*not\.db"):
        TrajectoryStore(bad)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot open"):
        TrajectoryStore(blocker / "sub" / "t.db")


def test_upgrade_from_schema_v1_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = connect(path)
    assert migrate(conn, target=1) == 1
    conn.execute(
        "INSERT INTO messages(event_id, rollout_event_id, idx, type, content, ts) "
        "VALUES ('m1', 'r1', 0, 'user_message', 'kept', 1.0)"
    )
    conn.close()
    store = TrajectoryStore(path)  # migrates to the current version
    conn = connect(path)
    assert schema_version(conn) == SCHEMA_VERSION
    assert [r["content"] for r in store.messages("r1")] == ["kept"]
    assert [r[2] for r in conn.execute("PRAGMA index_list(messages)") if r[2]] == [
        1
    ]  # one unique index
    # v2 deduplicates per rollout: the same eventId again is ignored
    _rid, events = rollout_events(rid="r1", n_messages=1)
    store.write(events)
    store.write(events)
    assert len(store.messages("r1")) == 2  # 'kept' + message 0, once


def test_views_are_indexed(store: TrajectoryStore) -> None:
    conn = connect(store.path)
    plan = " ".join(
        r[3]
        for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM rollouts WHERE run_id = 1 ORDER BY ts DESC, id "
            "DESC LIMIT 50"
        )
    )
    assert "USING" in plan and "INDEX" in plan and "TEMP B-TREE" not in plan
    plan = " ".join(
        r[3]
        for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM messages WHERE rollout_event_id = 'x' ORDER BY idx"
        )
    )
    assert "USING INDEX sqlite_autoindex_messages" in plan


def test_ingest_is_idempotent_on_event_id(store: TrajectoryStore) -> None:
    _rid, events = rollout_events()
    first = store.submit(events).result(10)
    assert (first.rollouts, first.messages, first.duplicates) == (1, 3, 0)
    again = store.submit(events).result(10)
    assert (again.rollouts, again.messages, again.duplicates) == (0, 0, 4)
    assert store.counts()["rollouts"] == 1 and store.counts()["messages"] == 3
    run = store.list_runs()[0]
    assert run["rollouts"] == 1 and run["mean_reward"] == 0.5


def test_trainer_fields_and_token_arrays_round_trip(store: TrajectoryStore) -> None:
    rid, events = rollout_events(group=7)
    store.submit(events).result(10)
    r = store.get_rollout(rid)
    assert (
        r["status"] == "completed"
        and r["stop_reason"] == "env_finished"
        and r["group_key"] == "train:7"
    )
    assert r["tokens"] == {
        "prompt_length": 2,
        "token_ids": [5, 6, 7, 8],
        "loss_mask": [1, 0],
        "logprobs": [-0.25, None],
    }
    assert "token_ids" not in r["metadata"]  # big arrays live in their own table
    assert [m["content"] for m in r["messages"]] == ["message 0", "message 1", "message 2"]


def test_sdk_style_rollout_gets_reward_and_status_from_messages(store: TrajectoryStore) -> None:
    rid = "sdk-1"
    events = EventBatch.model_validate(
        {
            "events": [
                # messages first, rollout later, update before the rollout: any order must work
                {
                    "eventType": "message",
                    "eventId": "e1",
                    "timestamp": 1,
                    "index": 1,
                    "rolloutEventId": rid,
                    "type": "tool_result",
                    "content": "ok",
                    "reward": 0.25,
                    "isFinished": False,
                },
                {
                    "eventType": "rollout_update",
                    "eventId": rid,
                    "timestamp": 2,
                    "rollout_info": {"task_index": 4},
                },
                {
                    "eventType": "message",
                    "eventId": "e2",
                    "timestamp": 1,
                    "index": 2,
                    "rolloutEventId": rid,
                    "type": "tool_result",
                    "content": "done",
                    "reward": 1.0,
                    "isFinished": True,
                },
            ]
        }
    ).events
    store.submit(events).result(10)
    assert store.get_rollout(rid) is None  # no rollout event yet: not listed anywhere
    assert store.list_runs() == []
    _, start = rollout_events(rid=rid, explicit=False, n_messages=0)
    store.submit(start).result(10)
    r = store.get_rollout(rid)
    assert r["reward"] == 1.0 and r["status"] == "finished" and r["num_messages"] == 2
    assert r["rollout_info"] == {"task_index": 4} and r["task_index"] is None
    assert store.list_runs()[0]["mean_reward"] == 1.0
    run = store.run_id_by_name("run-a")
    assert store.facets(run)["status"] == [
        "finished"
    ]  # 'running' was counted, then moved by the trigger
    assert [p[1:] for p in store.reward_series(run)["series"]["gsm8k"]] == [[1.0, 1]]


def test_run_stats_match_the_rows(store: TrajectoryStore) -> None:
    for i in range(30):
        store.submit(
            rollout_events(
                env=["gsm8k", "whodunit", "haiku"][i % 3],
                reward=i / 30,
                run="r1" if i % 2 else "r2",
            )[1]
        ).result(10)
    conn = connect(store.path)
    expect = {
        (r[0], r[1]): (r[2], r[3])
        for r in conn.execute(
            "SELECT run_id, env, COUNT(*), SUM(reward) FROM rollouts GROUP BY run_id, env"
        )
    }
    got = {
        (r[0], r[1]): (r[2], r[3])
        for r in conn.execute("SELECT run_id, env, n, reward_sum FROM run_env_stats")
    }
    assert got.keys() == expect.keys()
    for k in expect:
        assert got[k][0] == expect[k][0] and got[k][1] == pytest.approx(expect[k][1])
    runs = {r["name"]: r for r in store.list_runs()}
    assert runs["r1"]["rollouts"] == 15 and set(runs["r1"]["envs"]) == {
        "gsm8k",
        "whodunit",
        "haiku",
    }


def test_keyset_pages_cover_every_row_once_in_order(store: TrajectoryStore) -> None:
    batch = []
    for i in range(250):
        batch += rollout_events(
            reward=None if i % 17 == 0 else (i * 37 % 101) / 100,
            ts=1_700_000_000_000 + (i // 3) * 1000,  # ties on ts
            env="gsm8k" if i % 4 else "whodunit",
        )[1]
    store.submit(batch).result(30)
    run = store.run_id_by_name("run-a")
    for sort in ("time", "reward", "turns"):
        for descending in (True, False):
            seen, cursor, pages = [], None, []
            while True:
                page = store.list_rollouts(
                    run, sort=sort, descending=descending, after=cursor, limit=40
                )
                pages.append(page)
                seen += [r["id"] for r in page.rows]
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            assert sorted(seen) == sorted(set(seen)) and len(seen) == 250, sort
            assert pages[0].total == 250
            # walking back from page 3 gives page 2 exactly
            back = store.list_rollouts(
                run, sort=sort, descending=descending, before=pages[2].prev_cursor, limit=40
            )
            assert [r["id"] for r in back.rows] == [r["id"] for r in pages[1].rows]
    rows = []
    cursor = None
    while True:
        page = store.list_rollouts(run, sort="reward", descending=True, after=cursor, limit=100)
        rows += page.rows
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    rewards = [-1e300 if r["reward"] is None else r["reward"] for r in rows]
    assert rewards == sorted(rewards, reverse=True)


def test_filters(store: TrajectoryStore) -> None:
    batch = []
    for i in range(60):
        batch += rollout_events(
            env="gsm8k" if i % 2 else "whodunit",
            reward=i / 60,
            split="train" if i % 3 else "test",
            status="completed" if i % 5 else "truncated",
            stop="env_finished" if i % 5 else "max_turns",
        )[1]
    store.submit(batch).result(30)
    run = store.run_id_by_name("run-a")
    page = store.list_rollouts(run, RolloutFilter(env="gsm8k", min_reward=0.5), limit=500)
    assert page.total == len(page.rows) == 15
    assert all(r["env"] == "gsm8k" and r["reward"] >= 0.5 for r in page.rows)
    page = store.list_rollouts(
        run, RolloutFilter(status="truncated", split="test", max_reward=0.5), limit=500
    )
    assert {r["stop_reason"] for r in page.rows} == {
        "max_turns"
    } and page.total == 3  # i = 0, 15, 30
    facets = store.facets(run)
    assert facets["env"] == ["gsm8k", "whodunit"] and facets["status"] == ["completed", "truncated"]
    with pytest.raises(ValueError, match="bad page cursor"):
        store.list_rollouts(run, after="not-a-cursor")
    with pytest.raises(ValueError, match="unknown sort"):
        store.list_rollouts(run, sort="nope")  # type: ignore[arg-type]


def test_group_and_reward_series(store: TrajectoryStore) -> None:
    batch = []
    for i in range(8):
        batch += rollout_events(
            group=i // 4,
            reward=float(i % 2),
            ts=1_700_000_000_000 + i * 60_000,
            env="gsm8k" if i < 6 else "whodunit",
        )[1]
    store.submit(batch).result(10)
    run = store.run_id_by_name("run-a")
    assert len(store.group(run, "train:0")) == 4 and len(store.group(run, "train:1")) == 4
    series = store.reward_series(run, buckets=4)
    assert set(series["series"]) == {"gsm8k", "whodunit"}
    assert sum(p[2] for pts in series["series"].values() for p in pts) == 8


def test_concurrent_writers_commit_everything(store: TrajectoryStore) -> None:
    ids: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(20):
            rid, events = rollout_events()
            store.submit(events).result(30)
            with lock:
                ids.append(rid)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.counts()["rollouts"] == 120 and store.counts()["messages"] == 360
    conn = sqlite3.connect(store.path)
    assert {r[0] for r in conn.execute("SELECT event_id FROM rollouts")} == set(ids)


def test_a_failing_batch_does_not_sink_its_neighbours(store: TrajectoryStore, monkeypatch) -> None:
    from envs.trajectories import writer as writer_mod

    real = writer_mod.Writer._insert_rollout

    def flaky(self, prepared, run_id, now):
        if prepared.run_name == "boom":
            raise sqlite3.IntegrityError("simulated constraint failure")
        return real(self, prepared, run_id, now)

    monkeypatch.setattr(writer_mod.Writer, "_insert_rollout", flaky)
    good1 = store.submit(rollout_events()[1])
    bad = store.submit(rollout_events(run="boom")[1])
    good2 = store.submit(rollout_events()[1])
    assert good1.result(10).rollouts == 1 and good2.result(10).rollouts == 1
    with pytest.raises(sqlite3.IntegrityError):
        bad.result(10)
    assert store.counts()["rollouts"] == 2 and store.counts()["messages"] == 6


def test_cursor_codec() -> None:
    assert decode_cursor("0.25~12") == (0.25, 12)
    with pytest.raises(ValueError):
        decode_cursor("inf~3")


# ---------------------------------------------------------------- linear ingest


def _twin(i: int) -> list:
    """A rollout of GRPO group 0 whose group tripwire key is the same as every other's."""
    return EventBatch.model_validate(
        {
            "events": [
                {
                    "eventType": "rollout",
                    "eventId": f"twin-{i}",
                    "timestamp": 1_700_000_000_000 + i,
                    "runName": "twins",
                    "metadata": {
                        "reward": 1.0,
                        "group_index": 0,
                        "tripwires": [],
                        "tripwire_keys": {"duplicate_in_group": "same-poem"},
                    },
                }
            ]
        }
    ).events


def _vm_steps(conn: sqlite3.Connection, work) -> int:
    """SQLite virtual-machine instructions `work()` runs on `conn` (a count, not a clock)."""
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0

    conn.set_progress_handler(tick, 10)
    try:
        work()
    finally:
        conn.set_progress_handler(None, 0)
    return steps[0]


def test_a_twin_costs_the_same_however_many_came_before(tmp_path: Path) -> None:
    """Group tripwires cost O(new data): the 400th twin of a key does the work of the 20th
    (each used to trip every earlier twin again: 8,000 twins took 409 s and blocked every
    upload behind them)."""
    from envs.trajectories.writer import Writer

    store = TrajectoryStore(tmp_path / "t.db")
    conn = connect(store.path)
    writer = Writer(conn)

    def add(i: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        writer.apply(_twin(i))
        conn.execute("COMMIT")

    steps = {}
    for i in range(401):
        steps[i] = _vm_steps(conn, lambda i=i: add(i))
    assert steps[400] < 2 * steps[20], (steps[20], steps[400])
    assert store.tripwire_counts(store.run_id_by_name("twins")) == {"duplicate_in_group": 401}
    conn.close()
    store.stop()


def test_an_update_costs_its_own_size_and_updates_merge_in_order(tmp_path: Path) -> None:
    """A rollout_update is stored at the cost of its own size, however large the rollout's info
    has grown (4,000 updates of one rollout took 76 s when each rewrote the growing info);
    reading merges them in order, null deleting a key."""
    from envs.trajectories.writer import Writer

    store = TrajectoryStore(tmp_path / "t.db")
    rid, events = rollout_events(rid="upd-1")
    store.write(events)
    conn = connect(store.path)
    conn.execute("PRAGMA wal_autocheckpoint=0")  # the WAL grows by what each commit writes
    writer = Writer(conn)
    wal = Path(f"{store.path}-wal")

    def update(info: dict) -> int:
        before = wal.stat().st_size if wal.exists() else 0
        conn.execute("BEGIN IMMEDIATE")
        writer.apply(
            EventBatch.model_validate(
                {
                    "events": [
                        {
                            "eventType": "rollout_update",
                            "eventId": rid,
                            "timestamp": 1,
                            "rollout_info": info,
                        }
                    ]
                }
            ).events
        )
        conn.execute("COMMIT")
        return wal.stat().st_size - before

    written = [update({f"k{i}": "x" * 2000}) for i in range(300)]
    assert written[299] <= 2 * written[20] + 8192, (written[20], written[299])
    update({"k0": None, "k1": {"nested": True}})
    info = store.get_rollout(rid)["rollout_info"]
    assert "k0" not in info and info["k1"] == {"nested": True} and info["k299"] == "x" * 2000
    assert len(info) == 299
    conn.close()
    store.stop()


def test_the_runs_index_pages(tmp_path: Path) -> None:
    store = TrajectoryStore(tmp_path / "t.db")
    for i in range(230):
        store.write(rollout_events(run=f"run-{i:03d}", ts=1_700_000_000_000 + i)[1])
    seen: list[str] = []
    cursor = None
    while True:
        page = store.runs_page(100, cursor)
        assert len(page.runs) <= 100 and page.total == 230
        seen += [r["name"] for r in page.runs]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 230
    updated = {r["name"]: r["updated_at"] for r in store.list_runs()}
    assert [updated[n] for n in seen] == sorted(updated.values(), reverse=True)
    assert page.runs[-1]["rollouts"] == 1 and page.runs[-1]["mean_reward"] == 0.5
    with pytest.raises(ValueError):
        store.runs_page(100, "not-a-cursor")
    store.stop()
