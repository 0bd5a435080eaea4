"""The rollout-upload endpoints and JSON API, served by `python -m envs.server`, driven over HTTP
and by the stock `openreward` SDK pointed at it with OPENREWARD_API_URL."""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import env_server

pytestmark = pytest.mark.long(2)


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
    cursor = None
    while True:
        page = httpx.get(f"{url}/api/runs", params={"after": cursor} if cursor else {}).json()
        found = [r["id"] for r in page["runs"] if r["name"] == name]
        if found or page["next"] is None:
            return found[0]
        cursor = page["next"]


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
            b'{"events": [{"eventType": "rollout", "eventId": "", "timestamp": 1, "runName": '
            b'"r"}]}',
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


# ---------------------------------------------------------------- hostile uploads (issue 13)


def _rollout(run: str, eid: str, **over: object) -> dict:
    ev: dict = {
        "eventType": "rollout",
        "eventId": eid,
        "timestamp": 1_700_000_000_000,
        "runName": run,
        "environment": "gsm8k",
        "metadata": {"reward": 0.5, "status": "completed", "num_turns": 1},
    }
    ev.update(over)
    return ev


def test_unstorable_events_get_a_422_each_and_the_good_ones_are_stored(traj_server: str) -> None:
    """Schema-valid uploads once broke pages for good (a year-10000 timestamp, rewards of 1e308)
    or got a retriable 503 that sank their whole batch (an integer >= 2**64 in metadata)."""
    run = f"hostile-{uuid.uuid4().hex[:6]}"
    good_id, bad_meta = str(uuid.uuid4()), str(uuid.uuid4())
    evs = [
        _rollout(run, good_id),
        _rollout(run, str(uuid.uuid4()), timestamp=253_402_300_800_000),  # year 10000
        _rollout(run, str(uuid.uuid4()), metadata={"reward": 1e308}),
        _rollout(run, bad_meta, metadata={"reward": 1.0, "big": 2**64}),
        {
            "eventType": "message",
            "eventId": str(uuid.uuid4()),
            "timestamp": 1_700_000_000_000,
            "index": 0,
            "rolloutEventId": good_id,
            "type": "tool_result",
            "content": "kept",
            "reward": 1e300,
        },
        {
            "eventType": "message",
            "eventId": str(uuid.uuid4()),
            "timestamp": 1_700_000_000_000,
            "index": 1,
            "rolloutEventId": good_id,
            "type": "assistant_message",
            "content": "kept too",
            "metadata": {"n": -(2**70)},
        },
        {
            "eventType": "message",
            "eventId": str(uuid.uuid4()),
            "timestamp": 1_700_000_000_000,
            "index": 2,
            "rolloutEventId": good_id,
            "type": "assistant_message",
            "content": "stored",
        },
    ]
    r = httpx.post(f"{traj_server}/v1/rollouts", json={"events": evs}, timeout=60)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["ok"] is False and body["reason"] == "invalid_event" and "\n" not in body["error"]
    assert [x["index"] for x in body["rejected"]] == [1, 2, 3, 4, 5]
    assert body["rejected"][2]["eventId"] == bad_meta
    assert "timestamp" in body["rejected"][0]["error"] and "64-bit" in body["rejected"][2]["error"]
    assert body["rollouts"] == 1 and body["messages"] == 1
    rid = run_id(traj_server, run)
    rows = httpx.get(f"{traj_server}/api/runs/{rid}/rollouts").json()["rollouts"]
    assert [x["event_id"] for x in rows] == [good_id]
    one = httpx.get(f"{traj_server}/api/rollouts/{good_id}").json()
    assert [m["content"] for m in one["messages"]] == ["stored"]
    for path in ("/api/runs", f"/api/runs/{rid}", f"/runs/{rid}", f"/rollouts/{good_id}", "/"):
        assert httpx.get(f"{traj_server}{path}").status_code == 200, path


