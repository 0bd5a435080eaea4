"""`python -m envs replay`: episodes the bridge played (scripted engine, real env server, real
store) replay identically in-process and on the server, and an env made nondeterministic is
reported."""

from __future__ import annotations

import argparse
import asyncio
import io
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO, env_server
from generate_helpers import call, make_args, make_sample, open_sessions, recording_stub, run, turn
from ors_episodes import PERFECT_HAIKU

from bridge.generate import close_clients, set_trajectory_sink
from bridge.trajectory_uploader import SinkSettings, TrajectoryUploader
from envs.whodunit import WhoDunIt
from tools import replay

INFO = ["list_suspects", "list_weapons", "list_locations", "list_motives"]


def _episodes(tok: Any) -> dict[str, tuple[dict[str, Any], list[Any]]]:
    """session key -> (task, scripted turns): one episode per env, with calls the bridge answers
    itself."""
    from envs.gsm8k import GSM8K

    label = GSM8K.load_split("test")[0]["label"]
    answer = WhoDunIt.case_for("test", 0).answer()
    return {
        "r-gsm8k": (
            {"env": "gsm8k", "split": "test", "index": 0},
            [
                turn(
                    tok,
                    call("calculator", {"expression": "16 - 3 - 4"})
                    + "<tool_call>\nnot json\n</tool_call>"
                    + call("no_such_tool")
                    + "<|im_end|>",
                ),
                turn(
                    tok,
                    call("calculator", {"expression": "9 * 2"})
                    + call("submit_answer", {"answer": label})
                    + call("submit_answer", {"answer": "1"})
                    + "<|im_end|>",
                ),
            ],
        ),
        "r-whodunit": (
            {"env": "whodunit", "split": "test", "index": 0},
            [
                turn(tok, "".join(call(n) for n in INFO) + "<|im_end|>"),
                turn(tok, call("list_clues") + call("list_statements") + "<|im_end|>"),
                turn(tok, call("submit_answer", answer) + "<|im_end|>"),
            ],
        ),
        "r-haiku": (
            {"env": "haiku", "split": "test", "index": 0},
            [
                turn(tok, call("submit_haiku", {"poem": "too short\nstill short"}) + "<|im_end|>"),
                turn(tok, call("submit_haiku", {"poem": PERFECT_HAIKU}) + "<|im_end|>"),
            ],
        ),
    }


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer) -> Iterator[dict[str, Any]]:
    """A server with a store holding one bridge-played episode per env."""
    d = tmp_path_factory.mktemp("replay")
    db = d / "trajectories.db"
    run_name = f"replay-{uuid.uuid4().hex[:8]}"
    with env_server("--envs", "gsm8k,whodunit,haiku", "--db", str(db)) as url:

        async def play() -> None:
            sink = TrajectoryUploader(
                url, str(d / "spool"), run_name, settings=SinkSettings(max_age_s=0.1)
            )
            set_trajectory_sink(sink)
            try:
                episodes = _episodes(qwen3_tokenizer)
                script = {k: turns for k, (_, turns) in episodes.items()}
                with recording_stub(qwen3_tokenizer, script) as stub:
                    for key, (task, _) in episodes.items():
                        sample = make_sample(url, task.pop("env"), key, **task)
                        await run(make_args(stub), sample)
                assert await sink.flush(60)
                await sink.close()
            finally:
                set_trajectory_sink(None)
                await close_clients()

        asyncio.run(play())
        runs = httpx.get(f"{url}/api/runs", timeout=10).json()["runs"]
        run_id = next(r["id"] for r in runs if r["name"] == "slime-envs")
        rows = httpx.get(f"{url}/api/runs/{run_id}/rollouts", timeout=10).json()["rollouts"]
        ids = {r["env"]: r["event_id"] for r in rows}
        assert sorted(ids) == ["gsm8k", "haiku", "whodunit"]
        nums = {r["env"]: r["id"] for r in rows}
        yield {"url": url, "db": db, "ids": ids, "nums": nums, "run": "slime-envs"}


async def _replay(stored: dict[str, Any], env: str, url: str | None) -> replay.ReplayReport:
    source = replay.StoreSource(str(stored["db"]))
    report = await replay.replay_rollout(await source.rollout(stored["ids"][env]), url)
    await close_clients()
    return report


