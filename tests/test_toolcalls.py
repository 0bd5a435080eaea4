"""The Qwen3/Hermes <tool_call> parser: order, several calls, thinking, and every malformed kind."""

from __future__ import annotations

from bridge.toolcalls import ToolCall, ToolCallError, parse_turn, split_thinking
from contract.vocab import ToolErrorKind

TOOLS = {"calculator", "submit_answer"}


def _call(name: str, args: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {args}}}\n</tool_call>'


def test_several_calls_in_order_with_thinking_and_content() -> None:
    text = (
        "<think>\nI should add.\n</think>\n\nLet me compute."
        + _call("calculator", '{"expression": "2+3"}')
        + "\n"
        + _call("submit_answer", '{"answer": "5"}')
        + "<|im_end|>"
    )
    turn = parse_turn(text, TOOLS, "<|im_end|>")
    assert turn.reasoning == "I should add."
    assert turn.content == "Let me compute."
    assert [type(c) for c in turn.calls] == [ToolCall, ToolCall]
    assert [(c.name, c.arguments) for c in turn.calls] == [
        ("calculator", {"expression": "2+3"}),
        ("submit_answer", {"answer": "5"}),
    ]


def test_no_tool_call_and_no_thinking() -> None:
    turn = parse_turn("The answer is 4.<|im_end|>", TOOLS, "<|im_end|>")
    assert turn.reasoning is None and turn.content == "The answer is 4." and turn.calls == []


def test_tool_calls_inside_thinking_are_ignored() -> None:
    text = "<think>maybe " + _call("calculator", '{"expression": "1"}') + "</think>\n\nNo tools."
    turn = parse_turn(text, TOOLS)
    assert turn.calls == [] and turn.content == "No tools."


def test_malformed_calls_are_errors_in_place() -> None:
    text = (
        _call("calculator", '{"expression": "1+1"}')
        + "<tool_call>\n{not json}\n</tool_call>"
        + _call("launch_rockets", "{}")
        + _call("calculator", "[1, 2]")
        + "<tool_call>\n[1, 2]\n</tool_call>"
        + '<tool_call>\n{"arguments": {}}\n</tool_call>'
        + '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2"'
    )
    calls = parse_turn(text, TOOLS).calls
    kinds = [c.kind if isinstance(c, ToolCallError) else "ok" for c in calls]
    assert kinds == [
        "ok",
        ToolErrorKind.PARSE_ERROR,
        ToolErrorKind.UNKNOWN_TOOL,
        ToolErrorKind.INVALID_ARGUMENTS,
        ToolErrorKind.PARSE_ERROR,
        ToolErrorKind.PARSE_ERROR,
        ToolErrorKind.PARSE_ERROR,
    ]
    assert "launch_rockets" in calls[2].message and "calculator" in calls[2].message
    assert "not closed" in calls[-1].message


def test_arguments_as_json_string_and_missing_arguments() -> None:
    calls = parse_turn(
        _call("calculator", '"{\\"expression\\": \\"3*3\\"}"')
        + '<tool_call>{"name": "submit_answer"}</tool_call>',
        TOOLS,
    ).calls
    assert calls[0] == ToolCall("calculator", {"expression": "3*3"})
    assert calls[1] == ToolCall("submit_answer", {})
    bad = parse_turn(_call("calculator", '"not json"'), TOOLS).calls[0]
    assert isinstance(bad, ToolCallError) and bad.kind == ToolErrorKind.INVALID_ARGUMENTS


def test_unknown_tool_not_checked_without_tool_list() -> None:
    assert parse_turn(_call("anything", "{}")).calls == [ToolCall("anything", {})]


def test_split_thinking() -> None:
    assert split_thinking("<think>\na\n</think>\n\nb") == ("a", "b")
    assert split_thinking("a\n</think>\n\nb") == ("a", "b")  # thinking opened by the prompt
    assert split_thinking("plain") == (None, "plain")
