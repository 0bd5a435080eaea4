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

pytestmark = pytest.mark.long(2)


def _generate(
    url: str,
    input_ids: list[int],
    timeout: float = 60.0,
    headers: dict | None = None,
    **sampling: object,
) -> dict:
    body = {"input_ids": input_ids, "sampling_params": sampling, "return_logprob": True}
    r = httpx.post(f"{url}/generate", json=body, headers=headers, timeout=timeout)
    assert r.status_code == 200, r.text
    return r.json()


# ---------------------------------------------------------------- scripted stub


def test_stub_serves_script_in_order_and_records_requests(qwen3_tokenizer) -> None:
    im_end = qwen3_tokenizer.convert_tokens_to_ids("<|im_end|>")
    turns = [
        Turn([11, 12, 13], logprobs=[-0.5, -0.25, -1.0]),
        Turn.of_text(qwen3_tokenizer, "All done.<|im_end|>"),
    ]
    with SGLangStub(script=turns, tokenizer=qwen3_tokenizer) as stub:
        out1 = _generate(stub.url, [1, 2, 3], max_new_tokens=64, temperature=1.0)
        out2 = _generate(stub.url, [1, 2, 3, 11, 12, 13, 7], max_new_tokens=64)
        assert httpx.get(f"{stub.url}/health").status_code == 200
        third = httpx.post(f"{stub.url}/generate", json={"input_ids": [1], "sampling_params": {}})
    assert out1["output_ids"] == [11, 12, 13]
    assert out1["meta_info"]["output_token_logprobs"] == [
        [-0.5, 11, None],
        [-0.25, 12, None],
        [-1.0, 13, None],
    ]
    assert out1["meta_info"]["finish_reason"] == {"type": "stop", "matched": 13}
    assert out1["meta_info"]["prompt_tokens"] == 3 and out1["meta_info"]["completion_tokens"] == 3
    assert out2["output_ids"][-1] == im_end
    assert out2["text"] == "All done."
    assert [lp for lp, _, _ in out2["meta_info"]["output_token_logprobs"]] == [
        default_logprob(i) for i in range(len(out2["output_ids"]))
    ]
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
    script = {f"s{i}": [Turn([i, 1000 + i], delay=0.5), Turn([2000 + i])] for i in range(n)}

    async def episode(client: httpx.AsyncClient, url: str, i: int) -> list[list[int]]:
        got = []
        ctx = [i]
        for _ in range(2):
            r = await client.post(
                f"{url}/generate",
                headers={"X-SMG-Routing-Key": f"s{i}"},
                json={"input_ids": ctx, "sampling_params": {"max_new_tokens": 8}},
            )
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
    # 64 sessions each waited 0.5 s concurrently, not one after another (32 s); the margin is for
    # a loaded machine.
    assert elapsed < 16


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
        assert bad.status_code == 400 and "not valid JSON" in bad.text
        assert stub.errors and stub.errors[0].startswith("bad /generate request")
        text_in = httpx.post(f"{stub.url}/generate", json={"text": "hi"}, timeout=5)
        assert text_in.status_code == 400 and "input_ids" in text_in.text
        # Still serving after bad input.
        assert _generate(stub.url, [1])["output_ids"] == [1]
        assert stub.requests == []  # instant mode does not record
    with SGLangStub(async_responder) as stub:
        assert _generate(stub.url, [1])["output_ids"] == [7, 7]


def test_stub_runs_as_subprocess_from_script_file(tmp_path, qwen3_tokenizer_dir) -> None:
    script = tmp_path / "turns.json"
    script.write_text(
        json.dumps([{"text": "Hello<|im_end|>"}, {"output_ids": [1, 2], "finish_reason": "length"}])
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        sys.executable,
        str(REPO / "tests" / "sglang_stub.py"),
        "--port",
        str(port),
        "--script",
        str(script),
        "--tokenizer",
        str(qwen3_tokenizer_dir),
    ]
    with run_process(args, f"{url}/health"):
        first = _generate(url, [1, 2])
        second = _generate(url, [1, 2])
    assert first["text"] == "Hello"
    assert (
        second["output_ids"] == [1, 2] and second["meta_info"]["finish_reason"]["type"] == "length"
    )


