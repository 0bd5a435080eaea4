"""prepare_tasks.py: rows slime and the bridge can read, mixing and caps, hosted envs, bad input."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, free_port, run_process
from openreward import AsyncOpenReward
from tiny_envs import Broken, Indexed, Tiny

import tools.prepare_tasks as prepare_tasks
from contract.task import TaskMeta, ors_tool_to_openai
from envs import registry

SLIME_KEYS = {
    "prompt",
    "label",
    "metadata",
    "tools",
}  # --input-key/--label-key/--metadata-key/--tool-key


@pytest.fixture(autouse=True)
def tiny_envs(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, cls in (("tiny", Tiny), ("indexed", Indexed), ("broken", Broken)):
        monkeypatch.setitem(registry.ENVIRONMENTS, name, f"tiny_envs:{cls.__name__}")
    monkeypatch.setattr(Indexed, "size", 1000)


def write_config(tmp_path: Path, data: dict[str, Any], name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(
    tmp_path: Path, cfg: dict[str, Any] | Path, *extra: str
) -> tuple[int, list[dict], list[dict]]:
    """prepare_tasks.main in-process; returns (exit code, train rows, eval rows)."""
    path = cfg if isinstance(cfg, Path) else write_config(tmp_path, cfg)
    out, ev = tmp_path / "tasks.jsonl", tmp_path / "eval.jsonl"
    code = prepare_tasks.main(
        ["--config", str(path), "--output", str(out), "--eval-output", str(ev), *extra]
    )
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []
    return code, read(out), read(ev)


# --------------------------------------------------------------------------- rows


def test_rows_have_the_keys_slime_reads_and_metadata_the_bridge_parses(
    tmp_path: Path, capsys
) -> None:
    cfg = {
        "environments": {
            "tiny": {
                "splits": ["train"],
                "eval_split": "test",
                "reward_reduction": "max",
                "nonterminal_reward": -0.5,
                "min_reward": -1.0,
                "max_reward": 2.0,
                "max_turns": 7,
                "on_no_tool_call": "nudge",
            }
        },
        "env_server": ["http://127.0.0.1:9001", "http://127.0.0.1:9002/"],
        "thinking": True,
        "system_prompt": "Be brief.",
        "run_name": "r1",
    }
    code, train, evals = run(tmp_path, cfg)
    assert code == 0
    assert len(train) == 30 and len(evals) == 10
    tool = ors_tool_to_openai(Tiny.list_tools().tools[0].model_dump())
    for row in train + evals:
        assert set(row) == SLIME_KEYS
        assert isinstance(row["metadata"], dict)  # an object, never a JSON string
        meta = TaskMeta.model_validate(row["metadata"])
        spec = Tiny.list_tasks(meta.split)[meta.index]
        assert row["prompt"] == [
            {"role": "user", "content": f"{meta.split} task {spec['n']}: double it.\nUse submit."}
        ]
        assert isinstance(row["label"], str) and row["label"] == str(spec["answer"])
        assert row["tools"] == [tool] and meta.tools == [tool]
        assert tool["function"]["parameters"]["required"] == ["answer"]
        assert meta.env == "tiny" and meta.source_name == "tiny" and not meta.hosted
        assert meta.create_args() == {"split": meta.split, "index": meta.index}
        assert meta.env_server == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
        assert (meta.reward.reward_reduction, meta.reward.nonterminal_reward) == ("max", -0.5)
        assert (meta.reward.min_reward, meta.reward.max_reward) == (-1.0, 2.0)
        assert (meta.max_turns, meta.on_no_tool_call) == (7, "nudge")
        assert (meta.thinking, meta.system_prompt, meta.run_name) == (True, "Be brief.", "r1")
    assert {r["metadata"]["split"] for r in train} == {"train"}
    assert {r["metadata"]["split"] for r in evals} == {"test"}
    assert sorted(r["metadata"]["index"] for r in train) == list(range(30))
    out = capsys.readouterr().out
    assert "tiny" in out and "train" in out and "30" in out and "total" in out and "40" in out


def test_index_only_env_task_tools_ground_truth_and_options(tmp_path: Path) -> None:
    cfg = {"environments": {"indexed": {"num_samples": 25, "options": {"size": 40}}}}
    code, train, evals = run(tmp_path, cfg)
    assert code == 0 and evals == [] and not (tmp_path / "eval.jsonl").exists()
    assert len(train) == 25
    indices = [r["metadata"]["index"] for r in train]
    assert len(set(indices)) == 25 and all(0 <= i < 40 for i in indices)
    for row in train:
        k = row["metadata"]["index"]
        assert row["label"] == str(k * 10)  # the env's ground_truth() wins over task-spec keys
        assert [t["function"]["name"] for t in row["tools"]] == ["answer", f"hint_{k}"]
        assert row["tools"][1]["function"]["parameters"] == {"type": "object", "properties": {}}
        assert row["prompt"][0]["content"] == f"indexed {k}"


def test_mixed_envs_are_interleaved_by_a_seeded_shuffle_and_capped(tmp_path: Path) -> None:
    cfg = {"environments": {"tiny": {"splits": ["train", "test"]}, "indexed": {"num_samples": 30}}}
    _, a, _ = run(tmp_path, cfg, "--seed", "7")
    _, b, _ = run(tmp_path, cfg, "--seed", "7")
    _, c, _ = run(tmp_path, cfg, "--seed", "8")
    key = lambda rows: [
        (r["metadata"]["env"], r["metadata"]["split"], r["metadata"]["index"]) for r in rows
    ]
    assert key(a) == key(b) != key(c)
    assert len(a) == 30 + 10 + 30
    envs = [e for e, _, _ in key(a)]
    assert envs.count("tiny") == 40 and envs.count("indexed") == 30
    switches = sum(1 for x, y in itertools.pairwise(envs) if x != y)
    assert switches > 10  # interleaved, not one env after the other
    assert {(s, i) for e, s, i in key(a) if e == "tiny"} == {("train", i) for i in range(30)} | {
        ("test", i) for i in range(10)
    }


def test_max_tasks_caps_each_env_and_eval(tmp_path: Path) -> None:
    cfg = {
        "environments": {
            "tiny": {"eval_split": "test", "num_samples": 20, "num_eval_samples": 8},
            "indexed": {},
        }
    }
    _, train, evals = run(tmp_path, cfg, "--max-tasks", "5")
    per_env = {e: sum(r["metadata"]["env"] == e for r in train) for e in ("tiny", "indexed")}
    assert per_env == {"tiny": 5, "indexed": 5} and len(evals) == 5
    _, train, evals = run(tmp_path, cfg, "--max-tasks", "15")
    assert sum(r["metadata"]["env"] == "tiny" for r in train) == 15
    assert sum(r["metadata"]["env"] == "indexed" for r in train) == 15 and len(evals) == 8
    _, train, evals = run(tmp_path, cfg)
    assert sum(r["metadata"]["env"] == "tiny" for r in train) == 20
    assert sum(r["metadata"]["env"] == "indexed" for r in train) == 1000 and len(evals) == 8


def test_every_key_of_the_default_config_changes_the_output(tmp_path: Path) -> None:
    """Each active key of train_config.yaml is read by code: changing it changes the rows."""
    default = yaml.safe_load((REPO / "train_config.yaml").read_text())
    env_keys = set().union(*(set(v) for v in default["environments"].values()))
    global_keys = set(default) - {"environments"}
    base_env = {
        "splits": ["train"],
        "eval_split": "test",
        "num_samples": 12,
        "num_eval_samples": 6,
        "reward_reduction": "sum",
        "nonterminal_reward": 0.0,
        "min_reward": 0.0,
        "max_reward": 1.0,
        "max_turns": 20,
    }
    changed_env = {
        "splits": ["test"],
        "eval_split": "train",
        "num_samples": 3,
        "num_eval_samples": 2,
        "reward_reduction": "mean",
        "nonterminal_reward": -1.0,
        "min_reward": -2.0,
        "max_reward": 3.0,
        "max_turns": 4,
    }
    base_global = {k: default[k] for k in global_keys}
    changed_global = {
        "env_server": "http://127.0.0.1:9",
        "thinking": True,
        "system_prompt": "x",
        "run_name": "y",
    }
    assert env_keys <= set(base_env) and global_keys <= set(base_global) == set(changed_global), (
        "a key of train_config.yaml is not covered here"
    )

    def output(env: dict[str, Any], glob: dict[str, Any]) -> tuple[list[dict], list[dict]]:
        code, train, evals = run(tmp_path, {"environments": {"tiny": env}, **glob})
        assert code == 0
        return train, evals

    base = output(base_env, base_global)
    for key in sorted(env_keys):
        assert output({**base_env, key: changed_env[key]}, base_global) != base, key
    for key in sorted(global_keys):
        assert output(base_env, {**base_global, key: changed_global[key]}) != base, key


# ---------------------------------------------------------------------- real envs and a real server


def test_default_config_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The README's first step with no setting: GSM8K is the bundled copy, nothing is fetched."""
    monkeypatch.delenv("GSM8K_DATA_DIR", raising=False)
    code, train, evals = run(tmp_path, REPO / "train_config.yaml", "--max-tasks", "3")
    assert code == 0
    assert (
        sorted(r["metadata"]["env"] for r in train)
        == ["gsm8k"] * 3 + ["haiku"] * 3 + ["whodunit"] * 3
    )
    assert (
        sorted(r["metadata"]["env"] for r in evals)
        == ["gsm8k"] * 3 + ["haiku"] * 3 + ["whodunit"] * 3
    )
    reductions = {r["metadata"]["env"]: r["metadata"]["reward"]["reward_reduction"] for r in train}
    assert reductions == {"whodunit": "sum", "gsm8k": "last", "haiku": "mean"}
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[1:3] for line in table[2:8]] == [
        ["whodunit", "train"],
        ["gsm8k", "train"],
        ["haiku", "train"],
        ["whodunit", "test"],
        ["gsm8k", "test"],
        ["haiku", "test"],
    ]
    assert table[-1].split() == ["total", "18"]


