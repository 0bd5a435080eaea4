"""Helpers shared by the tests that run whole episodes through `bridge.generate.generate`
(test_episode, test_generate_*, test_bridge_reports, test_replay, test_slime_sample): sample and
args builders, the scripted stub that remembers what it sent, and the alignment check."""

from __future__ import annotations

import json
import re
import types
from typing import Any

import httpx
import pytest
from conftest import REPO
from sglang_stub import ROUTING_HEADER, SGLangStub, Turn, default_logprob

from bridge.generate import close_clients, generate
from bridge.sample import FallbackSample

TOKENIZER_DIR = str(REPO / ".cache" / "qwen3-tokenizer")
PARAMS = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 512, "no_stop_trim": True}


def call(name: str, args: dict[str, Any] | None = None) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(args or {})}}}\n</tool_call>'


def turn(tok, text: str, **kw: Any) -> Turn:
    return Turn.of_text(tok, text, **kw)


def make_args(stub: SGLangStub, **kw: Any) -> types.SimpleNamespace:
    base = dict(
        sglang_router_ip="127.0.0.1",
        sglang_router_port=stub.port,
        hf_checkpoint=TOKENIZER_DIR,
        rollout_max_context_len=None,
        rollout_max_response_len=4096,
    )
    return types.SimpleNamespace(**{**base, **kw})


def make_sample(url: str | list[str], env: str, key: str, **task: Any) -> FallbackSample:
    urls = [url] if isinstance(url, str) else url
    md = {"env": env, "env_server": urls, "split": "train", "index": 0, **task}
    return FallbackSample(metadata=md, session_id=key)


async def run(
    args: Any, sample: Any, params: dict[str, Any] | None = None, evaluation: bool = False
) -> Any:
    return await generate(args, sample, dict(params or PARAMS), evaluation=evaluation)


@pytest.fixture(autouse=True)
async def _close_bridge_clients():
    """The bridge keeps one HTTP client per event loop; close it when the test's loop ends."""
    yield
    await close_clients()


def open_sessions(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    m = re.search(r"^ors_sessions_open (\d+)", text, re.M)
    assert m, "env server /metrics has no ors_sessions_open"
    return int(m.group(1))


def assert_aligned(sample: Any, stub: SGLangStub, key: str) -> None:
    """Every sampled id sits exactly where the engine produced it, mask 1 with the engine's logprob;
    everything between is mask 0 / logprob 0.0; each request's context is the previous context +
    sampled + appended ids."""
    reqs = stub.requests_for(key)
    assert reqs, "the engine saw no request for this session"
    toks, n = sample.tokens, sample.response_length
    prompt_len = len(toks) - n
    assert len(sample.loss_mask) == n == len(sample.rollout_log_probs)
    assert len(reqs[0].input_ids) == prompt_len
    mask, lps = [0] * n, [0.0] * n
    for k, req in enumerate(reqs):
        assert req.headers.get(ROUTING_HEADER) == key
        assert req.body.get("return_logprob") is True and "text" not in req.body
        assert req.input_ids == toks[: len(req.input_ids)], (
            f"request {k} context is not a prefix of the sample"
        )
        if k:
            assert len(req.input_ids) > len(reqs[k - 1].input_ids)
    outputs = stub_outputs(stub, key)
    for req, out in zip(reqs, outputs, strict=False):
        start = len(req.input_ids)
        assert toks[start : start + len(out)] == out
        for i in range(len(out)):
            mask[start - prompt_len + i] = 1
            lps[start - prompt_len + i] = default_logprob(i)
    assert sample.loss_mask == mask
    assert sample.rollout_log_probs == pytest.approx(lps)
    assert sample.metadata["drift_count"] == 0


STUB_OUTPUTS: dict[int, dict[str, list[list[int]]]] = {}


def stub_outputs(stub: SGLangStub, key: str) -> list[list[int]]:
    return STUB_OUTPUTS.get(id(stub), {}).get(key, [])


def recording_stub(tok, script: dict[str, list[Turn]]) -> SGLangStub:
    """A stub serving one script per routing key that also remembers the ids each reply carried."""
    queues = {k: list(v) for k, v in script.items()}
    stub_ref: list[SGLangStub] = []

    def responder(req) -> Turn:
        t = queues[req.routing_key].pop(0)
        ids = list(t.output_ids[: req.max_new_tokens])
        STUB_OUTPUTS.setdefault(id(stub_ref[0]), {}).setdefault(req.routing_key, []).append(ids)
        return t

    stub = SGLangStub(responder, tokenizer=tok)
    stub_ref.append(stub)
    return stub
