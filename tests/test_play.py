"""`python -m envs play`: one episode by hand, driven here by piping tool calls into stdin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, env_server, free_port
from ors_episodes import ON_TOPIC_HAIKU

from envs.play import parse_tool_call, tool_signature

pytestmark = pytest.mark.long(2)


def play(*args: str, stdin: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "envs", "play", *args],
        input=stdin,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def whodunit_answer(split: str, index: int) -> dict[str, str]:
    from envs.whodunit import WhoDunIt

    return WhoDunIt.case_for(split, index).answer()


def test_parse_tool_call_forms() -> None:
    assert parse_tool_call('{"name": "list_clues", "arguments": {}}') == ("list_clues", {})
    assert parse_tool_call('{"name": "calc", "arguments": "{\\"expression\\": \\"1+1\\"}"}') == (
        "calc",
        {"expression": "1+1"},
    )
    assert parse_tool_call('{"name": "calc", "input": {"expression": "2"}}') == (
        "calc",
        {"expression": "2"},
    )
    assert parse_tool_call("list_clues") == ("list_clues", {})
    assert parse_tool_call('submit_answer {"answer": "18"}') == ("submit_answer", {"answer": "18"})
    for bad in (
        '{"name": 3}',
        "{nope",
        'calc {"a": }',
        "calc [1]",
        '{"name": "x", "arguments": "[1]"}',
    ):
        with pytest.raises(ValueError):
            parse_tool_call(bad)


def test_tool_signature() -> None:
    spec = {
        "name": "submit",
        "input_schema": {
            "properties": {
                "who": {"type": "string"},
                "n": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            },
            "required": ["who"],
        },
    }
    assert tool_signature(spec) == "submit(who: string, n?: integer/null)"
    assert tool_signature({"name": "list_clues", "input_schema": None}) == "list_clues()"


def test_in_process_whodunit_episode_survives_bad_input() -> None:
    ans = whodunit_answer("train", 3)
    calls = (
        "\n".join(
            [
                "list_suspects",
                '{"name": "list_clues", "arguments": {}}',
                "{this is not json",
                'submit_answer {"who": 3}',
                "teleport {}",
                "",
                'submit_answer {{"who": "{}", "what": "{}", "where": "{}", "why": "{}"}}'.format(
                    ans["who"].upper(), ans["what"], ans["where"], ans["why"]
                ),
                "list_clues",  # never read: the episode is over
            ]
        )
        + "\n"
    )
    r = play("whodunit", "--split", "train", "--index", "3", stdin=calls)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "== whodunit train #3 (in-process) ==" in out and "You are the detective" in out
    assert "  submit_answer(who: string, what: string, where: string, why?: string/null)" in out
    assert ans["who"] in out  # list_suspects output
    assert "! not valid JSON" in out
    assert "! input_validation:" in out and "! not_found: 'teleport' is not a valid tool" in out
    assert "[reward: 1  finished: true]" in out
    assert out.rstrip().endswith(
        "== episode finished: final reward 1.0, sum of rewards 1 over 5 calls =="
    )


def test_end_of_input_and_quit_end_cleanly() -> None:
    r = play("gsm8k", "--split", "test", "--index", "0", stdin='calculator {"expression": "6*7"}\n')
    assert r.returncode == 0, r.stderr
    assert "6*7 = 42" in r.stdout and "[reward: none  finished: false]" in r.stdout
    assert "== episode not finished: sum of rewards 0 over 1 calls ==" in r.stdout
    r = play("haiku", "--split", "test", "--index", "2", stdin="quit\nsubmit_haiku {}\n")
    assert r.returncode == 0 and "over 0 calls" in r.stdout


def test_config_options_apply_in_process(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("environments:\n  whodunit:\n    options: {train_size: 4}\n")
    r = play("whodunit", "--index", "5", "--config", str(cfg), stdin="")
    assert (
        r.returncode == 2
        and r.stderr.strip() == "play: error: whodunit split 'train' has no task 5"
    )
    cfg.write_text("environments:\n  whodunit:\n    options: {train_sise: 4}\n")
    r = play("whodunit", "--config", str(cfg), stdin="")
    assert (
        r.returncode == 2 and "train_sise" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    )


def test_bad_env_and_unreachable_server() -> None:
    r = play("chess", stdin="")
    assert r.returncode == 2 and "unknown environment 'chess'" in r.stderr
    r = play("whodunit", "--url", f"http://127.0.0.1:{free_port()}", stdin="")
    assert r.returncode == 2 and "cannot reach the env server" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_against_a_running_server() -> None:
    with env_server("--role", "env", "--envs", "haiku,whodunit") as url:
        poem = ON_TOPIC_HAIKU["the first warm day of spring"].replace("\n", "\\n")
        r = play(
            "haiku",
            "--split",
            "test",
            "--index",
            "1",
            "--url",
            url,
            stdin=(
                f'submit_haiku {{"poem": "too short"}}\n{{"name": "submit_haiku", "arguments": '
                f'{{"poem": "{poem}"}}}}\n'
            ),
        )
        assert r.returncode == 0, r.stderr
        assert f"on {url} ==" in r.stdout and "submit_haiku(poem: string)" in r.stdout
        assert "finished: false]" in r.stdout and "[reward: 1  finished: true]" in r.stdout
        assert "== episode finished: final reward 1.0" in r.stdout
        r = play(
            "whodunit",
            "--split",
            "test",
            "--index",
            "0",
            "--url",
            url,
            stdin='submit_answer {"who": "x", "what": "y"}\nquit\n',
        )
        assert (
            r.returncode == 0
            and "! input_validation:" in r.stdout
            and "episode not finished" in r.stdout
        )
        r = play("gsm8k", "--url", url, stdin="")
        assert r.returncode == 2 and "unknown environment 'gsm8k'" in r.stderr
