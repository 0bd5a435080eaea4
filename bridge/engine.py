"""Token-in / token-out client for SGLang's `/generate` (through slime's router).

Every request sends `input_ids`, asks for logprobs and carries the session id as
`X-SMG-Routing-Key` so a consistent-hashing router keeps a session on one engine. There is
no read timeout: a generation takes as long as it takes (slime aborts it when it wants to).

An outage of the router or an engine (HTTP 500/502/503/504: a worker killed under the router,
`no_available_workers`; a connection dropped mid-request) is retried with backoff for up to
`ENGINE_RETRY_S` (slime's own client retries 60 x 1 s) before it is an engine error (an
address nothing listens on gets `CONNECT_TRIES` quick tries: a wrong URL, not an outage): a
generation has no side effect, so re-sending it is safe, and the episode and its env session
go on as if nothing happened (issue 21.5). slime's abort ends the wait at once (the turn comes
back aborted).

When slime asks for replay data (`--rollout-top-p` < 1 puts `custom_params.return_top_p_token_ids`
into the sampling params; `--use-rollout-routing-replay` needs `return_routed_experts`), a turn
that samples tokens without it is an engine error: it could not be trained.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.env_seconds import env_seconds
from bridge.errors import EngineError, HTTP11Error
from bridge.http11 import client_for_loop
from bridge.slime_state import slime_aborted

ROUTING_HEADER = "X-SMG-Routing-Key"
ENGINE_RETRY_S = 60.0
"""Seconds a router or engine outage is retried before the turn is an engine error
($BRIDGE_ENGINE_RETRY_S overrides)."""
ENGINE_RETRY_ENV = "BRIDGE_ENGINE_RETRY_S"
ENGINE_BACKOFF_S = 0.25
"""First wait before re-sending a request the router refused (doubled each time)."""
ENGINE_BACKOFF_MAX_S = 2.0
"""Longest wait between two tries."""
CONNECT_TRIES = 4
"""Tries when no connection can be made at all."""
OUTAGE_STATUSES = frozenset({500, 502, 503, 504})
"""What a router answers while a worker is down or none is available."""
RETRY_TALLY = re.compile(r" \(\d+ tries in \d+ s\)$")
"""How an engine outage's message ends (`retry_tally`): the tries and seconds it took, which vary
from one episode to the next for the same outage (tools.rollout_failures groups reasons without
it)."""


def retry_tally(tries: int, seconds: float) -> str:
    """The end of an engine outage's message, as RETRY_TALLY matches it."""
    return f" ({tries} tries in {seconds:.0f} s)"


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


def engine_retry_s() -> float:
    """$BRIDGE_ENGINE_RETRY_S, else ENGINE_RETRY_S (a bad value: the default)."""
    return env_seconds(ENGINE_RETRY_ENV, ENGINE_RETRY_S)


class EngineClient:
    """POSTs to `{base_url}/generate` over the event loop's keep-alive HTTP client."""

    def __init__(
        self,
        base_url: str,
        retry_s: float | None = None,
        aborted: Callable[[], bool] = slime_aborted,
    ) -> None:
        self.url = base_url.rstrip("/") + "/generate"
        self.retry_s = engine_retry_s() if retry_s is None else retry_s
        self._aborted = aborted

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
        start = time.monotonic()
        deadline = start + self.retry_s
        attempt = 0
        while True:
            try:
                resp = await client_for_loop().request("POST", self.url, payload, headers)
                problem = None if resp.status not in OUTAGE_STATUSES else _status_line(resp)
            except HTTP11Error as e:
                if not e.connected and attempt + 1 >= CONNECT_TRIES:
                    raise EngineError(f"engine {self.url} unreachable: {e}") from None
                problem = f"{'failed' if e.connected else 'unreachable'}: {e}"
            if problem is None:
                break
            delay = min(ENGINE_BACKOFF_S * 2**attempt, ENGINE_BACKOFF_MAX_S)
            if time.monotonic() + delay > deadline:
                tally = retry_tally(attempt + 1, time.monotonic() - start)
                raise EngineError(f"engine {self.url} {problem}{tally}")
            attempt += 1
            if await self._sleep_unless_aborted(delay):
                return EngineTurn([], [], "abort", {})  # slime aborts: the turn is dropped
        if resp.status != 200:
            raise EngineError(f"engine {self.url} {_status_line(resp)}")
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

    async def _sleep_unless_aborted(self, seconds: float) -> bool:
        """Wait `seconds`; True as soon as slime aborts."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self._aborted():
                return True
            await asyncio.sleep(min(left, ABORT_POLL_S))
        return self._aborted()

    async def close(self) -> None:
        """Connections belong to the loop's shared client (bridge.http11.close_loop_client)."""


ABORT_POLL_S = 0.05
"""How often a wait between tries looks at slime's abort state."""


def _status_line(resp: Any) -> str:
    text = resp.body[:300].decode("utf-8", "replace").replace("\n", " ")
    return f"answered HTTP {resp.status}: {text}"
