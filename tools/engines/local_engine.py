"""A CPU debugging engine that speaks SGLang's `/generate` wire format.

    python -m tools.engines.local_engine --model PATH_OR_HUB_NAME [--host 127.0.0.1] [--port 30000]
        [--device cpu] [--dtype float32] [--threads N] [--weight-version default]

Loads a Hugging Face causal LM and its tokenizer and answers token-in/token-out
`POST /generate` requests with real sampling (temperature, top_p, top_k, min_p; greedy at
temperature 0), `max_new_tokens`, stop token ids (plus the tokenizer's end tokens), stop
strings, and the per-token logprob of every sampled token. One request runs at a time on a
worker thread (others queue) so the HTTP loop never blocks. The KV caches of the last few
requests are kept, so a multi-turn episode that resends its context only runs the new tokens
(reported as `cached_tokens`). It exists for rollout-only runs
and debugging without a GPU; it is not for training throughput.

Logprobs follow SGLang's default: log-softmax of the logits divided by the temperature,
before top-k/top-p/min-p filtering; at temperature 0 (greedy) the logits are not scaled.

torch is an optional dependency (`pip install 'slime-envs[local]'`); this module imports
without it and only fails when an engine is actually started.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools.errors import RequestError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from aiohttp import web

log = logging.getLogger(__name__)

GREEDY_EPS = 1e-5
BANNER = (
    "tools.engines.local_engine: DEBUGGING ENGINE - one request at a time on {device}; "
    "not for training throughput"
)
# Tokens that end a chat turn for common chat templates, added to the model's own EOS ids.
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>")


# --------------------------------------------------------------------------- requests

# Sampling keys SGLang accepts that this engine does not implement: allowed only at the
# neutral value, so a request that depends on them fails loudly instead of being ignored.
_NEUTRAL_PARAMS: dict[str, Any] = {
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "repetition_penalty": 1.0,
    "n": 1,
    "json_schema": None,
    "regex": None,
    "ebnf": None,
    "structural_tag": None,
    "logit_bias": None,
    "custom_params": None,
    "stop_regex": None,
}
# Accepted and irrelevant to a one-shot, non-streaming CPU engine.
_IGNORED_PARAMS = {"stream_interval"}


@dataclass(frozen=True)
class SamplingParams:
    """The SGLang sampling parameters this engine implements."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    # Accepted for wire compatibility; fast tokenizers never insert such spaces.
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    sampling_seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPS

    @classmethod
    def from_json(cls, obj: Any) -> SamplingParams:
        """Validate a request's `sampling_params` object; raises RequestError."""
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise RequestError("sampling_params must be an object")
        values: dict[str, Any] = {}
        fields = cls.__dataclass_fields__
        for key, value in obj.items():
            if key in _IGNORED_PARAMS:
                continue
            if key in _NEUTRAL_PARAMS:
                if value is not None and value != _NEUTRAL_PARAMS[key]:
                    raise RequestError(
                        f"sampling param {key}={value!r} is not supported by the local engine"
                    )
                continue
            if key not in fields:
                raise RequestError(f"unknown sampling param {key!r}")
            if value is None:
                continue
            values[key] = value
        try:
            return cls._checked(values)
        except (TypeError, ValueError) as e:
            raise RequestError(f"bad sampling_params: {e}") from None

    @classmethod
    def _checked(cls, v: dict[str, Any]) -> SamplingParams:
        def num(name: str, lo: float, hi: float = float("inf")) -> None:
            if name in v:
                if isinstance(v[name], bool) or not isinstance(v[name], (int, float)):
                    raise ValueError(f"{name} must be a number")
                if not lo <= v[name] <= hi:
                    raise ValueError(f"{name}={v[name]} is out of range [{lo}, {hi}]")

        def integer(name: str) -> None:
            if name in v and (isinstance(v[name], bool) or not isinstance(v[name], int)):
                raise ValueError(f"{name} must be an integer")

        num("temperature", 0.0)
        num("top_p", 0.0, 1.0)
        num("min_p", 0.0, 1.0)
        if "top_p" in v and v["top_p"] <= 0:
            raise ValueError("top_p must be > 0")
        for name in ("top_k", "max_new_tokens", "min_new_tokens", "sampling_seed"):
            integer(name)
        if v.get("top_k", -1) == 0 or v.get("top_k", -1) < -1:
            raise ValueError("top_k must be -1 (off) or >= 1")
        if v.get("max_new_tokens", 0) < 0 or v.get("min_new_tokens", 0) < 0:
            raise ValueError("max_new_tokens and min_new_tokens must be >= 0")
        if "stop" in v:
            stop = v["stop"]
            stop = [stop] if isinstance(stop, str) else stop
            if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
                raise ValueError("stop must be a non-empty string or a list of them")
            v["stop"] = tuple(stop)
        if "stop_token_ids" in v:
            ids = v["stop_token_ids"]
            if not isinstance(ids, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in ids
            ):
                raise ValueError("stop_token_ids must be a list of integers")
            v["stop_token_ids"] = tuple(ids)
        for name in (
            "ignore_eos",
            "skip_special_tokens",
            "spaces_between_special_tokens",
            "no_stop_trim",
        ):
            if name in v and not isinstance(v[name], bool):
                raise ValueError(f"{name} must be true or false")
        return cls(**v)