def test_gsm8k_rows(tmp_path: Path, gsm8k_dir: Path) -> None:
    cfg = {
        "environments": {
            "gsm8k": {
                "eval_split": "test",
                "num_samples": 50,
                "num_eval_samples": 10,
                "reward_reduction": "last",
                "options": {"data_dir": str(gsm8k_dir)},
            }
        }
    }
    code, train, evals = run(tmp_path, cfg)
    assert code == 0 and len(train) == 50 and len(evals) == 10
    rows = [json.loads(line) for line in (gsm8k_dir / "train.jsonl").read_text().splitlines()]
    for row in train:
        meta = TaskMeta.model_validate(row["metadata"])
        source = rows[meta.index]
        assert source["question"].strip() in row["prompt"][0]["content"]
        assert row["label"] == source["answer"].rsplit("####", 1)[1].strip()
        assert [t["function"]["name"] for t in row["tools"]] == ["calculator", "submit_answer"]


def _stock_server_cmd(port: int, classes: list[str]) -> list[str]:
    """The SDK's own openreward.environments.Server over env classes ("module:Class"), on
    127.0.0.1."""
    code = (
        "import importlib, sys, uvicorn\n"
        "from openreward.environments import Server\n"
        f"targets = {classes!r}\n"
        "classes = [getattr(importlib.import_module(m), c) for m, c in (t.split(':') for t in "
        "targets)]\n"
        f"uvicorn.run(Server(classes).app, host='127.0.0.1', port={port}, log_level='error')\n"
    )
    return [sys.executable, "-c", code]


