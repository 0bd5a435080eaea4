"""The tooling that keeps the style: .ci/run lints and type-checks before the tests, the type
checker is strict for the plugin only, and no long line is exempt from the linter."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
REPO = Path(__file__).resolve().parents[1]


def test_ci_fails_on_lint_or_type_errors_before_the_tests() -> None:
    script = (REPO / ".ci" / "run").read_text()
    assert "set -euo pipefail" in script
    steps = [
        ".venv/bin/python -m ruff check .",
        ".venv/bin/python -m ruff format --check .",
        ".venv/bin/python -m mypy\n",
        ".venv/bin/python -m pytest",
    ]
    positions = [script.find(s) for s in steps]
    assert -1 not in positions and positions == sorted(positions), positions


def test_the_checkers_come_with_the_test_extra_and_nothing_is_exempt() -> None:
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    test_extra = " ".join(cfg["project"]["optional-dependencies"]["test"])
    assert re.search(r"\bruff>=", test_extra) and re.search(r"\bmypy>=", test_extra)
    assert "E501" not in cfg["tool"]["ruff"]["lint"].get("ignore", [])
    assert cfg["tool"]["mypy"]["files"] == [
        "contract",
        "bridge",
        "envs",
        "tools",
        "prepare_tasks.py",
    ]


def _mypy(tmp_path: Path, package: str) -> subprocess.CompletedProcess[str]:
    """mypy with the project's config on an untyped function in `package` (a scratch copy)."""
    pkg = tmp_path / package.replace(".", "/")
    for part in [tmp_path / p for p in _prefixes(package)]:
        part.mkdir(exist_ok=True)
        (part / "__init__.py").touch()
    (pkg / "probe.py").write_text("def untyped(x):\n    return x\n")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(REPO / "pyproject.toml"),
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            f"{package.replace('.', '/')}/probe.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _prefixes(package: str) -> list[str]:
    parts = package.split(".")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def test_mypy_is_strict_for_the_contract_and_the_plugin_and_default_elsewhere(
    tmp_path: Path,
) -> None:
    for strict in ("contract", "bridge"):
        out = _mypy(tmp_path, strict)
        assert out.returncode == 1 and "[no-untyped-def]" in out.stdout, out.stdout
    launcher = _mypy(tmp_path, "tools.launch")
    assert launcher.returncode == 0, launcher.stdout
    envs = _mypy(tmp_path, "envs")
    assert envs.returncode == 0, envs.stdout
