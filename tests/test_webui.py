"""The trajectory web UI in headless Debian Chromium (Playwright): runs, filters, paging, one
rollout, token view, GRPO group, chart; model/env text containing <script> must show as text."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import env_server
from webui_helpers import shot, ui_trajectory

from bridge.trajectory_uploader import SinkSettings, TrajectoryUploader


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("webui")
    with env_server(
        "--role",
        "trajectories",
        "--db",
        str(d / "ui.db"),
        "--tokenizer",
        qwen3_tokenizer.name_or_path,
    ) as url:
        trajs = [
            ui_trajectory(
                qwen3_tokenizer, i, "ui-run-a", "gsm8k" if i % 2 else "whodunit", evil=i == 0
            )
            for i in range(24)
        ]
        trajs += [ui_trajectory(qwen3_tokenizer, i, "ui-run-b", "haiku") for i in range(3)]

        async def upload() -> None:
            up = TrajectoryUploader(
                url, str(d / "spool"), "ui", settings=SinkSettings(max_age_s=0.1)
            )
            for t in trajs:
                up.submit(t)
            assert await up.flush(60)
            await up.close()

        asyncio.run(upload())
        # The first rollout page loads the tokenizer in the server (seconds on a busy machine):
        # paid here, so the test order never decides which test waits past httpx's 5 s.
        first = f"{url}/rollouts/{_dashed(trajs[0].rollout_id)}"
        httpx.get(first, timeout=120).raise_for_status()
        yield {"url": url, "evil": trajs[0].rollout_id, "dir": d}


def test_runs_page_lists_runs(ui, page, tmp_path: Path) -> None:
    page.goto(ui["url"] + "/")
    rows = page.locator("#runs tbody tr")
    assert rows.count() == 2
    text = page.locator("#runs").inner_text()
    assert "ui-run-a" in text and "ui-run-b" in text and "haiku" in text
    row_a = page.locator("#runs tbody tr", has_text="ui-run-a")
    assert (
        "24" in row_a.inner_text()
        and "gsm8k" in row_a.inner_text()
        and "whodunit" in row_a.inner_text()
    )
    shot(page, tmp_path, "runs.png")
    assert page.problems == []


def test_run_page_filters_sorts_and_pages(ui, page, tmp_path: Path) -> None:
    page.goto(ui["url"] + "/")
    page.click("text=ui-run-a")
    page.wait_for_selector("#rollouts")
    assert page.locator("#total").inner_text() == "24"
    assert page.locator("svg.chart polyline").count() == 2  # one line per env
    # changing a select applies the filter (bundled script submits the form)
    with page.expect_navigation():
        page.select_option("select[name=env]", "whodunit")
    assert page.locator("#total").inner_text() == "12"
    envs = page.locator("#rollouts tbody tr td:nth-child(2)").all_inner_texts()
    assert set(envs) == {"whodunit"}
    page.fill("input[name=min_reward]", "0.5")
    with page.expect_navigation():
        page.click("#apply")
    rewards = [
        float(x) for x in page.locator("#rollouts tbody tr td:nth-child(7)").all_inner_texts()
    ]
    assert (
        rewards and min(rewards) >= 0.5 and page.locator("#total").inner_text() == str(len(rewards))
    )
    shot(page, tmp_path, "run_filtered.png")
    # sort by reward ascending, 5 per page, walk forward and back
    page.goto(
        ui["url"] + page.url.split(ui["url"])[1].split("?")[0] + "?sort=reward&order=asc&limit=5"
    )
    first = page.locator("#rollouts tbody tr td:nth-child(11)").all_inner_texts()
    first_rewards = [
        float(x) for x in page.locator("#rollouts tbody tr td:nth-child(7)").all_inner_texts()
    ]
    assert first_rewards == sorted(first_rewards) and len(first) == 5
    page.click("#next")
    second = page.locator("#rollouts tbody tr td:nth-child(11)").all_inner_texts()
    assert len(second) == 5 and not set(first) & set(second)
    page.click("#prev")
    assert page.locator("#rollouts tbody tr td:nth-child(11)").all_inner_texts() == first
    assert page.problems == []


def test_rollout_page_shows_everything_and_escapes_text(ui, page, tmp_path: Path) -> None:
    page.goto(ui["url"] + "/")
    page.click("text=ui-run-a")
    page.locator("#rollouts .rollout-link").first.click()
    page.wait_for_selector("#conversation")
    page.goto(f"{ui['url']}/rollouts/{ui['evil']}".replace(ui["evil"], _dashed(ui["evil"])))
    assert page.evaluate("window.__xss") is None  # nothing from the rollout ran
    conv = page.locator("#conversation")
    assert "<script>window.__xss = 1</script>" in conv.inner_text()
    assert conv.locator("script, img").count() == 0
    reasoning = page.locator("details.reasoning").first
    assert reasoning.get_attribute("open") is None  # folded
    reasoning.locator("summary").click()
    assert "Clues matter." in reasoning.inner_text()
    call = conv.locator(".msg.tool-call", has_text="submit_answer")
    assert '"who": "the cook"' in call.inner_text()
    assert conv.locator(".msg.tool-result").count() == 2
    assert "finished" in conv.locator(".msg.tool-result").nth(1).inner_text()
    assert "0.333" in page.locator("#turn-rewards").inner_text()
    assert "reduction: sum" in page.locator("#final-reward").inner_text()
    tokens = page.locator("#tokens")
    assert tokens.locator(".tok.trained").count() > 10
    assert tokens.locator(".tok:not(.trained)").count() > 5
    assert (
        "clues" in tokens.inner_text() and "tool_response" in tokens.inner_text()
    )  # decoded by Qwen3
    assert page.locator("#group .group-col").count() == 4
    assert page.locator("#group .group-col.current").count() == 1
    shot(page, tmp_path, "rollout.png")
    assert page.problems == []


def _dashed(hex_id: str) -> str:
    import uuid

    return str(uuid.UUID(hex=hex_id))


def test_escaping_in_raw_html_and_security_headers(ui) -> None:
    r = httpx.get(f"{ui['url']}/rollouts/{_dashed(ui['evil'])}")
    assert r.status_code == 200
    assert (
        "<script>window.__xss" not in r.text
        and "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in r.text
    )
    assert "script-src 'self'" in r.headers["content-security-policy"]
    runs = httpx.get(f"{ui['url']}/api/runs").json()["runs"]
    rid = next(x["id"] for x in runs if x["name"] == "ui-run-a")
    svg = httpx.get(f"{ui['url']}/runs/{rid}/chart.svg")
    assert (
        svg.headers["content-type"].startswith("image/svg+xml") and svg.text.count("<polyline") == 2
    )
    assert (
        httpx.get(
            f"{ui['url']}/runs/{rid}", params={"after": "junk", "min_reward": "x"}
        ).status_code
        == 200
    )
    assert httpx.get(f"{ui['url']}/runs/987654").status_code == 404
    assert httpx.get(f"{ui['url']}/rollouts/nope").status_code == 404
    assert httpx.get(f"{ui['url']}/assets/../store.py").status_code == 404
    assert httpx.get(f"{ui['url']}/assets/app.css").status_code == 200
