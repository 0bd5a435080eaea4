"""An episode's outcome written into slime's `Sample`: tokens, loss mask, logprobs and replay
fields (bridge.sample), reward, status and the counters in `sample.metadata` (METADATA_KEYS,
read by bridge.metrics); and the placeholder sample of an episode that could not start.

An infra failure (`EpisodeResult.infra_failure`) gets reward 0.0, `remove_sample=True` and a
zero loss mask, so even a group the dynamic filter missed never trains on it; slime's abort
leaves the sample with no reward.
"""

from __future__ import annotations

from bridge.chat import ChatRenderer
from bridge.episode import EpisodeResult
from bridge.play import Play
from bridge.rollout_process import warn_once
from bridge.sample import (
    complete_replay_fields,
    fill_sample,
    reset_response,
    status_value,
    zero_loss,
)
from bridge.slime_types import SlimeArgs, SlimeSample
from bridge.tokens import TokenLedger
from contract.vocab import HANDED_BACK_STOPS, EpisodeStatus, StopReason

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
    "reward_parts",
    "infra_failure",
    "weight_versions",
    "engine_aborts",
    "episode_attempts",
    "retried_failures",
    "resumed",
    "suspended",
    "partial_restarts",
    "offpolicy_tokens",
    "episode_key",
)


def placeholder_ledger(prompt: list[int], token: int) -> TokenLedger:
    """A ledger whose whole response is one untrained `token` (slime needs at least one)."""
    ledger = TokenLedger(prompt)
    ledger.add_appended([token], "")
    return ledger


def fail_early(
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
        sample, placeholder_ledger(prompt, eos_id if eos_id is not None else prompt[-1]), args
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
        suspended=False,
    )
    sample.metadata = md
    warn_once(f"bridge: {message}")
    return sample


def write_sample(
    args: SlimeArgs,
    sample: SlimeSample,
    result: EpisodeResult,
    renderer: ChatRenderer,
    play: Play,
) -> None:
    """Write the episode `result` into `sample` (the sample slime gets back from this call)."""
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
            ledger = placeholder_ledger(prompt, eos)
        elif getattr(args, "use_rollout_routing_replay", False):
            ledger = ledger.sampled_only_end()  # routed experts cover up to the last sampled token
        fill_sample(sample, ledger, args)
        failed = result.infra_failure
        if failed and result.failure:  # counted in metadata; logged once per distinct message
            warn_once(f"bridge: episode failed ({result.stop_reason}): {result.failure[:300]}")
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
        suspended=result.suspended,
        partial_restarts=int(md.get("partial_restarts") or 0) + int(play.restarted),
        # response tokens sampled before the last partial-rollout resume, masked off-policy with
        # --mask-offpolicy-in-partial-rollout (slime's rule: what the response held at the resume)
        offpolicy_tokens=ledger.offpolicy_len if ledger is not None else 0,
        reward_parts=dict(result.reward.parts),
    )
    if result.env_report.checked:  # the env's verdict; bridge/metrics.py counts them
        md.update(
            tripwires=list(result.env_report.tripwires),
            tripwire_keys=dict(result.env_report.tripwire_keys),
        )
    else:  # never a verdict left from an earlier attempt of this sample
        md.pop("tripwires", None)
        md.pop("tripwire_keys", None)