# ---------------------------------------------------------------- CPU local engine

CHAT_PROMPT = [{"role": "user", "content": "What is 2 + 3? Answer briefly."}]


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory, qwen3_tokenizer_dir):
    from tiny_qwen3 import make_tiny_qwen3

    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"), qwen3_tokenizer_dir)


@pytest.fixture(scope="module")
def tiny_model(tiny_qwen3_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_qwen3_dir)).eval()


@pytest.fixture(scope="module")
def engine_url(tiny_qwen3_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        sys.executable,
        "-m",
        "tools.engines.local_engine",
        "--model",
        str(tiny_qwen3_dir),
        "--port",
        str(port),
        "--threads",
        "1",
    ]
    with run_process(args, f"{url}/health", timeout=120) as proc:
        yield url
        assert proc.poll() is None, "engine died during the tests"


@pytest.fixture(scope="module")
def prompt_ids(tiny_qwen3_dir) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_qwen3_dir))
    return list(
        tok.apply_chat_template(
            CHAT_PROMPT, add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )


def _direct_logprobs(
    model, prompt: list[int], output: list[int], temperature: float = 1.0
) -> list[float]:
    """Logprob of each output token from one full forward pass (no KV cache)."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + output])).logits[0].float()
    steps = torch.log_softmax(logits[len(prompt) - 1 : -1] / temperature, dim=-1)
    return [float(steps[i, t]) for i, t in enumerate(output)]


def test_local_engine_greedy_is_deterministic_and_matches_forward_pass(
    engine_url, tiny_model, tiny_qwen3_dir, prompt_ids
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_qwen3_dir))
    a = _generate(engine_url, prompt_ids, temperature=0.0, max_new_tokens=12, ignore_eos=True)
    b = _generate(engine_url, prompt_ids, temperature=0.0, max_new_tokens=12, ignore_eos=True)
    ids = a["output_ids"]
    assert ids == b["output_ids"] and len(ids) == 12
    assert a["meta_info"]["finish_reason"] == {"type": "length", "length": 12}
    assert a["meta_info"]["prompt_tokens"] == len(prompt_ids)
    assert a["meta_info"]["completion_tokens"] == 12
    lps = [lp for lp, _, _ in a["meta_info"]["output_token_logprobs"]]
    assert [t for _, t, _ in a["meta_info"]["output_token_logprobs"]] == ids
    assert all(lp <= 0 for lp in lps)
    # The repeat reuses the first request's KV cache for all but the last prompt token.
    assert b["meta_info"]["cached_tokens"] == len(prompt_ids) - 1
    assert lps == pytest.approx(
        [lp for lp, _, _ in b["meta_info"]["output_token_logprobs"]], abs=1e-4
    )
    assert lps == pytest.approx(_direct_logprobs(tiny_model, prompt_ids, ids), abs=1e-4)
    # Greedy really is the argmax of a full forward pass at every step.
    import torch

    with torch.inference_mode():
        logits = tiny_model(input_ids=torch.tensor([prompt_ids + ids])).logits[0]
    assert logits[len(prompt_ids) - 1 : -1].argmax(-1).tolist() == ids
    assert a["text"] == tok.decode(ids, skip_special_tokens=True)


def test_local_engine_reuses_prefix_cache_across_turns(engine_url, tiny_model, prompt_ids) -> None:
    httpx.post(f"{engine_url}/flush_cache").raise_for_status()
    first = _generate(engine_url, prompt_ids, temperature=0.0, max_new_tokens=8, ignore_eos=True)
    assert first["meta_info"]["cached_tokens"] == 0
    turn2 = prompt_ids + first["output_ids"] + [151645, 198, 151644, 872, 198, 9707]
    second = _generate(engine_url, turn2, temperature=0.0, max_new_tokens=8, ignore_eos=True)
    # Everything the first request ran (prompt + all sampled tokens but the last) is reused.
    assert second["meta_info"]["cached_tokens"] == len(prompt_ids) + 7
    lps = [lp for lp, _, _ in second["meta_info"]["output_token_logprobs"]]
    assert lps == pytest.approx(_direct_logprobs(tiny_model, turn2, second["output_ids"]), abs=1e-4)
    # A context that diverges early reuses only the shared part (the cache is cut back).
    turn3 = [*prompt_ids[:5], 9707, 11, 1879]
    third = _generate(engine_url, turn3, temperature=0.0, max_new_tokens=8, ignore_eos=True)
    assert third["meta_info"]["cached_tokens"] == 5
    lps = [lp for lp, _, _ in third["meta_info"]["output_token_logprobs"]]
    assert lps == pytest.approx(_direct_logprobs(tiny_model, turn3, third["output_ids"]), abs=1e-4)


def test_local_engine_sampling_logprobs_and_seed(engine_url, tiny_model, prompt_ids) -> None:
    params = dict(temperature=0.7, top_p=0.95, top_k=50, max_new_tokens=10, ignore_eos=True)
    a = _generate(engine_url, prompt_ids, sampling_seed=7, **params)
    b = _generate(engine_url, prompt_ids, sampling_seed=7, **params)
    ids = a["output_ids"]
    assert ids == b["output_ids"] and len(ids) == 10
    lps = [lp for lp, _, _ in a["meta_info"]["output_token_logprobs"]]
    assert all(lp <= 0 for lp in lps)
    # SGLang's convention: log-softmax of the temperature-scaled logits the token was drawn from.
    assert lps == pytest.approx(
        _direct_logprobs(tiny_model, prompt_ids, ids, temperature=0.7), abs=1e-4
    )
    # top_k=1 leaves one candidate: the same tokens as greedy.
    top1 = _generate(
        engine_url, prompt_ids, temperature=1.0, top_k=1, max_new_tokens=6, ignore_eos=True
    )
    greedy = _generate(engine_url, prompt_ids, temperature=0.0, max_new_tokens=6, ignore_eos=True)
    assert top1["output_ids"] == greedy["output_ids"]


def test_local_engine_stop_token_and_eos(engine_url, tiny_qwen3_dir, prompt_ids) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_qwen3_dir))
    base = _generate(engine_url, prompt_ids, temperature=0.0, max_new_tokens=8, ignore_eos=True)[
        "output_ids"
    ]
    stop_at = next(i for i in range(2, 8) if base[i] not in base[:i])
    out = _generate(
        engine_url, prompt_ids, temperature=0.0, max_new_tokens=8, stop_token_ids=[base[stop_at]]
    )
    assert out["output_ids"] == base[: stop_at + 1]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": base[stop_at]}
    assert out["text"] == tok.decode(base[:stop_at], skip_special_tokens=True)
    # min_new_tokens: stop tokens cannot be sampled before that many tokens exist.
    held = _generate(
        engine_url,
        prompt_ids,
        temperature=0.0,
        max_new_tokens=8,
        min_new_tokens=3,
        stop_token_ids=[base[0], 10**9],
    )
    assert held["output_ids"][0] != base[0]
    assert base[0] not in held["output_ids"][:3] and len(held["output_ids"]) >= 3
    info = httpx.get(f"{engine_url}/get_model_info").json()
    assert info["is_generation"] is True


def test_local_engine_ends_on_chat_end_tokens_by_default(tiny_qwen3_dir) -> None:
    # An untrained model will not pick <|im_end|> on cue, so check the set the engine stops on.
    from transformers import AutoTokenizer

    from tools.engines.sglang_api import SamplingParams

    tok = AutoTokenizer.from_pretrained(str(tiny_qwen3_dir))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
    engine = _engine(tiny_qwen3_dir)
    engine_ids = engine.end_token_ids
    assert {im_end, endoftext} <= engine_ids
    assert engine.stop_ids(SamplingParams(stop_token_ids=(5,))) == engine_ids | {5}
    assert engine.stop_ids(SamplingParams(stop_token_ids=(5,), ignore_eos=True)) == {5}
    # A token from the end set ends generation even when the request names no stop ids.
    from tools.engines.sglang_api import GenerateRequest

    prompt = tok.encode("Hello there", add_special_tokens=False)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6)
    base = engine.generate(
        GenerateRequest(prompt, SamplingParams(temperature=0.0, max_new_tokens=6, ignore_eos=True))
    )
    engine.end_token_ids = frozenset({base.output_ids[2]})
    first = base.output_ids.index(base.output_ids[2])
    ended = engine.generate(GenerateRequest(prompt, greedy))
    assert ended.output_ids == base.output_ids[: first + 1]
    assert ended.finish_reason == {"type": "stop", "matched": base.output_ids[2]}


def _tokenizer(engine_url: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        httpx.get(f"{engine_url}/get_model_info").json()["tokenizer_path"]
    )


def _engine(model_dir):
    from tools.engines.local_model import load_model

    return load_model(str(model_dir))


def test_local_engine_stop_string(engine_url, tiny_qwen3_dir, prompt_ids) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_qwen3_dir))
    base = _generate(engine_url, prompt_ids, temperature=0.0, max_new_tokens=16, ignore_eos=True)[
        "output_ids"
    ]
    # A stop string: the clean ASCII text of a later token that the earlier text does not contain.
    stop = None
    for i in range(1, len(base)):
        piece = tok.decode([base[i]]).strip()
        if (
            piece.isascii()
            and piece.isalpha()
            and len(piece) >= 2
            and piece not in tok.decode(base[:i])
        ):
            stop = piece
            break
    assert stop is not None, f"no usable stop string in {tok.decode(base)!r}"
    k = next(
        i for i in range(len(base)) if stop in tok.decode(base[: i + 1], skip_special_tokens=True)
    )
    full = tok.decode(base[: k + 1], skip_special_tokens=True)
    out = _generate(
        engine_url, prompt_ids, temperature=0.0, max_new_tokens=16, ignore_eos=True, stop=[stop]
    )
    assert out["output_ids"] == base[: k + 1]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert out["text"] == full[: full.index(stop)]
    kept = _generate(
        engine_url,
        prompt_ids,
        temperature=0.0,
        max_new_tokens=16,
        ignore_eos=True,
        stop=stop,
        no_stop_trim=True,
    )
    assert kept["text"] == full and kept["output_ids"] == base[: k + 1]


def test_local_engine_max_new_tokens_and_bad_input(engine_url, prompt_ids) -> None:
    out = _generate(engine_url, prompt_ids, temperature=1.0, max_new_tokens=3, ignore_eos=True)
    assert len(out["output_ids"]) == 3 and len(out["meta_info"]["output_token_logprobs"]) == 3
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 3}
    bad_cases = [
        (b"{nope", "not valid JSON"),
        (
            json.dumps({"input_ids": [1], "sampling_params": {"temprature": 1}}).encode(),
            "unknown sampling param 'temprature'",
        ),
        (json.dumps({"input_ids": [10**9]}).encode(), "not a token id"),
        (json.dumps({"input_ids": [1], "sampling_params": {"top_p": 2}}).encode(), "top_p"),
        (
            json.dumps({"input_ids": [1], "sampling_params": {"frequency_penalty": 0.5}}).encode(),
            "not supported",
        ),
        (json.dumps({"input_ids": [[1], [2]]}).encode(), "not a token id"),
        (json.dumps({"input_ids": [1], "stream": True}).encode(), "streaming"),
        (json.dumps({"input_ids": [1], "logprob_start_len": 0}).encode(), "logprob_start_len"),
    ]
    for body, message in bad_cases:
        r = httpx.post(f"{engine_url}/generate", content=body, timeout=30)
        assert r.status_code == 400, (body, r.text)
        assert message in r.json()["error"]["message"]
        assert "\n" not in r.json()["error"]["message"]
    # Neutral values of unimplemented params and slime's full training dict are accepted.
    slime_params = dict(
        temperature=1.0,
        top_p=1.0,
        top_k=-1,
        max_new_tokens=2,
        stop=None,
        stop_token_ids=None,
        skip_special_tokens=False,
        no_stop_trim=True,
        spaces_between_special_tokens=False,
        frequency_penalty=0.0,
    )
    assert len(_generate(engine_url, prompt_ids, **slime_params)["output_ids"]) <= 2
    with_text = httpx.post(
        f"{engine_url}/generate",
        timeout=30,
        json={
            "input_ids": prompt_ids,
            "sampling_params": {"temperature": 0, "max_new_tokens": 2, "ignore_eos": True},
            "return_logprob": True,
            "return_text_in_logprobs": True,
        },
    ).json()
    assert [e[2] for e in with_text["meta_info"]["output_token_logprobs"]] == [
        _tokenizer(engine_url).decode([t]) for t in with_text["output_ids"]
    ]
    plain = httpx.post(
        f"{engine_url}/generate",
        json={"input_ids": prompt_ids, "sampling_params": {"max_new_tokens": 1}},
    ).json()
    assert "output_token_logprobs" not in plain["meta_info"] and len(plain["output_ids"]) == 1
    assert httpx.get(f"{engine_url}/health_generate", timeout=30).status_code == 200


def test_local_engine_abort_request(engine_url, prompt_ids) -> None:
    results: list[dict] = []

    def long_request() -> None:
        results.append(
            _generate(
                engine_url,
                prompt_ids,
                temperature=1.0,
                max_new_tokens=5000,
                ignore_eos=True,
                timeout=120,
            )
        )

    threads = [threading.Thread(target=long_request) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        load = httpx.get(f"{engine_url}/v1/loads").json()["loads"][0]
        if load["num_running_reqs"] == 1 and load["num_waiting_reqs"] == 1:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"engine never had one running and one queued request: {load}")
    time.sleep(0.3)
    started = time.monotonic()
    assert httpx.post(f"{engine_url}/abort_request", json={"abort_all": True}).status_code == 200
    for t in threads:
        t.join(60)
    assert time.monotonic() - started < 30
    assert len(results) == 2
    for r in results:
        assert r["meta_info"]["finish_reason"]["type"] == "abort"
        assert len(r["output_ids"]) < 5000
        assert len(r["meta_info"]["output_token_logprobs"]) == len(r["output_ids"])
    assert sorted(len(r["output_ids"]) for r in results)[0] == 0  # the queued one never started


def test_local_engine_imports_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import tools.engines.local_engine as le\n"
        "raise SystemExit(le.main(['--model', 'unused']))\n"
    )
    proc = __import__("subprocess").run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert "torch is not installed" in proc.stderr
    assert "DEBUGGING ENGINE" in proc.stdout


def test_local_engine_missing_model_is_a_clear_error(tmp_path) -> None:
    import subprocess

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.engines.local_engine",
            "--model",
            str(tmp_path / "absent"),
            "--port",
            str(free_port()),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2
    assert "cannot load model" in proc.stderr


def test_stub_subprocess_with_responder_callable(tmp_path) -> None:
    module = tmp_path / "responder.py"
    module.write_text(
        "from sglang_stub import Turn\n\n"
        "def respond(request):\n"
        "    return Turn([len(request.input_ids), 42])\n"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        sys.executable,
        str(REPO / "tests" / "sglang_stub.py"),
        "--port",
        str(port),
        "--responder",
        f"{module}:respond",
        "--instant",
    ]
    with run_process(args, f"{url}/health", env={"PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}):
        out = _generate(url, [5, 6, 7], max_new_tokens=1)
    assert out["output_ids"] == [3]
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 1}


def test_bridge_engine_client_reads_local_engine_replies(engine_url, prompt_ids) -> None:
    from bridge.engine import EngineClient

    async def turn() -> tuple:
        client = EngineClient(engine_url)
        try:
            return await client.generate(
                prompt_ids,
                {"temperature": 0.0, "max_new_tokens": 4, "ignore_eos": True},
                routing_key="episode-1",
            )
        finally:
            await client.close()

    got = asyncio.run(turn())
    direct = _generate(engine_url, prompt_ids, temperature=0.0, max_new_tokens=4, ignore_eos=True)
    assert got.output_ids == direct["output_ids"] and got.finish_reason == "length"
    assert got.logprobs == pytest.approx(
        [e[0] for e in direct["meta_info"]["output_token_logprobs"]], abs=1e-4
    )


def test_sampler_follows_the_filtered_distribution() -> None:
    import torch

    from tools.engines.local_model import sample_next_token
    from tools.engines.sglang_api import SamplingParams

    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    gen = torch.Generator().manual_seed(0)

    def freqs(n: int = 4000, **params: object) -> list[float]:
        counts = [0] * 4
        p = SamplingParams(**params)
        for _ in range(n):
            token, lp = sample_next_token(logits.clone(), p, gen)
            counts[token] += 1
            expected = (
                torch.log_softmax(logits / p.temperature, -1)[token]
                if not p.greedy
                else torch.log_softmax(logits, -1)[token]
            )
            assert lp == pytest.approx(float(expected), abs=1e-6)
        return [c / n for c in counts]

    assert freqs() == pytest.approx([0.1, 0.2, 0.3, 0.4], abs=0.03)
    assert freqs(top_k=2) == pytest.approx([0, 0, 3 / 7, 4 / 7], abs=0.03)
    # top_p keeps the smallest head whose mass reaches p: 0.4 + 0.3 >= 0.6.
    assert freqs(top_p=0.6) == pytest.approx([0, 0, 3 / 7, 4 / 7], abs=0.03)
    assert freqs(min_p=0.6) == pytest.approx([0, 0, 3 / 7, 4 / 7], abs=0.03)
    # Temperature sharpens: p_i ∝ p_i^(1/T).
    sharp = [x**2 for x in (0.1, 0.2, 0.3, 0.4)]
    assert freqs(temperature=0.5) == pytest.approx([x / sum(sharp) for x in sharp], abs=0.03)
    assert freqs(n=50, temperature=0.0) == [0, 0, 0, 1.0]


def test_head_mask_matches_a_full_sort() -> None:
    import torch

    from tools.engines.local_model import _head_mask

    gen = torch.Generator().manual_seed(3)
    for scale in (0.1, 1.0, 8.0):  # flat (the head must widen past 1024) to peaked
        probs = torch.softmax(torch.randn(151_669, generator=gen) * scale, dim=-1)
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, -1) - sorted_probs
        for top_k, top_p in ((-1, 0.5), (-1, 0.95), (50, 0.9), (20, 1.0), (5000, 0.3)):
            ref_sorted = before < top_p
            ref_sorted[0] = True
            if top_k > 0:
                ref_sorted[top_k:] = False
            ref = torch.zeros_like(probs, dtype=torch.bool)
            ref[order[ref_sorted]] = True
            assert torch.equal(_head_mask(probs, top_k, top_p), ref), (scale, top_k, top_p)


def test_local_engine_aborts_when_the_client_hangs_up(engine_url, prompt_ids) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{engine_url}/generate",
            timeout=httpx.Timeout(5.0, read=1.0),
            json={
                "input_ids": prompt_ids,
                "sampling_params": {"max_new_tokens": 20000, "ignore_eos": True},
            },
        )
    deadline = time.monotonic() + 10
    while httpx.get(f"{engine_url}/v1/loads").json()["loads"][0]["num_running_reqs"]:
        assert time.monotonic() < deadline, "generation kept running after the client left"
        time.sleep(0.1)
    assert len(_generate(engine_url, prompt_ids, max_new_tokens=2)["output_ids"]) <= 2
