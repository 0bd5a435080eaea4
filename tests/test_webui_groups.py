"""A GRPO group in the web UI (headless Debian Chromium) is one prompt's samples from one rollout
step of one invocation: two invocations that reuse group index 0 in one run stay two groups;
samples lost to the infrastructure are shown apart, with their failure reason, and are in no
advantage; the run's table shows failure reasons and tells its rollout links apart."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import env_server
from webui_helpers import shot, ui_trajectory

from bridge.trajectory import Trajectory
from bridge.trajectory_uploader import SinkSettings, TrajectoryUploader
from envs.trajectories.advantages import group_advantages

RUN = "ui-groups"
REWARDS_A = [1.0, 0.0, 1.0]  # invocation A, task 7, plus one sample lost to the env server
REWARDS_B = [0.5, 0.25]  # invocation B, task 9, the same group index
FAILURE = "env server: 404 unknown environment 'nope' (permanent)"


def _sample(tok: Any, k: int, invocation: str, task: int, reward: float) -> Trajectory:
    t = ui_trajectory(tok, k, RUN, "whodunit")
    t.index, t.split, t.group_index, t.sample_index = task, "train", 0, k
    t.reward, t.created_at, t.invocation = reward, 1_700_000_000 + k, invocation
    t.stop_reason, t.status = "env_finished", "completed"
    return t


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("webui-groups")
    with env_server("--role", "trajectories", "--db", str(d / "ui.db")) as url:
        a = [_sample(qwen3_tokenizer, k, "invA", 7, r) for k, r in enumerate(REWARDS_A)]
        lost = _sample(qwen3_tokenizer, 3, "invA", 7, 0.0)
        lost.stop_reason, lost.status = "env_error", "failed"
        lost.extra = {**lost.extra, "failure": FAILURE, "infra_failure": True}
        b = [_sample(qwen3_tokenizer, 10 + k, "invB", 9, r) for k, r in enumerate(REWARDS_B)]
        trajs = [*a, lost, *b]

        async def upload() -> None:
            up = TrajectoryUploader(
                url, str(d / "spool"), "ui", settings=SinkSettings(max_age_s=0.1)
            )
            for t in trajs:
                up.submit(t)
            assert await up.flush(60)
            await up.close()

        asyncio.run(upload())
        runs = httpx.get(f"{url}/api/runs", timeout=10).json()["runs"]
        run_id = next(r["id"] for r in runs if r["name"] == RUN)
        ids = [str(uuid.UUID(hex=t.rollout_id)) for t in trajs]
        yield {"url": url, "run_id": run_id, "a": ids[:3], "lost": ids[3], "b": ids[4:]}


def test_a_group_is_one_invocations_prompt_with_infra_failures_apart(ui, page, tmp_path) -> None:
    page.goto(f"{ui['url']}/rollouts/{ui['a'][1]}")
    assert "invA" in page.locator("#group-key").inner_text()
    assert "sample 2 of 4 in this group" in page.locator("#group-key").inner_text()
    rows = page.locator("#advantages tbody tr")
    assert rows.count() == len(REWARDS_A)  # not invocation B's samples, not the lost one
    for i, adv in enumerate(group_advantages(REWARDS_A)):
        cells = rows.nth(i).locator("td").all_inner_texts()
        assert cells[1].startswith("whodunit/train/7")
        assert cells[4] == f"{adv.centered:.3f}" and cells[5] == f"{adv.normalized:.3f}"
    lost = page.locator("#infra-failed tbody tr")
    assert lost.count() == 1
    assert "env_error" in lost.inner_text() and "404 unknown environment" in lost.inner_text()
    assert "lost to the infrastructure" in page.locator("#group").inner_text()
    shot(page, tmp_path, "group_one_invocation.png")
    page.goto(f"{ui['url']}/rollouts/{ui['b'][0]}")
    assert page.locator("#advantages tbody tr").count() == len(REWARDS_B)
    assert page.locator("#infra-failed").count() == 0
    assert page.problems == []


def test_failure_reason_on_the_rollout_page_and_the_run_table(ui, page, tmp_path) -> None:
    page.goto(f"{ui['url']}/rollouts/{ui['lost']}")
    assert FAILURE in page.locator("#failure").inner_text()
    page.goto(f"{ui['url']}/rollouts/{ui['a'][0]}")
    assert page.locator("#failure").count() == 0
    page.goto(f"{ui['url']}/runs/{ui['run_id']}")
    table = page.locator("#rollouts").inner_text()
    assert table.count("404 unknown environment") == 1
    links = page.locator("#rollouts a.rollout-link").all_inner_texts()
    assert len(links) == 6 and len(set(links)) == 6  # same task, still told apart
    shot(page, tmp_path, "run_failures.png")
    assert page.problems == []
