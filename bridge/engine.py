"""Token-in / token-out client for SGLang's `/generate` (through slime's router).

Every request sends `input_ids`, asks for logprobs and carries the session id as
`X-SMG-Routing-Key` so a consistent-hashing router keeps a session on one engine. There is
no read timeout: a generation takes as long as it takes (slime aborts it when it wants to).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

ROUTING_HEADER = "X-SMG-Routing-Key"


class EngineError(RuntimeError):
    """The engine could not be reached or answered something unusable."""


@dataclass
class EngineTurn:
    """What the engine sampled for one turn."""

    output_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # stop | length | abort
    meta_info: dict[str, Any]

    @property
    def aborted(self) -> bool:
        return self.finish_reason == "abort"


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
            raise EngineError("engine returned output ids without output_token_logprobs (set return_logprob)")
        return EngineTurn([], [], kind, meta)
    lp_ids = [int(p[1]) for p in pairs]
    logprobs = [float(p[0]) if p[0] is not None else 0.0 for p in pairs]
    if ids is not None and list(ids) != lp_ids:
        raise EngineError(f"engine output_ids ({len(ids)}) disagree with output_token_logprobs ({len(lp_ids)})")
    return EngineTurn(lp_ids, logprobs, kind, meta)


class EngineClient:
    """POSTs to `{base_url}/generate` over one shared aiohttp session (per event loop)."""

    def __init__(self, base_url: str, connect_timeout: float = 30.0, connect_retries: int = 3) -> None:
        self.url = base_url.rstrip("/") + "/generate"
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=None)
        self._connect_retries = connect_retries
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=False),
                timeout=self._timeout, json_serialize=lambda o: orjson.dumps(o).decode())
        return self._session

    async def generate(self, input_ids: list[int], sampling_params: dict[str, Any],
                       routing_key: str | None = None) -> EngineTurn:
        """One generation. Retries only when the connection could not be made (nothing ran)."""
        payload = orjson.dumps({"input_ids": input_ids, "sampling_params": sampling_params,
                                "return_logprob": True})
        headers = {"Content-Type": "application/json"}
        if routing_key:
            headers[ROUTING_HEADER] = routing_key
        attempt = 0
        while True:
            try:
                async with self._http().post(self.url, data=payload, headers=headers) as resp:
                    raw = await resp.read()
                    if resp.status != 200:
                        text = raw[:300].decode("utf-8", "replace").replace("\n", " ")
                        raise EngineError(f"engine {self.url} answered HTTP {resp.status}: {text}")
                break
            except aiohttp.ClientConnectorError as e:
                attempt += 1
                if attempt > self._connect_retries:
                    raise EngineError(f"engine {self.url} unreachable: {e}") from None
                await asyncio.sleep(0.2 * attempt)
            except aiohttp.ClientError as e:
                raise EngineError(f"engine {self.url} failed: {type(e).__name__}: {e}") from None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise EngineError(f"engine {self.url} answered invalid JSON") from None
        if not isinstance(body, dict):
            raise EngineError(f"engine {self.url} answered {type(body).__name__}, expected an object")
        return parse_generate_response(body)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
