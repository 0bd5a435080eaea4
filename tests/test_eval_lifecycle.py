"""What an eval is and how it stops: a re-pointed model is a new eval (or refused by name, naming
what changed), never its old numbers; SIGTERM stops it in any shell; the services it started stop
with it, also after SIGKILL; a server it did not start is named when used; bad flags get one line.

The real GSM8K env server and SQLite store; the models are the scripted OpenAI stub.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import REPO, env_server, free_port
from eval_helpers import eval_args, last_json, stored, write_config
from eval_models import ScriptedSolver, gsm8k_labels
from openai_stub import OpenAIStub, Reply

from tools.eval.__main__ import main


@pytest.fixture(scope="module")
def gsm8k_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("eval-lifecycle")
    with env_server("--envs", "gsm8k", "--db", str(d / "server.db")) as url:
        yield url


@pytest.fixture(scope="module")
def labels(gsm8k_dir: Path) -> dict[str, str]:
    return gsm8k_labels(gsm8k_dir)


def by_served_model(labels: dict[str, str]):
    """Served model `strong` answers every task right, `weak` every task wrong."""
    solver = ScriptedSolver(labels, 1.0, "any")

    def respond(req) -> Reply:
        q = solver.question(req.first_user)
        if q is None:
            return Reply.text("OK")
        right = req.body["model"] == "strong"
        return Reply.call("submit_answer", answer=labels[q] if right else solver.wrong(q))

    return respond


def test_a_repointed_model_is_a_new_eval_never_its_old_numbers(
    tmp_path: Path, gsm8k_server: str, labels, capsys
) -> None:
    """`B=URL,model=strong` then `B=URL,model=weak`: the second command evaluates weak (a new
    eval by default), and under the first eval's --name it is refused naming what changed."""
    config = write_config(tmp_path / "cfg.yaml", gsm8k_server)
    db = tmp_path / "store.db"
    with OpenAIStub(by_served_model(labels), models=("strong", "weak")) as chat:
        base = eval_args(config, db, "--num-tasks", "3", "--json")
        assert main([*base, "--model", f"B={chat.url},model=strong"]) == 0
        first = last_json(capsys.readouterr().out)
        assert first["envs"]["gsm8k"]["models"]["B"]["reward"]["value"] == 1.0
        assert main([*base, "--model", f"B={chat.url},model=weak"]) == 0
        out, err = capsys.readouterr()
        second = last_json(out)
        assert "3 episodes to run" in err
        assert second["name"] != first["name"]
        assert second["envs"]["gsm8k"]["models"]["B"]["reward"]["value"] == 0.0
        assert second["model_info"]["B"]["model"] == "weak"
        # the same re-pointing under an explicit name: refused, the changed leaf named
        named = [*base, "--name", "pinned"]
        assert main([*named, "--model", f"B={chat.url},model=strong"]) == 0
        capsys.readouterr()
        assert main([*named, "--model", f"B={chat.url},model=weak"]) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("eval: ") and "model B" in line and "strong -> weak" in line
    assert stored(db, "SELECT COUNT(*) FROM eval_episodes WHERE model = 'B'")[0][0] == 9


def test_a_checkpoint_swapped_behind_the_same_url_is_caught(
    tmp_path: Path, gsm8k_server: str, labels, qwen3_tokenizer, capsys
) -> None:
    """The same command, the same URL, but the server now serves other weights: the finished
    eval's report is not printed as if it were of them; the changed leaf is named."""
    from eval_helpers import TOKENIZER_DIR
    from eval_models import generate_responder
    from sglang_stub import SGLangStub

    config = write_config(tmp_path / "cfg.yaml", gsm8k_server)
    db = tmp_path / "store.db"
    solver = ScriptedSolver(labels, 1.0, "swap")
    with SGLangStub(
        generate_responder(solver, qwen3_tokenizer), tokenizer=qwen3_tokenizer, weight_version="7"
    ) as gen:
        args = eval_args(config, db, "--num-tasks", "2", "--tokenizer", str(TOKENIZER_DIR))
        args += ["--model", f"m={gen.url}"]
        assert main(args) == 0
        capsys.readouterr()
        assert main(args) == 0  # the same weights: the stored report, nothing run
        assert "0 episodes to run" in capsys.readouterr().err
        gen.weight_version = "8"  # a weight update behind the same URL
        assert main(args) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model m is not the model this eval evaluated" in line
    assert "served.weight_version 7 -> 8" in line


