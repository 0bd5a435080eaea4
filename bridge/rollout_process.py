"""What one rollout process keeps between generate calls: the train config, the chat renderer
(tokenizer + template, loaded once off the event loop), the engine clients of each event loop,
and warnings already logged. slime runs every generate call of a rollout process on one event
loop; tests and benchmarks may use several, so clients are kept per loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from typing import Any

from bridge.chat import ChatRenderer, get_renderer
from bridge.engine import EngineClient
from bridge.partial import suspended_episodes
from bridge.provenance import tokenizer_fingerprint
from bridge.slime_types import SlimeArgs
from contract.config import TrainConfig, config_from_env

log = logging.getLogger(__name__)

_CONFIG: dict[str, TrainConfig | None] = {}
_ENGINES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, EngineClient]] = (
    weakref.WeakKeyDictionary()
)
_RENDERER_TASKS: dict[tuple[Any, ...], asyncio.Future[ChatRenderer]] = {}
_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """Log `message` as an error once per process (at most 1000 distinct messages)."""
    if message not in _WARNED and len(_WARNED) < 1000:
        _WARNED.add(message)
        log.error(message)


def train_config() -> TrainConfig | None:
    """$TRAIN_CONFIG, loaded once per process (per path)."""
    path = os.environ.get("TRAIN_CONFIG", "")
    if path not in _CONFIG:
        _CONFIG[path] = config_from_env() if path else None
    return _CONFIG[path]


async def cached_renderer(path: str, thinking: bool, system_prompt: str | None) -> ChatRenderer:
    """The cached renderer; built once in a worker thread so the event loop never blocks on it."""
    loop = asyncio.get_running_loop()
    key = (id(loop), path, thinking, system_prompt)
    fut = _RENDERER_TASKS.get(key)
    if fut is None or (fut.done() and fut.exception() is not None):
        fut = _RENDERER_TASKS[key] = asyncio.ensure_future(
            asyncio.to_thread(_load_renderer, path, thinking, system_prompt)
        )
        fut.add_done_callback(_maybe_freeze_heap)
    return await asyncio.shield(fut)


def _load_renderer(path: str, thinking: bool, system_prompt: str | None) -> ChatRenderer:
    """The renderer, with its tokenizer's provenance hashed here too (off the event loop)."""
    renderer = get_renderer(path, thinking, system_prompt)
    tokenizer_fingerprint(renderer.tokenizer)
    return renderer


def _maybe_freeze_heap(_: Any) -> None:
    """Opt-in (BRIDGE_GC_FREEZE=1): once the tokenizer is loaded, move the long-lived heap out of
    the cyclic GC's reach (gc.freeze), so a full collection during rollouts does not rescan
    transformers, torch and the vocabulary: the longest loop stall in bench/bridge.py drops from
    ~250 ms to ~100 ms.
    Process-wide, hence off by default."""
    if os.environ.get("BRIDGE_GC_FREEZE") == "1" and not _FROZEN:
        _FROZEN.append(True)
        import gc

        gc.freeze()


_FROZEN: list[bool] = []


def engine_client(args: SlimeArgs) -> EngineClient:
    url = f"http://{args.sglang_router_ip}:{args.sglang_router_port}"
    loop = asyncio.get_running_loop()
    per_loop = _ENGINES.setdefault(loop, {})
    client = per_loop.get(url)
    if client is None:
        client = per_loop[url] = EngineClient(url)
    return client


async def close_clients() -> None:
    """Close this event loop's engine and env HTTP clients and suspended episodes (tests and
    benchmarks call it at the end)."""
    from bridge.env_client import close_shared_http

    await suspended_episodes().close_all()
    for client in _ENGINES.pop(asyncio.get_running_loop(), {}).values():
        await client.close()
    await close_shared_http()
