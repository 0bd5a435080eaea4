"""The tooling that keeps the style, run for what it does: `.ci/run` stops at a lint or type error
before any test runs, ruff exempts no long line, mypy (with no arguments, as CI runs it) checks
every package and is strict for the contract and the plugin only, and CI's vendored check finds a
vendored test that ran nowhere.

`.ci/run` runs here in a scratch copy whose `setup.sh` does nothing and whose `.venv/bin/python`
records each command and fails the one the test picks; the real checkers run on scratch files
with the project's own pyproject.toml.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

RECORDER = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../../calls.log"
case "$*" in *"$FAIL_AT"*) exit 1 ;; esac
"""


README = """# scratch

## Two commands

```bash
echo main-job
```

```bash
echo tests
```
"""


def ci_run(tmp_path: Path, fail_at: str) -> tuple[int, list[str]]:
    """Run `.ci/run` in a scratch repository; the recorded python fails the command containing
    `fail_at`. Returns the exit status and the python commands it ran, in order."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    (tmp_path / "setup.sh").write_text("echo setup\n")
    (tmp_path / "README.md").write_text(README)
    (tmp_path / ".gitignore").write_text(".venv/\ncalls.log\n")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=ci", "-c", "user.email=ci@localhost"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "scratch"], check=True)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(RECORDER)
    python.chmod(0o755)
    out = subprocess.run(
        ["bash", str(tmp_path / ".ci" / "run")],
        env={**os.environ, "FAIL_AT": fail_at},
        capture_output=True,
        text=True,
        timeout=60,
    )
    log = tmp_path / "calls.log"
    return out.returncode, log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize(
    ("fail_at", "ran"),
    [
        ("ruff check", 1),
        ("ruff format", 2),
        ("mypy", 3),
        ("envs check", 4),
        ("-m vendored", 5),
    ],
)
def test_ci_stops_at_the_first_failing_check_before_any_test(
    tmp_path: Path, fail_at: str, ran: int
) -> None:
    code, calls = ci_run(tmp_path, fail_at)
    assert code != 0
    assert len(calls) == ran and fail_at in calls[-1], calls
    steps = ["-m ruff check .", "-m ruff format --check .", "-m mypy", "-m envs check", "-m pytest"]
    assert [next(s for s in steps if c.startswith(s)) for c in calls] == steps[:ran]
    if ran == 5:  # the vendored tests: in parallel (pyproject's -n auto), the 20 slowest printed
        assert "--durations=20" in calls[-1] and "--randomly-seed=" in calls[-1]


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


def test_the_vendored_check_finds_a_vendored_test_that_ran_nowhere(tmp_path: Path) -> None:
    vendored, fresh = tmp_path / "vendored.xml", tmp_path / "fresh.xml"
    vendored.write_text(JUNIT.format(PASS.format("test_marked")))
    fresh.write_text(
        JUNIT.format(
            SKIP.format("test_marked", VENDOR_SKIP)
            + SKIP.format("test_unmarked", VENDOR_SKIP)
            + SKIP.format("test_other", "no second network namespace")
            + PASS.format("test_plain")
        )
    )

    def check(*args: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(REPO / ".ci" / "vendored_check.py"), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    out = check(vendored, fresh)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "vendored_check: tests.test_a::test_unmarked skipped without the vendored sources and did "
        "not pass in `pytest -m vendored` (mark it @pytest.mark.vendored)"
    ]
    fresh.write_text(JUNIT.format(SKIP.format("test_marked", VENDOR_SKIP)))
    assert check(vendored, fresh).returncode == 0
    assert check(vendored, tmp_path / "absent.xml").returncode == 2
