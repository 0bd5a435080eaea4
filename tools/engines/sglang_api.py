"""SGLang's HTTP API as slime's loop and the bridge call it: the one request/response schema every
engine here speaks (the CPU engine, the scripted engine, the tests' scripted stub).

What is called, and by whom (read in slime v0.3.1 and main@624b824, sglang-router 0.3.2):

    POST /generate                  the bridge (through slime's router): token ids in, token ids
                                    and per-token logprobs out (`GenerateRequest` -> `Generation`)
    GET  /server_info, /get_server_info   slime's external-engine check (`--rollout-external-
                                    engine-addrs`) and the router: `server_info()`
    GET  /model_info, /get_model_info     the router when a worker joins: `model_info()`
    GET  /health, /health_generate  the router, slime's health monitor
    POST /abort_request             slime's abort at the end of every rollout ({"abort_all": true})
                                    or one request ({"rid": ...})
    GET  /v1/loads                  slime's abort, until the engine is idle: `loads()`
    POST /pause_generation, /continue_generation, GET|POST /flush_cache,
    POST /update_weights_from_{tensor,distributed,disk}, /update_weight_version,
    GET  /get_weight_version        slime's weight updates (never under --debug-rollout-only)

Finish reasons are SGLang's: {"type": "stop", "matched": id|str}, {"type": "length", "length": n},
{"type": "abort", "message": ...}.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tools.errors import RequestError

log = logging.getLogger(__name__)

GREEDY_EPS = 1e-5
ROUTING_HEADER = "X-SMG-Routing-Key"
"""slime's router keeps a session on one engine by this header (consistent hashing)."""

# Sampling keys SGLang accepts that these engines do not implement: allowed only at the neutral
# value, so a request that depends on them fails loudly instead of being ignored.
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
    "stop_regex": None,
}
# Accepted and irrelevant to a one-shot, non-streaming engine.
_IGNORED_PARAMS = {"stream_interval"}


@dataclass(frozen=True)
class SamplingParams:
    """The SGLang sampling parameters these engines implement."""

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
    spaces_between_special_tokens: bool = True
    """Accepted for wire compatibility; fast tokenizers never insert such spaces."""
    no_stop_trim: bool = False
    sampling_seed: int | None = None
    custom_params: dict[str, Any] | None = None
    """slime's `--rollout-top-p` < 1 asks for top-p replay arrays here
    (`return_top_p_token_ids`); an engine that cannot produce them refuses the request."""

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPS

    @property
    def wants_top_p_replay(self) -> bool:
        return bool((self.custom_params or {}).get("return_top_p_token_ids"))

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
                        f"sampling param {key}={value!r} is not supported by this engine"
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
        if "custom_params" in v and not isinstance(v["custom_params"], dict):
            raise ValueError("custom_params must be an object")
        for name in (
            "ignore_eos",
            "skip_special_tokens",
            "spaces_between_special_tokens",
            "no_stop_trim",
        ):
            if name in v and not isinstance(v[name], bool):
                raise ValueError(f"{name} must be true or false")
        return cls(**v)


# Keys slime's router (sglang-router / smg) adds to every request it forwards: informational ...
_ROUTER_INFO_KEYS = {"model", "log_metrics", "no_logs"}
# ... and requests for outputs these engines do not produce, accepted when off.
_OFF_KEYS = ("background", "return_bytes", "return_entropy", "return_hidden_states")
_TOP_LEVEL_KEYS = {
    *_ROUTER_INFO_KEYS,
    *_OFF_KEYS,
    "input_ids",
    "text",
    "sampling_params",
    "return_logprob",
    "rid",
    "stream",
    "logprob_start_len",
    "top_logprobs_num",
    "return_text_in_logprobs",
    "return_routed_experts",
}


