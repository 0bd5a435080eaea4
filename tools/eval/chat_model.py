"""The chat model step: an OpenAI-compatible `/v1/chat/completions` endpoint with native tool
calling.

Messages go in and come out; the server renders its own chat template and parses the model's
tool calls into `tool_calls` (vLLM, SGLang's OpenAI server, hosted APIs). The episode loop is the
bridge's own (`bridge.episode.Episode`); this module is only the model's side of it
(`bridge.model_step.ModelStep`): each call's name and arguments are checked exactly like a
`<tool_call>` block (`bridge.toolcalls.check_call`), so malformed arguments, unknown tools and
turns without a tool call count the same way for every kind of model.

Token budgets use the usage the server reports: the context length is the last answer's prompt
plus completion tokens, so the newest tool results are counted one turn late. A server that
reports no usage is limited by max_turns and the per-turn `max_tokens` only.

The client is deliberately explicit: it sends exactly one credential, the value of the
environment variable the user named (`api_key_env=`), and nothing else from the environment.
Answers are bounded in size and read defensively (they may be anything).
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import httpx
import orjson

from bridge.errors import EngineError
from bridge.model_step import ModelTurn
from bridge.tokens import TokenLedger
from bridge.toolcalls import ParsedCall, ParsedTurn, ToolCallError, check_call
from contract.vocab import ToolErrorKind
from tools.errors import EvalError
from tools.eval.spec import ModelSpec

__all__ = ["ChatClient", "ChatModel", "parse_choice"]

MAX_BODY_BYTES = 16 << 20
MAX_CALLS_PER_TURN = 64
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
RETRY_AFTER_MAX_S = 30.0
PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "ping",
        "description": "Answer the ping.",
        "parameters": {"type": "object", "properties": {}},
    },
}


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def _error_text(body: bytes) -> str:
    """The message of an OpenAI-style error body, else the body's start."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _one_line(body[:300].decode("utf-8", "replace"))
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return _one_line(err["message"])
        if isinstance(obj.get("detail"), str):
            return _one_line(obj["detail"])
    return _one_line(repr(obj))


