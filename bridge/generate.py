"""slime's custom generate hook: `--custom-generate-function-path bridge.generate.generate`.

One call runs one multi-turn episode against an ORS environment and returns the same
`Sample`, filled token-exactly (prompt + sampled + appended ids, loss mask, rollout
logprobs, replay fields), with `reward` set (slime then skips its reward model) and the
episode's counters in `sample.metadata`. Failures never raise into slime's rollout loop.

Under slime's control flow:
  * An episode lost to the environment, the network or the engine (an infra failure) is
    replayed from scratch on a new session, `EPISODE_ATTEMPTS` tries in all. If every try
    fails, the sample is FAILED with `metadata["infra_failure"] = True`, reward 0.0,
    `remove_sample=True` and a zero loss mask, and `bridge.filters.drop_infra_failures`
    (run.sh wires it as slime's `--dynamic-sampling-filter-path`) drops its whole group, so
    it never enters GRPO normalisation and slime refills the batch. A model failure (wrong
    answer, malformed calls, truncation) is not an infra failure and keeps its reward.
  * slime's abort stops the episode before its next turn (or episode start); the sample is
    ABORTED with no reward. With `--partial-rollout` the episode is suspended (bridge.partial)
    and resumes where it stopped when slime hands the sample back; everything sampled before
    is marked off-policy when `--mask-offpolicy-in-partial-rollout` is set.
  * In fully-async mode slime's worker never runs the dynamic filter and never aborts: an infra
    failure and an engine abort (a weight update) are handed back to the worker as ABORTED
    samples, which it requeues (`bridge.fully_async` says how and why).
  * `evaluation=True` uses slime's eval budgets (`eval_max_context_len`, the eval
    `max_new_tokens`).
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
from bridge.engine import EngineClient
from bridge.env_client import open_session
from bridge.episode import Budget, Episode, EpisodeResult, TokenModel
from bridge.errors import BridgeError
from bridge.fully_async import (
    clear_requeues,
    episode_kept,
    hand_back_infra_failure,
    note_worker_loop,
)
from bridge.partial import suspended_episodes
from bridge.provenance import tokenizer_fingerprint
from bridge.sample import (
    complete_replay_fields,
    fill_sample,
    reset_response,
    status_value,
    zero_loss,
)
from bridge.slime_state import fully_async, mask_offpolicy, partial_rollout, slime_aborted
from bridge.slime_types import SlimeArgs, SlimeSample
from bridge.tokens import TokenLedger
from bridge.trajectory import EpisodeTokens, episode_trajectory
from contract.config import TrainConfig, config_from_env
from contract.errors import ConfigError
from contract.task import TaskMeta
from contract.vocab import HANDED_BACK_STOPS, EpisodeStatus, StopReason

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
    "infra_failure",
    "weight_versions",
    "engine_aborts",
    "episode_attempts",
    "retried_failures",
    "resumed",
    "episode_key",
)
EPISODE_ATTEMPTS = 3
"""Tries per sample when episodes are lost to the env, the network or the engine."""

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


def task_metadata(sample: SlimeSample) -> dict[str, Any]:
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


def _engine(args: SlimeArgs) -> EngineClient:
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
    """The trajectory sink for this config on this loop, or None (no config, disabled, or
    unavailable)."""
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


def _fail_early(
    sample: SlimeSample, message: str, eos_id: int | None, args: SlimeArgs | None = None
) -> SlimeSample:
    """A sample that could not even start an episode: no loss, reward 0.0, removed (an infra
    failure: its group is dropped by bridge.filters)."""
    prompt = (
        list(sample.tokens)
        if getattr(sample, "tokens", None)
        else ([eos_id] if eos_id is not None else [0])
    )
    fill_sample(
        sample, _placeholder_ledger(prompt, eos_id if eos_id is not None else prompt[-1]), args
    )
    zero_loss(sample)
    sample.reward = 0.0
    sample.remove_sample = True
    sample.status = status_value(sample, EpisodeStatus.FAILED.name)
    md = sample.metadata if isinstance(sample.metadata, dict) else {}
    md.update(
        stop_reason=StopReason.SETUP_ERROR.value,
        failure_message=message,
        infra_failure=True,
        env_failure=0,
        engine_failure=0,
        num_turns=0,
        num_tool_calls=0,
        tool_errors={},
        turn_rewards=[],
        drift_count=0,
        weight_versions=[],
    )
    sample.metadata = md
    _warn_once(f"bridge: {message}")
    return sample


def _context_budget(args: SlimeArgs, params: dict[str, Any], evaluation: bool) -> Budget:
    """slime's budgets: the rollout ones, or for evaluation its eval_* ones (falling back as slime
    does)."""
    if evaluation:
        return Budget(
            max_context_len=getattr(args, "eval_max_context_len", None)
            or getattr(args, "rollout_max_context_len", None)
            or None,
            max_response_len=params.get("max_new_tokens")
            or getattr(args, "eval_max_response_len", None)
            or getattr(args, "rollout_max_response_len", None)
            or None,
        )
    return Budget(
        max_context_len=getattr(args, "rollout_max_context_len", None) or None,
        max_response_len=getattr(args, "rollout_max_response_len", None) or None,
    )


def _episode_key(sample: SlimeSample, md: dict[str, Any]) -> str:
    """One key per sample for its whole life (session pinning, routing, partial-rollout resume)."""
    key = getattr(sample, "session_id", None) or md.get("episode_key") or uuid.uuid4().hex
    md["episode_key"] = key
    return str(key)


def _is_aborted(sample: SlimeSample) -> bool:
    status = getattr(sample, "status", None)
    aborted = getattr(type(sample).Status, EpisodeStatus.ABORTED.name, None)
    return status is not None and status == aborted


async def _resumable(
    args: SlimeArgs, sample: SlimeSample, key: str, params: dict[str, Any]
) -> Episode | None:
    """The suspended episode this ABORTED sample left, ready to continue; None: start afresh."""
    if not _is_aborted(sample):
        return None
    episode = suspended_episodes().take(key, list(sample.tokens or []))
    if episode is None:
        return None
    if not await episode.session.alive():
        log.info("partial rollout: the env session of %s is gone; restarting the episode", key)
        await episode.session.close()
        return None
    episode.sampling_params = params
    if mask_offpolicy(args) and episode.ledger is not None:
        episode.ledger.mark_offpolicy()
    return episode


async def generate(
    args: SlimeArgs, sample: SlimeSample, sampling_params: dict[str, Any], evaluation: bool = False
) -> SlimeSample:
    """Run one episode for `sample` and return it filled (slime's custom generate function)."""
    hand_back = fully_async(args) and not evaluation
    if hand_back:
        note_worker_loop()
    sample = await _episode_sample(args, sample, sampling_params, evaluation, hand_back)
    if hand_back:
        _keep_out_of_groups(args, sample)
    return sample


def _keep_out_of_groups(args: SlimeArgs, sample: SlimeSample) -> None:
    """Fully-async: a sample lost to the infrastructure goes back to slime's worker."""
    md = sample.metadata if isinstance(sample.metadata, dict) else {}
    if md.get("infra_failure"):
        hand_back_infra_failure(args, sample)
    elif md.get("stop_reason") not in HANDED_BACK_STOPS:
        episode_kept()
        clear_requeues(sample)


async def _episode_sample(
    args: SlimeArgs,
    sample: SlimeSample,
    sampling_params: dict[str, Any],
    evaluation: bool,
    hand_back: bool,
) -> SlimeSample:
    """The episode played into `sample` (every failure written into it as data)."""
    try:
        md = task_metadata(sample)
        cfg = train_config()
        task = TaskMeta.model_validate(md)
    except (ConfigError, ValidationError, ValueError) as e:
        msg = " ".join(str(e).split())
        return _fail_early(sample, f"cannot start episode: {msg[:500]}", None, args)
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
            args,
        )
    params = dict(sampling_params)  # slime shares the eval dict between samples: never mutate it
    key = _episode_key(sample, md)
    keep = (partial_rollout(args) or hand_back) and not evaluation
    try:
        resumed = await _resumable(args, sample, key, params)
        play = _Play(
            args, task, cfg, renderer, params, key, _context_budget(args, params, evaluation)
        )
        play.hand_back_engine_aborts = hand_back
        result = await play.run(resumed, keep)
    except _SetupError as e:
        return _fail_early(sample, str(e), renderer.eos_token_id, args)
    # a bug, not an env/engine failure: still never crash slime's rollout loop
    except Exception as e:
        log.exception("bridge: episode raised")
        return _fail_early(
            sample, f"bridge error: {type(e).__name__}: {e}", renderer.eos_token_id, args
        )
    try:
        _write_sample(args, sample, result, renderer, play)
    except Exception as e:  # e.g. slime's own Sample validation: report, do not crash the rollout
        if result.suspended and play.episode is not None:
            await play.episode.session.close()
        return _fail_early(
            sample, f"cannot fill the sample: {type(e).__name__}: {e}", renderer.eos_token_id, args
        )
    if result.suspended and play.episode is not None:
        suspended_episodes().put(key, play.episode, list(sample.tokens))
    elif result.stop_reason not in HANDED_BACK_STOPS:
        _submit(cfg, args, sample, task, result, evaluation, renderer, params)
    return sample


