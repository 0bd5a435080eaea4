"""`python -m tools.eval` end to end: the real env server (GSM8K), the real SQLite store,
the real Qwen3 tokenizer and chat template; the models are the scripted SGLang stub (/generate) and
the scripted OpenAI-compatible stub (/v1/chat/completions), with known success rates.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, env_server, free_port
from eval_helpers import TOKENIZER_DIR, eval_args, stored, write_config
from eval_models import ScriptedSolver, chat_responder, generate_responder, gsm8k_labels
from openai_stub import OpenAIStub, Reply
from sglang_stub import SGLangStub

from tools.eval.__main__ import main

pytestmark = pytest.mark.long(2)


@pytest.fixture(scope="module")
def gsm8k_server(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("eval-env")
    with env_server("--envs", "gsm8k", "--db", str(d / "server.db")) as url:
        yield url


@pytest.fixture(scope="module")
def labels(gsm8k_dir: Path) -> dict[str, str]:
    return gsm8k_labels(gsm8k_dir)


def test_two_models_known_rates_right_winner_and_cis(
    tmp_path: Path, gsm8k_server: str, labels, qwen3_tokenizer, capsys
) -> None:
    """A /generate model solving 80% against a chat model solving 30%: the report names the right
    winner and its CIs contain the true values (the draws are fixed, so this is deterministic)."""
    strong = ScriptedSolver(labels, 0.8, "strong")
    weak = ScriptedSolver(labels, 0.3, "weak")
    config = write_config(tmp_path / "cfg.yaml", gsm8k_server)
    db = tmp_path / "store.db"
    with (
        SGLangStub(generate_responder(strong, qwen3_tokenizer), tokenizer=qwen3_tokenizer) as gen,
        OpenAIStub(chat_responder(weak)) as chat,
    ):
        args = eval_args(config, db, "--num-tasks", "40", "--k", "2", "--json")
        args += ["--model", f"weak={chat.url}", "--model", f"strong={gen.url}"]
        args += ["--tokenizer", str(TOKENIZER_DIR)]
        assert main(args) == 0
        out, _ = capsys.readouterr()
    report = json.loads(out.strip().splitlines()[-1])
    assert gen.errors == [] and chat.errors == []
    assert report["complete"] and report["episodes"] == 160
    g = report["envs"]["gsm8k"]
    assert g["tasks"] == 40 and set(g["models"]) == {"weak", "strong"}
    # each model's mean reward is its realised success rate; the CI contains the true rate
    for name, solver in (("weak", weak), ("strong", strong)):
        s = g["models"][name]
        assert s["episodes"] == 80 and len(solver.outcomes) == 80
        assert s["reward"]["value"] == pytest.approx(sum(solver.outcomes) / 80)
        assert s["reward"]["lo"] <= solver.rate <= s["reward"]["hi"]
        assert s["solve_rate"]["value"] == s["reward"]["value"]
        assert "2" in s["pass_at"] and "1" in s["pass_at"]
    # strong - weak: the true difference 0.5 is inside the paired CI, which excludes 0
    (c,) = g["comparisons"]
    assert (c["a"], c["b"]) == ("weak", "strong")
    d = c["reward"]["delta"]
    assert d["lo"] <= 0.5 <= d["hi"] and d["lo"] > 0 and c["reward"]["significant"]
    won, lost, tied = c["reward"]["won"], c["reward"]["lost"], c["reward"]["tied"]
    assert won + lost + tied == 40 and won > lost
    assert c["disagree"] and all(abs(x["diff"]) > 0 for x in c["disagree"])
    assert len(c["disagree"][0]["a_rollouts"]) == 2 and len(c["disagree"][0]["b_rollouts"]) == 2
    # the chat model's failures are counted by kind: malformed arguments, no tool call
    weak_s = g["models"]["weak"]
    assert weak_s["errors"]["invalid_arguments"]["value"] > 0
    assert weak_s["stop_reasons"].get("no_tool_call", 0) > 0
    assert g["models"]["strong"]["errors"] == {}
    # every episode is in the store under <eval>/<model>, tokens for /generate only
    name = report["name"]
    runs = dict(
        stored(
            db,
            "SELECT runs.name, COUNT(*) FROM rollouts JOIN runs ON runs.id = rollouts.run_id "
            "GROUP BY runs.name",
        )
    )
    assert runs == {f"{name}/weak": 80, f"{name}/strong": 80}
    assert stored(db, "SELECT COUNT(*) FROM rollout_tokens")[0][0] == 80
    # with the provenance training records: the task, the tokenizer (hashed for /generate)
    for run, hashed in ((f"{name}/strong", True), (f"{name}/weak", False)):
        (meta,) = stored(
            db,
            "SELECT r.metadata FROM rollouts r JOIN runs ON runs.id = r.run_id WHERE runs.name = ? "
            "LIMIT 1",
            run,
        )[0]
        prov = json.loads(meta)["provenance"]
        assert prov["task_id"].startswith("gsm8k/test/") and prov["bridge_version"]
        assert (prov["tokenizer_hash"] != "unknown") == hashed
    assert stored(db, "SELECT COUNT(*) FROM eval_episodes")[0][0] == 160
    files = tmp_path / "out"
    assert json.loads((files / "report.json").read_text())["envs"] == report["envs"]
    md = (files / "report.md").read_text()
    assert "| gsm8k | weak" in md and "strong - weak" in md


def test_chat_model_sees_history_in_openai_format(
    tmp_path: Path, gsm8k_server: str, labels, capsys
) -> None:
    """The chat model gets tools, its own tool calls with their ids, and tool results answering
    them; malformed arguments get an error the model sees, and the episode goes on."""
    solver = ScriptedSolver(labels, 0.0, "x")

    def respond(req):
        q = solver.question(req.first_user)
        if q is None:
            return Reply.text("OK")
        if req.turn == 0:
            return Reply.raw_call("submit_answer", '{"answer": 1', content="Trying.")
        if req.turn == 1:
            return Reply.call("calculator", expression="6*7")
        return Reply.call("submit_answer", answer=labels[q])

    config = write_config(tmp_path / "cfg.yaml", gsm8k_server)
    db = tmp_path / "store.db"
    with OpenAIStub(respond) as chat:
        args = eval_args(config, db, "--num-tasks", "1", "--model", f"m={chat.url}", "--json")
        assert main(args) == 0
        capsys.readouterr()
        third = chat.requests[-1]
    names = [t["function"]["name"] for t in third.tools]
    assert sorted(names) == ["calculator", "submit_answer"]
    roles = [m["role"] for m in third.messages]
    assert roles == ["user", "assistant", "tool", "assistant", "tool"]
    first_call = third.messages[1]["tool_calls"][0]
    assert first_call["function"]["arguments"] == '{"answer": 1'
    assert third.messages[2]["tool_call_id"] == first_call["id"]
    assert "not a JSON object" in third.messages[2]["content"]
    assert third.messages[4]["content"] == "6*7 = 42"
    assert third.body["max_tokens"] <= 4096 and third.body["tool_choice"] == "auto"
    rows = stored(db, "SELECT reward, stop_reason, num_turns, tool_errors FROM eval_episodes")
    assert rows == [(1.0, "env_finished", 3, '{"invalid_arguments":1}')]


def test_chat_model_context_budget_from_reported_usage(
    tmp_path: Path, gsm8k_server: str, capsys
) -> None:
    """The chat model's budget is counted from the usage the server reports: each turn's max_tokens
    is what is left of prompt + --max-tokens, and the episode stops at the budget, as with
    tokens."""

    def respond(req):
        return Reply.call("calculator", expression="6*7")

    config = write_config(tmp_path / "cfg.yaml", gsm8k_server, max_turns=30)
    db = tmp_path / "store.db"
    with OpenAIStub(respond) as chat:
        args = eval_args(config, db, "--num-tasks", "1", "--max-tokens", "60", "--json")
        assert main([*args, "--model", f"m={chat.url}"]) == 0
        capsys.readouterr()
        caps = [r.body["max_tokens"] for r in chat.requests[1:]]  # [0] is the preflight probe
    assert caps[0] == 60 and caps == sorted(caps, reverse=True) and len(caps) < 30
    (stop,) = stored(db, "SELECT stop_reason FROM eval_episodes")
    assert stop == ("context_budget",)


def test_resume_after_kill_reruns_nothing_stored(
    tmp_path: Path, gsm8k_server: str, labels, qwen3_tokenizer, capsys
) -> None:
    """SIGTERM mid-run stops cleanly (exit 130), SIGKILL mid-run loses only episodes in flight;
    each rerun runs exactly the episodes without a stored row; the last run is a no-op that
    prints the report without contacting the model."""
    solver = ScriptedSolver(labels, 0.5, "resume")
    config = write_config(tmp_path / "cfg.yaml", gsm8k_server)
    db = tmp_path / "store.db"
    port = free_port()

    def slow(req):
        turn = generate_responder(solver, qwen3_tokenizer)(req)
        turn.delay = 0.15
        return turn

    args = eval_args(config, db, "--num-tasks", "12", "--k", "3", "--concurrency", "2")
    args += ["--model", f"m=http://127.0.0.1:{port}", "--tokenizer", str(TOKENIZER_DIR)]
    cmd = [sys.executable, "-m", "tools.eval", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def count() -> int:
        try:
            return stored(db, "SELECT COUNT(*) FROM eval_episodes")[0][0] if db.exists() else 0
        except sqlite3.OperationalError:  # the schema is being created
            return 0

    def run_until(at_least: int, sig: signal.Signals) -> subprocess.Popen:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and count() < at_least:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(sig)
        proc.wait(60)
        return proc

    with SGLangStub(slow, tokenizer=qwen3_tokenizer, port=port) as stub:
        proc = run_until(4, signal.SIGTERM)
        err = proc.stderr.read()
        assert proc.returncode == 130, err[-2000:]
        assert "interrupted" in err and "Traceback" not in err
        first = count()
        assert 4 <= first < 36
        assert stored(db, "SELECT COUNT(*) FROM rollouts")[0][0] == first
        proc = run_until(first + 6, signal.SIGKILL)
        assert proc.returncode == -signal.SIGKILL
        sent = len(stub.requests)
    kept = stored(db, "SELECT env, task, sample, rollout_event_id FROM eval_episodes")
    assert first + 6 <= len(kept) < 36
    assert sent >= len(kept)
    # an episode killed in flight left nothing: every stored rollout has its eval row
    assert stored(db, "SELECT COUNT(*) FROM rollouts")[0][0] == len(kept)

    # the rerun (in-process from here on: the same CLI, one interpreter start less)
    with SGLangStub(
        generate_responder(solver, qwen3_tokenizer), tokenizer=qwen3_tokenizer, port=port
    ) as stub:
        assert main(args) == 0
        out, err = capsys.readouterr()
        rerun = len(stub.requests)
    assert rerun == 36 - len(kept)
    rows = stored(db, "SELECT task, sample, rollout_event_id FROM eval_episodes")
    assert len(rows) == 36 and stored(db, "SELECT COUNT(*) FROM rollouts")[0][0] == 36
    assert {r for r in rows if (r[0], r[1]) in {(t, s) for _, t, s, _ in kept}} == {
        (t, s, rid) for _, t, s, rid in kept
    }  # the stored ones were not replaced
    assert set(Counter(t for t, _, _ in rows).values()) == {3}
    assert f"{36 - len(kept)} episodes to run" in err and "reward [95% CI]" in out

    # the same spec again: nothing to run, the report is printed; the model is not even up
    assert main(args) == 0
    again, err = capsys.readouterr()
    assert "0 episodes to run, 36 already stored" in err
    assert again == out


def test_bad_input_one_line_nothing_written(
    tmp_path: Path, gsm8k_server: str, labels, capsys
) -> None:
    config = write_config(tmp_path / "cfg.yaml", gsm8k_server)
    db = tmp_path / "store.db"
    dead = f"http://127.0.0.1:{free_port()}"

    def run(*extra: str) -> str:
        code = main(eval_args(config, db, "--num-tasks", "2", *extra))
        out, err = capsys.readouterr()
        assert code == 2, (out, err)
        lines = err.strip().splitlines()
        assert len(lines[-1]) < 400
        return lines[-1]

    # an unreachable /generate endpoint and an unreachable chat endpoint
    line = run("--model", f"a={dead}", "--tokenizer", str(TOKENIZER_DIR))
    assert line.startswith("eval: model a") and "unreachable" in line
    line = run("--model", f"a={dead}/v1")
    assert line.startswith("eval: model a") and "unreachable" in line
    # a chat endpoint without tool support
    with OpenAIStub(lambda r: Reply.text("hi"), tools_supported=False) as chat:
        line = run("--model", f"a={chat.url}")
    assert "does not accept tool calls" in line and "enable-auto-tool-choice" in line
    # a non-existent environment, a /generate model without a tokenizer, a malformed --model
    assert "unknown environment 'nope'" in run("--model", f"a={dead}/v1", "--envs", "nope")
    assert "needs its checkpoint's tokenizer" in run("--model", f"a={dead}")
    assert "unknown setting 'tokeniser'" in run("--model", f"a={dead},tokeniser=x")
    assert "expected NAME=URL" in run("--model", "nourl")
    # a local model or a tokenizer that is not there: checked before anything starts
    line = run("--model", f"t=local:{tmp_path / 'nope'}")
    assert line.startswith("eval: model t: --model") and "no such directory" in line
    line = run("--model", f"a={dead}", "--tokenizer", str(tmp_path))
    assert "is not a Hugging Face model directory" in line
    # a config without eval splits
    bare = write_config(tmp_path / "bare.yaml", gsm8k_server, eval_split=False)
    code = main(eval_args(bare, db, "--model", f"a={dead}/v1"))
    assert code == 2 and "no environment in the config has an eval_split" in capsys.readouterr().err
    assert not db.exists()  # nothing was written by any of them

    # a model that never calls tools: the eval runs, and one line says so
    with OpenAIStub(lambda r: Reply.text("I think it is 7.")) as chat:
        code = main(eval_args(config, db, "--num-tasks", "2", "--model", f"mute={chat.url}"))
        out, _ = capsys.readouterr()
    assert code == 0
    assert "warning: model mute never called a tool in 2 episodes" in out
    # the same name with another spec is refused in one line, nothing added
    name = stored(db, "SELECT name FROM evals")[0][0]
    line = run("--model", f"mute={dead}/v1", "--name", name, "--k", "3")
    assert f"eval '{name}' exists with another spec (k 1 -> 3)" in line
    # so is a changed episode setting (max_turns), named in the line
    changed = write_config(tmp_path / "cfg6.yaml", gsm8k_server, max_turns=6)
    code = main(
        eval_args(changed, db, "--num-tasks", "2", "--name", name, "--model", f"mute={dead}/v1")
    )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "settings.envs.gsm8k.max_turns 4 -> 6" in line
    assert stored(db, "SELECT COUNT(*) FROM eval_episodes")[0][0] == 2


def test_a_failing_store_stops_the_run_in_one_line(
    tmp_path: Path, gsm8k_server: str, labels, capsys
) -> None:
    """The store breaks mid-run (its eval table dropped by another connection): the eval stops with
    one line instead of playing episodes it cannot keep; what was stored before stays."""
    config = write_config(tmp_path / "cfg.yaml", gsm8k_server)
    db = tmp_path / "store.db"
    solver = ScriptedSolver(labels, 1.0, "s")
    respond = chat_responder(solver)
    answered = []

    def breaking(req):
        if req.first_user and solver.question(req.first_user) is not None:
            answered.append(1)
            if len(answered) == 6:
                con = sqlite3.connect(db, timeout=30)
                con.execute("DROP TABLE eval_episodes")
                con.commit()
                con.close()
                time.sleep(0.5)  # the episodes in flight finish against the broken store
        return respond(req)

    with OpenAIStub(breaking) as chat:
        args = eval_args(config, db, "--num-tasks", "40", "--concurrency", "2")
        code = main([*args, "--model", f"m={chat.url}"])
        err = capsys.readouterr().err
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("eval: cannot store episodes in") and "no such table" in line
    assert len(answered) < 40  # it stopped instead of running every episode


def test_new_model_joins_by_name_and_retry_errors(
    tmp_path: Path, gsm8k_server: str, labels, capsys
) -> None:
    """A model joins an existing eval by --name (the stored model, its server now down, is not
    run again: its episodes are stored); episodes that failed are stored as failures, reported,
    and rerun with --retry-errors."""
    config = write_config(tmp_path / "cfg.yaml", gsm8k_server)
    db = tmp_path / "store.db"
    port = free_port()
    dead = f"http://127.0.0.1:{port}/v1"  # good's own URL, once its server is gone
    solver = ScriptedSolver(labels, 1.0, "good")
    base = eval_args(config, db, "--num-tasks", "3", "--name", "joined", "--json")
    with OpenAIStub(chat_responder(solver), port=port):
        assert main([*base, "--model", f"good={dead}"]) == 0
    capsys.readouterr()

    def broken(req):  # answers the preflight probe, fails every task turn
        return (
            Reply.text("OK") if "Reply with OK" in req.first_user else Reply.http_error(500, "boom")
        )

    flaky_port = free_port()
    with OpenAIStub(broken, port=flaky_port) as chat:
        args = [*base, "--model", f"good={dead}", "--model", f"flaky={chat.url}"]
        assert main(args) == 0  # good's episodes are stored: nothing of it runs again
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    g = report["envs"]["gsm8k"]
    assert g["models"]["good"]["reward"]["value"] == 1.0
    assert g["models"]["flaky"]["stop_reasons"] == {"engine_error": 3}
    assert g["models"]["flaky"]["errors"]["engine_error"]["value"] == 1.0
    assert any("3 episodes failed (engine_error 3)" in w for w in report["warnings"])
    (c,) = g["comparisons"]
    assert (c["a"], c["b"], c["reward"]["lost"]) == ("good", "flaky", 3)
    failed = stored(db, "SELECT rollout_event_id FROM eval_episodes WHERE status = 'failed'")
    assert len(failed) == 3
    # without --retry-errors nothing runs; with it, the failures run again and are replaced
    # (the same server, fixed)
    with OpenAIStub(chat_responder(ScriptedSolver(labels, 1.0, "fixed")), port=flaky_port) as chat:
        args = [*base, "--model", f"good={dead}", "--model", f"flaky={chat.url}"]
        assert main(args) == 0 and len(chat.requests) == 0
        assert main([*args, "--retry-errors"]) == 0
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["envs"]["gsm8k"]["models"]["flaky"]["reward"]["value"] == 1.0
    assert stored(db, "SELECT COUNT(*) FROM eval_episodes WHERE status = 'failed'")[0][0] == 0
    assert stored(db, "SELECT COUNT(*) FROM eval_episodes")[0][0] == 6
    # the model's run holds exactly the eval's episodes (what its run page shows); the failed
    # rollouts they replaced stay in the store as history, in a run of their own
    runs = dict(
        stored(
            db,
            "SELECT runs.name, COUNT(*) FROM rollouts JOIN runs ON runs.id = rollouts.run_id "
            "GROUP BY runs.name",
        )
    )
    assert runs == {"joined/good": 3, "joined/flaky": 3, "joined/flaky/superseded": 3}
    stats = dict(
        stored(db, "SELECT runs.name, s.n FROM run_env_stats s JOIN runs ON runs.id = s.run_id")
    )
    assert stats["joined/flaky"] == 3 and stats["joined/flaky/superseded"] == 3
    (mean,) = stored(
        db,
        "SELECT AVG(r.reward) FROM rollouts r JOIN runs ON runs.id = r.run_id "
        "WHERE runs.name = 'joined/flaky'",
    )[0]
    assert mean == 1.0


def test_local_cpu_engine_model(tmp_path: Path, gsm8k_server: str, capsys) -> None:
    """local:PATH starts the CPU engine on a tiny random Qwen3, plays token-exact episodes, stops
    it."""
    import re

    from tiny_qwen3 import make_tiny_qwen3

    model = make_tiny_qwen3(tmp_path / "tiny-qwen3")
    config = write_config(tmp_path / "cfg.yaml", gsm8k_server)
    db = tmp_path / "store.db"
    args = eval_args(config, db, "--num-tasks", "1", "--k", "2", "--max-tokens", "12")
    assert main([*args, "--model", f"tiny=local:{model}", "--concurrency", "2"]) == 0
    out, err = capsys.readouterr()
    url = re.search(r"starting tools\.engines\.local_engine at (\S+)", err).group(1)
    port = int(url.rsplit(":", 1)[1])
    import socket

    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the engine it started must be stopped"
    rows = stored(db, "SELECT stop_reason, status, num_turns FROM eval_episodes")
    assert len(rows) == 2 and all(r[2] >= 1 for r in rows)
    # token-exact episodes: the stored tokens are the prompt plus what the engine sampled
    toks = stored(
        db, "SELECT prompt_length, length(token_ids) / 4, length(loss_mask) FROM rollout_tokens"
    )
    assert len(toks) == 2 and all(n > p and m == n - p for p, n, m in toks)
    assert "tiny" in out and "reward [95% CI]" in out


def test_run_sh_eval_only(tmp_path: Path, gsm8k_server: str, labels) -> None:
    """`bash run.sh --eval-only` runs the same CLI."""
    config = write_config(tmp_path / "cfg.yaml", gsm8k_server)
    db = tmp_path / "store.db"
    with OpenAIStub(chat_responder(ScriptedSolver(labels, 1.0, "sh"))) as chat:
        args = eval_args(config, db, "--num-tasks", "2", "--model", f"m={chat.url}")
        env = {k: v for k, v in os.environ.items() if k != "TRAIN_CONFIG"}
        done = subprocess.run(
            ["bash", str(REPO / "run.sh"), "--eval-only", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "gsm8k  m" in done.stdout and "1.000 [1.000, 1.000]" in done.stdout
    assert stored(db, "SELECT COUNT(*) FROM eval_episodes")[0][0] == 2