class ChatClient:
    """One OpenAI-compatible endpoint: `GET /models`, `POST /chat/completions`, bounded and
    retried."""

    def __init__(
        self,
        spec: ModelSpec,
        timeout: float = 600.0,
        attempts: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = spec.name
        self.base_url = spec.target
        self.served_model = spec.served_model
        self.listed: list[dict[str, Any]] = []
        """The entries `GET /models` answered (bounded), for the model's identity."""
        headers = {"Content-Type": "application/json"}
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if not key:
                raise EvalError(f"model {spec.name}: api_key_env={spec.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.attempts = attempts
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            transport=transport,
            trust_env=False,  # no proxy or netrc credentials from the environment
            follow_redirects=False,
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        url = self.base_url + path
        content = orjson.dumps(body) if body is not None else None
        for attempt in range(1, self.attempts + 1):
            try:
                async with self._http.stream(method, url, content=content) as resp:
                    data = bytearray()
                    async for chunk in resp.aiter_bytes():
                        data += chunk
                        if len(data) > MAX_BODY_BYTES:
                            raise EngineError(
                                f"{url} answered more than {MAX_BODY_BYTES >> 20} MiB"
                            )
                    status, retry_after = resp.status_code, resp.headers.get("retry-after")
            except httpx.TransportError as e:
                if attempt == self.attempts:
                    raise EngineError(
                        f"{url} unreachable: {_one_line(str(e) or type(e).__name__)}"
                    ) from None
                await asyncio.sleep(random.uniform(0, 0.5 * 2**attempt))
                continue
            if status == 200:
                try:
                    return orjson.loads(bytes(data))
                except orjson.JSONDecodeError:
                    raise EngineError(f"{url} answered invalid JSON") from None
            if status in RETRY_STATUS and attempt < self.attempts:
                await asyncio.sleep(_retry_delay(retry_after, attempt))
                continue
            raise EngineError(f"{url} answered HTTP {status}: {_error_text(bytes(data))}")
        raise AssertionError("unreachable")

    async def models(self) -> list[str]:
        """The ids `GET /models` lists."""
        body = await self._request("GET", "/models", None)
        items = body.get("data") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise EngineError(f"{self.base_url}/models answered no model list")
        self.listed = [m for m in items[:1000] if isinstance(m, dict)]
        return [m["id"] for m in self.listed if isinstance(m.get("id"), str)]

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """One chat completion (the served model is filled in)."""
        out = await self._request("POST", "/chat/completions", {"model": self.served_model, **body})
        if not isinstance(out, dict):
            raise EngineError(f"{self.base_url} answered {type(out).__name__}, expected an object")
        return out

    async def preflight(self) -> None:
        """Check the endpoint answers, pick the served model, and that it accepts tools.

        Raises EvalError with one line: unreachable, no or several models, no tool support.
        """
        where = f"model {self.name} ({self.base_url})"
        try:
            ids = await self.models()
        except EngineError as e:
            if self.served_model is None or "unreachable" in str(e):
                raise EvalError(f"{where}: {e}") from None
            ids = []  # some servers have no /models; the named model is checked by the probe
        if self.served_model is None:
            if len(ids) != 1:
                listed = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
                raise EvalError(
                    f"{where} serves {len(ids)} models ({listed or 'none'}): "
                    "name one with ,model=ID after the URL"
                )
            self.served_model = ids[0]
        elif ids and self.served_model not in ids:
            raise EvalError(f"{where} does not serve {self.served_model!r} (it serves: {ids[:5]})")
        probe = {
            "messages": [{"role": "user", "content": "Reply with OK."}],
            "tools": [PROBE_TOOL],
            "tool_choice": "auto",
            "max_tokens": 1,
        }
        try:
            await self.complete(probe)
        except EngineError as e:
            text = str(e)
            if "HTTP 4" in text and "tool" in text.lower():
                raise EvalError(f"{where} does not accept tool calls: {text}") from None
            raise EvalError(f"{where}: {text}") from None


def _retry_delay(retry_after: str | None, attempt: int) -> float:
    try:
        if retry_after is not None:
            return min(max(float(retry_after), 0.0), RETRY_AFTER_MAX_S)
    except ValueError:
        pass
    return random.uniform(0, 0.5 * 2**attempt)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _wire_call(raw: Any, i: int) -> tuple[dict[str, Any], Any, Any, str]:
    """(the call as sent back in the history, name, arguments, raw text) of one `tool_calls` entry;
    the raw text is what the model wrote as arguments (the whole entry when it has none)."""
    call = raw if isinstance(raw, dict) else {}
    fn_raw = call.get("function")
    fn: dict[str, Any] = fn_raw if isinstance(fn_raw, dict) else {}
    name, args = fn.get("name"), fn.get("arguments")
    cid = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else f"call_{i}"
    args_text = args if isinstance(args, str) else orjson.dumps(args).decode()
    wire = {
        "id": cid,
        "type": "function",
        "function": {"name": name if isinstance(name, str) else "", "arguments": args_text},
    }
    raw_text = args_text if "arguments" in fn else orjson.dumps(raw).decode()
    return wire, name, args, raw_text[:4000]


def parse_choice(
    body: dict[str, Any], known_tools: set[str]
) -> tuple[ModelTurn, dict[str, Any], dict[str, int]]:
    """(the turn, the assistant message for the history, usage) of a chat completion answer."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise EngineError("chat completion answered no choices")
    choice = choices[0]
    msg_raw = choice.get("message")
    msg: dict[str, Any] = msg_raw if isinstance(msg_raw, dict) else {}
    content = _text(msg.get("content"))
    reasoning = msg.get("reasoning_content", msg.get("reasoning"))
    raw_calls = msg.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raw_calls = [raw_calls]
    calls: list[ParsedCall] = []
    wire_calls = []
    for i, raw in enumerate(raw_calls[: MAX_CALLS_PER_TURN + 1]):
        wire, name, args, raw_text = _wire_call(raw, i)
        wire_calls.append(wire)
        if i == MAX_CALLS_PER_TURN:
            calls.append(
                ToolCallError(
                    ToolErrorKind.PARSE_ERROR,
                    f"too many tool calls in one turn ({len(raw_calls)}): only the first "
                    f"{MAX_CALLS_PER_TURN} run",
                    raw_text,
                )
            )
        elif not isinstance(raw, dict) or not isinstance(raw.get("function"), dict):
            calls.append(
                ToolCallError(
                    ToolErrorKind.PARSE_ERROR, "tool call has no 'function' object", raw_text
                )
            )
        else:
            calls.append(check_call(name, args, raw_text, known_tools))
    finish = "length" if choice.get("finish_reason") == "length" else "stop"
    parsed = ParsedTurn(
        reasoning=reasoning if isinstance(reasoning, str) else None,
        content=content.strip(),
        calls=calls,
    )
    history: dict[str, Any] = {"role": "assistant", "content": content}
    if wire_calls:
        history["tool_calls"] = wire_calls
    usage_raw = body.get("usage")
    usage: dict[str, Any] = usage_raw if isinstance(usage_raw, dict) else {}
    counts = {
        k: int(v)
        for k, v in usage.items()
        if k in ("prompt_tokens", "completion_tokens") and isinstance(v, int) and v >= 0
    }
    return ModelTurn(content, finish, parsed), history, counts


class ChatModel:
    """The chat model's side of one episode (a `bridge.model_step.ModelStep`)."""

    ledger: TokenLedger | None = None

    def __init__(
        self,
        client: ChatClient,
        system_prompt: str | None,
        sampling_args: dict[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.system_prompt = system_prompt
        self.sampling_args = dict(sampling_args or {})
        """The model's own `--sampling-args`, sent in every request's body as they are."""
        self.drift: list[dict[str, Any]] = []  # token drift does not exist for messages
        self.history: list[dict[str, Any]] = []
        self.tools: list[dict[str, Any]] = []
        self._prompt_tokens = 0
        self._context_tokens = 0
        self._pending_ids: list[str] = []

    def start(self, prompt_text: str, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.system_prompt:
            self.history.append({"role": "system", "content": self.system_prompt})
        self.history.append({"role": "user", "content": prompt_text})
        self.tools = tools
        return [dict(m) for m in self.history]

    @property
    def prompt_length(self) -> int:
        return self._prompt_tokens

    @property
    def context_length(self) -> int:
        return self._context_tokens

    async def sample(self, params: dict[str, Any], known_tools: set[str]) -> ModelTurn:
        body: dict[str, Any] = {
            **self.sampling_args,
            "messages": self.history,
            "temperature": params.get("temperature", 1.0),
            "top_p": params.get("top_p", 1.0),
            "max_tokens": params["max_new_tokens"],
        }
        if self.tools:
            body["tools"] = self.tools
            body["tool_choice"] = "auto"
        answer = await self.client.complete(body)
        turn, message, usage = parse_choice(answer, known_tools)
        self.history.append(message)
        self._pending_ids = [c["id"] for c in message.get("tool_calls", [])]
        if "prompt_tokens" in usage:
            if not self._prompt_tokens:
                self._prompt_tokens = usage["prompt_tokens"]
            self._context_tokens = usage["prompt_tokens"] + usage.get("completion_tokens", 0)
        return turn

    def append_tool_results(self, contents: list[str], limit: int) -> bool:
        for call_id, text in zip(self._pending_ids, contents, strict=False):
            self.history.append({"role": "tool", "tool_call_id": call_id, "content": text})
        self._pending_ids = []
        return True  # their length is known only from the next answer's usage

    def append_user(self, text: str, limit: int) -> bool:
        self.history.append({"role": "user", "content": text})
        return True