class _SetupError(BridgeError):
    """An env session could not even be described (no server URL, a missing secret)."""


class _Play:
    """One sample's episode tries: a resumed or new episode, replayed on infra failures."""

    def __init__(
        self,
        args: SlimeArgs,
        task: TaskMeta,
        cfg: TrainConfig | None,
        renderer: ChatRenderer,
        params: dict[str, Any],
        key: str,
        budget: Budget,
    ) -> None:
        self.args, self.task, self.cfg, self.renderer = args, task, cfg, renderer
        self.params, self.key, self.budget = params, key, budget
        self.episode: Episode | None = None
        self.attempts = 0
        self.resumed = False
        self.failures: list[str] = []
        self.hand_back_engine_aborts = False
        """Fully-async mode: an engine abort ends the episode for slime's worker to requeue."""
        self.env_time = 0.0
        """Seconds spent on the environment during this call (slime's non_generation_time)."""

    def _new_episode(self, attempt: int) -> Episode:
        urls = self.cfg.env_server_urls if self.cfg is not None else []
        # a retry gets a new session, on another server when there are several
        session_key = self.key if attempt == 0 else f"{self.key}/retry{attempt}"
        try:
            session = open_session(self.task, urls, session_key)
        except Exception as e:
            raise _SetupError(f"cannot open env session: {e}") from None
        routed_experts = bool(getattr(self.args, "use_rollout_routing_replay", False))
        model = TokenModel(_engine(self.args), self.renderer, self.key, routed_experts)
        return Episode(
            session,
            model,
            self.task,
            self.params,
            self.budget,
            hand_back_engine_aborts=self.hand_back_engine_aborts,
        )

    async def run(self, resumed: Episode | None, keep: bool) -> EpisodeResult:
        """The first try that is not lost to the infrastructure, else the last one."""
        for attempt in range(EPISODE_ATTEMPTS):
            if attempt == 0 and resumed is not None:
                episode, self.resumed = resumed, True
            else:
                episode = self._new_episode(attempt)
            self.episode = episode
            self.attempts = attempt + 1
            env_before = episode.t_env
            result = await episode.run(keep_on_abort=keep)
            self.env_time += episode.t_env - env_before
            if not result.infra_failure or attempt + 1 == EPISODE_ATTEMPTS or slime_aborted():
                return result
            self.failures.append(f"{result.stop_reason.value}: {(result.failure or '')[:300]}")
            log.warning(
                "bridge: episode %s lost (%s); replaying it (try %d of %d)",
                self.key,
                result.failure,
                attempt + 2,
                EPISODE_ATTEMPTS,
            )
        raise AssertionError("unreachable")