def test_stored_values_out_of_range_never_break_a_page(tmp_path: Path) -> None:
    """Rows written before the checks above (or by another tool) still render: dates past 9999
    and reward sums that overflow to inf."""
    db = tmp_path / "old.db"
    with env_server("--role", "trajectories", "--db", str(db)) as url:
        ids = [str(uuid.uuid4()) for _ in range(3)]
        evs = [_rollout("old-run", i) for i in ids]
        assert httpx.post(f"{url}/v1/rollouts", json={"events": evs}).status_code == 200
    import sqlite3

    conn = sqlite3.connect(db)
    conn.execute("UPDATE rollouts SET reward = 1e308, ts = 1e13")
    conn.execute("UPDATE run_env_stats SET reward_sum = 3e308, last_ts = 1e13")
    conn.execute("UPDATE run_reward_buckets SET reward_sum = 1e308")
    conn.execute("UPDATE runs SET updated_at = 1e13, created_at = -1e13")
    conn.commit()
    conn.close()
    with env_server("--role", "trajectories", "--db", str(db)) as url:
        rid = run_id(url, "old-run")
        for path in (
            "/",
            "/api/runs",
            f"/api/runs/{rid}",
            f"/runs/{rid}",
            f"/runs/{rid}/chart.svg",
            f"/api/runs/{rid}/reward_series",
            f"/api/runs/{rid}/rollouts?sort=reward",
            f"/rollouts/{ids[0]}",
            f"/api/rollouts/{ids[0]}",
        ):
            r = httpx.get(f"{url}{path}")
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
        assert httpx.get(f"{url}/api/runs").json()["runs"][0]["mean_reward"] is None


def test_integers_past_64_bits_in_paths_and_cursors_are_4xx(traj_server: str) -> None:
    big = "99999999999999999999"
    for path in (f"/api/runs/{big}", f"/api/runs/{big}/rollouts", "/api/runs/-1"):
        assert httpx.get(f"{traj_server}{path}").status_code == 422, path
    assert httpx.get(f"{traj_server}/runs/{big}").status_code == 404
    assert httpx.get(f"{traj_server}/runs/{big}/chart.svg").status_code == 404
    _, evs = events_for("cursor-run", n=1)
    httpx.post(f"{traj_server}/v1/rollouts", json={"events": evs})
    rid = run_id(traj_server, "cursor-run")
    for cursor in (f"1~{big}", "1e999~3", "x" * 5000 + "~1"):
        r = httpx.get(f"{traj_server}/api/runs/{rid}/rollouts", params={"after": cursor})
        assert r.status_code == 422 and r.json()["reason"] == "bad_query", cursor
        assert httpx.get(f"{traj_server}/runs/{rid}", params={"after": cursor}).status_code == 200


def test_links_encode_event_ids(traj_server: str) -> None:
    """Event ids with / ? # % or spaces once made broken links; "." and ".." cannot be a path
    segment in any browser and are refused."""
    import re

    run = f"links-{uuid.uuid4().hex[:6]}"
    odd = ["a/b/../c", "q?x=1&y=2", "h#frag", "50% off", "sp ace", "...", "é/ü"]
    evs = [
        _rollout(run, eid, metadata={"reward": 0.1 * i, "group_index": 1})
        for i, eid in enumerate(odd)
    ]
    assert httpx.post(f"{traj_server}/v1/rollouts", json={"events": evs}).status_code == 200
    page = httpx.get(f"{traj_server}/runs/{run_id(traj_server, run)}").text
    hrefs = re.findall(r'class="rollout-link mono" href="([^"]+)"', page)
    assert len(hrefs) == len(odd)
    seen = set()
    for href in hrefs:
        got = httpx.get(f"{traj_server}{href.replace('&amp;', '&')}")
        assert got.status_code == 200, href
        api = httpx.get(f"{traj_server}/api{href.replace('&amp;', '&')}")
        seen.add(api.json()["event_id"])
    assert seen == set(odd)
    for bad in (".", ".."):
        r = httpx.post(f"{traj_server}/v1/rollouts", json={"events": [_rollout(run, bad)]})
        assert r.status_code == 422 and r.json()["rejected"][0]["index"] == 0


