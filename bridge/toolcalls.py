"""Parse one assistant turn in the Qwen3 / Hermes format: thinking, visible text, and `<tool_call>`
blocks.

A turn looks like `<think>..</think>\\n\\ntext<tool_call>\\n{"name": .., "arguments":
{..}}\\n</tool_call>`.
Every block becomes either a `ToolCall` or a `ToolCallError` (the model sees the error and the
episode goes on), in the order the model wrote them. Blocks inside the thinking are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from contract.vocab import ToolErrorKind

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


@dataclass
class ToolCall:
    """A well-formed call: a tool name and a JSON object of arguments."""

    name: str
    arguments: dict[str, Any]
    call_id: str = ""


@dataclass
class ToolCallError:
    """A block the model wrote that cannot be executed; `message` is shown to the model.

    `kind` is also the key of the episode's `tool_errors` counter.
    """

    kind: ToolErrorKind
    message: str
    raw: str
    name: str | None = None
    call_id: str = ""


ParsedCall = ToolCall | ToolCallError


@dataclass
class ParsedTurn:
    """One assistant turn split into its parts."""

    reasoning: str | None
    content: str
    calls: list[ParsedCall] = field(default_factory=list)


def split_thinking(text: str) -> tuple[str | None, str]:
    """(reasoning, rest): the text before `</think>` is reasoning; no `</think>` means no
    reasoning."""
    head, sep, tail = text.partition(THINK_CLOSE)
    if not sep:
        return None, text
    reasoning = head.split(THINK_OPEN, 1)[-1].strip("\n")
    return reasoning, tail.lstrip("\n")


def _parse_block(body: str, known_tools: set[str] | None) -> ParsedCall:
    raw = body.strip()
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return ToolCallError(ToolErrorKind.PARSE_ERROR, f"tool call is not valid JSON: {e}", raw)
    if not isinstance(obj, dict):
        return ToolCallError(
            ToolErrorKind.PARSE_ERROR,
            "tool call must be a JSON object with 'name' and 'arguments'",
            raw,
        )
    return check_call(
        obj.get("name"), obj.get("arguments", obj.get("parameters", {})), raw, known_tools
    )


def check_call(name: Any, args: Any, raw: str, known_tools: set[str] | None) -> ParsedCall:
    """A call from its name and arguments (an object, or a JSON string of one), or the error the
    model will see. Shared by the `<tool_call>` parser and OpenAI-style `tool_calls`."""
    if not isinstance(name, str) or not name:
        return ToolCallError(ToolErrorKind.PARSE_ERROR, "tool call has no 'name' string", raw)
    if args is None:
        args = {}
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = orjson.loads(args) if args.strip() else {}
        except orjson.JSONDecodeError:
            return ToolCallError(
                ToolErrorKind.INVALID_ARGUMENTS,
                f"arguments of '{name}' are not a JSON object",
                raw,
                name,
            )
    if not isinstance(args, dict):
        return ToolCallError(
            ToolErrorKind.INVALID_ARGUMENTS,
            f"arguments of '{name}' must be a JSON object",
            raw,
            name,
        )
    if known_tools is not None and name not in known_tools:
        listed = ", ".join(sorted(known_tools))
        return ToolCallError(
            ToolErrorKind.UNKNOWN_TOOL,
            f"unknown tool '{name}'; available tools: {listed}",
            raw,
            name,
        )
    return ToolCall(name, args)


def parse_turn(
    text: str, known_tools: set[str] | None = None, eos_text: str | None = None
) -> ParsedTurn:
    """Split a decoded assistant turn into reasoning, visible content and tool calls (in order)."""
    if eos_text and text.endswith(eos_text):
        text = text[: -len(eos_text)]
    reasoning, rest = split_thinking(text)
    calls: list[ParsedCall] = []
    pieces: list[str] = []
    pos = 0
    if TOOL_CALL_OPEN in rest:
        for m in _BLOCK.finditer(rest):
            pieces.append(rest[pos : m.start()])
            pos = m.end()
            calls.append(_parse_block(m.group(1), known_tools))
        tail = rest[pos:]
        if TOOL_CALL_OPEN in tail:  # an opened block the model never closed
            cut = tail.index(TOOL_CALL_OPEN)
            calls.append(
                ToolCallError(
                    ToolErrorKind.PARSE_ERROR,
                    "tool call block is not closed with </tool_call>",
                    tail[cut + len(TOOL_CALL_OPEN) :].strip(),
                )
            )
            tail = tail[:cut]
        pieces.append(tail)
    else:
        pieces.append(rest)
    content = "".join(pieces).strip()
    return ParsedTurn(reasoning=reasoning, content=content, calls=calls)
