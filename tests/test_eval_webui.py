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
from eval_helpers import WHODUNIT_CASES as CASES
from eval_helpers import write_config
from eval_models import (
    Detective,
    ScriptedSolver,
    detective_chat,
    detective_generate,
    generate_responder,
    gsm8k_labels,
)
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
    sharp = Detective({"who": 0.9, "what": 0.9, "where": 0.9, "why": 0.9}, "ui-sharp", CASES)
    # half right: the weapon and the place, never the killer (partial credit on every case)
    half = Detective({"what": 1.0, "where": 1.0}, "ui-half", CASES)

    def weak(req: Any) -> Reply:  # never right on GSM8K; says something hostile instead
        return Reply.text(f"No idea. {XSS}")

    db = d / "store.db"
    with env_server("--envs", "gsm8k,whodunit", "--db", str(d / "env.db")) as url:
        config = write_config(
            d / "cfg.yaml",
            url,
            max_turns=3,
            envs=("gsm8k", "whodunit"),
            options={"whodunit": {"test_size": CASES}},
        )
        with (
            SGLangStub(
                detective_generate(
                    sharp, qwen3_tokenizer, generate_responder(strong, qwen3_tokenizer)
                ),
                tokenizer=qwen3_tokenizer,
            ) as gen,
            OpenAIStub(detective_chat(half, weak)) as chat,
        ):
            args = ["--config", str(config), "--db", str(db), "--out", str(d / "out")]
            args += ["--num-tasks", str(TASKS), "--k", "2", "--name", "ui-eval", "--json"]
            args += ["--model", f"weak={chat.url}", "--model", f"strong={gen.url}"]
            args += ["--tokenizer", str(REPO / ".cache" / "qwen3-tokenizer")]
            assert main(args) == 0
            urls = {"weak": chat.url, "strong": gen.url}
    with env_server("--role", "trajectories", "--db", str(db)) as ui:
        yield {"url": ui, "solved": sum(strong.outcomes), "args": args, "urls": urls}


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
    assert "weak" in row.inner_text() and "strong" in row.inner_text()
    assert str(TASKS * 2 * 2 * 2) in row.inner_text()  # two envs, k = 2, two models
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
        out, _ = proc.communicate(timeout=180)  # SIGINT on a loaded machine
    assert proc.returncode == 0 and "reward [95% CI]" in out
    with pytest.raises(httpx.HTTPError):
        httpx.get(url, timeout=5)


def test_every_eval_page_names_what_was_evaluated(evaluated, page) -> None:
    """Each model's served id, endpoint and tokenizer on the list, the eval and the task page;
    the task page shows the task itself and each sample's deciding call first; partial credit is
    visible in the dot view."""
    url, urls = evaluated["url"], evaluated["urls"]
    page.goto(url + "/evals")
    row = page.locator("#evals tbody tr", has_text="ui-eval").inner_text()
    assert urls["weak"] in row and urls["strong"] in row
    page.goto(url + "/evals/1")
    models = page.locator("#models").inner_text()
    assert "stub-model" in models and urls["weak"] in models  # the served id behind "weak"
    assert "qwen3-tokenizer" in models and urls["strong"] in models
    # WhoDunIt: the half-right detective's samples are partial credit, not zeros
    with page.expect_navigation():
        page.select_option("select[name=env]", "whodunit")
    weak_dots = page.locator("#tasks td.samples[data-model=weak] a.sample")
    assert weak_dots.count() == TASKS * 2
    assert page.locator("#tasks td.samples[data-model=weak] a.sample.partial").count() == TASKS * 2
    assert "0.500" in weak_dots.first.get_attribute("title")
    assert weak_dots.first.inner_text() not in ("\u25cf", "\u25cb")  # neither solved nor zero
    page.locator("#tasks tbody tr").first.locator("a.task-link").click()
    page.wait_for_selector("#task-columns")
    prompt = page.locator("#task-prompt").inner_text()
    assert "You are the detective" in prompt
    assert "stub-model" in page.locator("#task-models").inner_text()
    for col in page.locator(".group-col").all():
        deciding = col.locator(".deciding")
        assert "submit_answer" in deciding.inner_text()
        # the deciding call comes before the condensed conversation
        assert col.locator(".deciding + .msg, .deciding ~ .msg").count() >= 1
    assert page.problems == []


def test_small_error_rates_are_not_printed_as_zero() -> None:
    from envs.trajectories.webui import _templates
    from tools.eval.render import _errors

    pct = _templates().filters["pct"]
    assert [pct(x) for x in (0.0, 0.003, 0.0004, 0.25, 0.998, 1.0)] == [
        "0%",
        "0.3%",
        "<0.1%",
        "25%",
        "99.8%",
        "100%",
    ]
    assert _errors({"errors": {"parse_error": {"value": 0.004}}}) == "parse_error 0.4%"
