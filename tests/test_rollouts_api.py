"""The rollout-upload endpoints and JSON API, served by `python -m envs.server`, driven over HTTP
and by the stock `openreward` SDK pointed at it with OPENREWARD_API_URL."""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import env_server


@pytest.fixture(scope="module")
def traj_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("api") / "trajectories.db"
    with env_server("--role", "trajectories", "--db", str(db)) as url:
        yield url


def events_for(
    run: str, env: str = "gsm8k", reward: float = 1.0, n: int = 4
) -> tuple[str, list[dict]]:
    rid = str(uuid.uuid4())
    evs = [
        {
            "eventType": "rollout",
            "eventId": rid,
            "timestamp": 1_700_000_000_000,
            "runName": run,
            "environment": env,
            "split": "train",
            "metadata": {"reward": reward, "status": "completed"},
        }
    ]
    for i in range(n):
        evs.append(
            {
                "eventType": "message",
                "eventId": str(uuid.uuid4()),
                "timestamp": 1_700_000_000_000,
                "index": i,
                "rolloutEventId": rid,
                "type": "assistant_message",
                "content": f"m{i}",
            }
        )
    return rid, evs


def run_id(url: str, name: str) -> int:
    runs = httpx.get(f"{url}/api/runs").json()["runs"]
    return next(r["id"] for r in runs if r["name"] == name)