@dataclass
class GenerateRequest:
    """One validated `/generate` call."""

    input_ids: list[int]
    params: SamplingParams
    return_logprob: bool = False
    return_text_in_logprobs: bool = False
    return_routed_experts: bool = False
    """slime's `--use-rollout-routing-replay`: the experts each token was routed to."""
    routing_key: str | None = None
    """The `X-SMG-Routing-Key` header (the bridge sends the episode's key every turn)."""
    rid: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def from_json(
        cls,
        body: Any,
        tokenizer: Any = None,
        vocab_size: int | None = None,
        routing_key: str | None = None,
    ) -> GenerateRequest:
        """Validate a request body; `text` is tokenized (with `tokenizer`) when `input_ids` is
        absent. Raises RequestError with one line for the caller."""
        if not isinstance(body, dict):
            raise RequestError("request body must be a JSON object")
        unknown = sorted(set(body) - _TOP_LEVEL_KEYS)
        if unknown:
            raise RequestError(f"unsupported /generate field(s): {', '.join(unknown)}")
        on = [k for k in _OFF_KEYS if body.get(k)]
        if on:
            raise RequestError(f"{', '.join(on)} not supported by this engine")
        if body.get("stream"):
            raise RequestError("streaming is not supported by this engine")
        if body.get("top_logprobs_num"):
            raise RequestError("top_logprobs_num is not supported by this engine")
        if body.get("logprob_start_len") not in (None, -1):
            raise RequestError(
                "logprob_start_len (prompt logprobs) is not supported by this engine"
            )
        ids = body.get("input_ids")
        if ids is None:
            text = body.get("text")
            if not isinstance(text, str) or tokenizer is None:
                raise RequestError(
                    "give input_ids (a list of token ids)"
                    + (" or text (a string)" if tokenizer is not None else "")
                )
            ids = tokenizer.encode(text, add_special_tokens=False)
        if not isinstance(ids, list) or not ids:
            raise RequestError(
                "input_ids must be a non-empty list of token ids (batches are not supported)"
            )
        top = vocab_size if vocab_size is not None else 1 << 31
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < top:
                raise RequestError(f"input_ids holds {t!r}, not a token id in [0, {top})")
        rid = body.get("rid")
        if rid is not None and not isinstance(rid, str):
            raise RequestError("rid must be a string")
        return cls(
            input_ids=list(ids),
            params=SamplingParams.from_json(body.get("sampling_params")),
            return_logprob=bool(body.get("return_logprob", False)),
            return_text_in_logprobs=bool(body.get("return_text_in_logprobs", False)),
            return_routed_experts=bool(body.get("return_routed_experts", False)),
            routing_key=routing_key,
            **({"rid": rid} if rid else {}),
        )


def stop_reason(matched: int | str | None) -> dict[str, Any]:
    return {"type": "stop", "matched": matched}


def length_reason(length: int) -> dict[str, Any]:
    return {"type": "length", "length": length}


def abort_reason(message: str) -> dict[str, Any]:
    return {"type": "abort", "message": message}


@dataclass
class Generation:
    """What one request produced (an engine's answer before it is put on the wire)."""

    output_ids: list[int]
    logprobs: list[float]
    finish_reason: dict[str, Any]
    text: str
    seconds: float = 0.0
    cached_tokens: int = 0
    extra_meta: dict[str, Any] = field(default_factory=dict)
    """meta_info keys beyond the common ones (top-p replay arrays, routed experts)."""

    @classmethod
    def aborted(cls, message: str) -> Generation:
        """Nothing sampled: the request was aborted before its first token."""
        return cls([], [], abort_reason(message), "")


def generate_response(
    req: GenerateRequest,
    gen: Generation,
    weight_version: str,
    decode_token: Callable[[int], str] | None = None,
) -> dict[str, Any]:
    """SGLang's `/generate` answer: text, output_ids, meta_info (logprobs when asked)."""
    meta: dict[str, Any] = {
        "id": req.rid,
        "finish_reason": gen.finish_reason,
        "prompt_tokens": len(req.input_ids),
        "completion_tokens": len(gen.output_ids),
        "cached_tokens": gen.cached_tokens,
        "weight_version": weight_version,
        "e2e_latency": gen.seconds,
        **gen.extra_meta,
    }
    if req.return_logprob:
        decode = decode_token if req.return_text_in_logprobs else None
        meta["output_token_logprobs"] = [
            [lp, t, decode(t) if decode is not None else None]
            for lp, t in zip(gen.logprobs, gen.output_ids, strict=False)
        ]
    return {"text": gen.text, "output_ids": gen.output_ids, "meta_info": meta}


