"""A scripted stand-in for an SGLang server: SGLang's API on 127.0.0.1, recording every request.

The only stand-in the team rules allow is for the GPU inference engine; this is it. It answers
from scripted token ids instead of a model, so bridge tests can pin down exactly what the model
"said" each turn and assert exactly which context the bridge sent back. It is the project's
engine server (`tools.engines.server`: one request/response schema, `tools.engines.sglang_api`,
for every engine) with a scripted backend: requests are validated, aborted, paused and answered
exactly as the CPU engines do.

In-process (background thread with its own event loop):

    with SGLangStub(script=[Turn([1, 2, 3]), Turn.of_text(tok, "done<|im_end|>")]) as stub:
        ...  # point the bridge at stub.url
        stub.requests[0].input_ids

Scripts can be one list of turns served in order, a dict of lists keyed by the
`X-SMG-Routing-Key` header (one script per session), or a `responder(request) -> Turn`
callable (sync or async) for anything else, e.g. 256 concurrent benchmark episodes.
`instant=True` skips recording and delays for benchmarks.

Replay data as SGLang returns it when asked: top-p replay arrays (`top_p_token_ids` /
`top_p_token_offsets`, base64 int32, `top_p_kept` ids per token) when the sampling params carry
`custom_params.return_top_p_token_ids` (slime's `--rollout-top-p` < 1), and `routed_experts`
(base64 int32, (prompt + output - 1) x `moe_layers` x `moe_topk`) when the request has
`return_routed_experts`. `weight_version` may be changed between requests (a weight update).

As a subprocess:

    python tests/sglang_stub.py --port 30000 --script turns.json [--tokenizer DIR]
    python tests/sglang_stub.py --port 30000 --responder bench/my_responder.py:respond --instant

where turns.json is a list of turns or {"routing key": [turns...]}, a turn being
{"output_ids": [...], "logprobs": [...], "finish_reason": "stop", "delay": 0.0}
or {"text": "...<|im_end|>"} when --tokenizer is given.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from stub_server import BackgroundServer

from tools.engines.server import EngineFault, EngineServer, GenerateCall
from tools.engines.sglang_api import (
    Generation,
    abort_reason,
    length_reason,
    server_args_defaults,
    stop_reason,
)

ROUTING_HEADER = "X-SMG-Routing-Key"
FINISH_TYPES = ("stop", "length", "abort")


class ScriptExhausted(RuntimeError):
    """A request arrived after its script ran out of turns."""


@dataclass
class Turn:
    """One scripted model reply.

    `logprobs` defaults to `default_logprob(i)` per position. `finish_reason` is what the
    stub reports when `max_new_tokens` does not cut the turn short; `matched` defaults to
    the last output id for "stop". `delay` (seconds) is waited before answering and is cut
    short by `/abort_request` (then the reply is an abort with no tokens).
    """

    output_ids: list[int]
    logprobs: list[float] | None = None
    finish_reason: str = "stop"
    matched: int | str | None = None
    delay: float = 0.0
    text: str | None = None

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_TYPES:
            raise ValueError(
                f"finish_reason must be one of {FINISH_TYPES}, got {self.finish_reason!r}"
            )
        if self.logprobs is not None and len(self.logprobs) != len(self.output_ids):
            raise ValueError(
                f"Turn has {len(self.output_ids)} output ids but {len(self.logprobs)} logprobs"
            )

    @classmethod
    def of_text(cls, tokenizer: Any, text: str, **kwargs: Any) -> Turn:
        """A turn whose output ids are `text` tokenized without special-token additions."""
        ids = tokenizer.encode(text, add_special_tokens=False)
        return cls(list(ids), **kwargs)

    @classmethod
    def from_json(cls, obj: dict[str, Any], tokenizer: Any = None) -> Turn:
        """Build a turn from the JSON form used by `--script` files."""
        obj = dict(obj)
        if "output_ids" not in obj:
            if "text" not in obj or tokenizer is None:
                raise ValueError("a scripted turn needs output_ids, or text plus --tokenizer")
            obj["output_ids"] = tokenizer.encode(obj.pop("text"), add_special_tokens=False)
        unknown = set(obj) - {"output_ids", "logprobs", "finish_reason", "matched", "delay", "text"}
        if unknown:
            raise ValueError(f"unknown keys in scripted turn: {sorted(unknown)}")
        return cls(**obj)


def default_logprob(position: int) -> float:
    """Logprob the stub reports for output position `position` when a turn gives none."""
    return -0.1 * (1 + position % 10)


@dataclass
class StubRequest:
    """One `/generate` call as the stub received it."""

    input_ids: list[int]
    sampling_params: dict[str, Any]
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float = field(default_factory=time.monotonic)
    weight_version: str = ""
    """The stub's weight version when the request arrived."""
    reply: dict[str, Any] | None = None
    """What the stub answered: output_ids, logprobs, finish_reason, weight_version."""

    def exchange(self) -> dict[str, Any]:
        """The request and its reply as JSON (`GET /stub/exchanges`)."""
        return {
            "input_ids": self.input_ids,
            "routing_key": self.routing_key,
            "received_at": self.received_at,
            **(self.reply or {}),
        }

    def header(self, name: str) -> str | None:
        """A request header by case-insensitive name."""
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)

    @property
    def routing_key(self) -> str | None:
        return self.header(ROUTING_HEADER)

    @property
    def max_new_tokens(self) -> int | None:
        v = self.sampling_params.get("max_new_tokens")
        return None if v is None else int(v)


