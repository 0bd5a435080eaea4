"""Test isolation: what one test configures on an environment class is gone in the next one.

Two tests in a child pytest run, in file order: the first points GSM8K at a one-row directory
and fills the SDK's task cache; the second must see the bundled copy again. Without the
conftest's `isolated_env_classes` fixture the second fails (the control run shows it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ("pytester",)

CONFTEST = Path(__file__).with_name("conftest.py")
# file order; no cache; not the plugins the suite does not load either (pyproject's addopts)
CHILD_ARGS = ("-p", "no:randomly", "-p", "no:cacheprovider")
CHILD_ARGS += ("-p", "no:schemathesis", "-p", "no:hypothesispytest")

TWO_TESTS = """
import asyncio
import json

from envs.gsm8k import GSM8K
from envs.gsm8k_data import SourceKind


def test_1_configures(tmp_path):
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text(json.dumps({"question": "q", "answer": "#### 5"}))
    GSM8K.configure({"data_dir": str(tmp_path)})
    assert asyncio.run(GSM8K.get_task("train", 0))["label"] == "5"


def test_2_sees_the_defaults():
    assert GSM8K.data_source().kind is SourceKind.BUNDLED
    assert asyncio.run(GSM8K.get_task("train", 0))["label"] == "72"
"""


@pytest.mark.parametrize("isolated", [True, False], ids=["conftest", "control"])
def test_configured_env_class_does_not_leak(
    pytester: pytest.Pytester, isolated: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)  # CI's (its --junitxml) is not the child's
    pytester.makeconftest(CONFTEST.read_text() if isolated else "")
    pytester.makepyfile(test_two=TWO_TESTS)
    result = pytester.runpytest_subprocess(*CHILD_ARGS)
    if isolated:
        result.assert_outcomes(passed=2)
    else:
        result.assert_outcomes(passed=1, failed=1)
