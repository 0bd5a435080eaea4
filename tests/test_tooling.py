"""The tooling that keeps the style, run for what it does: `.ci/run` stops at a lint error before
any test runs, fails after the tests on a type or conformance error (those run beside them), and
runs the README's test command once with the vendored sources named,
ruff exempts no long line, mypy (with no arguments, as CI runs it) checks every package and is
strict for the contract and the plugin only, CI's vendored check finds a test that ran nowhere,
and the vendored tests skip with the reason where the sources are missing.

`.ci/run` runs here in a scratch copy whose `setup.sh` only puts a `.venv/bin/python` in place
that records each command and fails the one the test picks; the real checkers run on scratch
files with the project's own pyproject.toml.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

RECORDER = """#!/usr/bin/env bash
echo "$* | ${PYTEST_ADDOPTS:-} | ${SLIME_VENDOR_DIR:-}" >> "$CALLS_LOG"
case "$*" in *"$FAIL_AT"*) exit 1 ;; esac
"""
SETUP = """[ -e .venv/bin/python ] || { mkdir -p .venv/bin && cp "$RECORDER" .venv/bin/python; }
"""
README = """# scratch

## Two commands

```bash
echo x > tasks.jsonl; echo x > eval_tasks.jsonl; echo 'run.sh: MISSING  gpu -> fix: y'; exit 2
```