Responder = Callable[[StubRequest], Turn | Awaitable[Turn]]
Script = list[Turn] | dict[str, list[Turn]]


class _ScriptResponder:
    """Serves turns in order: one queue, or one queue per routing key."""

    def __init__(self, script: Script) -> None:
        self._shared: deque[Turn] | None = None
        self._keyed: dict[str, deque[Turn]] = {}
        if isinstance(script, dict):
            self._keyed = {k: deque(v) for k, v in script.items()}
        else:
            self._shared = deque(script)

    def __call__(self, request: StubRequest) -> Turn:
        if self._shared is not None:
            queue, name = self._shared, "the script"
        else:
            key = request.routing_key
            if key not in self._keyed:
                raise ScriptExhausted(f"no script for routing key {key!r}")
            queue, name = self._keyed[key], f"the script for routing key {key!r}"
        if not queue:
            raise ScriptExhausted(f"{name} has no turns left")
        return queue.popleft()


def _finish_reason(turn: Turn, ids: list[int], truncated_to: int | None) -> dict[str, Any]:
    if truncated_to is not None:
        return length_reason(truncated_to)
    if turn.finish_reason == "stop":
        return stop_reason(turn.matched if turn.matched is not None else (ids[-1] if ids else None))
    if turn.finish_reason == "length":
        return length_reason(len(ids))
    return abort_reason("scripted abort")


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class _StubServer(EngineServer):
    """The engine server, with the stub's last word on each reply (`SGLangStub.edit_reply`)."""

    def __init__(self, stub: SGLangStub, **kwargs: Any) -> None:
        super().__init__(stub, **kwargs)
        self.stub = stub

    def response(self, call: GenerateCall, gen: Generation) -> dict[str, Any]:
        return self.stub.edit_reply(call, super().response(call, gen))