async def _served(
    url: str, meta: TaskMeta, api_key: str = "local", hosted: bool = False
) -> tuple[str, list[dict[str, Any]]]:
    """Prompt text and tools of the task, through a real session of the stock client."""
    from contract.task import blocks_to_text

    client = AsyncOpenReward(api_key=api_key)
    try:
        env = (
            client.environments.get(meta.env)
            if hosted
            else client.environments.get(meta.env, base_url=url)
        )
        async with env.session(**meta.create_args()) as s:
            prompt = blocks_to_text(await s.get_prompt())
            tools = [
                ors_tool_to_openai(
                    {"name": t.name, "description": t.description, "input_schema": t.input_schema}
                )
                for t in await s.list_tools()
            ]
        return prompt, tools
    finally:
        await client.environments.aclose()


def test_rows_match_what_the_env_server_serves(
    tmp_path: Path, gsm8k_dir: Path, server_url: str
) -> None:
    """Each row's metadata opens a real session on envs.server whose prompt and tools are the
    row's."""
    cfg = {
        "environments": {
            "gsm8k": {
                "num_samples": 3,
                "eval_split": "test",
                "num_eval_samples": 2,
                "options": {"data_dir": str(gsm8k_dir)},
            },
            "whodunit": {"num_samples": 3, "eval_split": "test", "num_eval_samples": 2},
            "haiku": {"num_samples": 3, "eval_split": "test", "num_eval_samples": 2},
        },
        "env_server": server_url,
    }
    code, train, evals = run(tmp_path, cfg)
    assert code == 0 and len(train) == 9 and len(evals) == 6
    for r in train + evals:  # gsm8k and whodunit expose a ground truth; a haiku topic has none
        assert (
            isinstance(r["label"], str) if r["metadata"]["env"] != "haiku" else r["label"] is None
        )
    for row in train + evals:
        meta = TaskMeta.model_validate(row["metadata"])
        assert meta.env_server == [server_url]
        prompt, tools = asyncio.run(_served(meta.env_server[0], meta))
        assert row["prompt"] == [{"role": "user", "content": prompt}]
        assert row["tools"] == tools


