"""Whole episodes through `bridge.generate.generate`: the real env server on loopback, the real
Qwen3 tokenizer/template, and the scripted SGLang stub (the only stand-in) answering with token ids
made by tokenizing the model's turn text.

Every test checks exact token / loss-mask / logprob alignment against what the stub actually
received and sent, and that the env server has no session left open.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx
import pytest
from conftest import free_port, run_process
from generate_helpers import (  # noqa: F401 (_close_bridge_clients: the autouse fixture)
    PARAMS,
    STUB_OUTPUTS,
    TOKENIZER_DIR,
    _close_bridge_clients,
    assert_aligned,
    call,
    make_args,
    make_sample,
    open_sessions,
    recording_stub,
    run,
    stub_outputs,
    turn,
)
from sglang_stub import SGLangStub

from bridge.generate import generate
from bridge.sample import FallbackSample


# --- tests ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("thinking", [False, True])
async def test_gsm8k_several_calls_per_turn_thinking_tokens_trained(
    qwen3_tokenizer, server_url, thinking
) -> None:
    from envs.gsm8k import GSM8K

    tok = qwen3_tokenizer
    label = GSM8K.load_split("train")[0]["label"]
    key = f"g1-{thinking}"
    script = {
        key: [
            turn(
                tok,
                "<think>\nHalf of 48 then add.\n</think>\n\nComputing."
                + call("calculator", {"expression": "48/2"})
                + "\n"
                + call("calculator", {"expression": "48+24"})
                + "<|im_end|>",
            ),
            turn(
                tok,
                "<think>\nDone.\n</think>\n\n"
                + call("submit_answer", {"answer": label})
                + "<|im_end|>",
            ),
        ]
    }
    with recording_stub(tok, script) as stub:
        s = await run(make_args(stub), make_sample(server_url, "gsm8k", key, thinking=thinking))
        first = tok.decode(stub.requests_for(key)[0].input_ids)
    assert first.endswith(
        "<|im_start|>assistant\n" + ("" if thinking else "<think>\n\n</think>\n\n")
    )
    assert s.status.value == "completed" and s.reward == 1.0 and not s.remove_sample
    md = s.metadata
    assert (md["stop_reason"], md["num_turns"], md["num_tool_calls"], md["tool_errors"]) == (
        "env_finished",
        2,
        3,
        {},
    )
    assert md["turn_rewards"][-1] == 1.0 and md["env_finished"] is True
    assert_aligned(s, stub, key)
    # the thinking the model sampled is trained: its ids are under mask 1
    resp = s.tokens[len(s.tokens) - s.response_length :]
    assert resp[0] == tok.convert_tokens_to_ids("<think>") and s.loss_mask[:5] == [1] * 5
    assert "48/2 = 24" in s.response and "48+24 = 72" in s.response
    assert open_sessions(server_url) == 0


async def test_malformed_calls_get_error_responses_and_episode_continues(
    qwen3_tokenizer, server_url
) -> None:
    tok = qwen3_tokenizer
    script = {
        "m1": [
            turn(
                tok,
                "<tool_call>\n{oops not json}\n</tool_call>"
                + call("launch", {})
                + call("calculator", {"expr": "1"})
                + call("calculator", {"expression": "2*3"})
                + "<|im_end|>",
            ),
            turn(tok, call("submit_answer", {"answer": "0"}) + "<|im_end|>"),
        ]
    }
    with recording_stub(tok, script) as stub:
        s = await run(make_args(stub), make_sample(server_url, "gsm8k", "m1"))
        second_ctx = tok.decode(stub.requests_for("m1")[1].input_ids)
    md = s.metadata
    assert md["tool_errors"] == {"parse_error": 1, "unknown_tool": 1, "invalid_arguments": 1}
    assert md["num_tool_calls"] == 5 and md["stop_reason"] == "env_finished" and s.reward == 0.0
    assert (
        "not valid JSON" in second_ctx
        and "unknown tool 'launch'" in second_ctx
        and "2*3 = 6" in second_ctx
    )
    assert second_ctx.count("<tool_response>") == 4
    assert_aligned(s, stub, "m1")
    assert open_sessions(server_url) == 0


@pytest.mark.parametrize("thinking", [False, True])
async def test_whodunit_full_case_and_partial_credit(qwen3_tokenizer, server_url, thinking) -> None:
    from envs.whodunit import WhoDunIt

    tok = qwen3_tokenizer
    think = "<think>\nWho had the means?\n</think>\n\n" if thinking else ""
    answer = WhoDunIt.case_for("train", 0).answer()
    partial = dict(answer, who="Nobody")
    info = [
        "list_suspects",
        "list_weapons",
        "list_locations",
        "list_motives",
        "list_clues",
        "list_statements",
    ]
    kf, kp = f"w-full-{thinking}", f"w-part-{thinking}"
    script = {
        kf: [
            turn(tok, think + "".join(call(n) for n in info[:3]) + "<|im_end|>"),
            turn(tok, think + "".join(call(n) for n in info[3:]) + "<|im_end|>"),
            turn(tok, think + call("submit_answer", answer) + "<|im_end|>"),
        ],
        kp: [turn(tok, think + call("submit_answer", partial) + "<|im_end|>")],
    }
    with recording_stub(tok, script) as stub:
        full, part = await asyncio.gather(
            run(make_args(stub), make_sample(server_url, "whodunit", kf, thinking=thinking)),
            run(make_args(stub), make_sample(server_url, "whodunit", kp, thinking=thinking)),
        )
    assert (
        full.reward == 1.0
        and full.metadata["num_turns"] == 3
        and full.metadata["num_tool_calls"] == 7
    )
    n_parts = len(answer)
    assert part.reward == pytest.approx((n_parts - 1) / n_parts)
    assert_aligned(full, stub, kf)
    assert_aligned(part, stub, kp)
    assert open_sessions(server_url) == 0


@pytest.mark.parametrize("thinking", [False, True])
async def test_haiku_revision_reward_last(qwen3_tokenizer, server_url, thinking) -> None:
    from ors_episodes import ON_TOPIC_HAIKU

    tok = qwen3_tokenizer
    think = "<think>\nFive, seven, five.\n</think>\n\n" if thinking else ""
    key = f"h1-{thinking}"
    script = {
        key: [
            turn(
                tok, think + call("submit_haiku", {"poem": "too short\nstill short"}) + "<|im_end|>"
            ),
            turn(
                tok,
                think
                + call("submit_haiku", {"poem": ON_TOPIC_HAIKU["first frost on the garden"]})
                + "<|im_end|>",
            ),
        ]
    }
    with recording_stub(tok, script) as stub:
        s = await run(
            make_args(stub),
            make_sample(
                server_url, "haiku", key, thinking=thinking, reward={"reward_reduction": "last"}
            ),
        )
    rewards = [r for r in s.metadata["turn_rewards"] if r is not None]
    assert (
        s.metadata["env_finished"]
        and s.reward == pytest.approx(rewards[-1])
        and s.reward > rewards[0]
    )
    assert_aligned(s, stub, key)
    assert open_sessions(server_url) == 0


async def test_no_tool_call_ends_or_nudges_once(qwen3_tokenizer, server_url) -> None:
    tok = qwen3_tokenizer
    script = {
        "n-end": [turn(tok, "I think it is 5.<|im_end|>")],
        "n-nudge": [turn(tok, "I think it is 5.<|im_end|>"), turn(tok, "Still no tool.<|im_end|>")],
        "n-nudge2": [
            turn(tok, "Hmm.<|im_end|>"),
            turn(tok, call("submit_answer", {"answer": "5"}) + "<|im_end|>"),
        ],
    }
    with recording_stub(tok, script) as stub:
        end = await run(
            make_args(stub),
            make_sample(
                server_url,
                "gsm8k",
                "n-end",
                reward={"nonterminal_reward": -1.0, "min_reward": -1.0},
            ),
        )
        nudge = await run(
            make_args(stub), make_sample(server_url, "gsm8k", "n-nudge", on_no_tool_call="nudge")
        )
        nudge2 = await run(
            make_args(stub), make_sample(server_url, "gsm8k", "n-nudge2", on_no_tool_call="nudge")
        )
        nudge_ctx = tok.decode(stub.requests_for("n-nudge")[1].input_ids)
    assert end.metadata["stop_reason"] == "no_tool_call" and end.status.value == "completed"
    assert end.reward == -1.0 and end.metadata["num_turns"] == 1
    assert nudge.metadata["num_turns"] == 2 and nudge.metadata["stop_reason"] == "no_tool_call"
    assert nudge_ctx.endswith(
        "I think it is 5.<|im_end|>\n<|im_start|>user\nYou did not call a tool. Continue the task "
        "by calling one of the available "
        "tools.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert nudge2.metadata["stop_reason"] == "env_finished"
    for s, k in ((end, "n-end"), (nudge, "n-nudge"), (nudge2, "n-nudge2")):
        assert_aligned(s, stub, k)
    assert open_sessions(server_url) == 0


async def test_max_turns_truncates_with_nonterminal_reward(qwen3_tokenizer, server_url) -> None:
    tok = qwen3_tokenizer
    t = call("calculator", {"expression": "1+1"}) + "<|im_end|>"
    script = {"mt": [turn(tok, t), turn(tok, t), turn(tok, t)]}
    with recording_stub(tok, script) as stub:
        s = await run(
            make_args(stub),
            make_sample(
                server_url, "gsm8k", "mt", max_turns=2, reward={"nonterminal_reward": 0.25}
            ),
        )
    assert s.status.value == "truncated" and s.metadata["stop_reason"] == "max_turns"
    assert s.metadata["num_turns"] == 2 and s.reward == 0.25 and len(stub.requests_for("mt")) == 2
    assert_aligned(s, stub, "mt")
    assert open_sessions(server_url) == 0


async def test_context_budget_clamps_max_new_tokens_and_truncates(
    qwen3_tokenizer, server_url
) -> None:
    tok = qwen3_tokenizer
    long_turn = turn(
        tok,
        "<think>\n"
        + "counting " * 200
        + "\n</think>\n\n"
        + call("calculator", {"expression": "1"})
        + "<|im_end|>",
    )
    first = turn(tok, call("calculator", {"expression": "2+2"}) + "<|im_end|>")
    script = {"b1": [first, long_turn], "b2": [first]}
    with recording_stub(tok, script) as stub:
        # response budget 100: the first turn (~25 ids) + its tool delta fit, the second turn is
        # clamped
        s = await run(
            make_args(stub, rollout_max_response_len=100), make_sample(server_url, "gsm8k", "b1")
        )
        reqs = stub.requests_for("b1")
        prompt_len = len(reqs[0].input_ids)
        # a context limit so tight that the tool-response delta of turn 1 does not fit
        s2 = await run(
            make_args(stub, rollout_max_context_len=prompt_len + len(first.output_ids) + 5),
            make_sample(server_url, "gsm8k", "b2"),
        )
    assert reqs[0].max_new_tokens == 100
    assert reqs[1].max_new_tokens == prompt_len + 100 - len(reqs[1].input_ids)
    assert s.status.value == "truncated" and s.metadata["stop_reason"] == "context_budget"
    assert s.response_length == 100
    assert_aligned(s, stub, "b1")
    assert s2.status.value == "truncated" and s2.metadata["stop_reason"] == "context_budget"
    assert s2.response_length == len(
        first.output_ids
    )  # the delta that would not fit was not appended
    assert_aligned(s2, stub, "b2")
    assert open_sessions(server_url) == 0


async def test_engine_side_abort_resends_the_turn_and_trains_nothing_of_it(
    qwen3_tokenizer, server_url, monkeypatch
) -> None:
    """An abort slime did not ask for (engine restart, weight-update pause) is not the model's
    doing: the partial turn is dropped and the same context is sent again."""
    import bridge.episode
    from envs.gsm8k import GSM8K

    monkeypatch.setattr(bridge.episode, "ENGINE_ABORT_BACKOFF", 0.0)
    tok = qwen3_tokenizer
    label = GSM8K.load_split("train")[0]["label"]
    script = {
        "ab": [
            turn(tok, call("calculator", {"expression": "3*3"}) + "<|im_end|>"),
            turn(tok, "partial output the engine dropped", finish_reason="abort"),
            turn(tok, call("submit_answer", {"answer": label}) + "<|im_end|>"),
        ]
    }
    with recording_stub(tok, script) as stub:
        s = await run(make_args(stub), make_sample(server_url, "gsm8k", "ab"))
        reqs = stub.requests_for("ab")
    assert s.status.value == "completed" and s.metadata["stop_reason"] == "env_finished"
    assert s.reward == 1.0 and s.metadata["engine_aborts"] == 1 and not s.remove_sample
    assert reqs[1].input_ids == reqs[2].input_ids  # the same turn, sent again
    # the aborted request and its reply never reached the sample
    stub.requests.remove(reqs[1])
    STUB_OUTPUTS[id(stub)]["ab"].pop(1)
    assert_aligned(s, stub, "ab")
    assert "partial output" not in s.response
    assert open_sessions(server_url) == 0


async def test_engine_that_keeps_aborting_is_an_infra_failure(
    qwen3_tokenizer, server_url, monkeypatch
) -> None:
    import bridge.episode

    monkeypatch.setattr(bridge.episode, "ENGINE_ABORT_BACKOFF", 0.0)
    tok = qwen3_tokenizer
    with SGLangStub(lambda req: turn(tok, "x", finish_reason="abort"), tokenizer=tok) as stub:
        s = await run(make_args(stub), make_sample(server_url, "gsm8k", "ka"))
        n = len(stub.requests)
    md = s.metadata
    assert s.status.value == "failed" and md["stop_reason"] == "engine_error"
    assert md["infra_failure"] is True and s.remove_sample and sum(s.loss_mask) == 0
    assert md["episode_attempts"] == 3 and len(md["retried_failures"]) == 2
    assert n == 3 * bridge.episode.ENGINE_ABORT_ATTEMPTS
    assert open_sessions(server_url) == 0


async def test_cancellation_deletes_the_session(qwen3_tokenizer, server_url) -> None:
    tok = qwen3_tokenizer
    script = {"c1": [turn(tok, "slow", delay=30.0)]}
    with recording_stub(tok, script) as stub:
        task = asyncio.create_task(run(make_args(stub), make_sample(server_url, "gsm8k", "c1")))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if stub.in_flight:
                break
        assert open_sessions(server_url) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)
        assert open_sessions(server_url) == 0
        httpx.post(f"{stub.url}/abort_request", json={"abort_all": True}, timeout=5)


async def test_env_server_killed_mid_episode_fails_cleanly(qwen3_tokenizer, tmp_path) -> None:
    tok = qwen3_tokenizer
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "envs.server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--envs",
        "gsm8k",
        "--db",
        str(tmp_path / "t.db"),
    ]
    with run_process(cmd, f"{url}/health") as proc:
        t1 = turn(tok, call("calculator", {"expression": "1+2"}) + "<|im_end|>")
        t2 = turn(tok, call("calculator", {"expression": "2+3"}) + "<|im_end|>")

        def responder(req):
            if len(req.input_ids) > 0 and req.routing_key == "k1" and responder.n == 1:
                proc.kill()
                proc.wait()
            responder.n += 1
            return [t1, t2][responder.n - 1]

        responder.n = 0
        with SGLangStub(responder, tokenizer=tok) as stub:
            t0 = time.monotonic()
            s = await run(make_args(stub), make_sample(url, "gsm8k", "k1"))
            elapsed = time.monotonic() - t0
    assert s.status.value == "failed" and s.remove_sample is True and s.reward == 0.0
    assert s.metadata["stop_reason"] == "env_error" and s.metadata["env_failure"] == 1
    assert (
        "gave up after" in s.metadata["failure_message"]
        or "connect" in s.metadata["failure_message"]
    )
    assert sum(s.loss_mask) == 0 and len(s.loss_mask) == s.response_length > 0
    assert elapsed < 20


async def test_unreachable_env_server_and_bad_task_fail_with_one_line(qwen3_tokenizer) -> None:
    tok = qwen3_tokenizer
    with SGLangStub(script=[], tokenizer=tok) as stub:
        dead = f"http://127.0.0.1:{free_port()}"
        s = await run(make_args(stub), make_sample(dead, "gsm8k", "u1"))
        bad = FallbackSample(
            metadata={"env": "gsm8k", "split": "train"}, session_id="u2"
        )  # index missing
        s2 = await run(make_args(stub), bad)
    for x in (s, s2):
        assert (
            x.status.value == "failed"
            and x.remove_sample
            and x.reward == 0.0
            and sum(x.loss_mask) == 0
        )
        assert "\n" not in x.metadata["failure_message"]
    assert "connect" in s.metadata["failure_message"]
    assert "split and index" in s2.metadata["failure_message"]
    assert not stub.requests


async def test_eval_params_untouched_and_json_string_metadata(qwen3_tokenizer, server_url) -> None:
    tok = qwen3_tokenizer
    script = {"e1": [turn(tok, call("submit_answer", {"answer": "1"}) + "<|im_end|>")]}
    params = dict(PARAMS, max_new_tokens=64, temperature=0.0)
    frozen = json.dumps(params, sort_keys=True)
    with recording_stub(tok, script) as stub:
        sample = FallbackSample(
            metadata=json.dumps(
                {"env": "gsm8k", "env_server": [server_url], "split": "test", "index": 3}
            ),
            session_id="e1",
        )
        s = await generate(make_args(stub), sample, params, evaluation=True)
        req = stub.requests_for("e1")[0]
    assert json.dumps(params, sort_keys=True) == frozen
    assert isinstance(s.metadata, dict) and s.metadata["split"] == "test"
    assert req.sampling_params["temperature"] == 0.0 and req.max_new_tokens == 64
    assert_aligned(s, stub, "e1")
