"""GSM8K env: data loading, the safe calculator, answer checking, and full episodes (in-process and
SDK server)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from openreward.api.errors import ToolCallError
from ors_episodes import play_gsm8k, sdk_server

from envs.errors import CalculatorError, GSM8KDataMissing
from envs.gsm8k import GSM8K, answers_match, calculate, parse_final_answer
from envs.gsm8k_data import SourceKind


@pytest.fixture(autouse=True)
def default_options():
    GSM8K.configure({})
    yield
    GSM8K.configure({})


def _texts(out) -> str:
    return "\n".join(b.text for b in out.blocks)


# ---------------------------------------------------------------- calculator


@pytest.mark.parametrize(
    "expr, want",
    [
        ("1+2", "3"),
        ("(16 - 3 - 4) * 2", "18"),
        ("7/2", "3.5"),
        ("6/2", "3"),
        ("0.1 + 0.2", "0.3"),
        ("2**10", "1024"),
        ("2**-2", "0.25"),
        ("-5 % 3", "1"),
        ("7 // 2", "3"),
        ("-(-3)", "3"),
        ("1.5e3", "1500"),
        ("$5 * 3", "15"),
        ("12 \u00d7 3", "36"),
        ("2**0.5", "1.41421356237"),
        ("10/3", "3.33333333333"),
    ],
)
def test_calculator_evaluates_arithmetic(expr: str, want: str) -> None:
    assert calculate(expr) == want


@pytest.mark.parametrize(
    "expr, fragment",
    [
        ("__import__('os').system('true')", "function calls are not allowed"),
        ("x + 1", "unknown name 'x'"),
        ("2^3", "use **"),
        ("1,200 + 5", "commas are not allowed"),
        ("9**9**9", "exponent"),
        ("2**100", "exponent 100 is too large"),
        ("10**30 * 10", "too large"),
        ("1e400", "too large"),
        ("10 / 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("(-8) ** 0.5", "not a real number"),
        ("(3", "cannot parse"),
        ("", "empty expression"),
        ("1+" * 150 + "1", "longer than 200 characters"),
        ("True + 1", "not a number"),
        ("'a' * 3", "not a number"),
        ("[1, 2]", "unsupported syntax"),
        ("1 if 2 else 3", "unsupported syntax"),
        ("3j", "not a number"),
    ],
)
def test_calculator_rejects_with_clear_error(expr: str, fragment: str) -> None:
    with pytest.raises(CalculatorError) as e:
        calculate(expr)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


WORST_EXPRESSIONS = {
    # 29 characters that once froze the env server for 11-23 s; one more **64 never returned
    "((((1/3)**64+1)**64)**64)**64": "1",
    "(((((1/3)**64+1)**64)**64)**64)**64": "1",
    "(1/3)**64*(1/7)**64*(1/11)**64*(1/13)**64*(1/17)**64": "4.87222988228e-302",
    "((1/3)**64+(1/7)**64)*((1/11)**64+(1/13)**64)": "6.53307618639e-98",
    "1e-300**64 + 5e-324**64": "0",
    "(1/3)**64 // (1/7)**63": "50747683058030218822994",
}


def _under_cpu_limit(code: str, cpu_seconds: int) -> subprocess.CompletedProcess[str]:
    """Run `code` in a child killed by the kernel (SIGXCPU) after `cpu_seconds` of CPU."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))

    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_calculator_and_answer_work_is_bounded() -> None:
    """Exact values stay within 1024-bit numerators/denominators (beyond, floats) and answers
    with huge exponents are not parsed, so the worst inputs all finish in far less than the
    child's 20 s CPU limit (on the old code the second expression alone never finished)."""
    code = f"""
import json
from envs.gsm8k import calculate, parse_number
print(json.dumps({{
    "calc": {{e: calculate(e) for e in {list(WORST_EXPRESSIONS)!r}}},
    "answers": [parse_number(a) for a in ("1e10000000", "-1e-10000000", "1" * 200, "12e2")],
}}, default=str))
"""
    done = _under_cpu_limit(code, 20)
    assert done.returncode == 0, done.stderr[-500:]
    out = json.loads(done.stdout)
    assert out["calc"] == WORST_EXPRESSIONS
    assert out["answers"] == [None, None, None, "1200"]


