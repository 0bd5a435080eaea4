"""Chat rendering and token accounting against the REAL Qwen3 tokenizer and chat template."""

from __future__ import annotations

import json

import pytest

from bridge.chat import ChatRenderer
from bridge.errors import LedgerError
from bridge.sample import FallbackSample, fill_sample
from bridge.tokens import TokenLedger

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate arithmetic.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "submit_answer",
            "description": "Submit the answer.",
            "parameters": {
                "type": "object",
                "properties": {"answer": {"type": "string"}},
                "required": ["answer"],
            },
        },
    },
]
QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then half as many in May.\nHow "
    "many in total?"
)


def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def _template_ids(tok, messages, tools, thinking: bool) -> list[int]:
    out = tok.apply_chat_template(
        messages, tools=tools, tokenize=True, add_generation_prompt=True, enable_thinking=thinking
    )
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _call_text(name: str, args: dict) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(args)}}}\n</tool_call>'


@pytest.mark.parametrize("thinking", [False, True])
@pytest.mark.parametrize("system", [None, "You are careful."])
@pytest.mark.parametrize("tools", [TOOLS, None])
def test_first_prompt_matches_chat_template(qwen3_tokenizer, thinking, system, tools) -> None:
    r = ChatRenderer(qwen3_tokenizer, thinking, system)
    ids = r.prompt_ids(QUESTION, tools)
    assert ids == _template_ids(qwen3_tokenizer, r.prompt_messages(QUESTION), tools, thinking)
    # the cached shape is reused for a second task with the same tools
    assert r.prompt_ids("Other question?", tools) == _template_ids(
        qwen3_tokenizer, r.prompt_messages("Other question?"), tools, thinking
    )


def test_multi_turn_thinking_context_equals_full_template_rendering(qwen3_tokenizer) -> None:
    """With thinking on, Qwen3 keeps the thinking of assistant turns after the last user query, so
    prompt + sampled + deltas must equal the template's own rendering of the whole episode."""
    tok = qwen3_tokenizer
    r = ChatRenderer(tok, True, "Be exact.")
    turns = [
        (
            "48 / 2 first.",
            "Compute.",
            [("calculator", {"expression": "48 / 2"}), ("calculator", {"expression": "48 + 24"})],
        ),
        ("It is 72.", "", [("submit_answer", {"answer": "72"})]),
    ]
    results = [["48 / 2 = 24", "48 + 24 = 72"], ["Correct: 72."]]
    ledger = TokenLedger(r.prompt_ids(QUESTION, TOOLS))
    messages = r.prompt_messages(QUESTION)
    for (reasoning, content, calls), outputs in zip(turns, results, strict=False):
        text = (
            f"<think>\n{reasoning}\n</think>\n\n{content}"
            + ("\n" if content else "")
            + "\n".join(_call_text(n, a) for n, a in calls)
            + "<|im_end|>"
        )
        sampled = _ids(tok, text)
        ledger.add_sampled(sampled, [-0.5] * len(sampled), text)
        delta, delta_text = r.tool_delta(outputs, r.decode(sampled))
        ledger.add_appended(delta, delta_text)
        messages.append(
            {
                "role": "assistant",
                "content": content,
                "reasoning_content": reasoning,
                "tool_calls": [
                    {"type": "function", "function": {"name": n, "arguments": a}} for n, a in calls
                ],
            }
        )
        messages += [{"role": "tool", "content": o} for o in outputs]
        assert ledger.ids == _template_ids(tok, messages, TOOLS, True)
    assert ledger.drift_count == 0


@pytest.mark.parametrize("thinking", [False, True])
def test_deltas_close_the_turn_and_open_the_next(qwen3_tokenizer, thinking) -> None:
    tok = qwen3_tokenizer
    r = ChatRenderer(tok, thinking, None)
    gen = "<|im_start|>assistant\n" + ("" if thinking else "<think>\n\n</think>\n\n")
    # the engine stopped on <|im_end|>: only the newline is missing
    d, text = r.tool_delta(["a", "b"], "x" + _call_text("calculator", {}) + "<|im_end|>")
    assert text == (
        "\n<|im_start|>user\n<tool_response>\na\n</tool_response>\n<tool_response>\nb\n"
        "</tool_response><|im_end|>\n" + gen
    )
    assert d == _ids(tok, text) and tok.decode(d) == text
    # a stop string or stop id other than <|im_end|>: the harness closes the assistant turn
    _, text2 = r.tool_delta(["a"], "x</tool_call>")
    assert text2.startswith("<|im_end|>\n<|im_start|>user\n<tool_response>\na\n")
    _, nudge = r.user_delta("Call a tool.", "I am done.<|im_end|>")
    assert nudge == "\n<|im_start|>user\nCall a tool.<|im_end|>\n" + gen


def test_retokenizing_our_context_gives_the_same_ids(qwen3_tokenizer) -> None:
    """No BPE merges across the boundaries we append at (sampled text | delta)."""
    tok = qwen3_tokenizer
    r = ChatRenderer(tok, False, None)
    ledger = TokenLedger(r.prompt_ids(QUESTION, TOOLS))
    for out in (["72"], ["Error: unknown tool 'x'", "  spaced  \n output "]):
        text = "Checking." + _call_text("calculator", {"expression": "1"}) + "<|im_end|>"
        s = _ids(tok, text)
        ledger.add_sampled(s, [0.0] * len(s), text)
        d, dt = r.tool_delta(out, text)
        ledger.add_appended(d, dt)
    assert _ids(tok, tok.decode(ledger.ids)) == ledger.ids


def test_ledger_fills_fallback_sample_aligned() -> None:
    ledger = TokenLedger([1, 2, 3])
    ledger.add_sampled(
        [10, 11], [-0.1, -0.2], "ab", {"finish_reason": {"type": "stop"}, "weight_version": "7"}
    )
    ledger.add_appended([20, 21, 22], "xyz")
    ledger.add_sampled([12], [-0.3], "c")
    s = FallbackSample(tokens=[99])
    fill_sample(s, ledger)
    assert s.tokens == [1, 2, 3, 10, 11, 20, 21, 22, 12]
    assert s.response_length == 6 and s.response == "abxyzc"
    assert s.loss_mask == [1, 1, 0, 0, 0, 1]
    assert s.rollout_log_probs == [-0.1, -0.2, 0.0, 0.0, 0.0, -0.3]
    assert s.weight_versions == ["7"]
    with pytest.raises(LedgerError):
        ledger.add_sampled([1, 2], [0.0], "x")  # logprobs never padded
