"""The bridge against slime's REAL `Sample` (slime/utils/types.py), old and new.

slime's sources come from the vendored snapshots (tests/slime_vendor.py: $SLIME_VENDOR_DIR or
../shared/vendor, unpacked into .cache/); an episode runs in a subprocess with one of them on
PYTHONPATH. Skips with the reason when they are absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO
from generate_helpers import call, turn
from sglang_stub import SGLangStub, default_logprob
from slime_vendor import VERSIONS, missing_reason, slime_pythonpath

pytestmark = [
    pytest.mark.vendored,
    pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason())),
]

EPISODE = r"""
import asyncio, json, sys, types
from slime.utils.types import Sample
from bridge.sample import sample_class
from bridge.generate import generate, close_clients

assert sample_class() is Sample, "the bridge must pick slime's Sample when slime is importable"
engine_port, env_url, tok_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
args = types.SimpleNamespace(sglang_router_ip="127.0.0.1", sglang_router_port=engine_port,
                             hf_checkpoint=tok_dir, rollout_max_context_len=None,
                             rollout_max_response_len=4096, sglang_speculative_algorithm=None)
sample = Sample(prompt="ignored", metadata=json.dumps({"env": "gsm8k", "env_server": [env_url],
                                                       "split": "train", "index": 1}))

async def main():
    try:
        return await generate(args, sample, {"temperature": 1.0, "max_new_tokens": 256})
    finally:
        await close_clients()

s = asyncio.run(main())
print(json.dumps({"type": type(s).__module__ + "." + type(s).__name__, "tokens": s.tokens,
                  "response_length": s.response_length, "loss_mask": s.loss_mask,
                  "logprobs": s.rollout_log_probs, "status": s.status.value, "reward": s.reward,
                  "remove_sample": s.remove_sample,
                  "metadata_is_dict": isinstance(s.metadata, dict),
                  "stop_reason": s.metadata.get("stop_reason"), "response": s.response,
                  "weight_versions": s.weight_versions}))
"""


@pytest.mark.parametrize("version", list(VERSIONS))
def test_episode_fills_real_slime_sample(
    version, tmp_path, qwen3_tokenizer, qwen3_tokenizer_dir, server_url
) -> None:
    from envs.gsm8k import GSM8K

    tok = qwen3_tokenizer
    label = GSM8K.load_split("train")[1]["label"]
    turns = [
        turn(
            tok,
            "<think>\nSplit it.\n</think>\n\n"
            + call("calculator", {"expression": "6*7"})
            + call("calculator", {"expression": "1/0"})
            + "<|im_end|>",
        ),
        turn(tok, call("submit_answer", {"answer": label}) + "<|im_end|>"),
    ]
    with SGLangStub(script=turns, tokenizer=tok) as stub:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([*slime_pythonpath(version), str(REPO)])}
        env.pop("TRAIN_CONFIG", None)
        proc = subprocess.run(
            [sys.executable, "-c", EPISODE, str(stub.port), server_url, str(qwen3_tokenizer_dir)],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=240,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        reqs = stub.requests
    assert out["type"] == "slime.utils.types.Sample"
    assert out["status"] == "completed" and out["reward"] == 1.0 and out["remove_sample"] is False
    assert out["metadata_is_dict"] and out["stop_reason"] == "env_finished"
    toks, n = out["tokens"], out["response_length"]
    prompt_len = len(toks) - n
    assert len(out["loss_mask"]) == n == len(out["logprobs"])
    assert len(reqs) == 2 and len(reqs[0].input_ids) == prompt_len
    mask, lps = [0] * n, [0.0] * n
    for req, t in zip(reqs, turns, strict=False):
        start = len(req.input_ids)
        assert req.input_ids == toks[:start]
        assert toks[start : start + len(t.output_ids)] == t.output_ids
        for i in range(len(t.output_ids)):
            mask[start - prompt_len + i], lps[start - prompt_len + i] = 1, default_logprob(i)
    assert out["loss_mask"] == mask
    assert out["logprobs"] == pytest.approx(lps)
    assert out["response"] == tok.decode(toks[prompt_len:])
    assert out["weight_versions"] == ["default", "default"]
