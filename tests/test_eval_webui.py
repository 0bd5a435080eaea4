"""The eval comparison page in headless Debian Chromium (Playwright), as tests/test_webui.py: an
eval of two scripted models (the SGLang stub and the OpenAI stub) on the real GSM8K env server, its
store served by `python -m envs.server --role trajectories`: the eval list, models side by side,
the paired comparison, per-task outcomes with click-through to both models' trajectories, the
side-by-side task page; model text containing <script> shows as text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO, env_server
from eval_models import ScriptedSolver, generate_responder, gsm8k_labels
from openai_stub import OpenAIStub, Reply
from sglang_stub import SGLangStub
from webui_helpers import CHROMIUM, CHROMIUM_ARGS, shot

from tools.eval.__main__ import main

XSS = "<script>window.__xss = 1</script><img src=x onerror='window.__xss = 2'>"
TASKS = 6


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, gsm8k_dir: Path, qwen3_tokenizer):
    d = tmp_path_factory.mktemp("eval-ui")
    labels = gsm8k_labels(gsm8k_dir)
    strong = ScriptedSolver(labels, 0.9, "ui-strong")

    def weak(req: Any) -> Reply:  # never right; says something hostile instead
        return Reply.text(f"No idea. {XSS}")

    db = d / "store.db"
    with env_server("--envs", "gsm8k", "--db", str(d / "env.db")) as url:
        config = d / "cfg.yaml"
        config.write_text(
            f"environments:\n  gsm8k:\n    eval_split: test\n    max_turns: 3\nenv_server: {url}\n"
        )
        with (
            SGLangStub(
                generate_responder(strong, qwen3_tokenizer), tokenizer=qwen3_tokenizer
            ) as gen,
            OpenAIStub(weak) as chat,
        ):
            args = ["--config", str(config), "--db", str(db), "--out", str(d / "out")]
            args += ["--num-tasks", str(TASKS), "--k", "2", "--name", "ui-eval", "--json"]
            args += ["--model", f"weak={chat.url}", "--model", f"strong={gen.url}"]
            args += ["--tokenizer", str(REPO / ".cache" / "qwen3-tokenizer")]
            assert main(args) == 0
    with env_server("--role", "trajectories", "--db", str(db)) as ui:
        yield {"url": ui, "solved": sum(strong.outcomes), "args": args}


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: run `bash setup.sh --test`")
    import os

    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    pg.problems = problems  # type: ignore[attr-defined]
    yield pg
    ctx.close()


def test_comparison_page_side_by_side_with_click_through(evaluated, page, tmp_path: Path) -> None:
    url = evaluated["url"]
    page.goto(url + "/")
    page.click("header a.nav")  # every page links to the evals
    row = page.locator("#evals tbody tr", has_text="ui-eval")
    assert "weak, strong" in row.inner_text() and str(TASKS * 2 * 2) in row.inner_text()
    page.click("text=ui-eval")
    page.wait_for_selector("#scores")
    # the models side by side per environment, with CIs
    head = page.locator("#scores thead").inner_text()
    assert "weak: reward" in head and "strong: reward" in head and "pass@2" in head
    scores = page.locator("#scores tbody tr[data-env=gsm8k]").inner_text()
    assert "0.000 [0.000, 0.000]" in scores  # weak never solves
    # the paired comparison: strong - weak, won / lost / tied over the tasks
    comp = page.locator("#comparisons tbody tr[data-env=gsm8k]")
    assert "strong \u2212 weak" in comp.inner_text()
    won, lost, tied = (int(x) for x in comp.locator("td").nth(5).inner_text().split(" / "))
    assert won + lost + tied == TASKS and lost == 0 and won >= 1
    assert "better" in (comp.get_attribute("class") or "")
    # per-task outcomes: every task, largest disagreement first, two samples per model
    rows = page.locator("#tasks tbody tr")
    assert rows.count() == TASKS
    diffs = [float(x) for x in page.locator("#tasks td.diff").all_inner_texts()]
    assert diffs == sorted(diffs, key=abs, reverse=True)
    first = rows.first
    assert first.locator("td.samples[data-model=weak] a.sample").count() == 2
    assert first.locator("td.samples[data-model=strong] a.sample").count() == 2
    shot(page, tmp_path, "eval.png")
    task = first.get_attribute("data-task")
    # click through to model A's trajectory, then to model B's
    first.locator("td.samples[data-model=weak] a.sample").first.click()
    page.wait_for_selector("#conversation")
    assert "ui-eval/weak" in page.locator("header").inner_text()
    assert "<script>window.__xss = 1</script>" in page.locator("#conversation").inner_text()
    assert page.evaluate("window.__xss") is None
    page.go_back()
    page.locator("#tasks tbody tr").first.locator(
        "td.samples[data-model=strong] a.sample"
    ).first.click()
    page.wait_for_selector("#conversation")
    assert "ui-eval/strong" in page.locator("header").inner_text()
    assert page.locator("#conversation .msg.tool-call", has_text="submit_answer").count() == 1
    assert page.locator("#tokens .tok.trained").count() > 5  # /generate episodes keep tokens
    page.go_back()
    # both trajectories of the task side by side
    page.locator("#tasks tbody tr").first.locator("a.task-link").click()
    page.wait_for_selector("#task-columns")
    assert task in page.locator("h1").inner_text()
    assert page.locator(".group-col[data-model=weak]").count() == 2
    assert page.locator(".group-col[data-model=strong]").count() == 2
    assert page.evaluate("window.__xss") is None
    assert page.locator("#task-columns script, #task-columns img").count() == 0
    shot(page, tmp_path, "eval_task.png")
    page.go_back()
    # choosing other models and sort order (the bundled script submits the form)
    with page.expect_navigation():
        page.select_option("select[name=sort]", "task")
    order = page.locator("#tasks tbody tr").evaluate_all("rs => rs.map(r => r.dataset.task)")
    assert len(order) == TASKS and order != []
    with page.expect_navigation():
        page.select_option("select[name=b]", "weak")
    assert page.locator("#tasks thead").inner_text().count("weak: mean") == 1
    assert "strong: mean" not in page.locator("#tasks thead").inner_text()
    assert page.problems == []


def test_eval_pages_bad_ids_and_api(evaluated) -> None:
    url = evaluated["url"]
    assert httpx.get(f"{url}/evals/999").status_code == 404
    assert httpx.get(f"{url}/evals/1/task", params={"env": "x", "task": "y"}).status_code == 404
    assert (
        httpx.get(f"{url}/evals/1", params={"env": "<b>", "a": "zz", "sort": "?"}).status_code
        == 200
    )
    assert httpx.get(f"{url}/api/evals/999").status_code == 404
    # ids past SQLite's 64-bit rowids (schemathesis found a 500 here): a 4xx, never a 5xx
    huge = "482825782818391050709630976"
    for path in (f"/api/evals/{huge}", f"/api/evals/{huge}/tasks", f"/evals/{huge}", "/evals/0"):
        assert 400 <= httpx.get(f"{url}{path}").status_code < 500, path
    ev = httpx.get(f"{url}/api/evals/1").json()
    assert [m["name"] for m in ev["models"]] == ["weak", "strong"]
    assert ev["report"]["envs"]["gsm8k"]["models"]["strong"]["episodes"] == TASKS * 2
    eps = httpx.get(f"{url}/api/evals/1/tasks", params={"env": "gsm8k"}).json()["episodes"]
    assert len(eps) == TASKS * 2 * 2
    assert sum(e["solved"] for e in eps if e["model"] == "strong") == evaluated["solved"]
    r = httpx.get(f"{url}/evals/1")
    assert "script-src 'self'" in r.headers["content-security-policy"]


def test_serve_keeps_the_comparison_page_up_until_ctrl_c(evaluated) -> None:
    """Rerunning the finished eval with --serve prints the report, then serves the page (its models
    are not contacted: their stubs are gone) until SIGINT."""
    import os
    import signal
    import subprocess
    import sys

    args = [a for a in evaluated["args"] if a != "--json"] + ["--serve"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.eval", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = None
        for line in proc.stderr:
            if "serving the comparison page at " in line:
                url = line.split(" at ", 1)[1].split()[0]
                break
        assert url is not None, proc.stderr.read()[-2000:]
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and "ui-eval" in page.text and 'id="scores"' in page.text
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "reward [95% CI]" in out
    with pytest.raises(httpx.HTTPError):
        httpx.get(url, timeout=5)