async def test_long_submissions_are_echoed_cut() -> None:
    env = GSM8K(task_spec={"question": "q", "label": "18"})
    out = (await env._call_tool("submit_answer", {"answer": "x" * 1_000_000})).root.output
    assert out.finished and out.reward == 0.0
    assert len(_texts(out)) < 300 and "(1000000 characters)" in _texts(out)
    assert len(out.metadata["submitted"]) < 200


# ---------------------------------------------------------------- answers


@pytest.mark.parametrize(
    "submitted, label, ok",
    [
        ("18", "18", True),
        (" 18 ", "18", True),
        ("$18", "18", True),
        ("18.0", "18", True),
        ("18.00", "18", True),
        ("1,200", "1200", True),
        ("$1,200.00", "1,200", True),
        ("18.", "18", True),
        ("-3", "-3", True),
        ("0.5", "1/2", True),
        ("17", "18", False),
        ("18.5", "18", False),
        ("eighteen", "18", False),
        ("", "18", False),
        ("18 dollars", "18", False),
        ("nan", "18", False),
    ],
)
def test_answer_matching(submitted: str, label: str, ok: bool) -> None:
    assert answers_match(submitted, label) is ok


def test_parse_final_answer() -> None:
    assert parse_final_answer("step\n#### 1,234") == "1,234"
    with pytest.raises(ValueError, match="####"):
        parse_final_answer("no marker")


# ---------------------------------------------------------------- data


def test_loads_shared_jsonl(gsm8k_dir: Path) -> None:
    GSM8K.configure({"data_dir": str(gsm8k_dir)})
    test = GSM8K.load_split("test")
    lines = [ln for ln in (gsm8k_dir / "test.jsonl").read_text().splitlines() if ln.strip()]
    assert len(test) == len(lines)
    first = json.loads(lines[0])
    assert test[0] == {
        "split": "test",
        "index": 0,
        "question": first["question"].strip(),
        "label": first["answer"].rsplit("####", 1)[1].strip(),
        "steps": 2,  # two lines of reference solution before ####
    }
    assert GSM8K.load_split("test") is test  # cached
    assert len(GSM8K.load_split("train")) > len(test)