class SGLangStub(BackgroundServer):
    """A scripted SGLang server on 127.0.0.1; use as a context manager.

    Give exactly one of `script` (list of turns, or routing key -> turns) or `responder`.
    `tokenizer` (object or local path) lets replies carry decoded `text`. A responder may raise
    `EngineFault(status, message)` to answer an HTTP error on purpose (not recorded in `errors`);
    an object responder with a `control(body) -> dict` method is driven by `POST /stub/control`,
    and one with a `bind(stub)` method gets the stub. `server_args` gives `/server_info` its
    SGLang defaults (by default read from SGLang, which imports it: pass `dict` to skip).
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        script: Script | None = None,
        tokenizer: Any = None,
        instant: bool = False,
        port: int | None = None,
        weight_version: str = "default",
        moe_layers: int = 2,
        moe_topk: int = 2,
        top_p_kept: int = 3,
        server_args: Callable[[], dict[str, Any]] = server_args_defaults,
    ) -> None:
        if (responder is None) == (script is None):
            raise ValueError("give exactly one of responder or script")
        self._responder: Responder = (
            responder if responder is not None else _ScriptResponder(script)
        )
        self._async_responder = inspect.iscoroutinefunction(
            self._responder
        ) or inspect.iscoroutinefunction(getattr(self._responder, "__call__", None))  # noqa: B004
        if isinstance(tokenizer, (str, Path)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        self.tokenizer = tokenizer
        self.model_path = "sglang-stub"
        self.vocab_size: int | None = None
        self.instant = instant
        self.moe_layers, self.moe_topk, self.top_p_kept = moe_layers, moe_topk, top_p_kept
        self.requests: list[StubRequest] = []
        self.errors: list[str] = []
        self.num_served = 0
        self.in_flight = 0
        self._last_ids: dict[str | None, list[int]] = {}
        self.server = _StubServer(
            self,
            weight_version=weight_version,
            server_args=server_args,
            on_refused=lambda m: self.errors.append(f"bad /generate request: {m}"),
        )
        bind = getattr(self._responder, "bind", None)
        if callable(bind):  # a responder object that needs the stub (weight version, tokenizer)
            bind(self)
        super().__init__(port)

    name = "sglang-stub"

    @property
    def weight_version(self) -> str:
        """The version replies report; set it between requests to play a weight update."""
        return self.server.weight_version

    @weight_version.setter
    def weight_version(self, value: str) -> None:
        self.server.weight_version = value

    def requests_for(self, routing_key: str) -> list[StubRequest]:
        """Recorded requests that carried `routing_key`, in arrival order."""
        return [r for r in list(self.requests) if r.routing_key == routing_key]

    # ------------------------------------------------------------------ HTTP
    def make_app(self) -> web.Application:
        """The engine server's application, plus the stub's test controls."""
        self.server.public_url = self.url if self._port is not None else ""
        app = self.server.make_app()
        app.router.add_post("/stub_weight_version", self._handle_weight_version)
        app.router.add_post("/stub/control", self._handle_control)
        app.router.add_get("/stub/exchanges", self._handle_exchanges)
        return app

    async def _handle_weight_version(self, request: web.Request) -> web.Response:
        """Test control: later replies report this weight version (as after a weight update)."""
        body = orjson.loads(await request.read())
        self.weight_version = str(body["weight_version"])
        return _json({"weight_version": self.weight_version})

    async def _handle_control(self, request: web.Request) -> web.Response:
        control = getattr(self._responder, "control", None)
        if control is None:
            return _json({"error": {"message": "this responder takes no control"}}, status=404)
        return _json(control(orjson.loads(await request.read() or b"{}")))

    async def _handle_exchanges(self, request: web.Request) -> web.Response:
        """Every recorded request with the reply it got (what the engine sent)."""
        return _json([r.exchange() for r in list(self.requests)])

    # ------------------------------------------------------------------ the backend
    async def generate(self, call: GenerateCall) -> Generation:
        """Answer one call from the script (tools.engines.server.Backend)."""
        req = StubRequest(
            input_ids=call.request.input_ids,
            sampling_params=call.body.get("sampling_params") or {},
            headers=dict(call.headers),
            body=call.body,
            weight_version=call.weight_version,
        )
        if not self.instant:
            self.requests.append(req)
        self.in_flight += 1
        try:
            turn = await self._turn(req)
            aborted = call.cancel.is_set()
            if turn.delay > 0 and not self.instant and not aborted:
                aborted = await call.cancel.wait(turn.delay)
            gen = self._generation(req, turn, aborted)
            req.reply = {
                "output_ids": gen.output_ids,
                "logprobs": gen.logprobs,
                "finish_reason": gen.finish_reason,
                "weight_version": self.weight_version,
            }
            return gen
        finally:
            self.in_flight -= 1
            self.num_served += 1

    def flush_cache(self) -> None:
        self._last_ids.clear()

    def edit_reply(self, call: GenerateCall, reply: dict[str, Any]) -> dict[str, Any]:
        """The reply as sent; a subclass may break it on purpose (a drifting engine)."""
        return reply

    async def _turn(self, req: StubRequest) -> Turn:
        try:
            turn = self._responder(req)
            if self._async_responder or inspect.isawaitable(turn):
                turn = await turn  # type: ignore[misc]
        except EngineFault:
            raise
        except Exception as e:
            msg = f"stub responder failed: {type(e).__name__}: {e}"
            self.errors.append(msg)
            raise EngineFault(500, msg) from None
        if not isinstance(turn, Turn):
            msg = f"stub responder returned {type(turn).__name__}, expected Turn"
            self.errors.append(msg)
            raise EngineFault(500, msg)
        return turn

    def _generation(self, req: StubRequest, turn: Turn, aborted: bool) -> Generation:
        ids = [] if aborted else list(turn.output_ids)
        lps = (
            []
            if aborted
            else (
                list(turn.logprobs)
                if turn.logprobs is not None
                else [default_logprob(i) for i in range(len(ids))]
            )
        )
        truncated_to: int | None = None
        budget = req.max_new_tokens
        if budget is not None and len(ids) > budget:
            ids, lps, truncated_to = ids[:budget], lps[:budget], budget
        if aborted:
            finish = abort_reason("aborted by /abort_request")
        else:
            finish = _finish_reason(turn, ids, truncated_to)
        key = req.routing_key
        cached = 0
        if not self.instant:
            cached = _common_prefix(self._last_ids.get(key, []), req.input_ids)
            self._last_ids[key] = req.input_ids + ids
        text = self._text(turn, ids, req.sampling_params, truncated_to is not None or aborted)
        return Generation(
            ids, lps, finish, text, cached_tokens=cached, extra_meta=self._replay(req, ids)
        )

    def _replay(self, req: StubRequest, ids: list[int]) -> dict[str, Any]:
        """Top-p replay arrays and routed experts, when the request asks for them."""
        meta: dict[str, Any] = {}
        custom = req.sampling_params.get("custom_params")
        if isinstance(custom, dict) and custom.get("return_top_p_token_ids"):
            kept = [[t, *range(1, self.top_p_kept)] for t in ids]
            meta["top_p_token_ids"] = _b64_int32([k for row in kept for k in row])
            meta["top_p_token_offsets"] = _b64_int32(
                [i * self.top_p_kept for i in range(len(ids) + 1)]
            )
        if req.body.get("return_routed_experts"):
            rows = len(req.input_ids) + len(ids) - 1
            per_row = [(j % 7) + 1 for j in range(self.moe_layers * self.moe_topk)]
            meta["routed_experts"] = _b64_int32(per_row * rows)
        return meta

    def _text(self, turn: Turn, ids: list[int], params: dict[str, Any], cut: bool) -> str:
        if turn.text is not None and not cut:
            return turn.text
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(
            ids, skip_special_tokens=bool(params.get("skip_special_tokens", True))
        )


def _b64_int32(values: list[int]) -> str:
    """An int32 array as SGLang puts it into meta_info (base64 of the raw little-endian bytes)."""
    import base64
    import struct

    return base64.b64encode(struct.pack(f"<{len(values)}i", *values)).decode("ascii")


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def load_script(path: str | Path, tokenizer: Any = None) -> Script:
    """Read a `--script` JSON file: a list of turns or {routing key: [turns]}."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, list):
        return [Turn.from_json(t, tokenizer) for t in data]
    if isinstance(data, dict):
        return {str(k): [Turn.from_json(t, tokenizer) for t in v] for k, v in data.items()}
    raise ValueError(f"{path}: a script is a list of turns or an object of routing key -> turns")


