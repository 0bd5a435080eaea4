"""The trajectory sink of the generate function: finished episodes -> OpenReward rollout events ->
server.

`get_sink(config).submit(trajectory)` returns at once and never raises; the episode is in its
journal file (the OS page cache) by then, so even a kill -9 of the trainer loses nothing. A
background task on the running event loop batches the events and POSTs them to `/v1/rollouts`
of this project's env server (default) or of hosted OpenReward. When the server cannot be
reached the batch goes to a JSONL spool file under `trajectories.spool_dir` and is delivered
later with exponential backoff, also by the next process that uses the same spool dir (which
also recovers the journals of processes that died). The receiving side ignores events it
already has (eventId), so a retried batch is never stored twice. Batches the server refuses as
invalid (400/413/422) are kept in `rejected-*.jsonl` next to the spool, never dropped; torn
lines are set aside in `quarantine-*.jsonl`; when the disk is full, what does not fit stays in
memory and `stats` says how much.

This module picks the sink for a config (`make_sink`, `get_sink`: one per process and event
loop). The parts: bridge/trajectory_codec.py (episodes as events, the sink's lines),
bridge/trajectory_uploader.py (batching, delivery, backoff, recovery), bridge/trajectory_spool.py
(the journal, spool, quarantine and rejected files). What only the trainer knows rides in the
rollout event's `metadata`:
reward, reward_reduction, turn_rewards, stop_reason, status, num_turns, num_tool_calls, tool_errors,
drift_count, evaluation, group_index, invocation (the process: with group_index, the GRPO group),
sample_index, index, timings, prompt_length, token_ids, loss_mask, logprobs, extra (and
`tokenizer` when the trajectory's extra names one), provenance,
tripwires, tripwire_keys, drift. Tool results say in their metadata whether the env executed
the call (`executed`: false for calls the bridge answered itself).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import weakref
from typing import Any

from bridge.trajectory import Trajectory, TrajectorySink
from bridge.trajectory_uploader import (
    HOSTED_SETTINGS,
    LIVE_UPLOADERS,
    SinkSettings,
    TrajectoryUploader,
)
from contract.config import TrainConfig, config_from_env

__all__ = ["HOSTED_API_URL", "DisabledSink", "get_sink", "make_sink"]

log = logging.getLogger(__name__)

HOSTED_API_URL = "https://api.openreward.ai"


class DisabledSink:
    """`trajectories.enabled: false`: episodes are not recorded anywhere."""

    def submit(self, trajectory: Trajectory) -> None:
        return None

    async def flush(self, timeout: float = 0.0) -> bool:
        return True

    async def close(self, timeout: float = 0.0) -> bool:
        return True


_SINKS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], TrajectorySink]] = (
    weakref.WeakKeyDictionary()
)
_NO_LOOP = type("_NoLoop", (), {})()
_SINK_LOCK = threading.Lock()


def _spool_all_at_exit() -> None:
    for up in list(LIVE_UPLOADERS):
        try:
            up._spool_memory()
            up.spool.seal()
            up.journal.close()
        except Exception:
            pass


atexit.register(_spool_all_at_exit)


def make_sink(config: TrainConfig | None, settings: SinkSettings | None = None) -> TrajectorySink:
    """A new sink for this config (use get_sink in the generate path)."""
    cfg = config if config is not None else config_from_env()
    if cfg is None:
        cfg = TrainConfig.model_validate({"environments": {"_": {}}})
    t = cfg.trajectories
    if not t.enabled:
        return DisabledSink()
    if t.target == "openreward":
        url = t.url or os.environ.get("OPENREWARD_API_URL") or HOSTED_API_URL
        key = os.environ.get("OPENREWARD_API_KEY", "")
        if not key:
            log.error(
                "trajectory sink: trajectories.target is openreward but OPENREWARD_API_KEY is "
                "unset; "
                "uploads will be spooled in %s until it is set",
                t.spool_dir,
            )
        s = settings or HOSTED_SETTINGS
        return TrajectoryUploader(
            url, t.spool_dir, cfg.run_name, api_key=key, hosted=True, settings=s
        )
    url = t.url or cfg.env_server_urls[0]
    return TrajectoryUploader(
        url,
        t.spool_dir,
        cfg.run_name,
        api_key=os.environ.get("ENV_SERVER_API_KEY", ""),
        settings=settings,
    )


def get_sink(config: TrainConfig | None, settings: SinkSettings | None = None) -> TrajectorySink:
    """The sink for this config on the running event loop (one per process and loop)."""
    try:
        loop: Any = asyncio.get_running_loop()
    except RuntimeError:
        loop = _NO_LOOP
    key = (
        "$TRAIN_CONFIG"
        if config is None
        else (
            config.run_name,
            config.trajectories.model_dump_json(),
            tuple(config.env_server_urls),
        ),
        settings,
    )
    with _SINK_LOCK:
        per_loop = _SINKS.setdefault(loop, {})
        sink = per_loop.get(key)
        if sink is None:
            sink = make_sink(config, settings)  # None: reads $TRAIN_CONFIG once, here
            per_loop[key] = sink
        return sink
