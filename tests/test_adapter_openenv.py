"""The OpenEnv adapter (envs/adapters/openenv.py) on environments built from OpenEnv's own classes
(tests/oe_envs.py): an environment with the task API and an MCPEnvironment each play an episode
through `bridge.generate.generate` with the scripted engine on the real env server, and the
reward is what the environment's own `step` gives on the same actions. prepare_tasks, the eval
and the web UI work on them unchanged. Needs the extra: `pip install -e '.[openenv]'`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("openenv", reason="needs the openenv extra: pip install -e '.[openenv]'")

import oe_envs
from adapter_helpers import Served, evaluate, prepare, serve, ui_pages, write_config
from generate_helpers import call, make_args, make_sample, recording_stub, run, turn
from openenv.core.env_server.mcp_types import CallToolAction
from sglang_stub import SGLangStub, Turn

from envs.errors import AdapterError
from envs.registry import configure_env, load_env_class

ENVS = ["oe_envs:GuessEnv", "oe_envs:CalcEnv", "oe_envs:SeedEnv"]
SIGNED = {"reward": {"min_reward": -1.0, "max_reward": 1.0}}  # misses cost 0.05


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(ENVS, tmp_path_factory.mktemp("oe") / "store.db")


@pytest.fixture(scope="module")
def server(served: Served) -> str:
    return served.url


def own_rewards(split: str, index: int, guesses: list[int]) -> list[float]:
    """GuessEnv's own reset/step on the same guesses: the reward of each step."""
    env = oe_envs.GuessEnv()
    env.reset(split=split, index=index)
    return [env.step(oe_envs.GuessAction(guess=g)).reward for g in guesses]


async def test_step_episode_matches_the_envs_own_steps(server: str, qwen3_tokenizer) -> None:
    tok = qwen3_tokenizer
    script = {
        "oe": [
            turn(tok, call("step", {"guess": 5}) + "<|im_end|>"),
            turn(tok, call("step", {"guess": 0}) + call("step", {"guess": 8}) + "<|im_end|>"),
            turn(tok, call("step", {"guess": 7}) + "<|im_end|>"),
        ]
    }
    with recording_stub(tok, script) as stub:
        sample = await run(make_args(stub), make_sample(server, ENVS[0], "oe", index=1, **SIGNED))
        seen = [tok.decode(r.input_ids) for r in stub.requests_for("oe")]
    assert "Guess my number, 1 to 10." in seen[0] and '"feedback": "higher"' in seen[1]
    assert "greater than or equal to 1" in seen[2]  # guess 0: refused before the env steps
    # the env stepped on 5, 8, 7 (0 never reached it): the reward is the sum of its own rewards
    expected = own_rewards("train", 1, [5, 8, 7])
    assert expected == pytest.approx([-0.05, -0.05, 0.6])
    assert sample.reward == pytest.approx(sum(expected))
    assert sample.metadata["stop_reason"] == "env_finished"


async def test_mcp_environment_tools_episode(server: str, qwen3_tokenizer) -> None:
    tok = qwen3_tokenizer
    oe = oe_envs.CalcEnv()
    oe.reset(seed=2)
    a, b, c = oe.numbers
    script = {
        "mcp": [
            turn(tok, call("add", {"a": a, "b": b}) + "<|im_end|>"),
            turn(tok, call("add", {"a": a + b, "b": c}) + "<|im_end|>"),
            turn(tok, call("submit", {"total": a + b + c}) + "<|im_end|>"),
        ]
    }
    with recording_stub(tok, script) as stub:
        sample = await run(make_args(stub), make_sample(server, ENVS[1], "mcp", index=2))
        first = tok.decode(stub.requests_for("mcp")[0].input_ids)
    assert f'"numbers": [{a}, {b}, {c}]' in first
    own = [
        await oe.step_async(CallToolAction(tool_name="add", arguments={"a": a, "b": b})),
        await oe.step_async(CallToolAction(tool_name="add", arguments={"a": a + b, "b": c})),
        await oe.step_async(CallToolAction(tool_name="submit", arguments={"total": a + b + c})),
    ]
    assert own[-1].done and own[-1].reward == 1.0
    assert sample.reward == pytest.approx(sum(o.reward or 0.0 for o in own))
    oe.close()


def test_splits_tasks_labels_and_options() -> None:
    guess = load_env_class(ENVS[0])
    configure_env(guess, {})
    assert guess.list_splits() == ["train", "test"] and guess.num_tasks("test") == 1
    task = guess.get_task("train", 1)
    assert task == {"split": "train", "index": 1, "task": {"id": "train-1", "answer": "7"}}
    assert guess.ground_truth(task) == "7"
    with pytest.raises(IndexError):
        guess.get_task("test", 1)
    with pytest.raises(ValueError, match="unexpected keyword argument 'tri'"):
        configure_env(guess, {"args": {"tri": 3}})
    configure_env(guess, {"args": {"tries": 6}})
    seeded = load_env_class(ENVS[2])
    configure_env(seeded, {"num_tasks": 5})
    assert seeded.list_splits() == ["train"] and seeded.num_tasks("train") == 5
    assert seeded.get_task("train", 4) == {"split": "train", "index": 4, "seed": 4}
    assert [t.name for t in load_env_class(ENVS[1]).list_tools().tools] == ["add", "submit"]


def test_an_action_class_it_cannot_find_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from openenv.core.env_server.interfaces import Environment

    class Untyped(Environment):
        def reset(self, seed: Any = None, episode_id: Any = None, **kw: Any) -> Any: ...
        def step(self, action, timeout_s=None, **kw):  # type: ignore[no-untyped-def]
            ...

        @property
        def state(self) -> Any: ...

    monkeypatch.setattr(oe_envs, "Untyped", Untyped, raising=False)
    from envs.adapters.openenv import openenv_environment

    with pytest.raises(AdapterError, match="its Action class is not declared"):
        openenv_environment(Untyped)


def test_prepare_eval_and_ui_work_unchanged(
    served: Served, tmp_path: Path, qwen3_tokenizer, capsys
) -> None:
    server = served.url
    config = write_config(tmp_path / "cfg.yaml", ENVS[0], server, eval_split="test")
    rows, eval_rows = prepare(config, tmp_path / "tasks.jsonl")
    assert len(rows) == 4 and len(eval_rows) == 1 and eval_rows[0]["label"] == "5"
    assert [t["function"]["name"] for t in rows[0]["tools"]] == ["step"]

    def model(req: Any) -> Turn:
        return Turn.of_text(qwen3_tokenizer, call("step", {"guess": 5}) + "<|im_end|>")

    with SGLangStub(model, tokenizer=qwen3_tokenizer) as stub:
        report = evaluate(config, stub.url, server, served.db, capsys)
    scores = report["envs"][ENVS[0]]["models"]["scripted"]
    assert scores["episodes"] == 1 and scores["reward"]["value"] == 1.0
    (page,) = ui_pages(server, f"{report['name']}/scripted")
    assert ENVS[0] in page and "correct" in page