def test_k_zero_and_other_bad_flags_are_one_line(capsys) -> None:
    for argv, says in (
        (["--k", "0", "--model", "a=http://127.0.0.1:1/v1"], "--k: must be at least 1, got 0"),
        (["--num-tasks", "x", "--model", "a=http://127.0.0.1:1/v1"], "--num-tasks: expected an"),
        (["--k", "2"], "give at least one --model NAME=TARGET"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2
        assert err.strip().splitlines() == [err.strip()] and err.startswith("eval: "), err
        assert says in err


# ---------------------------------------------------------------- signals and services


def _waiting_model(labels: dict[str, str], release: threading.Event):
    """Answers the preflight probe; every task turn waits until `release` (bounded)."""
    solver = ScriptedSolver(labels, 1.0, "wait")

    async def respond(req) -> Reply:
        import asyncio

        q = solver.question(req.first_user)
        if q is None:
            return Reply.text("OK")
        for _ in range(2400):
            if release.is_set():
                break
            await asyncio.sleep(0.05)
        return Reply.call("submit_answer", answer=labels[q])

    return respond


def _wait_for(what: str, check, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _task_requests(stub: OpenAIStub) -> int:
    return sum(1 for r in stub.requests if "Reply with OK" not in r.first_user)


@contextlib.contextmanager
def _reaped(*procs: subprocess.Popen) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)


def test_sigterm_stops_a_background_job_of_a_noninteractive_shell(
    tmp_path: Path, gsm8k_server: str, labels
) -> None:
    """`bash -c 'python -m tools.eval ... & wait'`: the job ignores SIGINT (as every background
    job of a non-interactive shell does), and SIGTERM still stops it, as an interruption."""
    config = write_config(tmp_path / "cfg.yaml", gsm8k_server)
    db, pidfile = tmp_path / "store.db", tmp_path / "eval.pid"
    release = threading.Event()
    with OpenAIStub(_waiting_model(labels, release)) as chat:
        args = eval_args(config, db, "--num-tasks", "4", "--concurrency", "1")
        cmd = " ".join([sys.executable, "-m", "tools.eval", *args, "--model", f"m={chat.url}"])
        shell = subprocess.Popen(
            ["bash", "-c", f"{cmd} & echo $! > {pidfile}; wait $!"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        with _reaped(shell):
            _wait_for("an episode in flight", lambda: _task_requests(chat) >= 1)
            pid = int(pidfile.read_text())
            os.kill(pid, signal.SIGTERM)
            try:
                shell.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError("SIGTERM did not stop the eval") from None
            finally:
                release.set()
            err = shell.stderr.read()
    assert shell.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err


def _env_server_pids(port: int) -> list[int]:
    """Processes whose command line serves envs.server on `port` (for the cleanup of a failure)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"envs.server" in argv and str(port).encode() in argv:
                out.append(int(d.name))
    return out


def test_services_it_started_stop_after_sigkill_and_a_running_one_is_named(
    tmp_path: Path, gsm8k_server: str, labels, capsys
) -> None:
    """The env server the eval starts dies with it, even by SIGKILL; an env server that was
    already answering is used, and the eval says it did not start it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = write_config(tmp_path / "cfg.yaml", url)
    db = tmp_path / "store.db"
    release = threading.Event()
    with OpenAIStub(_waiting_model(labels, release)) as chat:
        args = eval_args(config, db, "--num-tasks", "2", "--concurrency", "1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tools.eval", *args, "--model", f"m={chat.url}"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        with _reaped(proc):
            _wait_for("an episode in flight", lambda: _task_requests(chat) >= 1, 180)
            assert httpx.get(f"{url}/health", timeout=5).status_code == 200
            proc.kill()
            proc.wait(30)
            release.set()

        def down() -> bool:
            try:
                httpx.get(f"{url}/health", timeout=2)
                return False
            except httpx.HTTPError:
                return True

        try:
            _wait_for("the orphaned env server to stop", down, 30)
        finally:
            for pid in _env_server_pids(port):  # only when it failed: the orphan left behind
                os.kill(pid, signal.SIGKILL)
    # a server that answers already is used, and named as not started by this eval
    config = write_config(tmp_path / "cfg2.yaml", gsm8k_server)
    with OpenAIStub(lambda r: Reply.text("OK")) as chat:
        code = main(eval_args(config, db, "--num-tasks", "1", "--model", f"m={chat.url}"))
        err = capsys.readouterr().err
    assert code == 0
    assert f"env server {gsm8k_server} already answers: using it" in err