def load_responder(spec: str) -> Responder:
    """Import `module:function` (the module may be a file path ending in .py)."""
    import importlib
    import importlib.util

    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--responder wants MODULE:FUNCTION, got {spec!r}")
    if module_name.endswith(".py"):
        loaded = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
        if loaded is None or loaded.loader is None:
            raise ImportError(f"cannot import {module_name}")
        module = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    return getattr(module, attr)


def _load_tokenizer(path: str | None) -> Any:
    if path is None:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def main(argv: Iterable[str] | None = None) -> int:
    """Run the stub as a process until interrupted."""
    ap = argparse.ArgumentParser(description="Scripted SGLang /generate stand-in (tests only)")
    ap.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1"])
    ap.add_argument("--port", type=int, required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--script", help="JSON file: list of turns or {routing key: [turns]}")
    src.add_argument(
        "--responder",
        metavar="MODULE:FUNCTION",
        help="a responder(request) -> Turn callable to import (e.g. for benchmarks)",
    )
    ap.add_argument(
        "--instant", action="store_true", help="do not record requests or honour delays"
    )
    ap.add_argument("--tokenizer", help="local tokenizer dir, to decode text and accept text turns")
    args = ap.parse_args(list(argv) if argv is not None else None)
    tok = _load_tokenizer(args.tokenizer)
    try:
        if args.script:
            stub = SGLangStub(
                script=load_script(args.script, tok),
                tokenizer=tok,
                port=args.port,
                instant=args.instant,
            )
        else:
            stub = SGLangStub(
                load_responder(args.responder), tokenizer=tok, port=args.port, instant=args.instant
            )
    except (OSError, ValueError, ImportError, AttributeError) as e:
        print(f"sglang_stub: {e}", file=sys.stderr)
        return 2
    stub.start()
    print(f"sglang_stub serving {stub.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stub.stop()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    import signal

    # Responder modules that `import sglang_stub` must get these same Turn/StubRequest classes.
    sys.modules.setdefault("sglang_stub", sys.modules["__main__"])
    signal.signal(signal.SIGTERM, _interrupt)
    raise SystemExit(main())
