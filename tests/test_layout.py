"""The floors of the house, checked from the code's own imports (every package map states them).

    tools/                the launcher, rollout-only, eval, prepare_tasks' logic, replay, engines
    envs/  |  bridge/     side by side, never importing each other: the service | the plugin
    contract/             config schema, vocabularies, report keys, trajectory events

- Each floor imports only from the floors below it; `envs` and `bridge` never import each other.
- `contract` imports nothing heavy (no web framework, no torch, no SDK): both sides load it.
- `envs/` never imports slime, SGLang or Megatron: the environments run on any ORS server.
- Importing the plugin's hook modules loads no web framework, no torch and nothing of the tools.
- The old command paths kept for one release (`bridge/launch/*`, `python -m envs replay`) run the
  moved module by name and hold nothing else.
- No module is over ~500 lines unless its docstring says why (a line starting "Long on purpose").
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("contract", "bridge", "envs", "tools")
FLOOR = {"contract": 0, "bridge": 1, "envs": 1, "tools": 2, "prepare_tasks": 3}
# Old paths of moved commands, each running its new module by name (README: Layout).
ALIASES = {
    "bridge/launch/eval.py": "tools.eval",
    "bridge/launch/local_engine.py": "tools.engines.local_engine",
    "bridge/launch/tiny_model.py": "tools.engines.tiny_model",
    "envs/__main__.py": "tools.replay",
}
MAX_LINES = 500


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


def modules_run_by_name(path: Path) -> set[str]:
    """Modules a file runs with `runpy.run_module("...")` (a string, not an import)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", None) == "run_module"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    }


def project_files() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    return [*files, ROOT / "prepare_tasks.py"]


def package_of(path: Path, root: Path = ROOT) -> str:
    return path.relative_to(root).parts[0].removesuffix(".py")


def arrows_that_break_the_floors(files: list[Path], root: Path = ROOT) -> list[str]:
    """`file imports module` for each import from a floor to a higher one or across the middle
    (`files` under `root`, the repository or a scratch copy of its layout)."""
    bad = []
    for f in files:
        here = package_of(f, root)
        for mod in sorted(imported_modules(f)):
            there = mod.split(".")[0]
            if there not in FLOOR or there == here:
                continue
            if FLOOR[there] >= FLOOR[here]:
                bad.append(f"{f.relative_to(root)} imports {mod}")
    return bad


def test_no_import_runs_up_a_floor_or_across_the_middle() -> None:
    files = project_files()
    assert len(files) > 80
    assert arrows_that_break_the_floors(files) == []


def test_the_checker_sees_every_kind_of_arrow(tmp_path: Path) -> None:
    for pkg, code in [
        ("envs", "def f():\n    from bridge.env_client import ToolResult\n"),
        ("bridge", "import envs.registry\n"),
        ("bridge", "from tools.launch import launcher\n"),
        ("contract", "def f():\n    import bridge.generate\n"),
        ("envs", "from tools import replay\n"),
    ]:
        probe = tmp_path / pkg / "_layout_probe.py"  # a scratch tree: other tests scan ROOT
        probe.parent.mkdir(exist_ok=True)
        probe.write_text(code)
        assert arrows_that_break_the_floors([probe], tmp_path) != [], code


@pytest.mark.parametrize("package", ["contract", "bridge", "envs"])
def test_modules_run_by_name_from_below_are_only_the_listed_aliases(package: str) -> None:
    found = {
        f.relative_to(ROOT).as_posix(): mod
        for f in sorted((ROOT / package).rglob("*.py"))
        for mod in modules_run_by_name(f)
    }
    assert found == {k: v for k, v in ALIASES.items() if k.startswith(package + "/")}


@pytest.mark.parametrize("alias", sorted(k for k in ALIASES if k.startswith("bridge/launch/")))
def test_an_alias_holds_nothing_but_the_call(alias: str) -> None:
    path = ROOT / alias
    assert imported_modules(path) <= {"runpy", "sys"}
    assert len(path.read_text().splitlines()) <= 10
    out = subprocess.run(
        [sys.executable, "-m", alias.removesuffix(".py").replace("/", "."), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert f"is now {ALIASES[alias]}" in out.stderr


def test_envs_never_import_slime() -> None:
    files = sorted((ROOT / "envs").rglob("*.py"))
    bad = [
        f"{f.relative_to(ROOT)} imports {m}"
        for f in files
        for m in imported_modules(f)
        if m.split(".")[0] in ("slime", "sglang", "megatron")
    ]
    assert bad == []


@pytest.mark.parametrize(
    ("module", "heavy"),
    [
        ("bridge", {"envs", "tools", "openreward", "transformers", "pydantic"}),
        ("envs", {"bridge", "tools", "openreward", "transformers", "pydantic"}),
        ("contract", {"bridge", "envs", "tools", "openreward", "transformers", "pydantic"}),
        ("bridge.generate", {"envs", "tools", "verifiers", "openenv", "datasets"}),
        ("bridge.metrics", {"envs", "tools"}),
        (
            "contract.config, contract.task, contract.vocab, contract.env_report, "
            "contract.provenance, contract.trajectory_events",
            {"bridge", "envs", "tools", "openreward", "transformers"},
        ),
    ],
)
def test_importing_pulls_in_nothing_heavy(module: str, heavy: set[str]) -> None:
    code = f"import sys, json; import {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    loaded = {m.split(".")[0] for m in json.loads(out.stdout)}
    assert sorted(loaded & (heavy | {"fastapi", "torch", "uvicorn", "slime"})) == []


def test_the_server_and_the_env_tools_load_no_adapter_framework() -> None:
    """verifiers and OpenEnv (the adapters' extras) take 7-15 s to import: only an environment
    that needs one loads it."""
    mods = "envs.server.app, envs.server.__main__, envs.registry, envs.check.runner, envs.adapters"
    code = f"import sys, json; import {mods}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    loaded = {m.split(".")[0] for m in json.loads(out.stdout)}
    heavy = {"verifiers", "openenv", "datasets", "gradio", "torch", "bridge", "tools"}
    assert sorted(loaded & heavy) == []


def test_no_module_is_long_without_a_reason() -> None:
    long = []
    for f in project_files():
        lines = len(f.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(f.read_text())) or ""
        if lines > MAX_LINES and "Long on purpose" not in doc:
            long.append(f"{f.relative_to(ROOT)}: {lines} lines")
    assert long == []


def test_no_tracked_file_is_a_link_out_of_the_tree() -> None:
    """A fresh clone elsewhere has nothing beside it: a tracked symlink to an absolute path or
    out of the repository (a `.venv-main -> /work/main/.venv` once) points at nothing there."""
    out = subprocess.run(
        ["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        pytest.skip(f"not a git checkout: {out.stderr.strip()[:200]}")
    links = [
        line.split("\t", 1)[1] for line in out.stdout.splitlines() if line.startswith("120000")
    ]
    outside = []
    for name in links:
        target = subprocess.run(
            ["git", "cat-file", "-p", f":{name}"], cwd=ROOT, capture_output=True, text=True
        ).stdout
        resolved = (ROOT / name).parent / target
        if Path(target).is_absolute() or not resolved.resolve().is_relative_to(ROOT.resolve()):
            outside.append(f"{name} -> {target}")
    assert outside == []
