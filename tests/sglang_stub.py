"""A scripted stand-in for an SGLang server: speaks `/generate` on 127.0.0.1, records every request.

The only stand-in the team rules allow is for the GPU inference engine; this is it. It answers
from scripted token ids instead of a model, so bridge tests can pin down exactly what the model
"said" each turn and assert exactly which context the bridge sent back.

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
import asyncio
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
        return {"type": "length", "length": truncated_to}
    if turn.finish_reason == "stop":
        matched = turn.matched if turn.matched is not None else (ids[-1] if ids else None)
        return {"type": "stop", "matched": matched}
    if turn.finish_reason == "length":
        return {"type": "length", "length": len(ids)}
    return {"type": "abort", "message": "scripted abort"}


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class SGLangStub(BackgroundServer):
    """A scripted SGLang `/generate` server on 127.0.0.1; use as a context manager.

    Give exactly one of `script` (list of turns, or routing key -> turns) or `responder`.
    `tokenizer` (object or local path) lets replies carry decoded `text`.
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
        self.instant = instant
        self.weight_version = weight_version
        self.moe_layers, self.moe_topk, self.top_p_kept = moe_layers, moe_topk, top_p_kept
        self.requests: list[StubRequest] = []
        self.errors: list[str] = []
        self.num_served = 0
        self.in_flight = 0
        self._last_ids: dict[str | None, list[int]] = {}
        self._abort: asyncio.Event | None = None
        super().__init__(port)

    # ------------------------------------------------------------------ lifecycle
    name = "sglang-stub"

    def requests_for(self, routing_key: str) -> list[StubRequest]:
        """Recorded requests that carried `routing_key`, in arrival order."""
        return [r for r in list(self.requests) if r.routing_key == routing_key]

    async def _startup(self) -> None:
        self._abort = asyncio.Event()  # bound to the serving loop
        await super()._startup()

    # ------------------------------------------------------------------ HTTP
    def make_app(self) -> web.Application:
        """The aiohttp application (also usable on a caller's own loop)."""
        if self._abort is None:
            self._abort = asyncio.Event()
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/generate", self._handle_generate)
        app.router.add_get("/health", self._handle_health)
        app.router.add_get("/health_generate", self._handle_health)
        app.router.add_post("/abort_request", self._handle_abort)
        app.router.add_get("/v1/loads", self._handle_loads)
        app.router.add_get("/workers", self._handle_workers)
        app.router.add_get("/get_model_info", self._handle_model_info)
        app.router.add_post("/stub_weight_version", self._handle_weight_version)
        return app

    async def _handle_weight_version(self, request: web.Request) -> web.Response:
        """Test control: later replies report this weight version (as after a weight update)."""
        body = orjson.loads(await request.read())
        self.weight_version = str(body["weight_version"])
        return _json({"weight_version": self.weight_version})

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _handle_loads(self, request: web.Request) -> web.Response:
        return _json({"loads": [{"num_running_reqs": self.in_flight, "num_waiting_reqs": 0}]})

    async def _handle_workers(self, request: web.Request) -> web.Response:
        return _json({"workers": [{"url": self.url}]})

    async def _handle_model_info(self, request: web.Request) -> web.Response:
        return _json(
            {
                "model_path": "sglang-stub",
                "tokenizer_path": None,
                "is_generation": True,
                "weight_version": self.weight_version,
            }
        )

    async def _handle_abort(self, request: web.Request) -> web.Response:
        """Abort every in-flight delayed turn (they answer finish_reason abort)."""
        assert self._abort is not None
        self._abort.set()
        self._abort = asyncio.Event()
        return web.Response(text="")

    async def _handle_generate(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            input_ids = body.get("input_ids")
            if not isinstance(input_ids, list) or not all(isinstance(t, int) for t in input_ids):
                raise ValueError("input_ids must be a list of ints (the stub does not take text)")
            params = body.get("sampling_params") or {}
            if not isinstance(params, dict):
                raise ValueError("sampling_params must be an object")
        except (orjson.JSONDecodeError, ValueError) as e:
            msg = f"bad /generate request: {e}"
            self.errors.append(msg)
            return _json({"error": {"message": msg}}, status=400)
        req = StubRequest(
            input_ids=input_ids,
            sampling_params=params,
            headers=dict(request.headers),
            body=body,
            weight_version=self.weight_version,
        )
        if not self.instant:
            self.requests.append(req)
        self.in_flight += 1
        try:
            try:
                turn = self._responder(req)
                if self._async_responder or inspect.isawaitable(turn):
                    turn = await turn  # type: ignore[misc]
            except Exception as e:
                msg = f"stub responder failed: {type(e).__name__}: {e}"
                self.errors.append(msg)
                return _json({"error": {"message": msg}}, status=500)
            if not isinstance(turn, Turn):
                msg = f"stub responder returned {type(turn).__name__}, expected Turn"
                self.errors.append(msg)
                return _json({"error": {"message": msg}}, status=500)
            aborted = False
            if turn.delay > 0 and not self.instant:
                aborted = await self._wait_or_abort(turn.delay)
            return _json(self._reply(req, turn, aborted))
        finally:
            self.in_flight -= 1
            self.num_served += 1

    async def _wait_or_abort(self, delay: float) -> bool:
        assert self._abort is not None
        try:
            await asyncio.wait_for(self._abort.wait(), timeout=delay)
            return True
        except asyncio.TimeoutError:
            return False

    def _reply(self, req: StubRequest, turn: Turn, aborted: bool) -> dict[str, Any]:
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
            finish: dict[str, Any] = {"type": "abort", "message": "aborted by /abort_request"}
        else:
            finish = _finish_reason(turn, ids, truncated_to)
        key = req.routing_key
        cached = 0
        if not self.instant:
            cached = _common_prefix(self._last_ids.get(key, []), req.input_ids)
            self._last_ids[key] = req.input_ids + ids
        meta: dict[str, Any] = {
            "id": f"stub-{self.num_served}",
            "finish_reason": finish,
            "prompt_tokens": len(req.input_ids),
            "completion_tokens": len(ids),
            "cached_tokens": cached,
            "output_token_logprobs": [[lp, t, None] for lp, t in zip(lps, ids, strict=False)],
            "weight_version": self.weight_version,
        }
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
        return {
            "text": self._text(turn, ids, req.sampling_params, truncated_to is not None or aborted),
            "output_ids": ids,
            "meta_info": meta,
        }

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
