"""slime's custom generate hook: `--custom-generate-function-path bridge.generate.generate`.

One call runs one multi-turn episode against an ORS environment and returns the same
`Sample`, filled token-exactly (prompt + sampled + appended ids, loss mask, rollout
logprobs, replay fields), with `reward` set (slime then skips its reward model) and the
episode's counters in `sample.metadata`. Failures never raise into slime's rollout loop.

Under slime's control flow:
  * An episode lost to the environment, the network or the engine (an infra failure) is
    replayed from scratch on a new session (bridge.play), `EPISODE_ATTEMPTS` tries in all. If
    every try fails, the sample is FAILED with `metadata["infra_failure"] = True`, reward 0.0,
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

import logging
import uuid
from typing import Any

import orjson
from pydantic import ValidationError

from bridge.episode import Budget, Episode
from bridge.errors import SessionSetupError
from bridge.fully_async import (
    clear_requeues,
    episode_kept,
    hand_back_infra_failure,
    note_worker_loop,
)
from bridge.outcome import METADATA_KEYS, fail_early, write_sample
from bridge.partial import suspended_episodes
from bridge.play import Play
from bridge.rollout_process import cached_renderer, close_clients, train_config
from bridge.slime_state import fully_async, mask_offpolicy, partial_rollout
from bridge.slime_types import SlimeArgs, SlimeSample
from bridge.trajectory_handoff import set_trajectory_sink, submit_episode
from contract.errors import ConfigError
from contract.task import TaskMeta
from contract.vocab import HANDED_BACK_STOPS, EpisodeStatus

__all__ = [
    "METADATA_KEYS",
    "close_clients",
    "generate",
    "set_trajectory_sink",
    "task_metadata",
    "train_config",
]

log = logging.getLogger(__name__)


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
        await episode.close()
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
        return fail_early(sample, f"cannot start episode: {msg[:500]}", None, args)
    thinking = cfg.thinking if cfg is not None else bool(md.get("thinking", False))
    system_prompt = cfg.system_prompt if cfg is not None else md.get("system_prompt")
    try:
        renderer = await cached_renderer(args.hf_checkpoint, thinking, system_prompt)
    except Exception as e:
        return fail_early(
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
        play = Play(
            args, task, cfg, renderer, params, key, _context_budget(args, params, evaluation)
        )
        # a suspended episode that could not be resumed starts over (issue 21.7: counted)
        play.hand_back_engine_aborts = hand_back
        play.restarted = resumed is None and _is_aborted(sample) and bool(md.get("suspended"))
        result = await play.run(resumed, keep)
    except SessionSetupError as e:
        return fail_early(sample, str(e), renderer.eos_token_id, args)
    # a bug, not an env/engine failure: still never crash slime's rollout loop
    except Exception as e:
        log.exception("bridge: episode raised")
        return fail_early(
            sample, f"bridge error: {type(e).__name__}: {e}", renderer.eos_token_id, args
        )
    try:
        write_sample(args, sample, result, renderer, play)
    except Exception as e:  # e.g. slime's own Sample validation: report, do not crash the rollout
        if result.suspended and play.episode is not None:
            await play.episode.close()
        return fail_early(
            sample, f"cannot fill the sample: {type(e).__name__}: {e}", renderer.eos_token_id, args
        )
    if result.suspended and play.episode is not None:
        suspended_episodes().put(key, play.episode, list(sample.tokens))
    elif result.stop_reason not in HANDED_BACK_STOPS:
        submit_episode(cfg, args, sample, task, result, evaluation, renderer, params)
    return sample