def test_hosted_env_through_the_sdk(
    tmp_path: Path, gsm8k_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Owner/Name env resolves where the SDK sends it: OPENREWARD_SESSION_URL, here a stock
    server."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("OPENREWARD_API_KEY", "test-key")
    monkeypatch.setenv("OPENREWARD_SESSION_URL", url)
    monkeypatch.setenv("GSM8K_DATA_DIR", str(gsm8k_dir))
    monkeypatch.setenv("OPENAI_API_KEY", "s3cret-value")
    cfg = {
        "environments": {
            "Acme/gsm8k": {
                "splits": ["test"],
                "num_samples": 6,
                "eval_split": "train",
                "num_eval_samples": 2,
                "reward_reduction": "last",
                "secrets": {"openai_api_key": None},
            }
        },
        "env_server": "http://127.0.0.1:1",
    }
    with run_process(_stock_server_cmd(port, ["envs.gsm8k:GSM8K"]), f"{url}/health"):
        code, train, evals = run(tmp_path, cfg, "--concurrency", "3")
        assert code == 0 and len(train) == 6 and len(evals) == 2
        tests = [json.loads(line) for line in (gsm8k_dir / "test.jsonl").read_text().splitlines()]
        for row in train + evals:
            meta = TaskMeta.model_validate(row["metadata"])
            assert meta.env == "Acme/gsm8k" and meta.hosted and meta.env_server == []
            assert meta.secrets == {
                "openai_api_key": None
            }  # names only: values never reach the file
            prompt, tools = asyncio.run(_served(url, meta, api_key="test-key", hosted=True))
            assert row["prompt"] == [{"role": "user", "content": prompt}] and row["tools"] == tools
        for row in train:
            assert (
                row["label"]
                == tests[row["metadata"]["index"]]["answer"].rsplit("####", 1)[1].strip()
            )
    assert "s3cret-value" not in (tmp_path / "tasks.jsonl").read_text()


def test_hosted_index_only_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hosted env without list_tasks is read with num_tasks + get_task; per-task tools come from
    the session."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("OPENREWARD_API_KEY", "test-key")
    monkeypatch.setenv("OPENREWARD_SESSION_URL", url)
    cfg = {"environments": {"Acme/indexed": {"num_samples": 5}}}
    tests_dir = str(Path(__file__).parent)
    with run_process(
        _stock_server_cmd(port, ["tiny_envs:Indexed"]),
        f"{url}/health",
        env={"PYTHONPATH": f"{REPO}{os.pathsep}{tests_dir}"},
    ):
        code, train, _ = run(tmp_path, cfg)
    assert code == 0 and len(train) == 5
    for row in train:
        k = row["metadata"]["index"]
        assert 0 <= k < 1000 and row["prompt"][0]["content"] == f"indexed {k}"
        assert [t["function"]["name"] for t in row["tools"]] == ["answer", f"hint_{k}"]
        assert json.loads(row["label"]) == {
            "x": k
        }  # from the task spec: a hosted env has no ground_truth()


# --------------------------------------------------------------------------- bad input


def assert_clean_failure(code: int, err: str, out_dir: Path, *needles: str) -> None:
    """Exit code 2, exactly one stderr line naming the problem, and no new or partial file."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prepare_tasks: error: "), err
    for n in needles:
        assert n in lines[0], lines[0]
    leftovers = sorted(p.name for p in out_dir.iterdir() if p.suffix in (".jsonl", ".tmp"))
    assert leftovers in ([], ["tasks.jsonl"]), leftovers
    if leftovers:  # a file from before is left exactly as it was
        assert (out_dir / "tasks.jsonl").read_text() == "old\n"


def test_cli_process_exits_2_with_one_line_and_keeps_the_old_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "tasks.jsonl").write_text("old\n")
    cfg = write_config(tmp_path, {"environments": {"gsm8k": {}, "chess": {}}})
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "prepare_tasks.py"),
            "--config",
            str(cfg),
            "--output",
            str(out / "tasks.jsonl"),
            "--eval-output",
            str(out / "eval.jsonl"),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_clean_failure(
        proc.returncode, proc.stderr, out, "unknown environment 'chess'", "whodunit"
    )
    assert proc.stdout == ""


@pytest.fixture
def fails(tmp_path: Path, capsys):
    """Run prepare_tasks in-process on a config and check it fails cleanly with the given words."""
    out = tmp_path / "out"
    out.mkdir()

    def check(cfg: dict[str, Any] | Path, *needles: str) -> None:
        path = cfg if isinstance(cfg, Path) else write_config(tmp_path, cfg)
        code = prepare_tasks.main(
            [
                "--config",
                str(path),
                "--output",
                str(out / "tasks.jsonl"),
                "--eval-output",
                str(out / "eval.jsonl"),
            ]
        )
        captured = capsys.readouterr()
        assert captured.out == ""
        assert_clean_failure(code, captured.err, out, *needles)

    return check


def test_bad_config_files(tmp_path: Path, fails) -> None:
    fails(tmp_path / "missing.yaml", "missing.yaml", "not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("environments: [gsm8k\n")
    fails(bad, "invalid YAML at line")
    fails({"environments": {"gsm8k": {"max_turn": 3}}}, "unknown key 'environments.gsm8k.max_turn'")


def test_gsm8k_data_path_asked_for_and_missing(
    tmp_path: Path, fails, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GSM8K directory that was asked for fails with one line; never a silent other copy."""
    monkeypatch.delenv("GSM8K_DATA_DIR", raising=False)
    fails(
        {"environments": {"gsm8k": {"options": {"data_dir": str(tmp_path / "nope")}}}},
        "gsm8k",
        "does not exist",
        "drop options.data_dir",
    )
    monkeypatch.setenv("GSM8K_DATA_DIR", str(tmp_path / "nope"))
    fails({"environments": {"gsm8k": {}}}, "gsm8k", "$GSM8K_DATA_DIR", "does not exist")


def test_eval_output_defaults_beside_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--output other.jsonl writes eval_other.jsonl and leaves ./eval_tasks.jsonl alone."""
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path, {"environments": {"tiny": {"eval_split": "test"}}})
    Path("eval_tasks.jsonl").write_text("keep\n")
    assert prepare_tasks.main(["--config", str(cfg), "--output", "other.jsonl"]) == 0
    assert Path("eval_tasks.jsonl").read_text() == "keep\n"
    assert Path("other.jsonl").stat().st_size and Path("eval_other.jsonl").stat().st_size
    assert prepare_tasks.main(["--config", str(cfg), "--output", "runs/t.jsonl"]) == 0
    assert sorted(p.name for p in Path("runs").iterdir()) == ["eval_t.jsonl", "t.jsonl"]
    assert prepare_tasks.parse_args([]).eval_output == "eval_tasks.jsonl"
    given = prepare_tasks.parse_args(["--output", "a.jsonl", "--eval-output", "b.jsonl"])
    assert given.eval_output == "b.jsonl"


@pytest.mark.parametrize("flag", ["--output", "--eval-output"])
def test_output_that_is_a_directory_is_one_line(tmp_path: Path, capsys, flag: str) -> None:
    cfg = write_config(tmp_path, {"environments": {"tiny": {"eval_split": "test"}}})
    out = tmp_path / "out"
    out.mkdir()
    paths = {"--output": str(out / "tasks.jsonl"), "--eval-output": str(out / "eval.jsonl")}
    paths[flag] = str(out)
    code = prepare_tasks.main(["--config", str(cfg), *itertools.chain(*paths.items())])
    assert_clean_failure(code, capsys.readouterr().err, out, f"{flag} {out} is a directory")


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_task_files_take_the_umask_mode(tmp_path: Path, umask: int) -> None:
    cfg = write_config(tmp_path, {"environments": {"tiny": {"eval_split": "test"}}})
    old = os.umask(umask)
    try:
        code, train, evals = run(tmp_path, cfg)
    finally:
        os.umask(old)
    assert code == 0 and train and evals
    for name in ("tasks.jsonl", "eval.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_hosted_without_key_or_server(fails, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENREWARD_API_KEY", raising=False)
    fails({"environments": {"Acme/Mystery": {}}}, "'Acme/Mystery'", "OPENREWARD_API_KEY")
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("OPENREWARD_API_KEY", "k")
    monkeypatch.setenv("OPENREWARD_SESSION_URL", dead)
    fails({"environments": {"Acme/Mystery": {}}}, "'Acme/Mystery'", dead, "unreachable")


def test_env_errors_are_one_line(fails, monkeypatch: pytest.MonkeyPatch) -> None:
    fails({"environments": {"tiny": {}, "chess": {}}}, "unknown environment 'chess'")
    fails(
        {"environments": {"tiny": {"splits": ["validation"]}}},
        "'tiny' has no split 'validation'",
        "train, test",
    )
    fails({"environments": {"tiny": {"eval_split": "dev"}}}, "no split 'dev'")
    fails(
        {"environments": {"broken": {}}},
        "'broken'",
        "task train[",
        "prompt template missing second line",
    )
    fails({"environments": {"indexed": {"options": {"colour": "red"}}}}, "bad options", "colour")
    fails({"environments": {"tiny": {"options": {"a": 1}}}}, "takes no options")
    fails(
        {"environments": {"Acme/x": {"options": {"a": 1}}}},
        "'options' apply to local environments only",
    )
    monkeypatch.delenv("SOME_KEY", raising=False)
    fails({"environments": {"tiny": {"secrets": {"some_key": None}}}}, "set SOME_KEY")
    monkeypatch.setenv("OPENREWARD_API_KEY", "k")
    monkeypatch.setenv("JUDGE_TOKEN", "v")
    fails(
        {"environments": {"Acme/x": {"secrets": {"judge_token": None}}}},
        "does not forward secret 'judge_token'",
    )


def test_same_output_and_eval_file_is_refused(tmp_path: Path, capsys) -> None:
    cfg = write_config(tmp_path, {"environments": {"tiny": {"eval_split": "test"}}})
    same = str(tmp_path / "t.jsonl")
    assert prepare_tasks.main(["--config", str(cfg), "--output", same, "--eval-output", same]) == 2
    assert "same file" in capsys.readouterr().err and not Path(same).exists()


def test_unwritable_output_is_one_line(tmp_path: Path, capsys) -> None:
    cfg = write_config(tmp_path, {"environments": {"tiny": {}}})
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = prepare_tasks.main(["--config", str(cfg), "--output", str(blocker / "tasks.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot write output" in err


def test_rows_render_with_the_qwen3_chat_template(
    tmp_path: Path, gsm8k_dir: Path, qwen3_tokenizer
) -> None:
    """What slime does with --apply-chat-template: prompt messages + tools through the real
    template."""
    cfg = {
        "environments": {
            "gsm8k": {"num_samples": 2, "options": {"data_dir": str(gsm8k_dir)}},
            "whodunit": {"num_samples": 2},
        }
    }
    code, train, _ = run(tmp_path, cfg)
    assert code == 0
    for row in train:
        text = qwen3_tokenizer.apply_chat_template(
            row["prompt"], tools=row["tools"], tokenize=False, add_generation_prompt=True
        )
        assert row["prompt"][0]["content"] in text and text.endswith("<|im_start|>assistant\n")
        assert "<tools>" in text
        for tool in row["tools"]:
            assert json.dumps(tool, ensure_ascii=False) in text


def test_eval_split_that_is_also_trained_on_is_warned_about(tmp_path: Path, capsys) -> None:
    code, train, evals = run(
        tmp_path, {"environments": {"tiny": {"splits": ["train", "test"], "eval_split": "test"}}}
    )
    assert code == 0 and len(train) == 40 and len(evals) == 10
    assert "warning: tiny: eval_split 'test' is also a training split" in capsys.readouterr().err
