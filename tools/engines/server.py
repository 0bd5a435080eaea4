"""The HTTP server every engine here runs: SGLang's endpoints (`tools.engines.sglang_api`) around a
backend that only generates.

A backend (`Backend`) turns one validated `/generate` call into a `Generation`; this server does
the rest the way SGLang does for slime's loop: request accounting for `/v1/loads`, aborts (one
`rid`, `abort_all`, a client that hangs up, `/pause_generation` in its default "abort" mode),
holding new requests while paused until `/continue_generation`, `/flush_cache` (refused while
requests run, as SGLang does), the weight version (`/update_weights_*` and
`/update_weight_version` record it; every answer reports it), `/server_info`, `/model_info`,
`/health`, `/health_generate`, and `/workers` for callers that treat one engine as a router.
The CPU engines hold no weights slime could update: an update records the version only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import web

from tools.engines.sglang_api import (
    ROUTING_HEADER,
    GenerateRequest,
    Generation,
    SamplingParams,
    error_body,
    generate_response,
    loads,
    model_info,
    server_args_defaults,
    server_info,
)
from tools.errors import EngineFault, RequestError

log = logging.getLogger(__name__)

MAX_BODY = 256 * 1024 * 1024
PAUSE_MODES = ("abort", "retract", "in_place")


class Cancel:
    """One request's abort flag: read from any thread, awaited on the server's loop."""

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._event = asyncio.Event()

    def set(self) -> None:
        """Abort the request (call on the server's loop)."""
        self._flag.set()
        self._event.set()

    def is_set(self) -> bool:
        return self._flag.is_set()

    async def wait(self, timeout: float | None = None) -> bool:
        """True when aborted within `timeout` seconds (None: wait for the abort)."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


@dataclass
class GenerateCall:
    """One `/generate` call as a backend sees it."""

    request: GenerateRequest
    cancel: Cancel
    body: dict[str, Any]
    headers: Mapping[str, str]
    weight_version: str
    """The engine's weight version when the call arrived."""


class Backend(Protocol):
    """What generates: a model, a script. Everything else is the server's."""

    model_path: str
    tokenizer: Any | None
    """Decodes text for `return_text_in_logprobs` and tokenizes `text` requests, when given."""
    vocab_size: int | None

    async def generate(self, call: GenerateCall) -> Generation:
        """Answer one call; an abort (`call.cancel`) ends it with finish_reason abort. Raises
        RequestError for a request it cannot serve, EngineFault for a deliberate HTTP error."""
        ...

    def flush_cache(self) -> None:
        """Forget cached prefixes (`/flush_cache`)."""
        ...


@dataclass
class EngineState:
    """What the server keeps between calls."""

    weight_version: str
    running: int = 0
    waiting: int = 0
    served: int = 0
    cancels: dict[str, Cancel] = field(default_factory=dict)
    resumed: asyncio.Event | None = None
    """Set unless paused (created on the serving loop)."""


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class EngineServer:
    """SGLang's endpoints around `backend`; `make_app()` gives the aiohttp application."""

    def __init__(
        self,
        backend: Backend,
        *,
        public_url: str = "",
        weight_version: str = "default",
        server_args: Callable[[], dict[str, Any]] = server_args_defaults,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.backend = backend
        self.public_url = public_url
        self.on_refused = on_refused
        """Called with the message of every refused /generate request (the tests record them)."""
        self._server_args = server_args
        """SGLang's ServerArgs defaults, loaded on the first /server_info (importing SGLang takes
        seconds: an engine that is never asked starts without it)."""
        self._server_args_task: asyncio.Future[dict[str, Any]] | None = None
        self.state = EngineState(weight_version)

    @property
    def weight_version(self) -> str:
        return self.state.weight_version

    @weight_version.setter
    def weight_version(self, value: str) -> None:
        self.state.weight_version = value

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        for method, path, handler in self.routes():
            app.router.add_route(method, path, handler)
        app.on_shutdown.append(self._on_shutdown)
        return app

    def routes(self) -> list[tuple[str, str, Handler]]:
        """(method, path, handler) of every endpoint."""
        updates = [
            ("POST", p, self.update_weights)
            for p in (
                "/update_weights_from_tensor",
                "/update_weights_from_distributed",
                "/update_weights_from_disk",
                "/update_weight_version",
            )
        ]
        return [
            ("POST", "/generate", self.generate),
            ("GET", "/health", self.health),
            ("GET", "/health_generate", self.health_generate),
            ("GET", "/server_info", self.server_info),
            ("GET", "/get_server_info", self.server_info),
            ("GET", "/model_info", self.model_info),
            ("GET", "/get_model_info", self.model_info),
            ("GET", "/v1/models", self.models),
            ("GET", "/v1/loads", self.loads),
            ("POST", "/abort_request", self.abort_request),
            ("POST", "/pause_generation", self.pause_generation),
            ("POST", "/continue_generation", self.continue_generation),
            ("GET", "/flush_cache", self.flush_cache),
            ("POST", "/flush_cache", self.flush_cache),
            ("GET", "/get_weight_version", self.get_weight_version),
            ("GET", "/workers", self.workers),
            *updates,
        ]

    # ------------------------------------------------------------------ generation
    def _resumed(self) -> asyncio.Event:
        if self.state.resumed is None:
            self.state.resumed = asyncio.Event()
            self.state.resumed.set()
        return self.state.resumed

    async def run(self, call: GenerateCall, http: web.Request | None = None) -> dict[str, Any]:
        """Wait out a pause, generate, and build SGLang's answer; the call is aborted when the
        client of `http` hangs up."""
        st = self.state
        st.cancels[call.request.rid] = call.cancel
        st.waiting += 1
        watcher = asyncio.create_task(_abort_on_disconnect(http, call.cancel)) if http else None
        started = False
        try:
            if not self._resumed().is_set() and not await _paused_until(
                self._resumed(), call.cancel
            ):
                gen = Generation.aborted("aborted while generation was paused")
            else:
                st.waiting -= 1
                st.running += 1
                started = True
                gen = await self.backend.generate(call)
        finally:
            if started:
                st.running -= 1
            else:
                st.waiting -= 1
            st.served += 1
            st.cancels.pop(call.request.rid, None)
            if watcher is not None:
                watcher.cancel()
        return self.response(call, gen)

    def response(self, call: GenerateCall, gen: Generation) -> dict[str, Any]:
        """SGLang's answer to `call` (the weight version is the engine's when it answers)."""
        tokenizer = self.backend.tokenizer
        decode = (lambda t: str(tokenizer.decode([t]))) if tokenizer is not None else None
        return generate_response(call.request, gen, self.weight_version, decode)

    async def generate(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as e:
            return self._refused(f"request body is not valid JSON: {e}")
        try:
            req = GenerateRequest.from_json(
                body,
                self.backend.tokenizer,
                self.backend.vocab_size,
                routing_key=request.headers.get(ROUTING_HEADER),
            )
            call = GenerateCall(req, Cancel(), body, request.headers, self.weight_version)
            return _json(await self.run(call, request))
        except RequestError as e:
            return self._refused(str(e))
        except EngineFault as e:
            return _error(e.status, str(e))
        except Exception as e:  # a failed generation must not take the server down
            log.exception("generation failed")
            return _error(500, f"generation failed: {type(e).__name__}: {e}")

    def _refused(self, message: str) -> web.Response:
        if self.on_refused is not None:
            self.on_refused(message)
        return _error(400, message)

    async def health_generate(self, request: web.Request) -> web.StreamResponse:
        tok = self.backend.tokenizer
        ids = (tok.encode("ok", add_special_tokens=False) if tok is not None else None) or [0]
        req = GenerateRequest(ids, SamplingParams(temperature=0.0, max_new_tokens=1))
        await self.run(GenerateCall(req, Cancel(), {}, {}, self.weight_version))
        return await self.health(request)

    # ------------------------------------------------------------------ control
    async def health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    async def server_args(self) -> dict[str, Any]:
        """SGLang's ServerArgs defaults, loaded once off the event loop."""
        if self._server_args_task is None:
            self._server_args_task = asyncio.ensure_future(asyncio.to_thread(self._server_args))
        return await asyncio.shield(self._server_args_task)

    async def server_info(self, request: web.Request) -> web.StreamResponse:
        host, _, port = (request.host or "127.0.0.1:0").rpartition(":")
        return _json(
            server_info(
                await self.server_args(),
                self.backend.model_path,
                host or "127.0.0.1",
                int(port) if port.isdigit() else 0,
                self.weight_version,
            )
        )

    async def model_info(self, request: web.Request) -> web.StreamResponse:
        return _json(model_info(self.backend.model_path, self.weight_version))

    async def models(self, request: web.Request) -> web.StreamResponse:
        mp = self.backend.model_path
        entry = {"id": mp, "object": "model", "owned_by": "sglang", "root": mp}
        return _json({"object": "list", "data": [entry]})

    async def loads(self, request: web.Request) -> web.StreamResponse:
        queued = int(getattr(self.backend, "queued", 0))  # inside the backend, not yet started
        return _json(loads(self.state.running - queued, self.state.waiting + queued))

    async def abort_request(self, request: web.Request) -> web.StreamResponse:
        """SGLang's abort: {"rid": ...} or {"abort_all": true}; those requests finish with
        abort."""
        body = await _object_body(request)
        if body is None:
            return _error(400, "request body must be a JSON object")
        if body.get("abort_all"):
            targets = list(self.state.cancels.values())
        else:
            one = self.state.cancels.get(str(body.get("rid")))
            targets = [one] if one is not None else []
        for cancel in targets:
            cancel.set()
        return web.Response(text="")

    async def pause_generation(self, request: web.Request) -> web.StreamResponse:
        """Hold new requests until /continue_generation; mode "abort" (SGLang's default, what
        slime sends) also aborts the requests in flight."""
        body = await _object_body(request)
        if body is None:
            return _error(400, "request body must be a JSON object")
        mode = body.get("mode", "abort")
        if mode not in PAUSE_MODES:
            return _error(400, f"pause mode must be one of {', '.join(PAUSE_MODES)}")
        self._resumed().clear()
        if mode == "abort":
            for cancel in list(self.state.cancels.values()):
                cancel.set()
        return _json({"message": "Generation paused successfully.", "status": "ok"})

    async def continue_generation(self, request: web.Request) -> web.StreamResponse:
        self._resumed().set()
        return _json({"message": "Generation continued successfully.", "status": "ok"})

    async def flush_cache(self, request: web.Request) -> web.StreamResponse:
        if self.state.running:
            return web.Response(status=400, text="Cache not flushed: requests are running")
        self.backend.flush_cache()
        return web.Response(text="Cache flushed.")

    async def update_weights(self, request: web.Request) -> web.StreamResponse:
        """Records the new weight version (the CPU engines hold no weights slime can update)."""
        body = await _object_body(request)
        if body is None:
            return _error(400, "request body must be a JSON object")
        if body.get("weight_version") is not None:
            self.weight_version = str(body["weight_version"])
        return _json(
            {"success": True, "message": f"weight version {self.weight_version}; weights unchanged"}
        )

    async def get_weight_version(self, request: web.Request) -> web.StreamResponse:
        return _json({"weight_version": self.weight_version})

    async def workers(self, request: web.Request) -> web.StreamResponse:
        url = self.public_url or f"{request.scheme}://{request.host}"
        return _json({"workers": [{"url": url}]})

    async def _on_shutdown(self, app: web.Application) -> None:
        for cancel in list(self.state.cancels.values()):
            cancel.set()


async def _paused_until(resumed: asyncio.Event, cancel: Cancel) -> bool:
    """Wait until generation continues (True) or the call is aborted first (False)."""
    go = asyncio.ensure_future(resumed.wait())
    stop = asyncio.ensure_future(cancel.wait())
    done, pending = await asyncio.wait({go, stop}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return go in done and not cancel.is_set()


async def _abort_on_disconnect(request: web.Request, cancel: Cancel, every: float = 0.2) -> None:
    while not cancel.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            log.info("client went away: aborting request")
            cancel.set()
            return
        await asyncio.sleep(every)


async def _object_body(request: web.Request) -> dict[str, Any] | None:
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json(error_body(message), status=status)


def serve(server: EngineServer, host: str, port: int, banner: str) -> None:
    """Serve until interrupted."""
    print(banner, flush=True)
    web.run_app(server.make_app(), host=host, port=port, access_log=None, print=None)