def _tiny_dir(path: Path, *labels: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    rows = [{"question": f"Q{i}", "answer": f"#### {a}"} for i, a in enumerate(labels)]
    for split in ("train", "test"):
        (path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_data_dir_from_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [
        {"question": "What is 2+2?", "answer": "2+2=4\n#### 4"},
        {"question": "Q2", "answer": "#### 1,000"},
    ]
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setenv("GSM8K_DATA_DIR", str(tmp_path))
    assert [t["label"] for t in GSM8K.list_tasks("train")] == ["4", "1,000"]


def test_bundled_copy_is_the_default_and_upstream(
    gsm8k_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No setting, no network: the bundled copy, byte for byte the upstream files its README
    names."""
    monkeypatch.delenv("GSM8K_DATA_DIR", raising=False)
    GSM8K.configure({})
    assert GSM8K.data_source().kind is SourceKind.BUNDLED
    assert (len(GSM8K.load_split("train")), len(GSM8K.load_split("test"))) == (7473, 1319)
    bundled = Path(importlib.util.find_spec("envs").origin).parent / "data" / "gsm8k"
    text = (bundled / "README.md").read_text()
    assert "MIT" in (bundled / "LICENSE").read_text() and "openai/grade-school-math" in text
    for split in ("train", "test"):
        want = re.search(rf"{split}\.jsonl `([0-9a-f]{{64}})`", text).group(1)
        assert hashlib.sha256((gsm8k_dir / f"{split}.jsonl").read_bytes()).hexdigest() == want
    GSM8K.configure({"data_dir": str(gsm8k_dir)})
    assert GSM8K.data_source().kind is SourceKind.OPTION_DIR
    from envs.gsm8k_data import DataSource, load_tasks

    assert load_tasks(DataSource(SourceKind.BUNDLED), "test") == GSM8K.load_split("test")


def test_source_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """options.data_dir > $GSM8K_DATA_DIR > the Hub (only with use_hub) > the bundled copy."""
    option_dir = _tiny_dir(tmp_path / "opt", "1")
    env_dir = _tiny_dir(tmp_path / "env", "2")
    monkeypatch.setenv("GSM8K_DATA_DIR", str(env_dir))
    GSM8K.configure({"data_dir": str(option_dir), "use_hub": True})
    assert GSM8K.data_source().kind is SourceKind.OPTION_DIR
    assert GSM8K.load_split("train")[0]["label"] == "1"
    GSM8K.configure({"use_hub": True})
    assert GSM8K.data_source().kind is SourceKind.ENV_DIR
    assert GSM8K.load_split("train")[0]["label"] == "2"
    monkeypatch.delenv("GSM8K_DATA_DIR")
    GSM8K.configure({})
    assert GSM8K.data_source().kind is SourceKind.BUNDLED
    assert GSM8K.load_split("train")[0]["label"] == "72"
    GSM8K._options = GSM8K._options.model_copy(update={"use_hub": True})  # configure() checks it
    assert GSM8K.data_source().kind is SourceKind.HUB


def test_hub_only_when_asked_and_one_line_when_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """use_hub: true goes through `datasets` for real, at configure(); offline (or without
    `datasets`) one line names the fix and the options stay as they were."""
    monkeypatch.delenv("GSM8K_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    if importlib.util.find_spec("datasets") is None:
        with pytest.raises(GSM8KDataMissing, match=r"needs the `datasets` package: pip install"):
            GSM8K.configure({"use_hub": True})
        return
    with pytest.raises(GSM8KDataMissing, match=r"load_dataset.*failed.*drop use_hub") as e:
        GSM8K.configure({"use_hub": True})  # loads at once: a server fails at startup
    assert "\n" not in str(e.value) and GSM8K.data_source().kind is SourceKind.BUNDLED


def test_missing_explicit_path_fails_at_configure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory that was asked for is never silently replaced by another copy."""
    monkeypatch.delenv("GSM8K_DATA_DIR", raising=False)
    with pytest.raises(GSM8KDataMissing, match=r"does not exist; drop options\.data_dir"):
        GSM8K.configure({"data_dir": str(tmp_path / "nope")})
    with pytest.raises(GSM8KDataMissing, match=r"has no train\.jsonl/test\.jsonl"):
        GSM8K.configure({"data_dir": str(tmp_path)})
    monkeypatch.setenv("GSM8K_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(GSM8KDataMissing, match=r"\$GSM8K_DATA_DIR\) does not exist; unset"):
        GSM8K.configure({})
    # A directory that disappears after configure() fails when read, with the same line.
    data = _tiny_dir(tmp_path / "gone", "3")
    GSM8K.configure({"data_dir": str(data)})
    for f in data.iterdir():
        f.unlink()
    data.rmdir()
    with pytest.raises(GSM8KDataMissing, match="does not exist"):
        GSM8K.load_split("train")


def test_parquet_directory(tmp_path: Path) -> None:
    (tmp_path / "test-00000-of-00001.parquet").write_bytes(b"PAR1")
    GSM8K.configure({"data_dir": str(tmp_path)})
    if importlib.util.find_spec("pyarrow") is None and importlib.util.find_spec("pandas") is None:
        with pytest.raises(GSM8KDataMissing, match="needs pyarrow or pandas"):
            GSM8K.load_split("test")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(
            pa.table({"question": ["Q"], "answer": ["#### 7"]}),
            tmp_path / "test-00000-of-00001.parquet",
        )
        assert GSM8K.load_split("test")[0]["label"] == "7"


def test_malformed_rows(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": "no marker"}\n')
    (tmp_path / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{oops\n')
    GSM8K.configure({"data_dir": str(tmp_path)})
    with pytest.raises(GSM8KDataMissing, match="row 0 is not a GSM8K row"):
        GSM8K.load_split("train")
    with pytest.raises(GSM8KDataMissing, match=r"test.jsonl:2: invalid JSON"):
        GSM8K.load_split("test")


def test_configure_rejects_unknown_key() -> None:
    with pytest.raises(ValueError, match="gsm8k options: unknown option 'data_dri'"):
        GSM8K.configure({"data_dri": "/x"})


def test_unknown_split_and_index(gsm8k_dir: Path) -> None:
    with pytest.raises(ValueError, match="no split 'dev'"):
        GSM8K.list_tasks("dev")
    import asyncio

    with pytest.raises(IndexError):
        asyncio.run(GSM8K.get_task("test", 10**6))
    with pytest.raises(IndexError):
        asyncio.run(GSM8K.get_task("test", -1))


def test_task_spec_must_have_question_and_label() -> None:
    with pytest.raises(ValueError, match="question"):
        GSM8K(task_spec={"question": "q"})


# ---------------------------------------------------------------- in-process episode


async def test_in_process_episode(gsm8k_dir: Path) -> None:
    spec = await GSM8K.get_task("test", 0)
    env = GSM8K(task_spec=spec)
    prompt = (await env.get_prompt())[0].text
    assert spec["question"] in prompt and "calculator" in prompt and "submit_answer" in prompt
    assert sorted(t.name for t in GSM8K.list_tools().tools) == ["calculator", "submit_answer"]

    ok = (await env._call_tool("calculator", {"expression": "16 - 3 - 4"})).root
    assert ok.ok and _texts(ok.output) == "16 - 3 - 4 = 9"
    assert ok.output.reward is None and ok.output.finished is False
    bad = (await env._call_tool("calculator", {"expression": "open('x')"})).root
    assert (
        bad.ok
        and _texts(bad.output).startswith("Error:")
        and bad.output.reward is None
        and not bad.output.finished
    )
    num = (
        await env._call_tool("calculator", {"expression": 42})
    ).root  # a bare number is accepted as text
    assert num.ok and _texts(num.output) == "42 = 42"

    done = (await env._call_tool("submit_answer", {"answer": f"${spec['label']}.00"})).root
    assert done.ok and done.output.reward == 1.0 and done.output.finished
    after = (await env._call_tool("calculator", {"expression": "1+1"})).root
    assert not after.ok and after.reason == "episode_finished"


async def test_in_process_wrong_and_unreadable_answers(gsm8k_dir: Path) -> None:
    spec = await GSM8K.get_task("test", 1)
    wrong = (await GSM8K(task_spec=spec)._call_tool("submit_answer", {"answer": "-1"})).root
    assert (
        wrong.output.reward == 0.0 and wrong.output.finished and "Incorrect" in _texts(wrong.output)
    )
    junk = (
        await GSM8K(task_spec=spec)._call_tool("submit_answer", {"answer": "I don't know"})
    ).root
    assert (
        junk.output.reward == 0.0
        and junk.output.finished
        and "Could not read a number" in _texts(junk.output)
    )
    missing = (await GSM8K(task_spec=spec)._call_tool("submit_answer", {})).root
    assert not missing.ok and missing.reason == "input_validation"


# ------------------------------------------------------------ through the stock client + SDK server


@pytest.fixture(scope="module")
def sdk_url() -> str:
    with sdk_server("gsm8k") as url:
        yield url


async def test_sdk_server_episode_correct(sdk_url: str) -> None:
    ep = await play_gsm8k(sdk_url, "test", 3, correct=True)
    assert ep.tools == ["calculator", "submit_answer"]
    assert "submit_answer" in ep.prompt
    assert ep.calls[0][1:] == ("(16 - 3 - 4) * 2 = 18", None, False)
    assert ep.calls[1][1].startswith("Error:") and ep.calls[1][2] is None and not ep.calls[1][3]
    assert ep.final_reward == 1.0 and ep.finished


async def test_sdk_server_episode_wrong(sdk_url: str) -> None:
    ep = await play_gsm8k(sdk_url, "train", 5, correct=False)
    assert ep.final_reward == 0.0 and ep.finished


async def test_sdk_server_refuses_calls_after_finish_and_bad_input(sdk_url: str) -> None:
    from ors_episodes import ors_session

    async with ors_session(sdk_url, "gsm8k", "test", 0) as s:
        with pytest.raises(ToolCallError) as e:
            await s.call_tool("calculator", {"wrong_field": "1"})
        assert e.value.reason == "input_validation"
        out = await s.call_tool("calculator", {"expression": "2*3"})
        assert out.reward is None and not out.finished
        await s.call_tool("submit_answer", {"answer": "0"})
        with pytest.raises(ToolCallError) as e:
            await s.call_tool("calculator", {"expression": "1"})
        assert e.value.reason == "episode_finished"


async def test_our_server_episodes(server_url: str) -> None:
    """The same episodes against this project's server (`python -m envs.server`)."""
    right = await play_gsm8k(server_url, "test", 3, correct=True)
    wrong = await play_gsm8k(server_url, "train", 5, correct=False)
    assert right.calls[0][1:] == ("(16 - 3 - 4) * 2 = 18", None, False)
    assert (right.final_reward, right.finished, wrong.final_reward, wrong.finished) == (
        1.0,
        True,
        0.0,
        True,
    )
