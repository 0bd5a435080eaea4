"""generate() with the shared train_config.yaml, several env servers, the SDK's stock ORS server,
a hosted `Owner/Name` env resolved by the openreward SDK, and the trajectory sink."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
import yaml
from conftest import env_server
from generate_helpers import (
    assert_aligned,
    call,
    make_args,
    open_sessions,
    recording_stub,
    run,
    turn,
)
from ors_episodes import sdk_server
from sglang_stub import SGLangStub

from bridge.env_session import pick_server
from bridge.sample import FallbackSample


def _gsm8k_label(split: str, index: int) -> str:
    from envs.gsm8k import GSM8K

    return GSM8K.load_split(split)[index]["label"]


async def test_train_config_servers_thinking_system_prompt_and_trajectories(
    qwen3_tokenizer, server_url, tmp_path, monkeypatch
) -> None:
    from bridge.generate import train_config
    from bridge.trajectory_sink import get_sink

    tok = qwen3_tokenizer
    run_name = f"bridge-test-{uuid.uuid4().hex[:8]}"
    with env_server("--envs", "gsm8k", "--db", str(tmp_path / "second.db")) as url2:
        urls = [server_url, url2]
        keys: list[str] = []
        i = 0
        while len(keys) < 6 or len({pick_server(urls, k) for k in keys}) < 2:
            keys.append(f"cfg-{i}")
            i += 1
        cfg = {
            "environments": {"gsm8k": {}},
            "env_server": urls,
            "thinking": True,
            "system_prompt": "Answer tersely.",
            "run_name": run_name,
            "trajectories": {
                "target": "local",
                "url": server_url,
                "spool_dir": str(tmp_path / "spool"),
            },
        }
        path = tmp_path / "train_config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        monkeypatch.setenv("TRAIN_CONFIG", str(path))
        label = _gsm8k_label("train", 2)
        script = {
            k: [
                turn(
                    tok,
                    "<think>\nKnown.\n</think>\n\n"
                    + call("submit_answer", {"answer": label})
                    + "<|im_end|>",
                )
            ]
            for k in keys
        }
        with recording_stub(tok, script) as stub:
            samples = [
                FallbackSample(
                    metadata={"env": "gsm8k", "split": "train", "index": 2}, session_id=k
                )
                for k in keys
            ]
            done = await asyncio.gather(*(run(make_args(stub), s) for s in samples))
            first = tok.decode(stub.requests_for(keys[0])[0].input_ids)
        sink = get_sink(train_config())
        assert await sink.close(15)  # delivers what is queued, then stops its background tasks
        for k, s in zip(keys, done, strict=False):
            assert s.reward == 1.0 and s.metadata["env_url"] == pick_server(urls, k)
            assert_aligned(s, stub, k)
        assert {s.metadata["env_url"] for s in done} == set(urls)
        assert open_sessions(server_url) == 0 and open_sessions(url2) == 0
    assert first.startswith("<|im_start|>system\nAnswer tersely.\n\n# Tools")
    assert first.endswith("<|im_start|>assistant\n")  # thinking on: no empty think block
    runs = httpx.get(f"{server_url}/api/runs", timeout=10).json()
    runs = runs.get("runs", runs) if isinstance(runs, dict) else runs
    run_row = next(r for r in runs if run_name in str(r))
    rollouts = httpx.get(f"{server_url}/api/runs/{run_row['id']}/rollouts", timeout=10).json()
    items = (
        rollouts.get("rollouts", rollouts.get("items", rollouts))
        if isinstance(rollouts, dict)
        else rollouts
    )
    assert len(items) == len(keys)


async def test_stock_openreward_server(qwen3_tokenizer) -> None:
    """The lean client speaks the protocol of the SDK's own `openreward.environments.Server`."""
    tok = qwen3_tokenizer
    label = _gsm8k_label("test", 0)
    script = {
        "sdk1": [
            turn(tok, call("calculator", {"expression": "7*6"}) + call("nope") + "<|im_end|>"),
            turn(tok, call("submit_answer", {"answer": label}) + "<|im_end|>"),
        ]
    }
    with sdk_server("gsm8k") as url, recording_stub(tok, script) as stub:
        s = await run(
            make_args(stub),
            FallbackSample(
                metadata={"env": "gsm8k", "env_server": [url], "split": "test", "index": 0},
                session_id="sdk1",
            ),
        )
        ctx = tok.decode(stub.requests_for("sdk1")[1].input_ids)
    assert s.reward == 1.0 and s.metadata["tool_errors"] == {"unknown_tool": 1}
    assert "7*6 = 42" in ctx
    assert_aligned(s, stub, "sdk1")


async def test_hosted_name_resolves_through_the_sdk(qwen3_tokenizer, monkeypatch) -> None:
    """`Owner/Name` goes through the openreward SDK client, which honours OPENREWARD_SESSION_URL."""
    tok = qwen3_tokenizer
    label = _gsm8k_label("test", 1)
    script = [
        turn(tok, call("calculator", {"expression": "2+2"}) + "<|im_end|>"),
        turn(tok, call("submit_answer", {"answer": label}) + "<|im_end|>"),
    ]
    with sdk_server("gsm8k") as url, SGLangStub(script=script, tokenizer=tok) as stub:
        monkeypatch.setenv("OPENREWARD_SESSION_URL", url)
        monkeypatch.setenv("OPENREWARD_API_KEY", "test-key")
        s = await run(
            make_args(stub),
            FallbackSample(metadata={"env": "SomeOwner/gsm8k", "split": "test", "index": 1}),
        )
        ctx = tok.decode(stub.requests[1].input_ids)
    assert s.status.value == "completed" and s.reward == 1.0, s.metadata.get("failure_message")
    assert s.metadata["env_url"].rstrip("/") == url and "2+2 = 4" in ctx
    assert s.metadata["drift_count"] == 0 and len(s.loss_mask) == s.response_length


@pytest.fixture(autouse=True)
def _no_train_config(monkeypatch):
    monkeypatch.delenv("TRAIN_CONFIG", raising=False)