async def close_clients() -> None:
    """Close this event loop's engine and env HTTP clients and suspended episodes (tests and
    benchmarks call it at the end)."""
    from bridge.env_client import close_shared_http

    await suspended_episodes().close_all()
    for client in _ENGINES.pop(asyncio.get_running_loop(), {}).values():
        await client.close()
    await close_shared_http()


def _write_sample(
    args: SlimeArgs,
    sample: SlimeSample,
    result: EpisodeResult,
    renderer: ChatRenderer,
    play: _Play,
) -> None:
    ledger = result.ledger
    aborted = result.stop_reason in HANDED_BACK_STOPS
    if aborted:
        # back to slime unfinished: no reward; with --partial-rollout it comes back here later
        if ledger is not None:
            fill_sample(sample, ledger, args)
        else:
            reset_response(sample)
            sample.loss_mask, sample.rollout_log_probs = [], []
            complete_replay_fields(sample, args)
        sample.reward = None
    else:
        if ledger is None or ledger.response_length == 0:
            # Nothing was generated (failure before the first turn): slime still needs one
            # response token; it is not trained.
            eos = renderer.eos_token_id if renderer.eos_token_id is not None else 0
            prompt = ledger.prompt_ids if ledger is not None else (list(sample.tokens) or [eos])
            ledger = _placeholder_ledger(prompt, eos)
        elif getattr(args, "use_rollout_routing_replay", False):
            ledger = ledger.sampled_only_end()  # routed experts cover up to the last sampled token
        fill_sample(sample, ledger, args)
        failed = result.infra_failure
        if failed and result.failure:  # counted in metadata; logged once per distinct message
            _warn_once(f"bridge: episode failed ({result.stop_reason}): {result.failure[:300]}")
        sample.reward = 0.0 if failed else result.reward.reward
        if failed:
            zero_loss(sample)
            sample.remove_sample = True
    sample.status = status_value(sample, result.status.name)
    sample.non_generation_time = play.env_time
    md = sample.metadata
    md.update(
        stop_reason=result.stop_reason.value,
        num_turns=result.num_turns,
        num_tool_calls=result.num_tool_calls,
        tool_errors=result.tool_errors,
        turn_rewards=result.turn_rewards,
        reward_unclamped=result.reward.unclamped,
        env_finished=result.env_finished,
        drift_count=ledger.drift_count if ledger is not None else 0,
        infra_failure=result.infra_failure,
        env_failure=int(result.stop_reason == StopReason.ENV_ERROR),
        engine_failure=int(result.stop_reason == StopReason.ENGINE_ERROR),
        failure_message=result.failure,
        bridge_timings=result.timings,
        response_tokens=sample.response_length,
        trained_tokens=sum(sample.loss_mask or ()),
        env_url=result.session_url,
        weight_versions=result.weight_versions,
        engine_aborts=result.engine_aborts,
        episode_attempts=play.attempts,
        retried_failures=play.failures,
        resumed=int(md.get("resumed") or 0) + int(play.resumed),
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
    args: SlimeArgs,
    sample: SlimeSample,
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
        traj = episode_trajectory(
            cfg.run_name if cfg is not None else "slime-envs",
            task,
            result,
            reward=float(sample.reward),
            status=sample.status.value,
            tokens=EpisodeTokens(
                token_ids=list(sample.tokens),
                prompt_length=len(sample.tokens) - sample.response_length,
                loss_mask=list(sample.loss_mask or ()),
                logprobs=list(sample.rollout_log_probs or []),
                drift_count=sample.metadata.get("drift_count", 0),
            ),
            tokenizer=tokenizer_fingerprint(renderer.tokenizer),
            sampling_params=sampling_params,
            evaluation=evaluation,
            group_index=getattr(sample, "group_index", None),
            sample_index=getattr(sample, "index", None),
            extra={
                "session_url": result.session_url,
                "failure": result.failure,
                "infra_failure": result.infra_failure,
                "tokenizer": getattr(args, "hf_checkpoint", None),
                "weight_versions": list(result.weight_versions),
                "episode_attempts": sample.metadata.get("episode_attempts"),
                "resumed": sample.metadata.get("resumed", 0),
            },
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
