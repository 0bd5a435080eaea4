"""bridge.metrics on a batch of real bridge samples: episodes played by `bridge.generate.generate`
against the real env server, the real Qwen3 tokenizer/template and the scripted SGLang stub (the
only stand-in). What reaches W&B (offline) is read back through wandb's public run API.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import types
from typing import Any

import pytest
from conftest import REPO, free_port
from sglang_stub import SGLangStub, Turn

from bridge import metrics
from bridge.generate import close_clients, generate
from bridge.sample import FallbackSample

TOKENIZER_DIR = str(REPO / ".cache" / "qwen3-tokenizer")
PARAMS = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 512, "no_stop_trim": True}


def call(name: str, args: dict[str, Any] | None = None) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(args or {})}}}\n</tool_call>'


def sample_for(url: str, env: str, key: str, index: int = 0, **task: Any) -> FallbackSample:
    md = {"env": env, "env_server": [url], "split": "train", "index": index, **task}
    return FallbackSample(metadata=md, session_id=key)


@pytest.fixture(scope="module")
def batch(server_url: str, qwen3_tokenizer) -> list[Any]:
    """Seven real episodes: gsm8k solved / wrong with a malformed call / no tool call,
    whodunit solved / partial, and one gsm8k episode whose env server is down."""
    from envs.gsm8k import GSM8K
    from envs.whodunit import WhoDunIt

    tok = qwen3_tokenizer
    label0 = GSM8K.load_split("train")[0]["label"]
    answer = WhoDunIt.case_for("train", 0).answer()
    t = lambda text: Turn.of_text(tok, text + "<|im_end|>")
    script = {
        "g-ok": [
            t(call("calculator", {"expression": "2+2"})),
            t(call("submit_answer", {"answer": label0})),
        ],
        "g-bad": [
            t("<tool_call>\n{oops not json}\n</tool_call>"),
            t(call("submit_answer", {"answer": "-1"})),
        ],
        "g-none": [t("I will not use tools.")],
        "w-ok": [t(call("list_suspects")), t(call("submit_answer", answer))],
        "w-part": [t(call("submit_answer", dict(answer, who="Nobody")))],
    }
    queues = {k: list(v) for k, v in script.items()}
    dead = f"http://127.0.0.1:{free_port()}"

    async def play() -> list[Any]:
        with SGLangStub(lambda req: queues[req.routing_key].pop(0), tokenizer=tok) as stub:
            args = types.SimpleNamespace(
                sglang_router_ip="127.0.0.1",
                sglang_router_port=stub.port,
                hf_checkpoint=TOKENIZER_DIR,
                rollout_max_context_len=None,
                rollout_max_response_len=2048,
            )
            samples = [
                sample_for(server_url, "gsm8k", "g-ok"),
                sample_for(server_url, "gsm8k", "g-bad"),
                sample_for(server_url, "gsm8k", "g-none"),
                sample_for(server_url, "whodunit", "w-ok"),
                sample_for(server_url, "whodunit", "w-part"),
                sample_for(dead, "gsm8k", "g-dead"),
            ]
            try:
                return list(
                    await asyncio.gather(*(generate(args, s, dict(PARAMS)) for s in samples))
                )
            finally:
                await close_clients()

    return asyncio.run(play())


def test_episode_metrics_per_env(batch: list[Any]) -> None:
    g_ok, g_bad, g_none, w_ok, w_part, g_dead = batch
    assert (g_ok.reward, g_bad.reward, w_ok.reward) == (1.0, 0.0, 1.0)
    assert 0.0 < w_part.reward < 1.0 and g_dead.remove_sample
    per_env = metrics.episode_metrics(batch)
    assert set(per_env) == {"gsm8k", "whodunit", "all"}
    g, w, a = per_env["gsm8k"], per_env["whodunit"], per_env["all"]

    g_rewards = [s.reward for s in (g_ok, g_bad, g_none, g_dead)]
    assert g["episodes"] == 4
    assert g["reward_mean"] == pytest.approx(statistics.fmean(g_rewards))
    assert g["reward_std"] == pytest.approx(statistics.pstdev(g_rewards))
    assert g["solve_rate"] == pytest.approx(0.25)
    assert w["solve_rate"] == pytest.approx(0.5)  # partial credit is not solved
    assert w["reward_mean"] == pytest.approx((1.0 + w_part.reward) / 2)
    assert a["episodes"] == 6 and a["solve_rate"] == pytest.approx(2 / 6)

    assert g["parse_errors"] == 1 and g["tool_errors/parse_error"] == 1 and w["parse_errors"] == 0
    assert (
        g["env_errors"] == 1 and w["env_errors"] == 0 and g["removed_ratio"] == pytest.approx(0.25)
    )
    assert g["stop/env_finished"] == pytest.approx(0.5)
    assert g["stop/no_tool_call"] == pytest.approx(0.25)
    assert g["stop/env_error"] == pytest.approx(0.25)
    turns = [s.metadata["num_turns"] for s in (g_ok, g_bad, g_none, g_dead)]
    assert g["turns_mean"] == pytest.approx(statistics.fmean(turns)) and g["turns_max"] == 2
    calls = [s.metadata["num_tool_calls"] for s in (w_ok, w_part)]
    assert (
        w["tool_calls_mean"] == pytest.approx(statistics.fmean(calls))
        and w["tool_calls_total"] == 3
    )
    assert a["token_drift"] == 0
    assert w["env_time_mean"] > 0 and w["env_latency_per_call_mean"] > 0
    assert g["status/completed"] == pytest.approx(0.75) and g["status/failed"] == pytest.approx(
        0.25
    )


def test_reads_the_keys_the_bridge_writes() -> None:
    from bridge.generate import METADATA_KEYS

    assert {
        "stop_reason",
        "num_turns",
        "num_tool_calls",
        "tool_errors",
        "drift_count",
        "env_failure",
        "engine_failure",
        "bridge_timings",
    } <= set(METADATA_KEYS)


def test_samples_without_bridge_counters_still_count() -> None:
    plain = [
        FallbackSample(reward=0.5, metadata={"env": "x", "reward": {"max_reward": 0.5}}),
        FallbackSample(reward=None, metadata={}),
    ]
    m = metrics.episode_metrics(plain)
    assert (
        m["x"]["solve_rate"] == 1.0 and m["x"]["reward_mean"] == 0.5 and "turns_mean" not in m["x"]
    )
    assert m["unknown"]["episodes"] == 1 and "reward_mean" not in m["unknown"]
    assert metrics.episode_metrics(plain, solve_threshold=0.6)["x"]["solve_rate"] == 0.0


def test_solve_threshold_from_args(batch: list[Any]) -> None:
    partial = batch[4].reward
    assert 0.0 < partial < 1.0
    by_max = metrics.episode_metrics(batch)["whodunit"]["solve_rate"]
    by_threshold = metrics.episode_metrics(
        batch, metrics._threshold(types.SimpleNamespace(solve_threshold=partial))
    )["whodunit"]["solve_rate"]
    assert (by_max, by_threshold) == (0.5, 1.0)


def test_log_hooks_write_to_wandb_offline(batch: list[Any], tmp_path, monkeypatch) -> None:
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = types.SimpleNamespace(
        use_wandb=True,
        wandb_project="bridge-metrics-test",
        wandb_group="t",
        wandb_dir=str(tmp_path),
        wandb_mode=None,
        wandb_always_use_train_step=False,
    )
    assert wandb.run is None
    try:
        assert metrics.log_rollout(3, args, batch, {"rollout/extra": 1.0}, 12.5) is False
        run = wandb.run
        assert run is not None and run.offline and str(tmp_path) in run.dir
        per_env = metrics.episode_metrics(batch)
        assert run.summary["rollout/step"] == 3
        assert run.summary["rollout/env/gsm8k/reward_mean"] == pytest.approx(
            per_env["gsm8k"]["reward_mean"]
        )
        assert run.summary["rollout/env/whodunit/solve_rate"] == pytest.approx(0.5)
        assert run.summary["rollout/env/gsm8k/parse_errors"] == 1
        assert run.summary["rollout/env/all/token_drift"] == 0

        data = {
            "eval_tasks": {
                "rewards": [s.reward for s in batch[:3]],
                "truncated": [False] * 3,
                "samples": batch[:3],
            },
            "legacy": {"rewards": [1.0, 0.0]},
        }
        assert metrics.log_eval_rollout(4, args, data, None) is False
        assert run.summary["eval/step"] == 4
        assert run.summary["eval/eval_tasks/env/gsm8k/episodes"] == 3
        assert run.summary["eval/eval_tasks/env/gsm8k/solve_rate"] == pytest.approx(1 / 3)
        assert run.summary["eval/legacy/env/all/reward_mean"] == pytest.approx(0.5)
    finally:
        wandb.finish()
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb")), "no offline run file written"


def test_no_wandb_when_slime_does_not_use_it(batch: list[Any]) -> None:
    import wandb

    args = types.SimpleNamespace(use_wandb=False)
    assert metrics.log_rollout(0, args, batch, None, 1.0) is False
    assert wandb.run is None