def error_body(message: str) -> dict[str, Any]:
    """SGLang's error answer."""
    return {"error": {"message": message}}


# --------------------------------------------------------------------------- server info


def server_args_defaults() -> dict[str, Any]:
    """Every field of SGLang's ServerArgs at its default, as `dataclasses.asdict` gives them (what
    a real engine's /server_info reports); {} when SGLang is not installed.

    `ServerArgs()` itself cannot be built on a CPU (its __post_init__ resolves the device and reads
    the model), so the defaults are read from the dataclass fields. SGLang is imported behind the
    CPU import shims (its torchvision import cannot load beside CPU torch).
    """
    import importlib.util

    if importlib.util.find_spec("sglang") is None:
        return {}
    from tools.slime_cpu import install_import_shims

    install_import_shims()
    try:
        from sglang.srt.server_args import ServerArgs
    except Exception as e:  # an SGLang that does not import here: report the fields slime reads
        log.warning("cannot import SGLang's ServerArgs (%s: %s)", type(e).__name__, e)
        return {}
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ServerArgs):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
        else:
            values[f.name] = None
    # JSON-safe, as SGLang's own endpoint serialises it
    return dict(json.loads(json.dumps(values, default=str)))


def server_info(
    defaults: dict[str, Any], model_path: str, host: str, port: int, weight_version: str
) -> dict[str, Any]:
    """`/server_info`: ServerArgs at their defaults plus this engine's own values.

    slime's external-engine check compares the fields it would launch an engine with
    (`enable_memory_saver`, and with some flags `dtype`, routed experts, PD fields) to what is
    reported: a missing key reads as None and fails, so `enable_memory_saver` is always reported
    (False: the engine keeps its memory, as slime expects under `--debug-rollout-only`). slime
    reads tp/pp (and num_gpus) to count the engine's GPUs: one engine of one "GPU" here.
    """
    info = dict(defaults)
    info.update(
        model_path=model_path,
        tokenizer_path=model_path,
        served_model_name=model_path,
        host=host,
        port=port,
        tp_size=1,
        pp_size=1,
        dp_size=1,
        ep_size=1,
        enable_memory_saver=False,
        disaggregation_mode=info.get("disaggregation_mode", "null"),
        skip_server_warmup=True,
        device="cpu",
        dtype=info.get("dtype", "auto"),
        weight_version=weight_version,
        max_total_num_tokens=1 << 20,
        max_req_input_len=1 << 16,
        internal_states=[{"last_gen_throughput": 0.0}],
    )
    info.setdefault("version", _sglang_version())
    return info


def _sglang_version() -> str:
    try:
        from importlib.metadata import version

        return version("sglang")
    except Exception:
        return "none"


def model_info(model_path: str, weight_version: str) -> dict[str, Any]:
    """`/model_info` (and `/get_model_info`)."""
    return {
        "model_path": model_path,
        "tokenizer_path": model_path,
        "is_generation": True,
        "preferred_sampling_params": None,
        "weight_version": weight_version,
        "has_image_understanding": False,
        "has_audio_understanding": False,
    }


def loads(running: int, waiting: int) -> dict[str, Any]:
    """`/v1/loads`: slime's abort waits until running + waiting is 0."""
    core = {
        "dp_rank": 0,
        "num_running_reqs": running,
        "num_waiting_reqs": waiting,
        "num_total_tokens": 1 << 20,
        "num_used_tokens": 0,
    }
    return {"timestamp": time.time(), "dp_rank_count": 1, "loads": [core]}


__all__ = [
    "ROUTING_HEADER",
    "GenerateRequest",
    "Generation",
    "SamplingParams",
    "abort_reason",
    "error_body",
    "generate_response",
    "length_reason",
    "loads",
    "model_info",
    "server_args_defaults",
    "server_info",
    "stop_reason",
]
