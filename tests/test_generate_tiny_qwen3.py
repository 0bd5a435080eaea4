"""Episodes sampled by a real (tiny, random-initialised) Qwen3 on CPU through `python -m
tools.engines.local_engine`.

The strongest train/rollout consistency check there is: one teacher-forced forward pass of the same
model over the sample's final tokens must reproduce, at every loss-mask-1 position, the logprob the
engine reported while sampling turn by turn, and the mask must be 0 exactly on the ids the bridge
added.
"""

from __future__ import annotations

import sys

import pytest
from conftest import free_port, run_process
from generate_helpers import make_sample, run

from bridge.generate import close_clients


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, qwen3_tokenizer_dir):
    from tiny_qwen3 import make_tiny_qwen3

    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3-bridge"), qwen3_tokenizer_dir)


@pytest.fixture(scope="module")
def tiny_engine(tiny_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "tools.engines.local_engine",
        "--model",
        str(tiny_dir),
        "--port",
        str(port),
        "--threads",
        "1",
    ]
    with run_process(cmd, f"{url}/health", timeout=180):
        yield port


@pytest.fixture(autouse=True)
async def _close_bridge_clients():
    yield
    await close_clients()


def _forward_logprobs(model_dir, tokens: list[int]) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([tokens])).logits[0].float()
    steps = torch.log_softmax(logits[:-1], dim=-1)
    return [0.0] + [float(steps[i, t]) for i, t in enumerate(tokens[1:])]


@pytest.mark.parametrize("thinking", [False, True])
async def test_tiny_qwen3_episode_logprobs_match_a_forward_pass(
    tiny_dir, tiny_engine, server_url, thinking
) -> None:
    import types

    args = types.SimpleNamespace(
        sglang_router_ip="127.0.0.1",
        sglang_router_port=tiny_engine,
        hf_checkpoint=str(tiny_dir),
        rollout_max_context_len=None,
        rollout_max_response_len=64,
    )
    # Stop on any "e" so turns are short and end with "stop"; the nudge then gives a second turn.
    params = {
        "temperature": 1.0,
        "top_p": 1.0,
        "max_new_tokens": 12,
        "stop": ["e"],
        "no_stop_trim": True,
        "sampling_seed": 7,
        "skip_special_tokens": False,
    }
    sample = make_sample(
        f"{server_url}", "gsm8k", f"tiny-{thinking}", on_no_tool_call="nudge", thinking=thinking
    )
    s = await run(args, sample, params)
    md = s.metadata
    assert s.status.value in ("completed", "truncated"), md
    assert md["num_turns"] >= 1 and md["drift_count"] == 0 and not s.remove_sample
    n = s.response_length
    prompt_len = len(s.tokens) - n
    assert len(s.loss_mask) == n == len(s.rollout_log_probs) and sum(s.loss_mask) >= 1
    ref = _forward_logprobs(tiny_dir, s.tokens)[prompt_len:]
    for i, (m, lp) in enumerate(zip(s.loss_mask, s.rollout_log_probs, strict=False)):
        if m:
            assert lp == pytest.approx(ref[i], abs=2e-3), f"response position {i}"
        else:
            assert lp == 0.0
    # seeded: turn 1 stops on "e" without a tool call, the nudge (untrained) follows, turn 2 ends it
    assert (md["num_turns"], md["stop_reason"]) == (2, "no_tool_call")
    assert "<|im_end|>\n<|im_start|>user\nYou did not call a tool" in s.response
    first_zero = s.loss_mask.index(0)
    assert set(s.loss_mask[first_zero : s.loss_mask.index(1, first_zero)]) == {0}
    if not thinking:
        assert s.tokens[prompt_len - 4 : prompt_len] == [
            151667,
            271,
            151668,
            271,
        ]  # "<think>\n\n</think>\n\n"
