"""The web UI's new parts in headless Debian Chromium: tripwire filter and counts, provenance,
drift, the GRPO group with slime's advantages, full group names, the group position vs the run-wide
sample index, and /runs/abc as the HTML error page."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import env_server
from webui_helpers import XSS, shot, ui_trajectory

from bridge.trajectory_uploader import SinkSettings, TrajectoryUploader
from envs.trajectories.advantages import group_advantages

RUN = "ui-reports"
REWARDS = [1.0, 0.0, 0.5, 1.0]
PROVENANCE = {
    "env": "whodunit",
    "env_version": "0.1.0+0123456789abcdef",
    "task_id": "whodunit/train/2455",
    "task_spec_hash": "fedcba9876543210",
    "tokenizer": "qwen3" + XSS,
    "tokenizer_hash": "00112233aabbccdd",
    "chat_template_hash": "ddccbbaa33221100",
    "sampling_params": {"temperature": 0.7, "max_new_tokens": 512},
    "weight_versions": ["3", "4"],
    "bridge_version": "0.1.0+abcdefabcdefabcd",
}
DRIFT = {
    "turn": 2,
    "position": 1234,
    "kind": "output_ids",
    "expected": '<tool_call>|{▶"name',
    "got": "<tool_call>|▶ {" + XSS,
    "detail": "output_ids differ at output token 5",
}


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer) -> Iterator[dict[str, Any]]:
    """One GRPO group of four whodunit samples of task 2455 (run-wide samples 42-45)."""
    d = tmp_path_factory.mktemp("webui-reports")
    with env_server("--role", "trajectories", "--db", str(d / "ui.db")) as url:
        trajs = []
        for k, reward in enumerate(REWARDS):
            t = ui_trajectory(qwen3_tokenizer, 42 + k, RUN, "whodunit")
            t.index, t.split, t.group_index, t.sample_index = 2455, "train", 10, 42 + k
            t.reward, t.created_at = reward, 1_700_000_000 + k
            t.provenance = PROVENANCE
            t.tripwires = ["solved_without_evidence"] if k == 3 else []
            t.tripwire_keys = {"duplicate_in_group": "same"} if k in (0, 2) else {}
            if k == 1:
                t.drift_count, t.drift = 1, [DRIFT]
            trajs.append(t)

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
        ids = [_dashed(t.rollout_id) for t in trajs]
        yield {"url": url, "run_id": run_id, "ids": ids}


def _dashed(hex_id: str) -> str:
    import uuid

    return str(uuid.UUID(hex=hex_id))


def test_run_page_filters_and_counts_tripwires(ui, page, tmp_path: Path) -> None:
    page.goto(f"{ui['url']}/runs/{ui['run_id']}")
    counts = page.locator("#tripwire-counts").inner_text()
    assert "duplicate_in_group\t2" in counts and "solved_without_evidence\t1" in counts
    with page.expect_navigation():
        page.select_option("select[name=tripwire]", "duplicate_in_group")
    assert page.locator("#total").inner_text() == "2"
    wires = page.locator("#rollouts tbody tr td.tripwires").all_inner_texts()
    assert wires == ["duplicate_in_group", "duplicate_in_group"]
    with page.expect_navigation():
        page.select_option("select[name=tripwire]", "any")
    assert page.locator("#total").inner_text() == "3"
    shot(page, tmp_path, "run_tripwires.png")
    api = httpx.get(
        f"{ui['url']}/api/runs/{ui['run_id']}/rollouts", params={"tripwire": "any"}
    ).json()
    assert api["total"] == 3
    assert page.problems == []


def test_rollout_page_shows_provenance_tripwires_and_drift(ui, page, tmp_path: Path) -> None:
    page.goto(f"{ui['url']}/rollouts/{ui['ids'][1]}")
    prov = page.locator("#provenance").inner_text()
    for text in (
        "0.1.0+0123456789abcdef",
        "whodunit/train/2455",
        "fedcba9876543210",
        "ddccbbaa33221100",
        "temperature=0.7",
        "3 → 4",
        "0.1.0+abcdefabcdefabcd",
    ):
        assert text in prov, text
    assert "<script>window.__xss = 1</script>" in prov  # shown as text, never run
    assert page.evaluate("window.__xss") is None
    assert page.locator("#tripwires").inner_text() == "none tripped"
    drift = page.locator("#drift-table").inner_text()
    assert "1234" in drift and "output_ids" in drift and '{▶"name' in drift
    assert page.locator("#drift-table script, #drift-table img").count() == 0
    page.click("text=token drift 1")
    assert page.url.endswith("#drift")
    shot(page, tmp_path, "rollout_provenance.png")
    page.goto(f"{ui['url']}/rollouts/{ui['ids'][3]}")
    assert page.locator("#tripwires .wire").all_inner_texts() == ["solved_without_evidence"]
    assert page.problems == []


def test_group_view_shows_advantages_full_names_and_positions(ui, page, tmp_path: Path) -> None:
    page.goto(f"{ui['url']}/rollouts/{ui['ids'][1]}")
    label = page.locator("#group-key").inner_text()
    assert "sample 2 of 4 in this group" in label and "run-wide sample index 43" in label
    rows = page.locator("#advantages tbody tr")
    assert rows.count() == 4
    expected = group_advantages(REWARDS)
    for i, adv in enumerate(expected):
        cells = rows.nth(i).locator("td").all_inner_texts()
        assert cells[1].startswith("whodunit/train/2455 #")  # the whole name, and its id
        assert cells[2] == str(42 + i)
        assert cells[3] == f"{REWARDS[i]:.3f}"
        assert cells[4] == f"{adv.centered:.3f}" and cells[5] == f"{adv.normalized:.3f}"
    assert rows.nth(1).get_attribute("class") == "current"
    assert "duplicate_in_group" in rows.nth(0).inner_text()  # group wire, decided by the store
    heads = page.locator("#group .group-head a").all_inner_texts()
    assert [h.split(" #")[0] for h in heads] == ["whodunit/train/2455"] * 4 and len(set(heads)) == 4
    assert "sample 2 of 4" in page.locator("#group .group-col.current").inner_text()
    shot(page, tmp_path, "group_advantages.png")
    assert page.problems == []


def test_a_run_id_that_is_not_a_number_gets_the_html_error_page(ui, page) -> None:
    r = httpx.get(f"{ui['url']}/runs/abc")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "No run with id abc" in r.text and "detail" not in r.text
    assert httpx.get(f"{ui['url']}/runs/abc/chart.svg").status_code == 404
    page.goto(f"{ui['url']}/runs/abc")
    assert page.locator("h1").inner_text() == "Not found"
    assert page.locator("a", has_text="All runs").count() == 1
