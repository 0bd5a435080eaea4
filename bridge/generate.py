"""slime's custom generate hook: `--custom-generate-function-path bridge.generate.generate`.

One call runs one multi-turn episode against an ORS environment and returns the same
`Sample`, filled token-exactly (prompt + sampled + appended ids, loss mask, rollout
logprobs), with `reward` set (slime then skips its reward model) and the episode's
counters in `sample.metadata`. Failures never raise into slime's rollout loop: an env or
engine failure gives reward 0.0, `remove_sample=True` and a zero loss mask.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
import weakref
from typing import Any

import orjson
from pydantic import ValidationError

from bridge.chat import ChatRenderer, get_renderer
from bridge.config import ConfigError, TrainConfig, config_from_env
from bridge.engine import EngineClient
from bridge.env_client import open_session
from bridge.episode import Budget, Episode, EpisodeResult, TokenModel
from bridge.provenance import episode_provenance, tokenizer_fingerprint, weight_versions
from bridge.task import TaskMeta
from bridge.tokens import TokenLedger, fill_sample, status_value, zero_loss
from bridge.trajectory import Trajectory

log = logging.getLogger(__name__)

# Keys this function writes into sample.metadata (bridge/metrics.py reads them; keep stable).
METADATA_KEYS = (
    "stop_reason",
    "num_turns",
    "num_tool_calls",
    "tool_errors",
    "turn_rewards",
    "reward_unclamped",
    "env_finished",
    "drift_count",
    "env_failure",
    "engine_failure",
    "failure_message",
    "bridge_timings",
    "response_tokens",
    "trained_tokens",
    "env_url",
    "tripwires",
    "tripwire_keys",
)

_CONFIG: dict[str, TrainConfig | None] = {}
_ENGINES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, EngineClient]] = (
    weakref.WeakKeyDictionary()
)
_RENDERER_TASKS: dict[tuple[Any, ...], asyncio.Future[ChatRenderer]] = {}
_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED and len(_WARNED) < 1000:
        _WARNED.add(message)
        log.error(message)


def train_config() -> TrainConfig | None:
    """$TRAIN_CONFIG, loaded once per process (per path)."""
    path = os.environ.get("TRAIN_CONFIG", "")
    if path not in _CONFIG:
        _CONFIG[path] = config_from_env() if path else None
    return _CONFIG[path]


def task_metadata(sample: Any) -> dict[str, Any]:
    """`sample.metadata` as a dict (old data stores a JSON string); the sample keeps the dict."""
    md = sample.metadata
    if md is None:
        md = {}
    elif isinstance(md, (str, bytes)):
        md = orjson.loads(md) if md else {}
        if not isinstance(md, dict):
            raise ValueError(f"sample metadata JSON is a {type(md).__name__}, expected an object")
    elif not isinstance(md, dict):
        md = dict(md)
    sample.metadata = md
    return md


async def _renderer(path: str, thinking: bool, system_prompt: str | None) -> ChatRenderer:
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
    """Opt-in (BRIDGE_GC_FREEZE=1): once the tokenizer is loaded, move the long-lived heap out of the
    cyclic GC's reach (gc.freeze), so a full collection during rollouts does not rescan transformers,
    torch and the vocabulary: the longest loop stall in bench/bridge.py drops from ~250 ms to ~100 ms.
    Process-wide, hence off by default."""
    if os.environ.get("BRIDGE_GC_FREEZE") == "1" and not _FROZEN:
        _FROZEN.append(True)
        import gc

        gc.freeze()


_FROZEN: list[bool] = []


def _engine(args: Any) -> EngineClient:
    url = f"http://{args.sglang_router_ip}:{args.sglang_router_port}"
    loop = asyncio.get_running_loop()
    per_loop = _ENGINES.setdefault(loop, {})
    client = per_loop.get(url)
    if client is None:
        client = per_loop[url] = EngineClient(url)
    return client


_SINK_OVERRIDE: list[Any] = []


def set_trajectory_sink(sink: Any | None) -> None:
    """Send finished episodes to `sink` instead of the configured one (None: back to the config)."""
    _SINK_OVERRIDE[:] = [sink] if sink is not None else []


def _sink(cfg: TrainConfig | None) -> Any:
    """The trajectory sink for this config on this loop, or None (no config, disabled, or unavailable)."""
    if _SINK_OVERRIDE:
        return _SINK_OVERRIDE[0]
    if cfg is None or not cfg.trajectories.enabled:
        return None
    try:
        from bridge.trajectory_sink import get_sink  # cached per process and event loop

        return get_sink(cfg)
    except Exception as e:  # never let trajectory delivery break a rollout
        _warn_once(
            f"trajectory sink unavailable, episodes will not be recorded: {type(e).__name__}: {e}"
        )
        return None


def _placeholder_ledger(prompt: list[int], token: int) -> TokenLedger:
    """A ledger whose whole response is one untrained `token` (slime needs at least one)."""
    ledger = TokenLedger(prompt)
    ledger.add_appended([token], "")
    return ledger


def _fail_early(sample: Any, message: str, eos_id: int | None) -> Any:
    """A sample that could not even start an episode: no loss, reward 0.0, removed."""
    prompt = (
        list(sample.tokens)
        if getattr(sample, "tokens", None)
        else ([eos_id] if eos_id is not None else [0])
    )
    fill_sample(
        sample, _placeholder_ledger(prompt, eos_id if eos_id is not None else prompt[-1]), None
    )
    zero_loss(sample)
    sample.reward = 0.0
    sample.remove_sample = True
    sample.status = status_value(sample, "FAILED")
    md = sample.metadata if isinstance(sample.metadata, dict) else {}
    md.update(
        stop_reason="setup_error",
        failure_message=message,
        env_failure=0,
        engine_failure=0,
        num_turns=0,
        num_tool_calls=0,
        tool_errors={},
        turn_rewards=[],
        drift_count=0,
    )
    sample.metadata = md
    _warn_once(f"bridge: {message}")
    return sample


def _context_budget(args: Any) -> Budget:
    return Budget(
        max_context_len=getattr(args, "rollout_max_context_len", None) or None,
        max_response_len=getattr(args, "rollout_max_response_len", None) or None,
    )


async def generate(
    args: Any, sample: Any, sampling_params: dict[str, Any], evaluation: bool = False
) -> Any:
    """Run one episode for `sample` and return it filled (slime's custom generate function)."""
    try:
        md = task_metadata(sample)
        cfg = train_config()
        task = TaskMeta.model_validate(md)
    except (ConfigError, ValidationError, ValueError) as e:
        msg = " ".join(str(e).split())
        return _fail_early(sample, f"cannot start episode: {msg[:500]}", None)
    thinking = cfg.thinking if cfg is not None else bool(md.get("thinking", False))
    system_prompt = cfg.system_prompt if cfg is not None else md.get("system_prompt")
    try:
        renderer = await _renderer(args.hf_checkpoint, thinking, system_prompt)
    except Exception as e:
        return _fail_early(
            sample,
            f"cannot load tokenizer/chat template from {args.hf_checkpoint!r}: "
            f"{type(e).__name__}: {e}",
            None,
        )
    params = dict(sampling_params)  # slime shares the eval dict between samples: never mutate it
    key = getattr(sample, "session_id", None) or uuid.uuid4().hex
    urls = cfg.env_server_urls if cfg is not None else []
    try:
        session = open_session(task, urls, key)
    except Exception as e:
        return _fail_early(sample, f"cannot open env session: {e}", renderer.eos_token_id)
    model = TokenModel(_engine(args), renderer, key)
    episode = Episode(session, model, task, params, _context_budget(args))
    try:
        result = await episode.run()
    # a bug, not an env/engine failure: still never crash slime's rollout loop
    except Exception as e:
        log.exception("bridge: episode raised")
        return _fail_early(sample, f"bridge error: {type(e).__name__}: {e}", renderer.eos_token_id)
    try:
        _write_sample(args, sample, result, renderer)
    except Exception as e:  # e.g. slime's own Sample validation: report, do not crash the rollout
        return _fail_early(
            sample, f"cannot fill the sample: {type(e).__name__}: {e}", renderer.eos_token_id
        )
    _submit(cfg, args, sample, task, result, evaluation, renderer, params)
    return sample


async def close_clients() -> None:
    """Close this event loop's engine and env HTTP clients (tests and benchmarks call it at the end)."""
    from bridge.env_client import close_shared_http

    for client in _ENGINES.pop(asyncio.get_running_loop(), {}).values():
        await client.close()
    await close_shared_http()


def _write_sample(args: Any, sample: Any, result: EpisodeResult, renderer: ChatRenderer) -> None:
    ledger = result.ledger
    if ledger is None or ledger.response_length == 0:
        # Nothing was generated (failure before the first turn, or an abort with no tokens):
        # slime still needs one response token; it is not trained.
        eos = renderer.eos_token_id if renderer.eos_token_id is not None else 0
        prompt = ledger.prompt_ids if ledger is not None else (list(sample.tokens) or [eos])
        ledger = _placeholder_ledger(prompt, eos)
    fill_sample(sample, ledger, args)
    failed = result.status == "failed"
    if failed and result.failure:  # counted in metadata; logged once per distinct message
        _warn_once(f"bridge: episode failed ({result.stop_reason}): {result.failure[:300]}")
    sample.status = status_value(sample, result.status.upper())
    sample.reward = 0.0 if failed else result.reward.reward
    if failed:
        zero_loss(sample)
        sample.remove_sample = True
    md = sample.metadata
    md.update(
        stop_reason=result.stop_reason,
        num_turns=result.num_turns,
        num_tool_calls=result.num_tool_calls,
        tool_errors=result.tool_errors,
        turn_rewards=result.turn_rewards,
        reward_unclamped=result.reward.unclamped,
        env_finished=result.env_finished,
        drift_count=ledger.drift_count,
        env_failure=int(result.stop_reason == "env_error"),
        engine_failure=int(result.stop_reason == "engine_error"),
        failure_message=result.failure,
        bridge_timings=result.timings,
        response_tokens=sample.response_length,
        trained_tokens=sum(sample.loss_mask),
        env_url=result.session_url,
    )
    if result.env_report.checked:  # the env's verdict; bridge/metrics.py counts them
        md.update(
            tripwires=list(result.env_report.tripwires),
            tripwire_keys=dict(result.env_report.tripwire_keys),
        )
    else:  # never a verdict left from an earlier attempt of this sample
        md.pop("tripwires", None)
        md.pop("tripwire_keys", None)


def _submit(
    cfg: TrainConfig | None,
    args: Any,
    sample: Any,
    task: TaskMeta,
    result: EpisodeResult,
    evaluation: bool,
    renderer: ChatRenderer,
    sampling_params: dict[str, Any],
) -> None:
    """Hand the finished episode to the trajectory sink; never waits, never raises."""
    try:
        sink = _sink(cfg)
        if sink is None:
            return
        report = result.env_report
        segments = result.ledger.segments if result.ledger is not None else []
        provenance = episode_provenance(
            env=task.env,
            split=task.split,
            index=task.index,
            task_spec=task.task_spec,
            env_reported=report.provenance,
            tokenizer=tokenizer_fingerprint(renderer.tokenizer),
            sampling_params=sampling_params,
            turn_weight_versions=weight_versions(s.meta_info for s in segments if s.trainable),
        )
        traj = Trajectory(
            run_name=cfg.run_name if cfg is not None else "slime-envs",
            env=task.env,
            split=task.split,
            index=task.index,
            task_spec=task.task_spec,
            messages=result.messages,
            turn_rewards=list(result.turn_rewards),
            reward=float(sample.reward),
            reward_reduction=task.reward.reward_reduction,
            stop_reason=result.stop_reason,
            status=sample.status.value,
            num_turns=result.num_turns,
            num_tool_calls=result.num_tool_calls,
            tool_errors=dict(result.tool_errors),
            drift_count=sample.metadata.get("drift_count", 0),
            token_ids=list(sample.tokens),
            prompt_length=len(sample.tokens) - sample.response_length,
            loss_mask=list(sample.loss_mask),
            logprobs=list(sample.rollout_log_probs or []),
            timings=dict(result.timings),
            evaluation=evaluation,
            group_index=getattr(sample, "group_index", None),
            sample_index=getattr(sample, "index", None),
            extra={
                "session_url": result.session_url,
                "failure": result.failure,
                "tokenizer": getattr(args, "hf_checkpoint", None),
            },
            provenance=provenance,
            tripwires=list(report.tripwires) if report.checked else None,
            tripwire_keys=dict(report.tripwire_keys),
            drift=list(result.drift),
        )
        sink.submit(traj)
    except Exception as e:
        _warn_once(f"trajectory not recorded: {type(e).__name__}: {e}")


__all__ = [
    "METADATA_KEYS",
    "close_clients",
    "generate",
    "set_trajectory_sink",
    "task_metadata",
    "train_config",
]
