"""The inference-engine stand-ins: the scripted SGLang stub and the CPU local engine."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time

import httpx
import pytest

from conftest import REPO, free_port, run_process
from sglang_stub import SGLangStub, StubRequest, Turn, default_logprob


def _generate(url: str, input_ids: list[int], timeout: float = 60.0, headers: dict | None = None,
              **sampling: object) -> dict:
    body = {"input_ids": input_ids, "sampling_params": sampling, "return_logprob": True}
    r = httpx.post(f"{url}/generate", json=body, headers=headers, timeout=timeout)
    assert r.status_code == 200, r.text
    return r.json()


# ---------------------------------------------------------------- scripted stub

def test_stub_serves_script_in_order_and_records_requests(qwen3_tokenizer) -> None:
    im_end = qwen3_tokenizer.convert_tokens_to_ids("<|im_end|>")
    turns = [Turn([11, 12, 13], logprobs=[-0.5, -0.25, -1.0]),
             Turn.of_text(qwen3_tokenizer, "All done.<|im_end|>")]
    with SGLangStub(script=turns, tokenizer=qwen3_tokenizer) as stub:
        out1 = _generate(stub.url, [1, 2, 3], max_new_tokens=64, temperature=1.0)
        out2 = _generate(stub.url, [1, 2, 3, 11, 12, 13, 7], max_new_tokens=64)
        assert httpx.get(f"{stub.url}/health").status_code == 200
        third = httpx.post(f"{stub.url}/generate", json={"input_ids": [1], "sampling_params": {}})
    assert out1["output_ids"] == [11, 12, 13]
    assert out1["meta_info"]["output_token_logprobs"] == [[-0.5, 11, None], [-0.25, 12, None], [-1.0, 13, None]]
    assert out1["meta_info"]["finish_reason"] == {"type": "stop", "matched": 13}
    assert out1["meta_info"]["prompt_tokens"] == 3 and out1["meta_info"]["completion_tokens"] == 3
    assert out2["output_ids"][-1] == im_end
    assert out2["text"] == "All done."
    assert [lp for lp, _, _ in out2["meta_info"]["output_token_logprobs"]] == \
        [default_logprob(i) for i in range(len(out2["output_ids"]))]
    # The second request extends the first context: the stub reports the shared prefix as cached.
    assert out2["meta_info"]["cached_tokens"] == 6
    assert [r.input_ids for r in stub.requests] == [[1, 2, 3], [1, 2, 3, 11, 12, 13, 7], [1]]
    assert stub.requests[0].sampling_params == {"max_new_tokens": 64, "temperature": 1.0}
    # An exhausted script is a clear 500, not a hang or a crash.
    assert third.status_code == 500 and "no turns left" in third.text


def test_stub_honours_max_new_tokens() -> None:
    with SGLangStub(script=[Turn(list(range(100, 110))), Turn([5, 6])]) as stub:
        cut = _generate(stub.url, [1], max_new_tokens=4)
        whole = _generate(stub.url, [1], max_new_tokens=4)
    assert cut["output_ids"] == [100, 101, 102, 103]
    assert len(cut["meta_info"]["output_token_logprobs"]) == 4
    assert cut["meta_info"]["finish_reason"] == {"type": "length", "length": 4}
    assert whole["meta_info"]["finish_reason"]["type"] == "stop"


def test_stub_scripted_abort_and_abort_request() -> None:
    turns = [Turn([1, 2], finish_reason="abort"), Turn([3, 4, 5], delay=30.0)]
    with SGLangStub(script=turns) as stub:
        first = _generate(stub.url, [9])
        assert first["meta_info"]["finish_reason"]["type"] == "abort"
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(_generate(stub.url, [9])))
        started = time.monotonic()
        t.start()
        while stub.in_flight == 0:
            time.sleep(0.01)
        loads = httpx.get(f"{stub.url}/v1/loads").json()
        assert loads["loads"][0]["num_running_reqs"] == 1
        assert httpx.post(f"{stub.url}/abort_request", json={"abort_all": True}).status_code == 200
        t.join(10)
    assert time.monotonic() - started < 10
    assert result["output_ids"] == []
    assert result["meta_info"]["finish_reason"]["type"] == "abort"


def test_stub_keyed_scripts_serve_concurrent_sessions() -> None:
    n = 64
    script = {f"s{i}": [Turn([i, 1000 + i], delay=0.05), Turn([2000 + i])] for i in range(n)}

    async def episode(client: httpx.AsyncClient, url: str, i: int) -> list[list[int]]:
        got = []
        ctx = [i]
        for _ in range(2):
            r = await client.post(f"{url}/generate", headers={"X-SMG-Routing-Key": f"s{i}"},
                                  json={"input_ids": ctx, "sampling_params": {"max_new_tokens": 8}})
            r.raise_for_status()
            ids = r.json()["output_ids"]
            got.append(ids)
            ctx = ctx + ids
        return got

    async def run_all(url: str) -> list[list[list[int]]]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(episode(client, url, i) for i in range(n)))

    with SGLangStub(script=script) as stub:
        started = time.monotonic()
        results = asyncio.run(run_all(stub.url))
        elapsed = time.monotonic() - started
    for i, got in enumerate(results):
        assert got == [[i, 1000 + i], [2000 + i]]
        second = stub.requests_for(f"s{i}")[1]
        assert second.input_ids == [i, i, 1000 + i]
        assert second.routing_key == f"s{i}"
    # 64 sessions each waited 50 ms concurrently, not one after another (3.2 s).
    assert elapsed < 3.0


def test_stub_responder_callable_and_bad_input() -> None:
    def responder(req: StubRequest) -> Turn:
        return Turn([len(req.input_ids)], finish_reason="length")

    async def async_responder(req: StubRequest) -> Turn:
        await asyncio.sleep(0)
        return Turn([7, 7])

    with SGLangStub(responder, instant=True) as stub:
        out = _generate(stub.url, [1, 2, 3, 4])
        assert out["output_ids"] == [4]
        assert out["meta_info"]["finish_reason"]["type"] == "length"
        bad = httpx.post(f"{stub.url}/generate", content=b"{not json", timeout=5)
        assert bad.status_code == 400 and "bad /generate request" in bad.text
        text_in = httpx.post(f"{stub.url}/generate", json={"text": "hi"}, timeout=5)
        assert text_in.status_code == 400 and "input_ids" in text_in.text
        # Still serving after bad input.
        assert _generate(stub.url, [1])["output_ids"] == [1]
        assert stub.requests == []  # instant mode does not record
    with SGLangStub(async_responder) as stub:
        assert _generate(stub.url, [1])["output_ids"] == [7, 7]


def test_stub_runs_as_subprocess_from_script_file(tmp_path, qwen3_tokenizer_dir) -> None:
    script = tmp_path / "turns.json"
    script.write_text(json.dumps([{"text": "Hello<|im_end|>"}, {"output_ids": [1, 2], "finish_reason": "length"}]))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, str(REPO / "tests" / "sglang_stub.py"), "--port", str(port),
            "--script", str(script), "--tokenizer", str(qwen3_tokenizer_dir)]
    with run_process(args, f"{url}/health"):
        first = _generate(url, [1, 2])
        second = _generate(url, [1, 2])
    assert first["text"] == "Hello"
    assert second["output_ids"] == [1, 2] and second["meta_info"]["finish_reason"]["type"] == "length"
