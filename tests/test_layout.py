"""The import rules that keep the five parts apart (bridge/__init__.py and envs/__init__.py state
them).

- The slime plugin (`bridge/` without `bridge/launch/`) imports neither `envs` nor `bridge.launch`:
  slime loads it into its rollout process, where only the plugin is shipped and nothing of
  run.sh's side may be pulled in.
- `envs/` never imports slime, SGLang or Megatron: the environments run on any ORS server.
- Importing the plugin's hook modules loads no web framework, no torch and no launcher code.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _files(folder: str, exclude: str | None = None) -> list[Path]:
    files = sorted((ROOT / folder).rglob("*.py"))
    return [f for f in files if exclude is None or not f.is_relative_to(ROOT / exclude)]


def _offending(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for f in files:
        for mod in sorted(imported_modules(f)):
            if any(mod == p or mod.startswith(p + ".") for p in forbidden):
                bad.append(f"{f.relative_to(ROOT) if f.is_relative_to(ROOT) else f} imports {mod}")
    return bad


def test_the_plugin_imports_neither_envs_nor_the_launcher() -> None:
    files = _files("bridge", exclude="bridge/launch")
    assert len(files) > 10
    assert _offending(files, ("envs", "bridge.launch")) == []


def test_envs_never_import_slime() -> None:
    files = _files("envs")
    assert len(files) > 10
    assert _offending(files, ("slime", "sglang", "megatron")) == []


def test_the_checker_sees_function_level_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f():\n    from envs.registry import load_env_class\n    import "
        "bridge.launch.launcher\n"
    )
    assert _offending([probe], ("envs", "bridge.launch")) != []


@pytest.mark.parametrize("module", ["bridge", "envs", "bridge.generate", "bridge.metrics"])
def test_importing_the_hooks_pulls_in_nothing_heavy(module: str) -> None:
    code = f"import sys, json; import {module}; print(json.dumps(sorted(m for m in sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    heavy = {"fastapi", "torch", "uvicorn", "slime", "bridge.launch"}
    if module != "envs":
        heavy.add("envs")
    if module in ("bridge", "envs"):  # the package maps import nothing at all
        heavy |= {"openreward", "transformers", "pydantic"}
    assert sorted(loaded & heavy) == []
