"""SGLang's API as every engine here serves it (tools/engines/server.py, sglang_api.py): what
slime's external-engine check, its router and its rollout manager call, on the scripted engine
and the tests' stub (the CPU engine's model is tested in tests/test_engines.py)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from conftest import free_port, run_process
from sglang_stub import SGLangStub, Turn

# what slime's router (sglang-router 0.3.2) adds to every /generate it forwards
ROUTER_FIELDS = {
    "model": None,
    "log_metrics": True,
    "no_logs": False,
    "background": False,
    "return_bytes": False,
    "return_entropy": False,
    "return_hidden_states": False,
}


@pytest.fixture(scope="module")
def scripted(qwen3_tokenizer_dir) -> Iterator[str]:
    """`python -m tools.engines.scripted` (it reads SGLang's ServerArgs on the first call)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "tools.engines.scripted", "--port", str(port)]
    args += ["--tokenizer", str(qwen3_tokenizer_dir)]
    with run_process(args, f"{url}/health", timeout=180):
        yield url


def test_server_info_reports_sglangs_arguments_as_slimes_check_needs(scripted: str) -> None:
    from dataclasses import fields

    from tools.slime_cpu import install_import_shims

    install_import_shims()
    from sglang.srt.server_args import ServerArgs

    info = httpx.get(f"{scripted}/server_info", timeout=300).json()
    assert httpx.get(f"{scripted}/get_server_info", timeout=60).json() == info
    # every ServerArgs field, as a real engine's dataclasses.asdict(ServerArgs) gives them
    assert {f.name for f in fields(ServerArgs)} <= set(info)
    # slime compares the fields it would have launched the engine with: a missing key fails
    assert info["enable_memory_saver"] is False and info["dtype"] == "auto"
    assert info["enable_return_routed_experts"] is False
    assert (info["tp_size"], info["pp_size"]) == (1, 1)  # slime counts the engine's GPUs from them
    assert info["model_path"].endswith("qwen3-tokenizer")
    model = httpx.get(f"{scripted}/model_info", timeout=30).json()
    assert model["is_generation"] is True and model["weight_version"] == info["weight_version"]


def test_the_fields_slimes_router_adds_are_accepted_when_off() -> None:
    with SGLangStub(script=[Turn([5, 6]), Turn([7])], server_args=dict) as stub:
        body = {"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 4}, **ROUTER_FIELDS}
        ok = httpx.post(f"{stub.url}/generate", json=body, timeout=30)
        assert ok.status_code == 200 and ok.json()["output_ids"] == [5, 6]
        on = httpx.post(
            f"{stub.url}/generate", json={**body, "return_hidden_states": True}, timeout=30
        )
        assert on.status_code == 400
        assert on.json()["error"]["message"] == "return_hidden_states not supported by this engine"
        odd = httpx.post(f"{stub.url}/generate", json={**body, "lora_path": "x"}, timeout=30)
        assert odd.status_code == 400 and "lora_path" in odd.text


def test_pause_aborts_what_runs_and_holds_new_requests_until_continue() -> None:
    """slime's weight update: pause_generation (SGLang's default "abort" mode), flush_cache,
    update_weights_* with the new version, continue_generation."""
    turns = [Turn([1, 2, 3], delay=30.0), Turn([4, 5])]
    with SGLangStub(script=turns, server_args=dict) as stub:
        got: dict[str, dict] = {}

        def post(name: str) -> None:
            body = {"input_ids": [9], "sampling_params": {}, "return_logprob": True}
            got[name] = httpx.post(f"{stub.url}/generate", json=body, timeout=60).json()

        first = threading.Thread(target=post, args=("first",))
        first.start()
        _until(lambda: stub.in_flight == 1)
        busy = httpx.post(f"{stub.url}/flush_cache", timeout=10)
        assert busy.status_code == 400  # refused while a request runs, as SGLang does
        assert httpx.post(f"{stub.url}/pause_generation", json={}, timeout=10).status_code == 200
        first.join(10)
        assert got["first"]["meta_info"]["finish_reason"]["type"] == "abort"
        assert got["first"]["output_ids"] == []
        second = threading.Thread(target=post, args=("second",))
        second.start()
        _until(lambda: _loads(stub.url) == (0, 1))  # held, waiting
        assert httpx.post(f"{stub.url}/flush_cache", timeout=10).status_code == 200
        update = httpx.post(
            f"{stub.url}/update_weights_from_tensor", json={"weight_version": "v2"}, timeout=10
        )
        assert update.json()["success"] is True
        assert httpx.get(f"{stub.url}/get_weight_version").json() == {"weight_version": "v2"}
        assert "second" not in got
        httpx.post(f"{stub.url}/continue_generation", json={}, timeout=10)
        second.join(10)
    assert got["second"]["output_ids"] == [4, 5]
    assert got["second"]["meta_info"]["weight_version"] == "v2"


def test_abort_request_aborts_one_request_or_all() -> None:
    turns = [Turn([1], delay=30.0), Turn([2], delay=30.0)]
    with SGLangStub(script=turns, server_args=dict) as stub:
        got: dict[str, dict] = {}

        def post(rid: str) -> None:
            body = {"input_ids": [9], "rid": rid}
            got[rid] = httpx.post(f"{stub.url}/generate", json=body, timeout=60).json()

        threads = [threading.Thread(target=post, args=(r,)) for r in ("a", "b")]
        for t in threads:
            t.start()
        _until(lambda: _loads(stub.url) == (2, 0))
        httpx.post(f"{stub.url}/abort_request", json={"rid": "a"}, timeout=10)
        threads[0].join(10)
        assert got["a"]["meta_info"]["finish_reason"]["type"] == "abort" and "b" not in got
        httpx.post(f"{stub.url}/abort_request", json={"abort_all": True}, timeout=10)
        threads[1].join(10)
    assert got["b"]["meta_info"]["finish_reason"]["type"] == "abort"


def _loads(url: str) -> tuple[int, int]:
    load = httpx.get(f"{url}/v1/loads", timeout=10).json()["loads"][0]
    return load["num_running_reqs"], load["num_waiting_reqs"]


def _until(ok, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_the_scripted_engine_answers_like_the_others(scripted: str, qwen3_tokenizer) -> None:
    """A context with a tool list gets one tool call ending the turn; logprobs are fixed."""
    tok = qwen3_tokenizer
    tools = [{"type": "function", "function": {"name": "calculator", "parameters": {}}}]
    tools.append({"type": "function", "function": {"name": "submit_answer", "parameters": {}}})
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 3 and 4?"}],
        tools=tools,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    body = {"input_ids": list(ids), "sampling_params": {"max_new_tokens": 200}}
    out = httpx.post(f"{scripted}/generate", json={**body, "return_logprob": True}).json()
    text = tok.decode(out["output_ids"])
    assert text.startswith("<tool_call>") and '"calculator"' in text and '"3 + 4"' in text
    assert out["meta_info"]["finish_reason"]["type"] == "stop"
    assert [e[0] for e in out["meta_info"]["output_token_logprobs"]] == [
        pytest.approx(-0.1 * (1 + i % 10)) for i in range(len(out["output_ids"]))
    ]
    cut = httpx.post(
        f"{scripted}/generate", json={**body, "sampling_params": {"max_new_tokens": 3}}
    )
    assert cut.json()["meta_info"]["finish_reason"] == {"type": "length", "length": 3}
