"""The verifiers adapter (envs/adapters/verifiers.py) on environments built from verifiers' own
classes (tests/vf_envs.py): a ToolEnv, a MultiTurnEnv and a StatefulToolEnv each play an episode
through `bridge.generate.generate` with the scripted engine on the real env server, and the
reward is what verifiers' own `rollout()` and rubric give on the same transcript (the assistant
messages the environment saw). prepare_tasks, the eval and the web UI work on them unchanged;
what the adapter cannot serve is one line. Needs the extra: `pip install -e '.[verifiers]'`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("verifiers", reason="needs the verifiers extra: pip install -e '.[verifiers]'")

import verifiers as vf
import vf_envs
from adapter_helpers import Served, evaluate, prepare, serve, ui_pages, write_config
from generate_helpers import call, make_args, make_sample, recording_stub, run, turn
from sglang_stub import SGLangStub, Turn
from verifiers.legacy.types import Response, ResponseMessage

from envs.errors import AdapterError, UnknownEnvironment
from envs.registry import configure_env, load_env_class

ENVS = ["vf_envs:CALC_ENV", "vf_envs:GUESS_ENV", "vf_envs:VAULT_ENV"]
WIDE = {"reward": {"min_reward": 0.0, "max_reward": 2.0}}  # the rubrics' weights reach past 1


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(ENVS, tmp_path_factory.mktemp("vf") / "store.db")


@pytest.fixture(scope="module")
def server(served: Served) -> str:
    return served.url


class ScriptedClient(vf.Client):
    """A verifiers model client answering with scripted assistant messages."""

    def __init__(self, replies: list[dict[str, Any]]) -> None:
        super().__init__(object())
        self.replies = list(replies)

    def setup_client(self, config: Any) -> Any:
        return None

    async def to_native_tool(self, tool: Any) -> Any:
        return tool

    async def to_native_prompt(self, messages: Any) -> tuple[Any, dict]:
        return messages, {}

    async def get_native_response(self, prompt: Any, model: str, *a: Any, **kw: Any) -> Any:
        reply = self.replies.pop(0)
        calls = [vf.ToolCall(**c) for c in reply.get("tool_calls", [])] or None
        message = ResponseMessage(
            content=reply.get("content"),
            tool_calls=calls,
            finish_reason="tool_calls" if calls else "stop",
            is_truncated=False,
        )
        return Response(id="r", created=int(time.time()), model=model, message=message)

    async def raise_from_native_response(self, response: Any) -> None:
        return None

    async def from_native_response(self, response: Any) -> Any:
        return response

    async def close(self) -> None:
        return None


async def own_score(load: Any, index: int, transcript: list[dict[str, Any]]) -> float:
    """verifiers' own rollout() and rubric on dataset row `index`, the model's side of the
    conversation being `transcript`."""
    env = load()
    state = await env.rollout(env.get_dataset()[index], ScriptedClient(transcript), "scripted")
    await env.rubric.score_rollout(state)
    return float(state["reward"])


def tool_call(i: int, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"tool_calls": [{"id": f"c{i}", "name": name, "arguments": json.dumps(args)}]}


@pytest.mark.parametrize("answer", ["20", "21"])
async def test_tool_env_episode_matches_its_rubric(server: str, qwen3_tokenizer, answer) -> None:
    tok, key = qwen3_tokenizer, f"calc-{answer}"
    script = {
        key: [
            turn(tok, call("add", {"a": 2, "b": 3}) + "<|im_end|>"),
            turn(tok, call("mul", {"a": 5, "b": 4}) + call("nope") + "<|im_end|>"),
            turn(tok, call("submit_answer", {"answer": answer}) + "<|im_end|>"),
        ]
    }
    with recording_stub(tok, script) as stub:
        sample = await run(make_args(stub), make_sample(server, ENVS[0], key, **WIDE))
    assert sample.metadata["stop_reason"] == "env_finished", sample.metadata
    # the environment saw one assistant message per call it ran ("nope" the bridge refused)
    transcript = [
        tool_call(1, "add", {"a": 2, "b": 3}),
        tool_call(2, "mul", {"a": 5, "b": 4}),
        {"content": answer},
    ]
    expected = await own_score(vf_envs.load_calc, 0, transcript)
    assert expected == pytest.approx(1.0 + 0.25 / 3 if answer == "20" else 0.25 / 3)
    assert sample.reward == pytest.approx(expected)


async def test_multi_turn_env_episode_matches_its_rubric(server: str, qwen3_tokenizer) -> None:
    tok = qwen3_tokenizer
    said = ["5", "I think 8", "7"]
    script = {"guess": [turn(tok, call("respond", {"message": m}) + "<|im_end|>") for m in said]}
    with recording_stub(tok, script) as stub:
        sample = await run(make_args(stub), make_sample(server, ENVS[1], "guess", **WIDE))
        seen = [tok.decode(r.input_ids) for r in stub.requests_for("guess")]
    assert "higher" in seen[1] and "lower" in seen[2]
    expected = await own_score(vf_envs.load_guess, 0, [{"content": m} for m in said])
    assert expected == pytest.approx(1.0 + 0.5 / 3)
    assert sample.reward == pytest.approx(expected)
    assert sample.metadata["stop_reason"] == "env_finished"


async def test_stateful_tool_env_hides_injected_args(server: str, qwen3_tokenizer) -> None:
    tok = qwen3_tokenizer
    script = {
        "vault": [
            turn(tok, call("open_vault", {"code": "1234"}) + "<|im_end|>"),
            turn(tok, call("open_vault", {"code": "9999"}) + "<|im_end|>"),
            turn(tok, call("submit_answer", {"answer": "The prize is pear."}) + "<|im_end|>"),
        ]
    }
    with recording_stub(tok, script) as stub:
        sample = await run(make_args(stub), make_sample(server, ENVS[2], "vault"))
        first = tok.decode(stub.requests_for("vault")[0].input_ids)
    assert "vault_id" not in first and '"code"' in first
    transcript = [
        tool_call(1, "open_vault", {"code": "1234"}),
        tool_call(2, "open_vault", {"code": "9999"}),
        {"content": "The prize is pear."},
    ]
    assert sample.reward == pytest.approx(await own_score(vf_envs.load_vault, 0, transcript))
    assert sample.reward == 1.0


def test_tools_splits_labels_and_schema_checked_arguments() -> None:
    cls = load_env_class(ENVS[0])
    configure_env(cls, {})
    assert [t.name for t in cls.list_tools().tools] == ["add", "mul", "submit_answer"]
    assert cls.list_splits() == ["train", "eval"] and len(cls.list_tasks("eval")) == 1
    assert cls.ground_truth({"split": "train", "index": 1}) == "42"
    assert [t.name for t in load_env_class(ENVS[1]).list_tools().tools] == ["respond"]


async def test_arguments_against_the_tool_schema_are_refused() -> None:
    cls = load_env_class(ENVS[0])
    configure_env(cls, {})
    env = cls(task_spec={"split": "train", "index": 0})
    bad = (await env._call_tool("mul", {"a": "a" * 1000, "b": 10**18})).root
    assert not bad.ok and "is not of type 'number'" in bad.error
    ok = (await env._call_tool("mul", {"a": 6, "b": 7})).root
    assert ok.ok and ok.output.blocks[0].text == "42" and not ok.output.finished


def test_options_are_the_loaders_arguments() -> None:
    cls = load_env_class(ENVS[0])
    configure_env(cls, {"args": {"max_turns": 2}})
    assert cls.vf_env().max_turns == 2
    with pytest.raises(ValueError, match="unexpected keyword argument 'turns'"):
        configure_env(cls, {"args": {"turns": 2}})
    with pytest.raises(ValueError, match="unknown option 'max_turns'"):
        configure_env(cls, {"max_turns": 2})


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("vf_envs:JUDGED_ENV", "judge rubrics are not supported"),
        ("vf_envs:GROUP_ENV", "group reward functions are not supported"),
    ],
)
def test_what_the_adapter_cannot_serve_is_one_line(name: str, says: str) -> None:
    with pytest.raises(AdapterError) as e:
        configure_env(load_env_class(name), {})
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_hub_style_load_environment_is_found_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "vf_hub_demo.py").write_text(
        "import vf_envs\n\ndef load_environment(max_turns: int = 8):\n"
        "    return vf_envs.load_calc(max_turns=max_turns)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = load_env_class("vf_hub_demo:load_environment")
    assert cls is load_env_class("vf_hub_demo:load_environment")  # built once per process
    assert [t.name for t in cls.list_tools().tools] == ["add", "mul", "submit_answer"]
    with pytest.raises(UnknownEnvironment, match="is a function, not an openreward"):
        load_env_class("vf_envs:load_calc")  # another name: not the hub's convention
    assert "vf_hub_demo" in sys.modules


def test_prepare_eval_and_ui_work_unchanged(
    served: Served, tmp_path: Path, qwen3_tokenizer, capsys
) -> None:
    server = served.url
    config = write_config(tmp_path / "cfg.yaml", ENVS[0], server, eval_split="eval", max_reward=2.0)
    rows, eval_rows = prepare(config, tmp_path / "tasks.jsonl")
    assert len(rows) == 3 and len(eval_rows) == 1 and eval_rows[0]["label"] == "81"
    assert "What is 9*9?" in eval_rows[0]["prompt"][-1]["content"]

    def model(req: Any) -> Turn:
        text = qwen3_tokenizer.decode(req.input_ids)
        reply = call("mul", {"a": 9, "b": 9}) if "<tool_response>" not in text else None
        reply = reply or call("submit_answer", {"answer": "81"})
        return Turn.of_text(qwen3_tokenizer, reply + "<|im_end|>")

    with SGLangStub(model, tokenizer=qwen3_tokenizer) as stub:
        report = evaluate(config, stub.url, server, served.db, capsys)
    scores = report["envs"][ENVS[0]]["models"]["scripted"]
    assert scores["episodes"] == 1 and scores["reward"]["value"] == pytest.approx(1.0 + 0.25 / 2)
    (page,) = ui_pages(server, f"{report['name']}/scripted")
    assert ENVS[0] in page and "submit_answer" in page and "81" in page
