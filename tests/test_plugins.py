"""Plugin environments (envs/registry.py): names resolve built-in first, then the entry point group
`slime_envs.environments` of installed packages, then `module:Class`; a name that resolves to
nothing is one line naming what was tried. A `module:Class` environment is served under that name
(a colon in the ORS path) to the stock openreward client, the bridge, `play --url` and
prepare_tasks.py like a built-in.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from check_envs import Good
from conftest import REPO, env_server
from generate_helpers import call, make_args, make_sample, open_sessions, recording_stub, run, turn
from openreward import AsyncOpenReward

import tools.prepare_tasks as prepare_tasks
from envs import registry
from envs.errors import UnknownEnvironment
from envs.registry import load_env_class

TESTS = REPO / "tests"
PLUGIN = "check_envs:Good"


def make_distribution(root: Path, name: str, entry_points: dict[str, str]) -> Path:
    """An installed distribution as pip leaves one (its dist-info) in `root`."""
    info = root / f"{name.replace('-', '_')}-0.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3\n")
    lines = [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("[slime_envs.environments]\n" + "\n".join(lines) + "\n")
    return root


def test_builtin_names_resolve_in_any_case() -> None:
    from envs.gsm8k import GSM8K

    assert load_env_class("gsm8k") is GSM8K and load_env_class(" GSM8K ") is GSM8K


def test_entry_points_of_installed_packages_register_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_distribution(tmp_path, "guess-envs", {"guess": PLUGIN, "ghost": "no_such_module_xyz:Env"})
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_env_class("guess") is Good and load_env_class("Guess") is Good
    assert registry.plugin_names()["guess"] == PLUGIN
    with pytest.raises(UnknownEnvironment) as e:
        load_env_class("ghost")
    line = str(e.value)
    assert "entry point ghost = no_such_module_xyz:Env of package guess-envs 0.3" in line
    assert "cannot import module 'no_such_module_xyz'" in line and "\n" not in line
    with pytest.raises(UnknownEnvironment, match=r"unknown environment 'chess'.*guess, ghost"):
        load_env_class("chess")


def test_a_builtin_name_wins_over_an_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from envs.gsm8k import GSM8K

    monkeypatch.syspath_prepend(str(make_distribution(tmp_path, "shadow", {"gsm8k": PLUGIN})))
    assert load_env_class("gsm8k") is GSM8K


def test_module_class_names_resolve_and_each_failure_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "boom_env.py").write_text("raise RuntimeError('no data here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_env_class(PLUGIN) is Good
    cases = {
        "check_envs:Missing": "module 'check_envs' (",
        "check_envs:not_an_environment": "is a function, not an openreward Environment subclass",
        "check_envs:DEFECTS": "is a dict, not an openreward Environment subclass",
        "no_such_module_xyz:Env": "cannot import module 'no_such_module_xyz': ModuleNotFound",
        "boom_env:Env": "importing module 'boom_env' raised RuntimeError: no data here",
        "check_envs:": "'check_envs:' is not of the form module:Class",
    }
    for name, says in cases.items():
        with pytest.raises(UnknownEnvironment) as e:
            load_env_class(name)
        line = str(e.value)
        assert line.startswith(f"environment {name!r}: ") and says in line, line
        assert "\n" not in line


def test_an_adapter_that_is_not_installed_names_its_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Environment:  # stands for OpenEnv's base class, by its module path alone
        pass

    Environment.__module__ = "openenv.core.env_server.interfaces"

    class Counter(Environment):
        pass

    monkeypatch.setattr(sys.modules["check_envs"], "Counter", Counter, raising=False)
    monkeypatch.setitem(sys.modules, "envs.adapters.openenv", None)
    with pytest.raises(UnknownEnvironment) as e:
        load_env_class("check_envs:Counter")
    assert "needs the openenv adapter" in str(e.value)
    assert "pip install -e '.[openenv]'" in str(e.value)


@pytest.fixture(scope="module")
def plugin_server(tmp_path_factory: pytest.TempPathFactory):
    db = tmp_path_factory.mktemp("plugin") / "store.db"
    path = os.pathsep.join([str(TESTS), str(REPO)])
    with env_server("--envs", PLUGIN, "--db", str(db), env={"PYTHONPATH": path}) as url:
        yield url


async def test_the_stock_client_plays_a_module_class_env(plugin_server: str) -> None:
    client = AsyncOpenReward(api_key="local", base_url=plugin_server)
    try:
        env = client.environments.get(PLUGIN, base_url=plugin_server)
        async with env.session(split="train", index=3) as s:
            assert "Task 3" in str(await s.get_prompt())
            assert sorted(t.name for t in await s.list_tools()) == ["guess", "note"]
            out = await s.call_tool("guess", {"number": (3 * 37) % 101})
            assert out.reward == 1.0 and out.finished
    finally:
        await client.environments.aclose()


async def test_the_bridge_plays_a_module_class_env(plugin_server: str, qwen3_tokenizer) -> None:
    tok = qwen3_tokenizer
    script = {
        "p1": [
            turn(tok, call("note", {"text": "start low"}) + "<|im_end|>"),
            turn(tok, call("guess", {"number": (5 * 37) % 101}) + "<|im_end|>"),
        ]
    }
    with recording_stub(tok, script) as stub:
        sample = await run(make_args(stub), make_sample(plugin_server, PLUGIN, "p1", index=5))
    assert sample.reward == 1.0, sample.metadata
    assert sample.metadata["stop_reason"] == "env_finished"
    assert sample.metadata["env"] == PLUGIN and sample.metadata["drift_count"] == 0
    assert open_sessions(plugin_server) == 0


def test_play_against_the_server(plugin_server: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "envs", "play", PLUGIN, "--index", "2", "--url", plugin_server],
        input='note {"text": "hi"}\nguess {"number": 74}\n',
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "1 notes kept." in r.stdout and "[reward: 1  finished: true]" in r.stdout


def test_prepare_tasks_reads_a_module_class_env(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "environments": {PLUGIN: {"eval_split": "train", "options": {"num_tasks": 4}}},
                "env_server": "http://127.0.0.1:9",
            }
        )
    )
    out = tmp_path / "tasks.jsonl"
    assert prepare_tasks.main(["--config", str(cfg), "--output", str(out)]) == 0
    rows = [yaml.safe_load(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and {r["metadata"]["env"] for r in rows} == {PLUGIN}
    assert sorted(t["function"]["name"] for t in rows[0]["tools"]) == ["guess", "note"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("environments:\n  check_envs:Nope: {}\n"))
    done = subprocess.run(
        [sys.executable, "prepare_tasks.py", "--config", str(bad), "--output", str(out)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "environment 'check_envs:Nope': module 'check_envs'" in line
