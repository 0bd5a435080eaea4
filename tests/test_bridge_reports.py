"""Tripwires, provenance and drift forensics through the whole path: bridge.generate with the
scripted SGLang stub, the real env server, the real sink and store, and the W&B metrics hook's
numbers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import env_server
from generate_helpers import PARAMS, call, make_args, make_sample, recording_stub, run, turn
from ors_episodes import PERFECT_HAIKU
from sglang_stub import SGLangStub, Turn

from bridge.generate import close_clients, set_trajectory_sink
from bridge.metrics import episode_metrics
from bridge.provenance import bridge_version, tokenizer_fingerprint
from bridge.trajectory_uploader import SinkSettings, TrajectoryUploader
from envs.gsm8k import GSM8K
from envs.haiku import Haiku
from envs.provenance import env_version
from envs.whodunit import WhoDunIt

OTHER_POND_HAIKU = "Moonlight on the pond\nripples carry silver light\nthe reeds bow and sleep"


def _scripts(tok: Any) -> dict[str, tuple[dict[str, Any], list[Turn]]]:
    answer = WhoDunIt.case_for("test", 3).answer()
    label = GSM8K.load_split("test")[0]["label"]
    haiku = {"split": "test", "index": 0, "group_index": 5}

    def poem(p: str) -> list[Turn]:
        return [turn(tok, call("submit_haiku", {"poem": p}) + "<|im_end|>")]

    return {
        "w-cheat": (
            {"env": "whodunit", "split": "test", "index": 3},
            [turn(tok, call("submit_answer", answer) + "<|im_end|>")],
        ),
        "w-honest": (
            {"env": "whodunit", "split": "test", "index": 3},
            [
                turn(tok, call("list_clues") + call("list_statements") + "<|im_end|>"),
                turn(tok, call("submit_answer", answer) + "<|im_end|>"),
            ],
        ),
        "g-cheat": (
            {"env": "gsm8k", "split": "test", "index": 0},
            [turn(tok, call("submit_answer", {"answer": label}) + "<|im_end|>")],
        ),
        "h-a": ({"env": "haiku", **haiku}, poem(PERFECT_HAIKU)),
        "h-b": ({"env": "haiku", **haiku}, poem(PERFECT_HAIKU)),
        "h-c": ({"env": "haiku", **haiku}, poem(OTHER_POND_HAIKU)),
    }


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("bridge-reports")
    with env_server("--envs", "gsm8k,whodunit,haiku", "--db", str(d / "t.db")) as url:
        scripts = _scripts(qwen3_tokenizer)
        samples: dict[str, Any] = {}

        async def play() -> None:
            sink = TrajectoryUploader(
                url, str(d / "spool"), "reports", settings=SinkSettings(max_age_s=0.1)
            )
            set_trajectory_sink(sink)
            try:
                with recording_stub(
                    qwen3_tokenizer, {k: t for k, (_, t) in scripts.items()}
                ) as stub:
                    for key, (task, _) in scripts.items():
                        task = dict(task)
                        group = task.pop("group_index", None)
                        sample = make_sample(url, task.pop("env"), key, **task)
                        sample.group_index, sample.index = group, len(samples)
                        samples[key] = await run(make_args(stub), sample)
                assert await sink.flush(60)
                await sink.close()
            finally:
                set_trajectory_sink(None)
                await close_clients()

        asyncio.run(play())
        runs = httpx.get(f"{url}/api/runs", timeout=10).json()["runs"]
        run_id = next(r["id"] for r in runs if r["name"] == "slime-envs")
        yield {"url": url, "run_id": run_id, "samples": samples}


def _rollouts(played: dict[str, Any], **params: Any) -> list[dict[str, Any]]:
    url = f"{played['url']}/api/runs/{played['run_id']}/rollouts"
    return httpx.get(url, params={"limit": 100, **params}, timeout=10).json()["rollouts"]


def _rollout_of(played: dict[str, Any], key: str) -> dict[str, Any]:
    sample = played["samples"][key]
    rows = [r for r in _rollouts(played) if r["name"].endswith(f"/{sample.metadata['index']}")]
    for r in rows:
        full = httpx.get(f"{played['url']}/api/rollouts/{r['event_id']}", timeout=10).json()
        if full["metadata"]["sample_index"] == sample.index:
            return full
    raise AssertionError(f"no stored rollout for {key}")


def test_tripwires_reach_the_sample_the_metrics_and_the_store(played: dict[str, Any]) -> None:
    s = played["samples"]
    assert all(x.reward == 1.0 for x in s.values())  # a tripwire never changes the reward
    assert s["w-cheat"].metadata["tripwires"] == ["solved_without_evidence"]
    assert s["w-honest"].metadata["tripwires"] == []
    assert s["g-cheat"].metadata["tripwires"] == ["answer_without_calculation"]
    assert s["h-a"].metadata["tripwire_keys"] == s["h-b"].metadata["tripwire_keys"]
    metrics = episode_metrics(list(s.values()))
    assert metrics["whodunit"]["tripwires/solved_without_evidence"] == 1.0
    assert metrics["whodunit"]["tripwire_rate"] == 0.5
    assert metrics["gsm8k"]["tripwires/answer_without_calculation"] == 1.0
    assert metrics["haiku"]["tripwires/duplicate_in_group"] == 2.0
    assert metrics["all"]["tripwire_rate"] == pytest.approx(4 / 6)
    tripped = [r["tripwires"] for r in _rollouts(played, tripwire="any")]
    assert sorted(tripped) == sorted(
        ["solved_without_evidence", "answer_without_calculation"] + ["duplicate_in_group"] * 2
    )
    assert len(_rollouts(played, tripwire="duplicate_in_group")) == 2


def test_every_trajectory_carries_its_provenance(played: dict[str, Any], qwen3_tokenizer) -> None:
    stored = _rollout_of(played, "w-honest")
    prov = stored["metadata"]["provenance"]
    fingerprint = tokenizer_fingerprint(qwen3_tokenizer)
    assert prov == {
        "env": "whodunit",
        "env_version": env_version(WhoDunIt),
        "task_id": "whodunit/test/3",
        "task_spec_hash": prov["task_spec_hash"],
        "tokenizer": prov["tokenizer"],
        "tokenizer_hash": fingerprint["tokenizer_hash"],
        "chat_template_hash": fingerprint["chat_template_hash"],
        "sampling_params": PARAMS,
        "weight_versions": ["default", "default"],  # one per turn, as the stub reports it
        "bridge_version": bridge_version(),
    }
    from contract.provenance import canonical_hash

    assert prov["task_spec_hash"] == canonical_hash(WhoDunIt.task_spec("test", 3))
    assert prov["tokenizer"].endswith("qwen3-tokenizer")
    haiku = _rollout_of(played, "h-a")["metadata"]["provenance"]
    assert haiku["env_version"] == env_version(Haiku) != prov["env_version"]
    # tool results say whether the env ran them
    executed = [m["metadata"]["executed"] for m in stored["messages"] if m["type"] == "tool_result"]
    assert executed == [True, True, True]


class DriftingStub(SGLangStub):
    """The stub, but turn 1 misreports prompt_tokens and turn 2's output_ids disagree with its
    output_token_logprobs at the third token: the two ways an engine can drift."""

    def edit_reply(self, call: Any, reply: dict[str, Any]) -> dict[str, Any]:
        n = len(self.requests)
        if n == 1:
            reply["meta_info"]["prompt_tokens"] += 2
        elif n == 2:
            reply["output_ids"] = list(reply["output_ids"])
            reply["output_ids"][2] += 1
        return reply


async def test_drift_is_counted_and_located(qwen3_tokenizer, tmp_path) -> None:
    tok = qwen3_tokenizer
    label = GSM8K.load_split("test")[0]["label"]
    script = [
        turn(tok, call("calculator", {"expression": "16 - 3 - 4"}) + "<|im_end|>"),
        turn(tok, call("submit_answer", {"answer": label}) + "<|im_end|>"),
    ]
    got: list[Any] = []

    class Sink:
        def submit(self, t: Any) -> None:
            got.append(t)

    with (
        env_server("--envs", "gsm8k", "--role", "env") as url,
        DriftingStub(script=script, tokenizer=tok) as stub,
    ):
        set_trajectory_sink(Sink())
        try:
            sample = make_sample(url, "gsm8k", uuid.uuid4().hex, split="test", index=0)
            await run(make_args(stub), sample)
        finally:
            set_trajectory_sink(None)
            await close_clients()
        first_len = len(stub.requests[0].input_ids)
        second_len = len(stub.requests[1].input_ids)
    assert sample.metadata["drift_count"] == 2 and sample.reward == 1.0
    (traj,) = got
    prompt, output = traj.drift
    assert prompt["turn"] == 1 and prompt["kind"] == "prompt_tokens"
    assert prompt["position"] == first_len and prompt["expected"].endswith("▶")
    assert f"counted {first_len + 2} prompt tokens" in prompt["got"]
    assert output["turn"] == 2 and output["kind"] == "output_ids"
    assert output["position"] == second_len + 2
    trained = traj.token_ids[second_len : second_len + 3]
    assert output["expected"].startswith(
        "|".join(tok.decode([t]) for t in trained[:2]) + "▶" + tok.decode([trained[2]])
    )
    assert output["expected"] != output["got"]