_TOP_LEVEL_KEYS = {
    "input_ids",
    "text",
    "sampling_params",
    "return_logprob",
    "rid",
    "stream",
    "logprob_start_len",
    "top_logprobs_num",
    "return_text_in_logprobs",
}


@dataclass
class GenerateRequest:
    """One validated `/generate` call."""

    input_ids: list[int]
    params: SamplingParams
    return_logprob: bool = False
    return_text_in_logprobs: bool = False
    rid: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def from_json(cls, body: Any, tokenizer: Any, vocab_size: int) -> GenerateRequest:
        """Validate a request body; `text` is tokenized when `input_ids` is absent."""
        if not isinstance(body, dict):
            raise RequestError("request body must be a JSON object")
        unknown = sorted(set(body) - _TOP_LEVEL_KEYS)
        if unknown:
            raise RequestError(f"unsupported /generate field(s): {', '.join(unknown)}")
        if body.get("stream"):
            raise RequestError("streaming is not supported by the local engine")
        if body.get("top_logprobs_num"):
            raise RequestError("top_logprobs_num is not supported by the local engine")
        if body.get("logprob_start_len") not in (None, -1):
            raise RequestError(
                "logprob_start_len (prompt logprobs) is not supported by the local engine"
            )
        ids = body.get("input_ids")
        if ids is None:
            text = body.get("text")
            if not isinstance(text, str):
                raise RequestError("give input_ids (a list of token ids) or text (a string)")
            ids = tokenizer.encode(text, add_special_tokens=False)
        if not isinstance(ids, list) or not ids:
            raise RequestError(
                "input_ids must be a non-empty list of token ids (batches are not supported)"
            )
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size:
                raise RequestError(f"input_ids holds {t!r}, not a token id in [0, {vocab_size})")
        rid = body.get("rid")
        if rid is not None and not isinstance(rid, str):
            raise RequestError("rid must be a string")
        return cls(
            input_ids=list(ids),
            params=SamplingParams.from_json(body.get("sampling_params")),
            return_logprob=bool(body.get("return_logprob", False)),
            return_text_in_logprobs=bool(body.get("return_text_in_logprobs", False)),
            **({"rid": rid} if rid else {}),
        )


# --------------------------------------------------------------------------- sampling


