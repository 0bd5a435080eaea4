"""The trajectory web UI in headless Debian Chromium (Playwright): runs, filters, paging, one
rollout, token view, GRPO group, chart; model/env text containing <script> must show as text."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import env_server

from bridge.trajectory import Trajectory
from bridge.trajectory_sink import SinkSettings, TrajectoryUploader

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS = "<script>window.__xss = 1</script><img src=x onerror='window.__xss = 2'>"
SHOTS = os.environ.get("WEBUI_SCREENSHOT_DIR")  # optional copy of the screenshots, for humans


def ui_trajectory(tok: Any, i: int, run: str, env: str, evil: bool = False) -> Trajectory:
    user = f"Case {i}: who took the cake? " + (XSS if evil else "")
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a careful detective."},
        {"role": "user", "content": user},
    ]
    args = {"who": "the butler" if i % 2 else "the cook", "note": XSS if evil else "none"}
    msgs.append(
        {
            "role": "assistant",
            "content": "I will look at the clues first.",
            "reasoning_content": "Clues matter. " + (XSS if evil else "Check the pantry."),
            "tool_calls": [{"id": "c1", "name": "list_clues", "arguments": {}}],
        }
    )
    msgs.append(
        {
            "role": "tool",
            "tool_call_id": "c1",
            "name": "list_clues",
            "content": "flour on the sleeve" + (XSS if evil else ""),
            "reward": 0.0,
            "finished": False,
        }
    )
    msgs.append(
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c2", "name": "submit_answer", "arguments": args}],
        }
    )
    reward = 1.0 if i % 3 else 1 / 3
    msgs.append(
        {
            "role": "tool",
            "tool_call_id": "c2",
            "name": "submit_answer",
            "content": f"score {reward:.2f}",
            "reward": reward,
            "finished": True,
        }
    )
    prompt = tok.apply_chat_template(msgs[:2], tokenize=True, add_generation_prompt=True)
    if not isinstance(prompt, list):
        prompt = prompt["input_ids"]
    seg1 = tok.encode(
        "<think>\nClues matter.\n</think>\n\nI will look at the clues first.",
        add_special_tokens=False,
    )
    env_seg = tok.encode(
        "<|im_end|>\n<|im_start|>user\n<tool_response>\nflour on the sleeve\n</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\n",
        add_special_tokens=False,
    )
    seg2 = tok.encode(
        '<tool_call>\n{"name": "submit_answer", "arguments": {"who": "the butler"}}\n</tool_call>',
        add_special_tokens=False,
    )
    rng = random.Random(i)
    response = seg1 + env_seg + seg2
    mask = [1] * len(seg1) + [0] * len(env_seg) + [1] * len(seg2)
    lps = [(-rng.random() * 3 if m else 0.0) for m in mask]
    return Trajectory(
        run_name=run,
        env=env,
        split="train" if i % 5 else "test",
        index=i,
        task_spec=None,
        messages=msgs,
        turn_rewards=[0.0, reward],
        reward=reward,
        reward_reduction="sum",
        stop_reason="env_finished" if i % 4 else "max_turns",
        status="completed" if i % 4 else "truncated",
        num_turns=2,
        num_tool_calls=2,
        tool_errors={},
        drift_count=0,
        token_ids=list(prompt) + response,
        prompt_length=len(prompt),
        loss_mask=mask,
        logprobs=lps,
        timings={"generate": 1.2, "env": 0.05, "total": 1.3},
        group_index=i // 4,
        sample_index=i,
        extra={"tokenizer": tok.name_or_path},
    )


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


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: run `bash setup.sh --test`")
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, tmp_path: Path):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    pg.problems = problems  # type: ignore[attr-defined]
    yield pg
    ctx.close()


def shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SHOTS) / name)
    return path


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