def test_body_over_the_limit_is_refused_before_it_is_read(traj_server: str) -> None:
    """A 512 MiB upload once took the server from 181 MB to 1 GB RSS: refused by Content-Length
    before any of it is read, and while streaming when no length is given."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(traj_server)
    with socket.create_connection((u.hostname, u.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/rollouts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 536870912\r\n\r\n" + b'{"events": ['
        )
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]

    def chunks():
        yield b'{"events": ["'
        for _ in range(80):  # 80 MiB, no Content-Length: refused once past 64 MiB
            yield b"x" * (1 << 20)

    try:
        r = httpx.post(f"{traj_server}/v1/rollouts", content=chunks(), timeout=60)
        assert r.status_code == 413
    except httpx.HTTPError:  # the server may close the connection while we still send
        pass
    assert httpx.get(f"{traj_server}/health").status_code == 200


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_reading_large_rollouts_keeps_memory_bounded(tmp_path: Path) -> None:
    """20 concurrent reads of a 63 MB rollout once took the server from 165 MB to 6.3 GB, and
    3.5 GB stayed after the slow readers left. Reads now stream a page at a time through a fixed
    connection pool: a smaller copy of that test (bench/trajectories.py runs the full one)."""
    import asyncio
    import json
    import sys

    from conftest import free_port, run_process

    n_tokens, n_msgs = 600_000, 60
    rid = str(uuid.uuid4())
    meta = {
        "reward": 1.0,
        "status": "completed",
        "num_turns": 2,
        "prompt_length": 1000,
        "token_ids": [100_000 + i % 50_000 for i in range(n_tokens)],
        "loss_mask": [1] * (n_tokens - 1000),
        "logprobs": [-0.123456789] * (n_tokens - 1000),
    }
    evs = [_rollout("mem-run", rid, metadata=meta)]
    for i in range(n_msgs):
        evs.append(
            {
                "eventType": "message",
                "eventId": str(uuid.uuid4()),
                "timestamp": 1_700_000_000_000,
                "index": i,
                "rolloutEventId": rid,
                "type": "tool_result",
                "content": "y" * 200_000,
            }
        )
    body = json.dumps({"events": evs}).encode()
    del evs, meta
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "envs.server", "--role", "trajectories", "--port", str(port)]
    args += ["--db", str(tmp_path / "mem.db")]
    with run_process(args, f"{url}/health"):
        r = httpx.post(f"{url}/v1/rollouts", content=body, timeout=300)
        assert r.status_code == 200, r.text[:300]
    with run_process(args, f"{url}/health") as proc:  # the rollout is on disk: now the reads
        time.sleep(2)
        idle = peak = _rss_mb(proc.pid)

        async def read(path: str, leave_after: int | None) -> int:
            n = 0
            async with httpx.AsyncClient(timeout=300) as c:
                async with c.stream("GET", f"{url}{path}") as resp:
                    assert resp.status_code == 200
                    async for chunk in resp.aiter_raw(1 << 16):
                        n += len(chunk)
                        if leave_after is not None:
                            await asyncio.sleep(0.001)  # a slow reader, who leaves early
                            if n > leave_after:
                                break
            return n

        async def rounds() -> list[int]:
            nonlocal peak
            sizes: list[int] = []
            for _ in range(2):
                jobs = [read(f"/api/rollouts/{rid}", None if i % 2 else 4 << 20) for i in range(14)]
                jobs += [read(f"/rollouts/{rid}", None) for _ in range(4)]
                task = asyncio.gather(*jobs)
                while not task.done():
                    peak = max(peak, _rss_mb(proc.pid))
                    await asyncio.sleep(0.05)
                sizes += await task
            return sizes

        sizes = asyncio.run(rounds())
        whole = httpx.get(f"{url}/api/rollouts/{rid}", timeout=300).json()
        assert len(whole["tokens"]["token_ids"]) == n_tokens and len(whole["messages"]) == n_msgs
        assert max(sizes) > len(body) * 0.9  # the fast readers got everything
        time.sleep(3)
        after = _rss_mb(proc.pid)
    assert after < 2 * idle, f"RSS idle {idle:.0f} MB, peak {peak:.0f} MB, after {after:.0f} MB"
    assert peak < idle + 500, f"RSS idle {idle:.0f} MB, peak {peak:.0f} MB, after {after:.0f} MB"


# ---------------------------------------------------------------- what stored data cannot break


def test_the_runs_index_pages_over_the_api_and_the_ui(traj_server: str) -> None:
    """100,000 runs once made the runs index 4.6 s and 26 MB: it answers a page at a time."""
    events = [e for i in range(230) for e in events_for(f"paged-{i:03d}", n=0)[1]]
    assert httpx.post(f"{traj_server}/v1/rollouts", json={"events": events}).status_code == 200
    names: list[str] = []
    cursor = None
    while True:
        params = {"limit": 100, **({"after": cursor} if cursor else {})}
        page = httpx.get(f"{traj_server}/api/runs", params=params).json()
        assert len(page["runs"]) <= 100 and page["total"] >= 230
        names += [r["name"] for r in page["runs"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert len(names) == len(set(names)) and {f"paged-{i:03d}" for i in range(230)} <= set(names)
    first = httpx.get(f"{traj_server}/")
    assert first.status_code == 200 and first.text.count('class="run-link"') == 100
    older = first.text.split('id="next" href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    second = httpx.get(f"{traj_server}{older}")
    assert second.status_code == 200 and 'id="first"' in second.text
    assert httpx.get(f"{traj_server}/api/runs", params={"after": "x"}).status_code == 422
    assert httpx.get(f"{traj_server}/", params={"after": "x"}).status_code == 400


def _weird_rollout(run: str, group: int, meta: dict, content: str) -> tuple[str, list[dict]]:
    rid, evs = events_for(run, n=1)
    evs[0]["metadata"] = {"reward": 0.5, "group_index": group, **meta}
    evs[1].update(type="tool_call", name="calculator", content=content)
    return rid, evs


def test_pages_never_5xx_on_stored_content(traj_server: str) -> None:
    """Tool arguments nested past the parser's recursion (a 500 for that rollout's page and for
    every clean rollout of its GRPO group), per-turn rewards that are not numbers: what cannot
    be pretty-printed is shown as text."""
    deep = "[" * 3000 + "1" + "]" * 3000
    rollouts = [
        _weird_rollout("stored-odd", 5, {}, deep),
        _weird_rollout("stored-odd", 5, {}, '{"expression": "2+2"}'),  # clean, same group
        _weird_rollout("stored-odd", 6, {"turn_rewards": ["a", None, {"x": 1}]}, "{}"),
        _weird_rollout("stored-odd", 7, {"timings": {"total": "x"}, "raw_reward": [1]}, "{}"),
    ]
    events = [e for _, evs in rollouts for e in evs]
    assert httpx.post(f"{traj_server}/v1/rollouts", json={"events": events}).status_code == 200
    for rid, _ in rollouts:
        for path in (f"/rollouts/{rid}", f"/api/rollouts/{rid}"):
            r = httpx.get(f"{traj_server}{path}", timeout=60)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
    page = httpx.get(f"{traj_server}/rollouts/{rollouts[0][0]}").text
    assert "[[[[" in page  # shown as the text it is
    run = run_id(traj_server, "stored-odd")
    assert httpx.get(f"{traj_server}/runs/{run}").status_code == 200


def test_the_memory_trimmer_never_runs_a_full_collection() -> None:
    """A full collection walks every live object of the process (the sessions' envs too) while
    holding the GIL: run in the trimmer after each large upload, it stalled the event loop."""
    import gc
    import threading

    from envs.trajectories import memory

    generations: list[int] = []

    def seen(phase: str, info: dict) -> None:
        if phase == "start" and threading.current_thread().name == "malloc-trim":
            generations.append(info["generation"])

    gc.callbacks.append(seen)
    try:
        memory.release_memory_soon()
        deadline = time.monotonic() + 30
        while not generations and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        gc.callbacks.remove(seen)
    assert generations and max(generations) < 2, generations