def _head_mask(probs: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask of the tokens top-k and top-p keep (both measured on the unfiltered distribution).

    Looks at a sorted head of the vocabulary and widens it only until it holds `top_p` of the
    mass, instead of sorting the whole vocabulary every step.
    """
    import torch

    n = probs.numel()
    limit = top_k if top_k > 0 else n
    k = min(n, limit, 1024)
    while True:
        head, order = torch.topk(probs, k)
        mass_before = torch.cumsum(head, dim=-1) - head
        if k >= limit or float(mass_before[-1] + head[-1]) >= top_p:
            break
        k = min(n, limit, k * 8)
    keep_sorted = mass_before < top_p
    keep_sorted[0] = True
    keep = torch.zeros_like(probs, dtype=torch.bool)
    keep[order[keep_sorted]] = True
    return keep


def sample_next_token(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[int, float]:
    """Pick the next token from 1-D float `logits`; returns (token id, its logprob)."""
    import torch

    if params.greedy:
        logprobs = torch.log_softmax(logits, dim=-1)
        token = int(torch.argmax(logits))
        return token, float(logprobs[token])
    logprobs = torch.log_softmax(logits / params.temperature, dim=-1)
    probs = logprobs.exp()
    if params.top_k > 0 or params.top_p < 1.0:
        keep = _head_mask(probs, params.top_k, params.top_p)
    else:
        keep = torch.ones_like(probs, dtype=torch.bool)
    if params.min_p > 0.0:
        keep &= probs >= params.min_p * probs.max()
    filtered = torch.where(keep, probs, torch.zeros_like(probs))
    # Inverse-CDF draw: one uniform number, far cheaper than multinomial over a large vocab.
    cdf = torch.cumsum(filtered, dim=-1)
    u = torch.rand((), generator=generator, dtype=cdf.dtype) * cdf[-1]
    token = int(torch.searchsorted(cdf, u, right=True))
    if token >= cdf.numel() or not keep[token]:  # u rounded onto the very top of the CDF
        token = int(torch.nonzero(keep).max())
    return token, float(logprobs[token])


# --------------------------------------------------------------------------- engine


@dataclass
class Generation:
    """What one request produced."""

    output_ids: list[int]
    logprobs: list[float]
    finish_reason: dict[str, Any]
    text: str
    seconds: float
    cached_tokens: int = 0


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    """The KV caches of the last few requests, keyed by the token ids they hold.

    A multi-turn episode resends its whole context each turn; reusing the longest cached
    prefix means only the new tokens are run. Entries are used by one worker thread only.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: list[tuple[list[int], Any]] = []  # least recently used first

    def take(self, input_ids: list[int]) -> tuple[int, Any]:
        """Remove and return (reused length, cache) for the best entry, or (0, None).

        At least the last input token is always left to run, to get the next-token logits.
        """
        best, best_len = -1, 0
        for i, (ids, _) in enumerate(self._entries):
            n = _common_prefix_len(ids, input_ids)
            if n > best_len:
                best, best_len = i, n
        if best < 0:
            return 0, None
        ids, cache = self._entries.pop(best)
        keep = min(best_len, len(input_ids) - 1)
        if keep <= 0 or not _crop(cache, len(ids), keep):
            return 0, None
        return keep, cache

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()

    def put(self, ids: list[int], cache: Any) -> None:
        """Remember `cache`, which holds the KV of exactly `ids`."""
        if self.max_entries <= 0 or cache is None or not ids:
            return
        self._entries.append((ids, cache))
        del self._entries[: -self.max_entries]


def _crop(cache: Any, length: int, keep: int) -> bool:
    """Cut `cache` (holding `length` tokens) down to its first `keep`; False if it cannot be."""
    if keep == length:
        return True
    if not hasattr(cache, "crop") or getattr(cache, "is_croppable", True) is False:
        return False
    try:
        cache.crop(
            -(length - keep)
        )  # a negative argument removes that many tokens (transformers 4 and 5)
    except Exception:  # an unusual cache type: run the prompt from scratch instead
        return False
    return cache.get_seq_length() == keep


class LocalEngine:
    """A loaded model + tokenizer that generates one request at a time."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_path: str,
        device: str = "cpu",
        weight_version: str = "default",
        prefix_cache_entries: int = 2,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_path = model_path
        self.device = device
        self.weight_version = weight_version
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.max_context = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        self.end_token_ids = frozenset(_end_token_ids(model, tokenizer))
        self.prefix_cache = PrefixCache(prefix_cache_entries)
        # Only the last position's logits are needed: skip the vocab projection for the prompt.
        forward_params = inspect.signature(model.forward).parameters
        self._last_logits_only = {
            name: 1 for name in ("logits_to_keep", "num_logits_to_keep") if name in forward_params
        }

    def stop_ids(self, params: SamplingParams) -> frozenset[int]:
        """Token ids that end this request: its stop_token_ids plus the model's end tokens."""
        if params.ignore_eos:
            return frozenset(params.stop_token_ids)
        return self.end_token_ids | frozenset(params.stop_token_ids)

    def generate(self, req: GenerateRequest, cancel: threading.Event | None = None) -> Generation:
        """Run one request to completion (blocking); `cancel` makes it finish with abort."""
        import torch

        started = time.monotonic()
        p = req.params
        if len(req.input_ids) >= self.max_context:
            raise RequestError(
                f"prompt of {len(req.input_ids)} tokens does not fit the model's "
                f"context of {self.max_context}"
            )
        budget = min(p.max_new_tokens, self.max_context - len(req.input_ids))
        stop_ids = self.stop_ids(p)
        generator = None
        if not p.greedy:
            generator = torch.Generator(device="cpu")
            if p.sampling_seed is not None:
                generator.manual_seed(p.sampling_seed)
            else:
                generator.seed()
        out_ids: list[int] = []
        logprobs: list[float] = []
        finish: dict[str, Any] = {"type": "length", "length": budget}
        stop_text: tuple[str, int] | None = None
        cached, past = self.prefix_cache.take(req.input_ids)
        fed: list[int] = req.input_ids[:cached]  # the tokens whose KV `past` holds
        with torch.inference_mode():
            pending = req.input_ids[cached:]
            for step in range(budget):
                if cancel is not None and cancel.is_set():
                    finish = {"type": "abort", "message": "aborted (abort_request or client gone)"}
                    break
                step_input = torch.tensor([pending], dtype=torch.long, device=self.device)
                out = self.model(
                    input_ids=step_input,
                    past_key_values=past,
                    use_cache=True,
                    **self._last_logits_only,
                )
                past = out.past_key_values
                fed += pending
                logits = out.logits[0, -1].float().cpu()
                if step < p.min_new_tokens and stop_ids:
                    logits[[t for t in stop_ids if 0 <= t < logits.numel()]] = float("-inf")
                token, lp = sample_next_token(logits, p, generator)
                out_ids.append(token)
                logprobs.append(lp)
                if token in stop_ids:
                    finish = {"type": "stop", "matched": token}
                    break
                if p.stop and step + 1 >= p.min_new_tokens:
                    stop_text = self._find_stop_string(out_ids, p)
                    if stop_text is not None:
                        finish = {"type": "stop", "matched": stop_text[0]}
                        break
                pending = [token]
        self.prefix_cache.put(fed, past)
        return Generation(
            out_ids,
            logprobs,
            finish,
            self._text(out_ids, finish, stop_text, p),
            time.monotonic() - started,
            cached,
        )

    def _decode(self, ids: list[int], p: SamplingParams) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=p.skip_special_tokens)

    def _find_stop_string(self, ids: list[int], p: SamplingParams) -> tuple[str, int] | None:
        text = self._decode(ids, p)
        hits = [(text.find(s), s) for s in p.stop]
        hits = [(i, s) for i, s in hits if i >= 0]
        if not hits:
            return None
        i, s = min(hits)
        return s, i

    def _text(
        self,
        ids: list[int],
        finish: dict[str, Any],
        stop_text: tuple[str, int] | None,
        p: SamplingParams,
    ) -> str:
        if p.no_stop_trim or finish["type"] != "stop":
            return self._decode(ids, p)
        if stop_text is not None:
            return self._decode(ids, p)[: stop_text[1]]
        return self._decode(ids[:-1], p)  # drop the matched stop token