@pytest.mark.parametrize("where", ["in-process", "server"])
@pytest.mark.parametrize("env", ["gsm8k", "whodunit", "haiku"])
async def test_a_stored_episode_of_each_env_replays_identically(
    stored: dict[str, Any], env: str, where: str
) -> None:
    report = await _replay(stored, env, stored["url"] if where == "server" else None)
    assert report.identical, report.render()
    replayed = [c for c in report.calls if c.skipped is None]
    assert replayed and replayed[-1].call.finished and report.notes == []
    if env == "gsm8k":  # the bridge answered these itself: never sent to the env, then or now
        assert [c.skipped for c in report.calls if c.skipped] == [
            "the bridge rejected it, never sent to the env",  # not JSON
            "the bridge rejected it, never sent to the env",  # not a tool of gsm8k
            "after the episode finished",
        ]
    if where == "server":
        assert open_sessions(stored["url"]) == 0


async def test_an_env_made_nondeterministic_is_reported(
    stored: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import random

    import envs.gsm8k

    real = envs.gsm8k.calculate
    monkeypatch.setattr(envs.gsm8k, "calculate", lambda e: f"{real(e)}.{random.randrange(10**6)}")
    monkeypatch.setattr(envs.gsm8k, "answers_match", lambda a, b: False)
    report = await _replay(stored, "gsm8k", None)
    assert not report.identical
    text = report.render()
    assert "#1 calculator: differs" in text and "+16 - 3 - 4 = 9." in text
    assert "reward: stored 1.0 vs replayed 0.0" in text
    # a whole run: only gsm8k is named, and the exit status says so
    args = argparse.Namespace(
        rollout_id=None,
        run=stored["run"],
        sample=10,
        seed=0,
        url=None,
        db=str(stored["db"]),
        trajectories=None,
        config=None,
        api_key=None,
    )
    out = io.StringIO()
    assert await replay.run(args, out) == 1
    assert "== not reproducible: gsm8k (1 of 1 rollouts differ) ==" in out.getvalue()


async def test_a_changed_task_is_noted(stored: dict[str, Any]) -> None:
    source = replay.StoreSource(str(stored["db"]))
    rollout = await source.rollout(stored["ids"]["whodunit"])
    rollout["metadata"]["provenance"] = {"env_version": "0.0.1+old", "task_spec_hash": "beef"}
    report = await replay.replay_rollout(rollout, None)
    assert any("env version differs" in n for n in report.notes)
    assert any("task spec differs" in n for n in report.notes)


async def test_a_rollout_is_found_by_its_numeric_store_id_too(stored: dict[str, Any]) -> None:
    """The id the API, the web UI ('#N') and --help call its id in the store, beside the UUID."""
    num = str(stored["nums"]["haiku"])
    api = replay.ApiSource(stored["url"], None)
    try:
        for source in (replay.StoreSource(str(stored["db"])), api):
            assert (await source.rollout(num))["event_id"] == stored["ids"]["haiku"]
            with pytest.raises(replay.ReplayError, match="no rollout '999999'"):
                await source.rollout("999999")
    finally:
        await api.close()
    page = httpx.get(f"{stored['url']}/rollouts/{num}", timeout=30)
    assert page.status_code == 200 and "haiku" in page.text


def test_cli_replays_by_id_and_by_run(stored: dict[str, Any]) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "envs", "replay", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )

    rid = stored["ids"]["whodunit"]
    r = cli(rid.replace("-", ""), "--url", stored["url"])  # the bridge's hex id works too
    assert r.returncode == 0, r.stderr
    assert (
        f"replay {rid} (whodunit test/0): 7 tool calls replayed, 0 skipped: identical" in r.stdout
    )
    r = cli("--run", stored["run"], "--sample", "3", "--db", str(stored["db"]))
    assert r.returncode == 0, r.stderr
    assert "== all 3 replays identical ==" in r.stdout


def test_cli_errors_are_one_line(stored: dict[str, Any], tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "envs", "replay", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )

    for args, message in [
        (("nope", "--url", stored["url"]), "no rollout 'nope'"),
        (("x", "--db", str(tmp_path / "none.db")), "no trajectory database"),
        (("--run", "missing", "--db", str(stored["db"])), "no run 'missing'"),
        (("x", "--run", "y"), "give a ROLLOUT_ID or --run RUN"),
        (("x", "--url", "http://127.0.0.1:9"), "cannot reach"),
    ]:
        r = cli(*args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
