"""`bash run.sh --rollout-only` end to end on the CPU: the real env server and trajectory store
(SQLite), the real Qwen3 tokenizer/template, and as the engine either the scripted SGLang stub
(`--engine-url`) or a tiny random-initialised Qwen3 behind tools.engines.local_engine (`--engine
local`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import REPO, env_server, free_port
from sglang_stub import SGLangStub, Turn

pytestmark = pytest.mark.long(4)

TOKENIZER_DIR = REPO / ".cache" / "qwen3-tokenizer"


def call(name: str, args: dict) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(args)}}}\n</tool_call>'


@pytest.fixture
def run_name():
    name = f"rollout-only-test-{uuid.uuid4().hex[:8]}"
    yield name
    shutil.rmtree(REPO / "runs" / name, ignore_errors=True)


def write_config(
    path: Path, env_url: str, run_name: str, spool: Path, envs: str = "gsm8k,whodunit"
) -> Path:
    lines = ["environments:"] + [f"  {e}:\n    max_turns: 4" for e in envs.split(",")]
    lines += [
        f"env_server: {env_url}",
        f"run_name: {run_name}",
        "trajectories:",
        f"  spool_dir: {spool}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def prepare(config: Path, out: Path, n: int) -> list[dict]:
    done = subprocess.run(
        [
            sys.executable,
            "prepare_tasks.py",
            "--config",
            str(config),
            "--output",
            str(out),
            "--eval-output",
            str(out.with_name("eval.jsonl")),
            "--max-tasks",
            str(n),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def run_sh(
    *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRAIN_CONFIG"} | (env or {})
    return subprocess.run(
        ["bash", str(REPO / "run.sh"), "--rollout-only", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stored(db: Path, run_name: str) -> list[dict]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return [
            dict(r)
            for r in con.execute(
                "SELECT r.env, r.reward, r.stop_reason, r.status, r.num_turns, r.group_key FROM "
                "rollouts r "
                "JOIN runs ON runs.id = r.run_id WHERE runs.name = ?",
                (run_name,),
            )
        ]
    finally:
        con.close()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_scripted_engine_against_running_env_server(
    tmp_path: Path, run_name: str, qwen3_tokenizer
) -> None:
    """--engine-url: GSM8K episodes answered correctly, WhoDunIt wrongly; every one lands in the
    store."""
    db = tmp_path / "store.db"
    with env_server("--envs", "gsm8k,whodunit", "--db", str(db)) as url:
        # tasks prepared for a server elsewhere (rows pin it); --env-server points this run at ours
        config = write_config(
            tmp_path / "cfg.yaml", f"http://127.0.0.1:{free_port()}", run_name, tmp_path / "spool"
        )
        rows = prepare(config, tmp_path / "tasks.jsonl", 3)
        assert rows[0]["metadata"]["env_server"] != [url]
        turns: dict[str, int] = defaultdict(int)

        def responder(req) -> Turn:
            text = qwen3_tokenizer.decode(req.input_ids)
            row = next(r for r in rows if r["prompt"][-1]["content"][:150] in text)
            n = turns[req.routing_key]
            turns[req.routing_key] += 1
            if row["metadata"]["env"] == "gsm8k":
                reply = (
                    call("calculator", {"expression": "6*7"})
                    if n == 0
                    else call("submit_answer", {"answer": row["label"]})
                )
            else:
                reply = call(
                    "submit_answer",
                    {"who": "Nobody", "what": "Nothing", "where": "Nowhere", "why": "None"},
                )
            return Turn.of_text(qwen3_tokenizer, reply + "<|im_end|>")

        with SGLangStub(responder, tokenizer=qwen3_tokenizer) as stub:
            out = run_sh(
                "--engine-url",
                stub.url,
                "--model",
                str(TOKENIZER_DIR),
                "--config",
                str(config),
                "--env-server",
                url,
                "--task-data",
                str(tmp_path / "tasks.jsonl"),
                "--num-tasks",
                "4",
                "--n-samples",
                "2",
                "--concurrency",
                "4",
                "--json",
            )
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        got = stored(db, run_name)
    by_env = {r["env"]: r for r in summary["envs"]}
    n_gsm = 2 * sum(r["metadata"]["env"] == "gsm8k" for r in rows[:4])
    n_who = 8 - n_gsm
    assert n_gsm and n_who, "the first 4 prepared rows should mix both environments"
    assert by_env["gsm8k"]["episodes"] == n_gsm and by_env["gsm8k"]["reward_mean"] == 1.0
    assert by_env["gsm8k"]["solve_rate"] == 1.0 and by_env["gsm8k"]["stop_reasons"] == {
        "env_finished": n_gsm
    }
    assert by_env["gsm8k"]["turns_mean"] == 2.0 and by_env["all"]["token_drift"] == 0
    assert by_env["whodunit"]["reward_mean"] == 0.0 and by_env["whodunit"]["episodes"] == n_who
    # the store holds every episode, with the rewards the bridge computed, grouped per task
    assert len(got) == 8
    assert sorted(r["reward"] for r in got if r["env"] == "gsm8k") == [1.0] * n_gsm
    assert all(
        r["reward"] == 0.0 and r["stop_reason"] == "env_finished"
        for r in got
        if r["env"] == "whodunit"
    )
    assert len({r["group_key"] for r in got}) == 4


def test_local_engine_starts_env_server_and_stops_it(tmp_path: Path, run_name: str) -> None:
    """--engine local with the tiny random Qwen3 the README's offline command makes: prepares tasks
    itself, starts and stops the env server."""
    made = subprocess.run(
        [sys.executable, "-m", "tools.engines.tiny_model", str(tmp_path / "tiny-qwen3")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    model = Path(made.stdout.strip())
    assert (model / "model.safetensors").is_file() and (model / "tokenizer.json").is_file()
    port = free_port()
    db = tmp_path / "store.db"
    config = write_config(
        tmp_path / "cfg.yaml",
        f"http://127.0.0.1:{port}",
        run_name,
        tmp_path / "spool",
        envs="gsm8k",
    )
    out = run_sh(
        "--engine",
        "local",
        "--model",
        str(model),
        "--config",
        str(config),
        "--num-tasks",
        "2",
        "--max-response-len",
        "24",
        "--db",
        str(db),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "debugging engine" in out.stdout and "not for training throughput" in out.stdout
    assert "starting env server" in out.stdout
    assert "gsm8k" in out.stdout and "2 episodes" in out.stdout
    assert (REPO / "runs" / run_name / "rollout_only_tasks.jsonl").is_file()
    assert not port_open(port), "the env server it started must be stopped"
    got = stored(db, run_name)
    assert len(got) == 2 and {r["env"] for r in got} == {"gsm8k"}
    assert all(r["stop_reason"] and r["status"] for r in got)


def test_scripted_engine_plays_every_env_with_tool_calls_and_no_model(
    tmp_path: Path, run_name: str
) -> None:
    """--engine scripted, the newcomer's smoke test: no model, no --model (the Qwen3 tokenizer
    setup.sh --test fetched), tasks prepared and the env server started and stopped; every
    episode calls tools until the environment ends it."""
    port = free_port()
    db = tmp_path / "store.db"
    envs = "gsm8k,whodunit,haiku"
    config = write_config(
        tmp_path / "cfg.yaml", f"http://127.0.0.1:{port}", run_name, tmp_path / "spool", envs
    )
    out = run_sh(
        "--engine", "scripted", "--config", str(config), "--num-tasks", "3", "--db", str(db)
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "starting tools.engines.scripted" in out.stdout and "3 episodes" in out.stdout
    assert not port_open(port), "the env server it started must be stopped"
    got = stored(db, run_name)
    assert len(got) == 3
    for r in got:
        assert r["stop_reason"] == "env_finished" and r["status"] == "completed", r
        assert r["num_turns"] >= 2 if r["env"] != "haiku" else r["num_turns"] >= 1, r


def test_bad_input_one_line_errors(tmp_path: Path, run_name: str) -> None:
    config = write_config(
        tmp_path / "cfg.yaml", f"http://127.0.0.1:{free_port()}", run_name, tmp_path / "spool"
    )
    dead = f"http://127.0.0.1:{free_port()}"
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"prompt": [], "metadata": {"env": "gsm8k", "split": "train", "index": 0}}\n')
    out = run_sh(
        "--engine-url",
        dead,
        "--model",
        str(TOKENIZER_DIR),
        "--config",
        str(config),
        "--task-data",
        str(tasks),
        "--num-tasks",
        "1",
        timeout=120,
    )
    assert out.returncode == 2 and f"engine {dead} does not answer /health" in out.stderr
    assert "starting env server" not in out.stdout  # the engine is checked before any server
    tasks.write_text("{not json\n")
    out = run_sh(
        "--engine-url",
        dead,
        "--model",
        str(TOKENIZER_DIR),
        "--config",
        str(config),
        "--task-data",
        str(tasks),
        timeout=120,
    )
    assert out.returncode == 2 and f"{tasks}:1: not JSON" in out.stderr
    out = run_sh("--engine-url", dead, "--config", str(config), timeout=120)
    assert out.returncode == 2 and "--engine-url needs --model" in out.stderr
    out = run_sh("--model", str(TOKENIZER_DIR), timeout=120)
    assert out.returncode == 2 and "exactly one of --engine-url URL or --engine local" in out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("environments:\n  gsm8k: {max_turn: 2}\n")
    out = run_sh(
        "--engine-url", dead, "--model", str(TOKENIZER_DIR), "--config", str(bad), timeout=120
    )
    assert out.returncode == 2 and "unknown key 'environments.gsm8k.max_turn'" in out.stderr
    assert all(len(line) < 400 for line in out.stderr.splitlines())


def test_missing_model_fails_first_with_the_offline_fix(tmp_path: Path, run_name: str) -> None:
    """A model that cannot load offline stops the run before tasks are prepared or servers start."""
    port = free_port()
    config = write_config(
        tmp_path / "cfg.yaml", f"http://127.0.0.1:{port}", run_name, tmp_path / "spool"
    )
    out = run_sh("--engine", "local", "--model", "./missing", "--config", str(config), timeout=60)
    assert out.returncode == 2 and not out.stdout.strip(), (out.stdout, out.stderr)
    line = out.stderr.strip()
    assert (
        line.startswith("rollout-only: --model ./missing: no such directory") and "\n" not in line
    )
    assert "python -m tools.engines.tiny_model ./tiny-qwen3" in line
    assert not (REPO / "runs" / run_name).exists() and not port_open(port)  # nothing prepared
    out = run_sh(
        "--engine-url",
        "http://127.0.0.1:1",
        "--model",
        "Org/Not-Cached-7B",
        "--config",
        str(config),
        timeout=60,
    )
    assert out.returncode == 2
    assert "neither a local directory nor in the Hugging Face cache" in out.stderr
    assert "hf download Org/Not-Cached-7B" in out.stderr
    empty = tmp_path / "empty-model"
    empty.mkdir()
    out = run_sh("--engine", "local", "--model", str(empty), "--config", str(config), timeout=60)
    assert out.returncode == 2 and "is not a Hugging Face model directory" in out.stderr


def test_local_engine_without_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from tools import rollout_services

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    with pytest.raises(rollout_services.RolloutOnlyError, match=r"pip install -e '\.\[local\]'"):
        rollout_services.check_model(str(TOKENIZER_DIR), engine_local=True)


def test_tiny_model_without_a_tokenizer_is_one_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.engines.tiny_model",
            str(tmp_path / "m"),
            "--tokenizer",
            str(tmp_path / "none"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "no Qwen3 tokenizer at" in out.stderr and "setup.sh --test" in out.stderr


def test_permanent_env_errors_stop_the_run_before_any_episode(
    tmp_path: Path, run_name: str, qwen3_tokenizer, monkeypatch, capsys
) -> None:
    """An environment the server does not serve, or an env server that is another kind of
    server, is said once before any episode (never retried per episode), exit 2."""
    from tools import rollout_only

    # run() sets TRAIN_CONFIG in this process: setenv first, so the test's end restores it
    monkeypatch.setenv("TRAIN_CONFIG", "")
    config = write_config(
        tmp_path / "cfg.yaml", f"http://127.0.0.1:{free_port()}", run_name, tmp_path / "spool"
    )
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"prompt": [], "metadata": {"env": "nope", "split": "train", "index": 0}}\n')
    with (
        env_server("--envs", "gsm8k") as url,
        SGLangStub(lambda req: Turn.of_text(qwen3_tokenizer, "x<|im_end|>")) as stub,
    ):
        common = ["--engine-url", stub.url, "--model", str(TOKENIZER_DIR), "--config"]
        common += [str(config), "--task-data", str(tasks), "--num-tasks", "1"]
        assert rollout_only.main([*common, "--env-server", url]) == 2
        err = capsys.readouterr().err
        assert "unknown environment 'nope'" in err and "serves gsm8k" in err
        assert rollout_only.main([*common, "--env-server", stub.url]) == 2
        assert "is not an ORS env server" in capsys.readouterr().err
        assert stub.requests == []  # no episode was tried


def test_a_run_failing_for_one_infra_reason_stops_early_with_it(
    tmp_path: Path, run_name: str
) -> None:
    """Most episodes lost to one engine error: the run stops after 8 of 20, says why, exit 2."""
    from tools.engines.server import EngineFault

    def broken(req) -> Turn:
        raise EngineFault(500, "the engine ran out of memory")

    with env_server("--envs", "gsm8k") as url:
        config = write_config(tmp_path / "cfg.yaml", url, run_name, tmp_path / "spool", "gsm8k")
        prepare(config, tmp_path / "tasks.jsonl", 10)
        with SGLangStub(broken) as stub:
            out = run_sh(
                *("--engine-url", stub.url, "--model", str(TOKENIZER_DIR)),
                *("--config", str(config), "--task-data", str(tmp_path / "tasks.jsonl")),
                *("--num-tasks", "10", "--n-samples", "2", "--concurrency", "2"),
                timeout=300,
                # the engine's outage is retried 1 s per turn, not 60 (a lasting one here)
                env={"BRIDGE_ENGINE_RETRY_S": "1"},
            )
    assert out.returncode == 2, out.stdout + out.stderr
    line = next(x for x in out.stderr.splitlines() if "stopped after" in x)
    assert "stopped after 8 of 20 episodes: 8 failed" in line
    assert "engine_error" in line and "the engine ran out of memory" in line


def test_one_engine_outage_is_one_reason_whatever_its_tries() -> None:
    """The same outage ends episodes after 2 or 3 tries (load decides): still one reason."""
    from bridge.engine import retry_tally
    from tools.rollout_failures import FailureWatch

    watch = FailureWatch(total=20)
    for tries in (3, 2, 3, 3, 2, 3, 3, 2):
        stop = watch.add(
            {
                "infra_failure": True,
                "stop_reason": "engine_error",
                "failure_message": "engine http://e/generate answered HTTP 500: oom"
                + retry_tally(tries, 1.2),
            }
        )
    assert stop == (
        "stopped after 8 of 20 episodes: 8 failed for one infrastructure reason "
        "(engine_error: engine http://e/generate answered HTTP 500: oom)"
    )


def test_tiny_model_takes_a_seed(tmp_path: Path, qwen3_tokenizer_dir) -> None:
    """--seed draws other weights; one seed builds the same model; a directory is reused only
    for the seed it was built with."""
    pytest.importorskip("torch")
    from tools.engines.tiny_model import main

    def weights(d: Path) -> bytes:
        return (d / "model.safetensors").read_bytes()

    tok = ["--tokenizer", str(qwen3_tokenizer_dir)]
    assert main([str(tmp_path / "a"), *tok, "--seed", "1"]) == 0
    assert main([str(tmp_path / "b"), *tok, "--seed", "2"]) == 0
    seed_1 = weights(tmp_path / "a")
    assert seed_1 != weights(tmp_path / "b")
    assert main([str(tmp_path / "a"), *tok, "--seed", "2"]) == 0  # rebuilt, not reused
    assert weights(tmp_path / "a") == weights(tmp_path / "b") != seed_1
