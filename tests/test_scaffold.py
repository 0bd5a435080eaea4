"""`python -m envs new NAME`, end to end: the project it writes passes its own tests (the
conformance check among them) and ruff; installed the way pip installs it (a wheel into a
directory on PYTHONPATH; its entry point registers the name), the environment prepares, plans a
training run (`run.sh --dry-run`), rolls out (`run.sh --rollout-only`, scripted engine),
evaluates (`python -m tools.eval`), replays identically and shows in the web UI. Bad names and
directories are one line and write nothing.

Heavy (~3 min on a loaded 2-core machine): the generated project's own tests start an env server
(its conformance check), and one more serves the rollouts, the eval, the replay and the web UI.
Run it alone with `pytest tests/test_scaffold.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import REPO, env_server, free_port
from launch_world import NVIDIA_SMI_8, fake_tools, make_slime, make_world
from sglang_stub import SGLangStub, Turn

from envs import scaffold
from envs.scaffold import write_project

pytestmark = pytest.mark.long(3)

TOKENIZER = REPO / ".cache" / "qwen3-tokenizer"
NAME = "letter_tally"


def call(name: str, args: dict) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(args)}}}\n</tool_call>'


def sh(*cmd: str, env: dict[str, str], cwd: Path = REPO, timeout: float = 600):
    return subprocess.run(
        list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("scaffold")
    made = sh(sys.executable, "-m", "envs", "new", NAME, "--dir", str(root), env=dict(os.environ))
    assert made.returncode == 0, made.stderr
    project = root / NAME
    site = root / "site"
    installed = sh(
        sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
        "--no-index", "--target", str(site), str(project),
        env=dict(os.environ),
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    path = os.pathsep.join([str(site), str(REPO)])
    # the project's own pytest has none of our plugins: our PYTEST_ADDOPTS (CI's --randomly-seed)
    # stays out of its runs
    env = {k: v for k, v in os.environ.items() if k not in ("TRAIN_CONFIG", "PYTEST_ADDOPTS")}
    return {"root": root, "dir": project, "env": {**env, "PYTHONPATH": path}}


def test_the_project_passes_its_own_tests_and_ruff(project: dict) -> None:
    env = {**project["env"], "PYTHONPATH": str(REPO)}  # its pytest config adds src/ itself
    done = sh(
        sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
        env=env, cwd=project["dir"],
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "6 passed" in done.stdout
    for args in (["check"], ["format", "--check"]):
        lint = sh(sys.executable, "-m", "ruff", *args, "--isolated", "--line-length", "100", ".",
                  env=env, cwd=project["dir"])  # fmt: skip
        assert lint.returncode == 0, lint.stdout + lint.stderr


def test_prepare_dry_run_rollouts_eval_replay_and_ui(
    project: dict, tmp_path: Path, qwen3_tokenizer
) -> None:
    env, db = project["env"], tmp_path / "store.db"
    run_name = f"scaffold-{free_port()}"
    config = tmp_path / "train_config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "environments": {
                    NAME: {
                        "splits": ["train"],
                        "eval_split": "train",
                        "max_turns": 3,
                        "options": {"num_tasks": 12},
                    }
                },
                "env_server": f"http://127.0.0.1:{free_port()}",
                "run_name": run_name,
                "trajectories": {"spool_dir": str(tmp_path / "spool")},
            }
        )
    )
    tasks = tmp_path / "tasks.jsonl"
    prepared = sh(
        sys.executable, "prepare_tasks.py", "--config", str(config), "--output", str(tasks),
        env=env,
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    rows = [json.loads(line) for line in tasks.read_text().splitlines()]
    assert len(rows) == 12 and {r["metadata"]["env"] for r in rows} == {NAME}
    assert [t["function"]["name"] for t in rows[0]["tools"]] == ["submit_answer"]

    # a training run, planned: run.sh --dry-run with this config and these tasks, on a machine
    # whose nvidia-smi lists 8 GPUs
    world = make_world(tmp_path / "world")
    gpus = fake_tools(tmp_path / "gpus", nvidia_smi=NVIDIA_SMI_8)
    slime = make_slime(tmp_path / "slime", "v0.3.1")
    plan = sh(
        "bash", str(REPO / "run.sh"), "--dry-run", "--model", str(world["model"]),
        "--config", str(config), "--task-data", str(tasks), "--slime-path", str(slime),
        "--megatron-path", str(world["megatron"]), "--ray-address", str(world["ray"]),
        env={**env, **gpus},
    )  # fmt: skip
    assert plan.returncode == 0, plan.stdout[:4000] + plan.stderr
    assert str(config.resolve()) in plan.stdout and "bridge.generate.generate" in plan.stdout

    def answer(req) -> Turn:  # a model that counts right
        text = qwen3_tokenizer.decode(req.input_ids)
        m = re.findall(r"letter '(\w)' occur in the word '(\w+)'", text)
        letter, word = m[-1]
        reply = call("submit_answer", {"count": word.count(letter)})
        return Turn.of_text(qwen3_tokenizer, reply + "<|im_end|>")

    # one env server (its store the UI's) for the rollouts, the eval, the replay and the pages
    with (
        env_server("--envs", NAME, "--db", str(db), env=env) as url,
        SGLangStub(answer, tokenizer=qwen3_tokenizer) as stub,
    ):
        rolled = sh(
            "bash", str(REPO / "run.sh"), "--rollout-only", "--engine-url", stub.url,
            "--model", str(TOKENIZER), "--config", str(config), "--task-data", str(tasks),
            "--env-server", url, "--num-tasks", "3", "--n-samples", "2", "--json",
            env=env,
        )  # fmt: skip
        assert rolled.returncode == 0, rolled.stderr[-3000:]
        summary = json.loads(rolled.stdout.strip().splitlines()[-1])
        by_env = {r["env"]: r for r in summary["envs"]}
        assert by_env[NAME]["episodes"] == 6 and by_env[NAME]["reward_mean"] == 1.0
        assert by_env[NAME]["stop_reasons"] == {"env_finished": 6}

        evaluated = sh(
            sys.executable, "-m", "tools.eval", "--model", f"counter={stub.url}",
            "--tokenizer", str(TOKENIZER), "--config", str(config), "--envs", NAME,
            "--num-tasks", "4", "--env-server", url, "--db", str(db),
            "--out", str(tmp_path / "eval"), "--json",
            env=env,
        )  # fmt: skip
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        report = json.loads(evaluated.stdout.strip().splitlines()[-1])
        scores = report["envs"][NAME]["models"]["counter"]
        assert scores["episodes"] == 4 and scores["reward"]["value"] == 1.0

        replayed = sh(
            sys.executable, "-m", "tools.replay", "--run", run_name, "--sample", "3",
            "--db", str(db), "--url", url,
            env=env,
        )  # fmt: skip
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        assert "all 3 replays identical" in replayed.stdout

        runs = httpx.get(f"{url}/api/runs", timeout=10).json()
        runs = runs.get("runs", runs) if isinstance(runs, dict) else runs
        run = next(r for r in runs if r["name"] == run_name)
        page = httpx.get(f"{url}/runs/{run['id']}", timeout=10)
        assert page.status_code == 200 and NAME in page.text
        listed = httpx.get(f"{url}/api/runs/{run['id']}/rollouts", timeout=10).json()
        items = listed.get("rollouts", listed.get("items")) if isinstance(listed, dict) else listed
        one = httpx.get(f"{url}/rollouts/{items[0]['event_id']}", timeout=10)
        assert one.status_code == 200 and NAME in one.text and "submit_answer" in one.text


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("Bad-Name", "is not a usable name"),
        ("json", "a module named 'json' already exists"),
        ("gsm8k", "a module named 'gsm8k' already exists"),
        ("class", "is not a usable name"),
    ],
)
def test_bad_names_are_one_line_and_write_nothing(
    tmp_path: Path, name: str, says: str, capsys
) -> None:
    assert scaffold.main(argparse.Namespace(name=name, dir=str(tmp_path))) == 2
    out, err = capsys.readouterr()
    (line,) = err.strip().splitlines()
    assert not out and line.startswith("envs new: error: ") and says in line
    assert list(tmp_path.iterdir()) == []


def test_the_command_exits_2_on_a_bad_name(tmp_path: Path) -> None:
    done = sh(
        sys.executable,
        "-m",
        "envs",
        "new",
        "Bad-Name",
        "--dir",
        str(tmp_path),
        env=dict(os.environ),
    )
    assert done.returncode == 2 and not done.stdout and "is not a usable name" in done.stderr


def test_an_existing_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "word_game").mkdir()
    (tmp_path / "word_game" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not an empty directory"):
        write_project("word_game", tmp_path)
    assert [p.name for p in (tmp_path / "word_game").iterdir()] == ["notes.txt"]