```bash
bash setup.sh --test && .venv/bin/python -m pytest -q
```
"""


def ci_run(tmp_path: Path, fail_at: str) -> tuple[int, list[str], str]:
    """Run `.ci/run` in a scratch repository; the recorded python fails the command containing
    `fail_at`. Returns the exit status, the python commands it ran, in order, each as
    "ARGS | $PYTEST_ADDOPTS | $SLIME_VENDOR_DIR", and what it printed."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", repo / ".ci" / "run")
    (repo / "setup.sh").write_text(SETUP)
    (repo / "README.md").write_text(README)
    (repo / ".gitignore").write_text(".venv/\n")
    git = ["git", "-C", str(repo), "-c", "user.name=ci", "-c", "user.email=ci@localhost"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "scratch"], check=True)
    recorder = tmp_path / "recorder"
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    log = tmp_path / "calls.log"
    out = subprocess.run(
        ["bash", str(repo / ".ci" / "run")],
        env={**os.environ, "FAIL_AT": fail_at, "RECORDER": str(recorder), "CALLS_LOG": str(log)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return out.returncode, calls, out.stdout + out.stderr


LINT = ["-m ruff check .", "-m ruff format --check ."]
BESIDE = ["-m mypy", "-m envs check", "-m pytest"]
"""Run at once, after lint: the README's test command, and mypy then the conformance check."""
VENDORED_CHECK = ".ci/vendored_check.py"


def step(call: str) -> str:
    args = call.split(" | ")[0]
    return next((s for s in [*LINT, *BESIDE] if args.startswith(s)), args.split()[0])


@pytest.mark.parametrize("fail_at", ["ruff check", "ruff format"])
def test_ci_stops_at_a_lint_error_before_any_test(tmp_path: Path, fail_at: str) -> None:
    code, calls, _ = ci_run(tmp_path, fail_at)
    assert code != 0
    assert fail_at in calls[-1], calls
    assert [step(c) for c in calls] == LINT[: len(calls)]


@pytest.mark.parametrize(("fail_at", "name"), [("mypy", "mypy"), ("envs check", "envs-check")])
def test_ci_fails_after_the_tests_on_a_type_or_conformance_error_beside_them(
    tmp_path: Path, fail_at: str, name: str
) -> None:
    """mypy and the conformance check run beside the tests (both always run); one failing
    fails CI after the tests, with its output, and before the vendored check."""
    code, calls, out = ci_run(tmp_path, fail_at)
    assert code != 0
    assert [step(c) for c in calls[:2]] == LINT
    assert sorted(step(c) for c in calls[2:]) == sorted(BESIDE), calls
    assert f".ci/run: failed: {name}" in out and f"-- {name} (ran in" in out


def test_ci_stops_when_a_test_fails(tmp_path: Path) -> None:
    code, calls, _ = ci_run(tmp_path, "-m pytest")
    assert code != 0
    assert "-m pytest" in [step(c) for c in calls]
    assert not any(VENDORED_CHECK in c for c in calls), calls


def test_ci_runs_the_readme_test_command_once_with_the_vendored_sources(tmp_path: Path) -> None:
    """One test session, in the fresh clone: in parallel (pyproject's -n auto), in a random order
    whose seed is printed, the 20 slowest printed, ../shared/vendor named for the vendored tests;
    then the vendored check reads its report."""
    code, calls, _ = ci_run(tmp_path, "no command fails")
    assert code == 0, calls
    assert [step(c) for c in calls[:2]] == LINT
    assert sorted(step(c) for c in calls[2:5]) == sorted(BESIDE)
    assert [step(c) for c in calls[5:]] == [VENDORED_CHECK], calls
    test_command = next(c for c in calls if step(c) == "-m pytest")
    args, addopts, vendor = test_command.split(" | ")
    assert args == "-m pytest -q"
    assert "--durations=20" in addopts and "--randomly-seed=" in addopts
    assert vendor == str(tmp_path / "shared" / "vendor")
    report = addopts.split("--junitxml=")[1].split()[0]
    assert calls[5].split(" | ")[0] == f"{VENDORED_CHECK} {report}"


def test_ruff_exempts_no_long_line(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(f"X = {'1' * 101}\n")
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--config", str(REPO / "pyproject.toml"), probe],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "E501" in out.stdout, out.stdout


def test_mypy_checks_every_package_strict_for_the_contract_and_the_plugin(tmp_path: Path) -> None:
    """`python -m mypy` with no arguments (as .ci/run runs it), in a scratch tree of the project's
    packages: a type error is found in each; an untyped function only in contract/ and bridge/."""
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    probe = 'def untyped(x):\n    return x\n\n\nN: int = "not an int"\n'
    files = ["contract/probe.py", "bridge/probe.py", "envs/probe.py", "tools/launch/probe.py"]
    for rel in files:
        path = tmp_path / rel
        for pkg in [*path.relative_to(tmp_path).parents][:-1]:
            (tmp_path / pkg).mkdir(parents=True, exist_ok=True)
            (tmp_path / pkg / "__init__.py").touch()
        path.write_text(probe)
    (tmp_path / "prepare_tasks.py").write_text(probe)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", str(tmp_path / ".mc")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1, out.stdout
    errors = [
        line.split(":")[0] + " " + line.rsplit("[", 1)[-1] for line in out.stdout.splitlines()
    ]
    for rel in [*files, "prepare_tasks.py"]:
        assert f"{rel} assignment]" in errors, out.stdout
    untyped = sorted(e.split()[0] for e in errors if e.endswith("no-untyped-def]"))
    assert untyped == ["bridge/probe.py", "contract/probe.py"], out.stdout


JUNIT = '<testsuites><testsuite name="pytest">{}</testsuite></testsuites>'
SKIP = '<testcase classname="tests.test_a" name="{}"><skipped message="{}"/></testcase>'
PASS = '<testcase classname="tests.test_a" name="{}"/>'
VENDOR_SKIP = "vendored slime sources not found in /x (set SLIME_VENDOR_DIR): missing y"


def test_the_vendored_check_finds_a_test_that_ran_nowhere(tmp_path: Path) -> None:
    report = tmp_path / "tests.xml"
    report.write_text(
        JUNIT.format(
            PASS.format("test_ran")
            + SKIP.format("test_unrun", VENDOR_SKIP)
            + SKIP.format("test_other", "no second network namespace")
        )
    )

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(REPO / ".ci" / "vendored_check.py"), str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    out = check(report)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "vendored_check: tests.test_a::test_unrun was skipped for want of slime's vendored "
        "sources: it ran nowhere (is ../shared/vendor complete?)"
    ]
    report.write_text(JUNIT.format(PASS.format("test_ran") + SKIP.format("test_other", "no")))
    assert check(report).returncode == 0
    assert check(tmp_path / "absent.xml").returncode == 2


def test_vendored_tests_skip_with_the_reason_where_the_sources_are_missing(tmp_path: Path) -> None:
    """A fresh clone with nothing beside it: every test marked `vendored` skips, naming the
    folder it looked in and $SLIME_VENDOR_DIR; none fails and none runs."""
    here = Path(__file__).name
    modules = [
        str(f)
        for f in sorted((REPO / "tests").glob("test_*.py"))
        if f.name != here and "pytest.mark.vendored" in f.read_text()
    ]
    assert len(modules) >= 5, modules
    report = tmp_path / "report.xml"
    args = ["-q", "-n0", "-p", "no:randomly", "-p", "no:cacheprovider"]
    args += ["-m", "vendored and not heavy_loop"]  # heavy_loop cells skip for their own reason
    out = subprocess.run(
        [sys.executable, "-m", "pytest", *args, f"--junitxml={report}", *modules],
        env={**os.environ, "SLIME_VENDOR_DIR": str(tmp_path / "none"), "PYTEST_ADDOPTS": ""},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:]
    cases = list(ET.parse(report).iter("testcase"))
    reasons = [case.find("skipped") for case in cases]
    assert cases and all(r is not None for r in reasons), out.stdout[-3000:]
    for r in reasons:
        message = r.get("message") or ""
        assert f"not found in {tmp_path / 'none'}" in message and "SLIME_VENDOR_DIR" in message
    summary = out.stdout.strip().splitlines()[-1]
    assert " passed" not in summary and " failed" not in summary, summary
