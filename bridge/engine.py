"""Token-in / token-out client for SGLang's `/generate` (through slime's router).

Every request sends `input_ids`, asks for logprobs and carries the session id as
`X-SMG-Routing-Key` so a consistent-hashing router keeps a session on one engine. There is
no read timeout: a generation takes as long as it takes (slime aborts it when it wants to).

When slime asks for replay data (`--rollout-top-p` < 1 puts `custom_params.return_top_p_token_ids`
into the sampling params; `--use-rollout-routing-replay` needs `return_routed_experts`), a turn
that samples tokens without it is an engine error: it could not be trained.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.errors import EngineError, HTTP11Error
from bridge.http11 import client_for_loop

ROUTING_HEADER = "X-SMG-Routing-Key"


@dataclass
class EngineTurn:
    """What the engine sampled for one turn."""

    output_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # stop | length | abort
    meta_info: dict[str, Any]
    ids_mismatch: bool = False  # output_ids disagreed with the ids in output_token_logprobs
    reported_ids: list[int] | None = None  # the disagreeing output_ids (drift forensics)

    @property
    def aborted(self) -> bool:
        return self.finish_reason == "abort"

    @property
    def weight_version(self) -> str | None:
        """The policy weight version that sampled this turn (SGLang meta_info), if reported."""
        v = self.meta_info.get("weight_version")
        return None if v is None else str(v)


# meta_info keys SGLang (and slime's Sample) use for top-p replay arrays
TOP_P_KEYS = (
    ("top_p_token_ids", "top_p_kept_token_ids"),
    ("top_p_token_offsets", "top_p_kept_token_offsets"),
)


def wants_top_p_replay(sampling_params: dict[str, Any]) -> bool:
    """slime asked SGLang for top-p replay arrays (its `--rollout-top-p` < 1)."""
    custom = sampling_params.get("custom_params")
    return isinstance(custom, dict) and bool(custom.get("return_top_p_token_ids"))


def check_replay_data(turn: EngineTurn, top_p: bool, routed_experts: bool) -> None:
    """Raise EngineError when a turn sampled tokens without the replay data slime will train
    with."""
    if not turn.output_ids:
        return
    meta = turn.meta_info
    if top_p and not all(any(meta.get(k) is not None for k in keys) for keys in TOP_P_KEYS):
        raise EngineError(
            "engine returned no top-p replay arrays (slime's --rollout-top-p < 1 needs them)"
        )
    if routed_experts and meta.get("routed_experts") is None:
        raise EngineError(
            "engine returned no routed_experts (--use-rollout-routing-replay needs "
            "SGLang's --enable-return-routed-experts)"
        )


def parse_generate_response(body: dict[str, Any]) -> EngineTurn:
    """Turn a `/generate` JSON answer into ids + logprobs; mismatches are errors, never padded."""
    meta = body.get("meta_info")
    if not isinstance(meta, dict):
        raise EngineError("engine response has no meta_info")
    finish = meta.get("finish_reason") or {}
    kind = finish.get("type") if isinstance(finish, dict) else str(finish)
    if kind not in ("stop", "length", "abort"):
        raise EngineError(f"engine response has unknown finish_reason {finish!r}")
    pairs = meta.get("output_token_logprobs")
    ids = body.get("output_ids")
    if pairs is None:
        if ids:
            raise EngineError(
                "engine returned output ids without output_token_logprobs (set return_logprob)"
            )
        return EngineTurn([], [], kind, meta)
    lp_ids = [p[1] for p in pairs]
    logprobs = [p[0] if p[0] is not None else 0.0 for p in pairs]
    # slime trusts the ids inside output_token_logprobs; so do we, and flag a disagreement as drift
    mismatch = ids is not None and ids != lp_ids
    # keep the rest of meta_info (slime reads finish_reason, weight_version, cache and spec
    # counters, top-p / routed-expert arrays) but not the per-token pairs we just unpacked
    meta = {k: v for k, v in meta.items() if k != "output_token_logprobs"}
    return EngineTurn(
        lp_ids, logprobs, kind, meta, ids_mismatch=mismatch, reported_ids=ids if mismatch else None
    )


class EngineClient:
    """POSTs to `{base_url}/generate` over the event loop's keep-alive HTTP client."""

    def __init__(
        self, base_url: str, connect_timeout: float = 30.0, connect_retries: int = 3
    ) -> None:
        self.url = base_url.rstrip("/") + "/generate"
        self._connect_timeout = connect_timeout
        self._connect_retries = connect_retries

    async def generate(
        self,
        input_ids: list[int],
        sampling_params: dict[str, Any],
        routing_key: str | None = None,
        return_routed_experts: bool = False,
    ) -> EngineTurn:
        """One generation, no read timeout. Retries only when no connection could be made (nothing
        ran)."""
        request: dict[str, Any] = {
            "input_ids": input_ids,
            "sampling_params": sampling_params,
            "return_logprob": True,
        }
        if return_routed_experts:
            request["return_routed_experts"] = True
        payload = orjson.dumps(request)
        headers = {"Content-Type": "application/json"}
        if routing_key:
            headers[ROUTING_HEADER] = routing_key
        attempt = 0
        while True:
            try:
                resp = await client_for_loop().request("POST", self.url, payload, headers)
                break
            except HTTP11Error as e:
                if e.connected:
                    raise EngineError(f"engine {self.url} failed: {e}") from None
                attempt += 1
                if attempt > self._connect_retries:
                    raise EngineError(f"engine {self.url} unreachable: {e}") from None
                await asyncio.sleep(0.2 * attempt)
        if resp.status != 200:
            text = resp.body[:300].decode("utf-8", "replace").replace("\n", " ")
            raise EngineError(f"engine {self.url} answered HTTP {resp.status}: {text}")
        try:
            body = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            raise EngineError(f"engine {self.url} answered invalid JSON") from None
        if not isinstance(body, dict):
            raise EngineError(
                f"engine {self.url} answered {type(body).__name__}, expected an object"
            )
        turn = parse_generate_response(body)
        check_replay_data(turn, wants_top_p_replay(sampling_params), return_routed_experts)
        return turn

    async def close(self) -> None:
        """Connections belong to the loop's shared client (bridge.http11.close_loop_client)."""
