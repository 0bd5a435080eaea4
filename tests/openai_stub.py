"""A scripted stand-in for an OpenAI-compatible chat server: `/v1/chat/completions` with native tool
calls, on 127.0.0.1, recording every request. The counterpart of `sglang_stub.py` for the eval's
chat models (vLLM, SGLang's OpenAI server, hosted APIs); like it, it replaces only the inference
engine.

    with OpenAIStub(responder) as stub:          # responder(request) -> Reply (sync or async)
        ... stub.url ...                         # http://127.0.0.1:PORT/v1
        stub.requests[0].messages

Replies: `Reply.call("submit_answer", answer="18")` (a tool call in the OpenAI format, the
arguments a JSON string as servers send them), `Reply.raw_call(name, '{"answer": 1')` (malformed
arguments, passed through as the server got them from the model), `Reply.text("...")` (no tool
call), or any Reply(...) with several calls, reasoning, a finish reason, a delay or an HTTP error.
`tools_supported=False` answers a request carrying `tools` as vLLM does without
--enable-auto-tool-choice (HTTP 400). Usage is reported as roughly a token per four characters.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from stub_server import BackgroundServer

NO_TOOLS_MESSAGE = (
    '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
)


@dataclass
class Reply:
    """One scripted assistant answer (or an HTTP error when `status` is not 200)."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """Each {"name": str, "arguments": str} (the arguments text as the server sends it)."""
    reasoning: str | None = None
    finish_reason: str | None = None
    """Default: "tool_calls" when there are calls, else "stop"."""
    delay: float = 0.0
    status: int = 200
    error: str = ""

    @classmethod
    def call(cls, name: str, content: str | None = None, **arguments: Any) -> Reply:
        return cls(content, [{"name": name, "arguments": orjson.dumps(arguments).decode()}])

    @classmethod
    def raw_call(cls, name: str, arguments: str, content: str | None = None) -> Reply:
        return cls(content, [{"name": name, "arguments": arguments}])

    @classmethod
    def text(cls, content: str) -> Reply:
        return cls(content)

    @classmethod
    def http_error(cls, status: int, message: str) -> Reply:
        return cls(status=status, error=message)


@dataclass
class ChatRequest:
    """One `/v1/chat/completions` call as the stub received it."""

    body: dict[str, Any]
    headers: dict[str, str]
    received_at: float = field(default_factory=time.monotonic)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages") or []

    @property
    def tools(self) -> list[dict[str, Any]] | None:
        return self.body.get("tools")

    @property
    def first_user(self) -> str:
        """The first user message: which task (conversation) this request belongs to."""
        return next((m.get("content") or "" for m in self.messages if m.get("role") == "user"), "")

    @property
    def turn(self) -> int:
        """0 for the first model turn of a conversation, 1 for the second, ..."""
        return sum(1 for m in self.messages if m.get("role") == "assistant")

    def header(self, name: str) -> str | None:
        low = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == low), None)


Responder = Callable[[ChatRequest], Reply | Awaitable[Reply]]


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class OpenAIStub(BackgroundServer):
    """A scripted OpenAI-compatible server on 127.0.0.1 (a background thread); a context manager."""

    def __init__(
        self,
        responder: Responder,
        *,
        models: tuple[str, ...] = ("stub-model",),
        tools_supported: bool = True,
        instant: bool = False,
        port: int | None = None,
    ) -> None:
        self.responder = responder
        self.models = models
        self.tools_supported = tools_supported
        self.instant = instant
        self.requests: list[ChatRequest] = []
        self.errors: list[str] = []
        self._ids = itertools.count()
        super().__init__(port)

    name = "openai-stub"

    @property
    def url(self) -> str:
        """The base URL a client is given (ends in /v1)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._handle_chat)
        app.router.add_get("/v1/models", self._handle_models)
        app.router.add_get("/health", self._handle_health)
        return app

    # ------------------------------------------------------------------ HTTP
    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _handle_models(self, request: web.Request) -> web.Response:
        return _json(
            {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]}
        )

    async def _handle_chat(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                raise ValueError("body must be an object with a messages list")
        except (orjson.JSONDecodeError, ValueError) as e:
            return _error(400, f"bad request: {e}")
        if body.get("model") not in self.models:
            return _error(404, f"The model `{body.get('model')}` does not exist.")
        if body.get("tools") and not self.tools_supported:
            return _error(400, NO_TOOLS_MESSAGE)
        req = ChatRequest(body, dict(request.headers))
        if not self.instant:
            self.requests.append(req)
        try:
            reply = self.responder(req)
            if inspect.isawaitable(reply):
                reply = await reply
        except Exception as e:
            msg = f"stub responder failed: {type(e).__name__}: {e}"
            self.errors.append(msg)
            return _error(500, msg)
        if reply.delay and not self.instant:
            await asyncio.sleep(reply.delay)
        if reply.status != 200:
            return _error(reply.status, reply.error)
        return _json(self._completion(req, reply))

    def _completion(self, req: ChatRequest, reply: Reply) -> dict[str, Any]:
        n = next(self._ids)
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.reasoning is not None:
            message["reasoning_content"] = reply.reasoning
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": f"chatcmpl-tool-{n}-{i}", "type": "function", "function": dict(c)}
                for i, c in enumerate(reply.tool_calls)
            ]
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        prompt = sum(_tokens(str(m.get("content") or "")) + 4 for m in req.messages)
        completion = _tokens((reply.content or "") + str(reply.tool_calls))
        return {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json(
        {"object": "error", "message": message, "type": "BadRequestError", "code": status}
        if status == 400
        else {"error": {"message": message, "type": "error", "code": status}},
        status=status,
    )