def _end_token_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(t) for t in eos)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_TOKENS if t in vocab)
    return ids


def load_engine(
    model: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    weight_version: str = "default",
    prefix_cache_entries: int = 2,
) -> LocalEngine:
    """Load a causal LM + tokenizer from a local directory or a reachable hub name."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise RuntimeError(
            f"the local engine needs torch and transformers (pip install 'slime-envs[local]'): {e}"
        ) from None
    local = Path(model).expanduser()
    source = str(local) if local.exists() else model
    kwargs: dict[str, Any] = {"local_files_only": True} if local.exists() else {}
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        lm = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(f"cannot load model {model!r}: {first}") from None
    # transformers wraps PreTrainedModel.to in a decorator whose annotation drops the device
    lm.to(device).eval()  # type: ignore[arg-type]
    return LocalEngine(
        lm,
        tokenizer,
        model_path=model,
        device=device,
        weight_version=weight_version,
        prefix_cache_entries=prefix_cache_entries,
    )


# --------------------------------------------------------------------------- HTTP


class EngineServer:
    """The aiohttp app around a LocalEngine: one worker thread, requests queue in order."""

    def __init__(self, engine: LocalEngine, public_url: str = "") -> None:
        self.engine = engine
        self.public_url = public_url
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-engine")
        self._cancels: dict[str, threading.Event] = {}
        self._counts = threading.Lock()
        self.waiting = 0
        self.running = 0

    def make_app(self) -> web.Application:
        from aiohttp import web

        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/generate", self.handle_generate)
        app.router.add_get("/health", self.handle_health)
        app.router.add_get("/health_generate", self.handle_health_generate)
        app.router.add_post("/abort_request", self.handle_abort)
        app.router.add_get("/v1/loads", self.handle_loads)
        app.router.add_get("/get_model_info", self.handle_model_info)
        app.router.add_get("/workers", self.handle_workers)
        app.router.add_post("/flush_cache", self.handle_flush_cache)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_shutdown(self, app: Any) -> None:
        for ev in self._cancels.values():
            ev.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, req: GenerateRequest, http: web.Request | None = None) -> dict[str, Any]:
        """Queue `req` on the worker thread and build SGLang's response body.

        If the caller of `http` hangs up, the generation is aborted instead of run to the end.
        """
        cancel = threading.Event()
        self._cancels[req.rid] = cancel
        with self._counts:
            self.waiting += 1
        watcher = (
            asyncio.create_task(_abort_on_disconnect(http, cancel)) if http is not None else None
        )
        try:
            gen = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._work, req, cancel
            )
        finally:
            self._cancels.pop(req.rid, None)
            if watcher is not None:
                watcher.cancel()
        meta: dict[str, Any] = {
            "id": req.rid,
            "finish_reason": gen.finish_reason,
            "prompt_tokens": len(req.input_ids),
            "completion_tokens": len(gen.output_ids),
            "cached_tokens": gen.cached_tokens,
            "weight_version": self.engine.weight_version,
            "e2e_latency": gen.seconds,
        }
        if req.return_logprob:
            decode = self.engine.tokenizer.decode if req.return_text_in_logprobs else None
            meta["output_token_logprobs"] = [
                [lp, t, decode([t]) if decode else None]
                for lp, t in zip(gen.logprobs, gen.output_ids, strict=False)
            ]
        return {"text": gen.text, "output_ids": gen.output_ids, "meta_info": meta}

    def _work(self, req: GenerateRequest, cancel: threading.Event) -> Generation:
        with self._counts:
            self.waiting -= 1
            self.running += 1
        try:
            return self.engine.generate(req, cancel)
        finally:
            with self._counts:
                self.running -= 1

    async def handle_generate(self, request: web.Request) -> web.Response:
        import orjson

        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as e:
            return _error(400, f"request body is not valid JSON: {e}")
        try:
            req = GenerateRequest.from_json(body, self.engine.tokenizer, self.engine.vocab_size)
            return _json(await self.run(req, request))
        except RequestError as e:
            return _error(400, str(e))
        except Exception as e:  # a failed generation must not take the server down
            log.exception("generation failed")
            return _error(500, f"generation failed: {type(e).__name__}: {e}")

    async def handle_health(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.Response(text="ok")

    async def handle_health_generate(self, request: web.Request) -> web.Response:
        ids = self.engine.tokenizer.encode("ok", add_special_tokens=False) or [0]
        req = GenerateRequest(ids, SamplingParams(temperature=0.0, max_new_tokens=1))
        await self.run(req)
        return await self.handle_health(request)

    async def handle_abort(self, request: web.Request) -> web.Response:
        """SGLang's abort: {"rid": ...} or {"abort_all": true}; those requests finish with abort."""
        import orjson
        from aiohttp import web

        try:
            body = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError as e:
            return _error(400, f"request body is not valid JSON: {e}")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        if body.get("abort_all"):
            targets = list(self._cancels.values())
        else:
            ev = self._cancels.get(str(body.get("rid")))
            targets = [ev] if ev is not None else []
        for ev in targets:
            ev.set()
        return web.Response(text="")

    async def handle_loads(self, request: web.Request) -> web.Response:
        return _json(
            {"loads": [{"num_running_reqs": self.running, "num_waiting_reqs": self.waiting}]}
        )

    async def handle_model_info(self, request: web.Request) -> web.Response:
        return _json(
            {
                "model_path": self.engine.model_path,
                "tokenizer_path": self.engine.model_path,
                "is_generation": True,
                "weight_version": self.engine.weight_version,
            }
        )

    async def handle_workers(self, request: web.Request) -> web.Response:
        url = self.public_url or f"{request.scheme}://{request.host}"
        return _json({"workers": [{"url": url}]})

    async def handle_flush_cache(self, request: web.Request) -> web.Response:
        from aiohttp import web

        await asyncio.get_running_loop().run_in_executor(
            self._executor, self.engine.prefix_cache.clear
        )
        return web.Response(text="Cache flushed.")