def test_stock_sdk_uploads_to_our_server(traj_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENREWARD_API_URL", traj_server)
    from openreward import OpenReward
    from openreward.api.rollouts.serializers.base import (
        AssistantMessage,
        ReasoningItem,
        SystemMessage,
        ToolCall,
        ToolResult,
        UserMessage,
    )
    from openreward.models import RolloutInfo, RunInfo

    client = OpenReward(
        api_key="local-key", run_info=RunInfo(model_name="tiny-qwen3", run_type="train")
    )
    api = client.rollout
    try:
        rollout = api.create(
            run_name="sdk-run",
            environment="acme/whodunit",
            split="train",
            metadata={"note": "from the SDK"},
            task_spec={"case": 3},
        )
        assert not rollout._rollouts_disabled  # the synchronous rollout start reached our server
        rollout.log(SystemMessage(content="You are a detective."))
        rollout.log(UserMessage(content="Who did it? <b>bold</b>"))
        rollout.log(ReasoningItem(content="The butler had the key."))
        rollout.log(ToolCall(name="submit_answer", content='{"who": "Butler"}', call_id="c1"))
        rollout.log(
            ToolResult(content="correct", call_id="c1"),
            reward=1.0,
            is_finished=True,
            rollout_info=RolloutInfo(task_index=3, duration_ms=1200),
        )
        rollout.log(AssistantMessage(content="Solved."))
    finally:
        api.close()
    r = httpx.get(f"{traj_server}/api/rollouts/{rollout.event_id}").json()
    assert r["run_name"] == "sdk-run" and r["env"] == "acme/whodunit"
    assert (
        r["environment_id"] == "local:acme/whodunit"
    )  # fetched by the SDK from our /v1/environments
    assert r["task_spec"] == {"case": 3} and r["run_info"]["model_name"] == "tiny-qwen3"
    assert [m["type"] for m in r["messages"]] == [
        "system_message",
        "user_message",
        "reasoning",
        "tool_call",
        "tool_result",
        "assistant_message",
    ]
    assert r["messages"][3]["name"] == "submit_answer" and r["messages"][3]["call_id"] == "c1"
    assert r["reward"] == 1.0 and r["status"] == "finished"
    assert r["rollout_info"]["task_index"] == 3 and r["rollout_info"]["duration_ms"] == 1200


def test_environment_lookup_matches_sdk(traj_server: str) -> None:
    r = httpx.get(f"{traj_server}/v1/environments/GeneralReasoning/Whodunnit")
    assert r.status_code == 200 and r.json()["id"] == "local:GeneralReasoning/Whodunnit"
    assert httpx.get(f"{traj_server}/v1/environments/a/b/variants").json() == []


def test_batch_is_idempotent(traj_server: str) -> None:
    rid, evs = events_for("idem-run")
    first = httpx.post(f"{traj_server}/v1/rollouts", json={"events": evs}).json()
    assert (
        first["ok"]
        and first["rollouts"] == 1
        and first["messages"] == 4
        and first["duplicates"] == 0
    )
    second = httpx.post(f"{traj_server}/v1/rollouts", json={"events": evs}).json()
    assert second["rollouts"] == 0 and second["messages"] == 0 and second["duplicates"] == 5
    rows = httpx.get(f"{traj_server}/api/runs/{run_id(traj_server, 'idem-run')}/rollouts").json()
    assert rows["total"] == 1
    assert len(httpx.get(f"{traj_server}/api/rollouts/{rid}").json()["messages"]) == 4


@pytest.mark.parametrize(
    "body, status, reason",
    [
        (b"{not json", 400, "bad_json"),
        (b'{"events": [{"eventType": "message"}]}', 422, "invalid_event"),
        (
            b'{"events": [{"eventType": "telemetry", "eventId": "x", "timestamp": 1}]}',
            422,
            "invalid_event",
        ),
        (b'{"events": "nope"}', 422, "invalid_event"),
        (
            b'{"events": [{"eventType": "message", "eventId": "x", "timestamp": 1, "index": 0, '
            b'"rolloutEventId": "r", "type": "tool_result", "reward": NaN}]}',
            422,
            "invalid_event",
        ),
        (
            b'{"events": [{"eventType": "message", "eventId": "x", "timestamp": 1, "index": -1, '
            b'"rolloutEventId": "r", "type": "user_message"}]}',
            422,
            "invalid_event",
        ),
        (
            b'{"events": [{"eventType": "rollout", "eventId": "", "timestamp": 1, "runName": "r"}]}',
            422,
            "invalid_event",
        ),
    ],
)
def test_bad_input_gets_a_typed_error_and_stores_nothing(
    traj_server: str, body: bytes, status: int, reason: str
) -> None:
    before = httpx.get(f"{traj_server}/api/runs").json()
    r = httpx.post(
        f"{traj_server}/v1/rollouts", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == status
    err = r.json()
    assert err["ok"] is False and err["reason"] == reason
    assert "\n" not in err["error"] and err["error"]
    assert httpx.get(f"{traj_server}/health").status_code == 200
    assert httpx.get(f"{traj_server}/api/runs").json() == before


def test_oversized_batch_is_refused(traj_server: str) -> None:
    evs = [
        {"eventType": "rollout_update", "eventId": f"u{i}", "timestamp": 1} for i in range(20_001)
    ]
    r = httpx.post(f"{traj_server}/v1/rollouts", json={"events": evs}, timeout=60)
    assert r.status_code == 422 and "at most 20000" in r.json()["error"]


def test_concurrent_uploads_all_land(traj_server: str) -> None:
    batches = [
        events_for("conc-run", env=["gsm8k", "whodunit"][i % 2], reward=i % 2) for i in range(60)
    ]

    def post(ev: list[dict]) -> int:
        return httpx.post(f"{traj_server}/v1/rollouts", json={"events": ev}, timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert set(pool.map(post, [b[1] for b in batches])) == {200}
    rid = run_id(traj_server, "conc-run")
    run = httpx.get(f"{traj_server}/api/runs/{rid}").json()
    assert run["rollouts"] == 60 and run["mean_reward"] == pytest.approx(0.5)
    assert {e["env"]: e["n"] for e in run["envs"]} == {"gsm8k": 30, "whodunit": 30}


def test_rollout_list_api_filters_sorts_pages(traj_server: str) -> None:
    evs: list[dict] = []
    for i in range(30):
        evs += events_for("list-run", env="gsm8k" if i % 3 else "whodunit", reward=i / 10, n=1)[1]
    assert httpx.post(f"{traj_server}/v1/rollouts", json={"events": evs}).status_code == 200
    rid = run_id(traj_server, "list-run")
    base = f"{traj_server}/api/runs/{rid}/rollouts"
    r = httpx.get(base, params={"env": "gsm8k", "sort": "reward", "order": "asc", "limit": 7})
    assert "db;dur=" in r.headers["server-timing"]
    page = r.json()
    assert page["total"] == 20 and len(page["rollouts"]) == 7
    rewards = [x["reward"] for x in page["rollouts"]]
    assert rewards == sorted(rewards) and all(x["env"] == "gsm8k" for x in page["rollouts"])
    nxt = httpx.get(
        base,
        params={
            "env": "gsm8k",
            "sort": "reward",
            "order": "asc",
            "limit": 7,
            "after": page["next"],
        },
    ).json()
    assert nxt["rollouts"][0]["reward"] >= rewards[-1]
    assert not {x["event_id"] for x in nxt["rollouts"]} & {x["event_id"] for x in page["rollouts"]}
    ranged = httpx.get(base, params={"min_reward": 1.0, "max_reward": 2.0}).json()
    assert ranged["total"] == 11
    assert httpx.get(base, params={"after": "garbage"}).status_code == 422
    assert httpx.get(base, params={"sort": "sideways"}).status_code == 422
    assert httpx.get(base, params={"limit": 0}).status_code == 422
    assert httpx.get(f"{traj_server}/api/runs/999999").status_code == 404
    assert httpx.get(f"{traj_server}/api/rollouts/nope").json()["reason"] == "not_found"
    series = httpx.get(f"{traj_server}/api/runs/{rid}/reward_series").json()
    assert set(series["series"]) == {"gsm8k", "whodunit"}


def test_db_path_is_configurable_and_survives_restart(tmp_path: Path) -> None:
    db = tmp_path / "nested" / "dir" / "store.db"
    with env_server("--role", "trajectories", "--db", str(db)) as url:
        rid, evs = events_for("persist-run")
        assert httpx.post(f"{url}/v1/rollouts", json={"events": evs}).status_code == 200
    assert db.is_file()
    with env_server("--role", "trajectories", "--db", str(db)) as url:
        assert httpx.get(f"{url}/api/rollouts/{rid}").json()["run_name"] == "persist-run"
