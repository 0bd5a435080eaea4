"""The scripted engine: no model, a fixed player that plays the project's three environments with
real tool calls, behind SGLang's API. A smoke test for a new machine; it shows the episode
machinery (tool calls, tool results, rewards, the web UI) in seconds, not good answers.

    bash run.sh --rollout-only --engine scripted [--num-tasks 6]
    python -m tools.engines.scripted --tokenizer .cache/qwen3-tokenizer [--port 30000] [--delay S]

Each turn it reads the whole context (the chat template's tool list tells the environment),
writes one Qwen3 tool call and ends the turn with `<|im_end|>`:

- gsm8k: `calculator` on the first two numbers of the question, then `submit_answer` with the
  calculator's result;
- whodunit: `list_suspects`, `list_weapons`, `list_locations`, then `submit_answer` naming the
  first of each;
- haiku: `submit_haiku` with a fixed poem (revised with the topic's first word once the env says
  it is off topic);
- anything else: a plain answer without a tool call.

Its output ids are the tokenizer's ids of that text and its logprobs are fixed
(-0.1 x (1 + position mod 10)): deterministic, so a context always gets the same answer.
`--delay S` holds each answer S seconds (abortable, as a real engine's generation is).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from tools.engines.server import EngineServer, GenerateCall, serve
from tools.engines.sglang_api import (
    GenerateRequest,
    Generation,
    abort_reason,
    length_reason,
    stop_reason,
)
from tools.errors import RequestError

DEFAULT_TOKENIZER = Path(__file__).resolve().parents[2] / ".cache" / "qwen3-tokenizer"
END_OF_TURN = "<|im_end|>"
TOOL_RESPONSE = "<tool_response>"
HAIKU = ("An old silent pond", "A frog jumps into the pond", "Splash! Silence again")


def scripted_logprob(position: int) -> float:
    """The logprob reported for output position `position`."""
    return -0.1 * (1 + position % 10)


class ScriptedPlayer:
    """The next assistant turn (text) for a context, per environment."""

    def turn(self, context: str) -> str:
        """What to say next given the whole decoded context so far."""
        tools = set(re.findall(r'"name":\s*"([A-Za-z_][A-Za-z0-9_]*)"', _tool_list(context)))
        results = context.split(TOOL_RESPONSE)[1:]
        last = results[-1].split("</tool_response>")[0] if results else ""
        if "calculator" in tools:
            return self._gsm8k(context, len(results), last)
        if "list_suspects" in tools:
            return self._whodunit(results)
        if "submit_haiku" in tools:
            return self._haiku(context, last)
        return "I have nothing to add." + END_OF_TURN

    def _gsm8k(self, context: str, done: int, last: str) -> str:
        if done == 0:
            numbers = re.findall(r"\d+(?:\.\d+)?", _first_user_message(context))[:2] or ["1", "1"]
            return _call("calculator", {"expression": " + ".join(numbers)})
        found = re.findall(r"-?\d+(?:\.\d+)?", last)
        return _call("submit_answer", {"answer": found[0] if found else "0"})

    def _whodunit(self, results: list[str]) -> str:
        order = ("list_suspects", "list_weapons", "list_locations")
        if len(results) < len(order):
            return _call(order[len(results)], {})
        firsts = [_first_item(r) for r in results[: len(order)]]
        who = firsts[0].split(",")[0]
        return _call("submit_answer", {"who": who, "what": firsts[1], "where": firsts[2]})

    def _haiku(self, context: str, last: str) -> str:
        lines = list(HAIKU)
        if "topic" in last.lower():
            words = re.findall(r"[A-Za-z]+", _first_user_message(context).split("about", 1)[-1])
            if words:
                lines[0] = f"An old {words[0].lower()} pond"
        return _call("submit_haiku", {"poem": "\n".join(lines)})


def _tool_list(context: str) -> str:
    """The chat template's tool list (`<tools>` then one JSON schema a line)."""
    m = re.search(r"<tools>\n(.*?)</tools>", context, flags=re.DOTALL)
    return m.group(1) if m else ""


def _first_user_message(context: str) -> str:
    part = context.split("<|im_start|>user", 1)[-1]
    return part.split(END_OF_TURN, 1)[0]


def _first_item(text: str) -> str:
    m = re.search(r"^\s*-\s*(.+?)\s*$", text, flags=re.MULTILINE)
    return m.group(1) if m else "unknown"


def _call(name: str, arguments: dict[str, Any]) -> str:
    body = json.dumps({"name": name, "arguments": arguments})
    return f"<tool_call>\n{body}\n</tool_call>{END_OF_TURN}"


class ScriptedBackend:
    """The player as an engine: the context decoded, the answer tokenized."""

    def __init__(self, tokenizer: Any, model_path: str, delay: float = 0.0) -> None:
        self.tokenizer = tokenizer
        self.model_path = model_path
        self.vocab_size: int | None = len(tokenizer)
        self.delay = delay
        self.player = ScriptedPlayer()
        self.end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)

    def answer(self, req: GenerateRequest) -> Generation:
        """The player's turn for this request, cut at its max_new_tokens."""
        if req.params.custom_params or req.return_routed_experts:
            raise RequestError("the scripted engine has no replay data (top-p, routed experts)")
        context = self.tokenizer.decode(req.input_ids, skip_special_tokens=False)
        ids = list(self.tokenizer.encode(self.player.turn(context), add_special_tokens=False))
        finish = stop_reason(ids[-1] if ids else None)
        if len(ids) > req.params.max_new_tokens:
            ids = ids[: req.params.max_new_tokens]
            finish = length_reason(len(ids))
        text = self.tokenizer.decode(ids, skip_special_tokens=req.params.skip_special_tokens)
        if finish["type"] == "stop" and not req.params.no_stop_trim and ids[-1] == self.end_id:
            text = self.tokenizer.decode(
                ids[:-1], skip_special_tokens=req.params.skip_special_tokens
            )
        return Generation(ids, [scripted_logprob(i) for i in range(len(ids))], finish, text)

    async def generate(self, call: GenerateCall) -> Generation:
        if self.delay > 0 and await call.cancel.wait(self.delay):
            return Generation.aborted("aborted by /abort_request")
        if call.cancel.is_set():
            return Generation([], [], abort_reason("aborted by /abort_request"), "")
        return self.answer(call.request)

    def flush_cache(self) -> None:
        return None


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: load the tokenizer, serve the scripted player."""
    ap = argparse.ArgumentParser(
        prog="python -m tools.engines.scripted",
        description="A scripted engine speaking SGLang's API: plays gsm8k, whodunit and haiku "
        "with fixed tool calls (a smoke test, not a model)",
    )
    ap.add_argument(
        "--tokenizer",
        default=str(DEFAULT_TOKENIZER),
        help="a Qwen3 tokenizer directory (default: .cache/qwen3-tokenizer, from setup.sh --test)",
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=30000)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds each answer takes")
    args = ap.parse_args(argv)
    if args.delay < 0:
        ap.error("--delay must be >= 0")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(
            f"tools.engines.scripted: cannot load the tokenizer {args.tokenizer}: {first} "
            "(bash setup.sh --test fetches the Qwen3 tokenizer into .cache/qwen3-tokenizer)",
            file=sys.stderr,
        )
        return 2
    url = f"http://{args.host}:{args.port}"
    server = EngineServer(
        ScriptedBackend(tokenizer, args.tokenizer, args.delay),
        public_url=url,
    )
    serve(server, args.host, args.port, f"tools.engines.scripted: serving on {url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