async def _abort_on_disconnect(
    request: web.Request, cancel: threading.Event, every: float = 0.2
) -> None:
    while not cancel.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            log.info("client went away: aborting request")
            cancel.set()
            return
        await asyncio.sleep(every)


def _json(obj: Any, status: int = 200) -> web.Response:
    import orjson
    from aiohttp import web

    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": {"message": message}}, status=status)


def serve(engine: LocalEngine, host: str, port: int) -> None:
    """Serve `engine` until interrupted."""
    from aiohttp import web

    server = EngineServer(engine, public_url=f"http://{host}:{port}")
    print(
        f"tools.engines.local_engine: serving {engine.model_path} on http://{host}:{port}",
        flush=True,
    )
    web.run_app(server.make_app(), host=host, port=port, access_log=None, print=None)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: load the model, print the debugging banner, serve."""
    ap = argparse.ArgumentParser(
        prog="python -m tools.engines.local_engine",
        description="CPU debugging engine speaking SGLang's /generate format",
    )
    ap.add_argument("--model", required=True, help="local model directory or hub name")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=30000)
    ap.add_argument("--device", default="cpu", help="torch device (default cpu)")
    ap.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"]
    )
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument(
        "--weight-version", default="default", help="reported as meta_info.weight_version"
    )
    ap.add_argument(
        "--prefix-cache",
        type=int,
        default=2,
        metavar="N",
        help="keep the KV cache of the last N requests to reuse shared prefixes (0 = off)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(BANNER.format(device=args.device), flush=True)
    try:
        import torch
    except ImportError:
        print(
            "tools.engines.local_engine: torch is not installed: pip install 'slime-envs[local]'",
            file=sys.stderr,
        )
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        engine = load_engine(
            args.model,
            device=args.device,
            dtype=args.dtype,
            weight_version=args.weight_version,
            prefix_cache_entries=args.prefix_cache,
        )
    except RuntimeError as e:
        print(f"tools.engines.local_engine: {e}", file=sys.stderr)
        return 2
    serve(engine, args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
