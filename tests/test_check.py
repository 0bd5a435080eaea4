"""`python -m envs check`: a good plugin environment passes every check; each environment with one
defect (tests/check_envs.py) fails exactly that check, with a line that names the fix; a name
that resolves to nothing is one line and exit 2. One check run (one env server) covers them all.

CI (`.ci/run`) runs the check on the built-in three.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest
from check_envs import DEFECTS
from conftest import REPO

from envs.check import runner
from envs.check.checks import CHECKS

TESTS = REPO / "tests"


def run_check(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    path = os.pathsep.join(filter(None, [str(TESTS), str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "envs", "check", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def verdicts(stdout: str) -> dict[str, dict[str, str]]:
    """env name -> check -> its line, from the check's printout."""
    found: dict[str, dict[str, str]] = {}
    env = ""
    for line in stdout.splitlines():
        if line and not line.startswith(" ") and ": " not in line:
            env = line.strip()
            found[env] = {}
        elif line.startswith("  ") and env:
            check = line.split()[1]
            found[env][check] = line
    return found


@pytest.fixture(scope="module")
def report() -> tuple[subprocess.CompletedProcess, dict[str, dict[str, str]]]:
    names = ["check_envs:Good", *(f"check_envs:{cls}" for cls in DEFECTS)]
    out = run_check(*names, "--tasks", "2", "--episodes", "2", "--fuzz", "30")
    return out, verdicts(out.stdout)


def test_a_good_plugin_passes_every_check(report) -> None:
    out, found = report
    good = found["check_envs:Good"]
    assert list(good) == list(CHECKS), out.stdout + out.stderr
    assert all(line.startswith("  ok") for line in good.values()), out.stdout
    assert "check_envs:Good: all 9 checks pass" in out.stdout


@pytest.mark.parametrize(("cls", "check"), sorted(DEFECTS.items()))
def test_each_defect_fails_its_check_alone_with_the_fix(report, cls: str, check: str) -> None:
    out, found = report
    lines = found[f"check_envs:{cls}"]
    assert list(lines) == list(CHECKS), out.stdout + out.stderr
    failed = {c: line for c, line in lines.items() if line.startswith("  FAIL")}
    assert list(failed) == [check], out.stdout
    assert " -> fix: " in failed[check] and len(failed[check].splitlines()) == 1
    assert f"check_envs:{cls}: 1 of 9 checks failed ({check})" in out.stdout


def test_a_failing_check_exits_1(report) -> None:
    out, _ = report
    assert out.returncode == 1, out.stderr


def test_what_each_defect_line_says(report) -> None:
    _, found = report

    def line(cls: str) -> str:
        return found[f"check_envs:{cls}"][DEFECTS[cls]]

    assert "accepted the unknown option" in line("AcceptsAnyOption")
    assert "two different prompts" in line("UnseededTasks")
    assert "invalid JSON Schema" in line("BadSchema") and "'note'" in line("BadSchema")
    assert "gave reward 1.5" in line("RewardOutOfRange") and "[0, 1]" in line("RewardOutOfRange")
    assert "did not finish after 32 calls" in line("NeverFinishes")
    assert "answered call" in line("SharedState") and "state on self" in line("SharedState")
    assert "past the 0.25 s budget" in line("SlowOnLongInput")
    assert "raised out of the tool" in line("RaisesOnBadInput")
    assert "ValueError" in line("RaisesOnBadInput")
    assert "ReportingEnvironment" in line("NoProvenance")


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("chess", "unknown environment 'chess'"),
        ("check_envs:Missing", "has no attribute 'Missing'"),
        ("no_such_module:Env", "cannot import module 'no_such_module'"),
        ("check_envs:not_an_environment", "is a function, not an openreward Environment"),
    ],
)
def test_a_name_that_resolves_to_nothing_is_one_line(name: str, says: str, capsys) -> None:
    parser = argparse.ArgumentParser()
    runner.add_arguments(parser)
    assert runner.main(parser.parse_args([name])) == 2
    out, err = capsys.readouterr()
    (line,) = err.strip().splitlines()
    assert not out and line.startswith("envs check: error: ") and says in line


def test_the_command_exits_2_with_one_line() -> None:
    out = run_check("check_envs:Good", "chess", timeout=120)
    assert out.returncode == 2 and not out.stdout
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(
        "envs check: error: unknown environment 'chess': not a built-in or registered name "
        "(gsm8k, whodunit, haiku"
    )
    assert line.endswith("entry point group slime_envs.environments), and not module:Class")
