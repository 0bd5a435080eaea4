"""Finished episodes handed to the trajectory sink: the configured one (bridge.trajectory_sink,
one per process and event loop) or one a caller sets; never waits, never raises into the
rollout."""

from __future__ import annotations

from typing import Any

from bridge.chat import ChatRenderer
from bridge.episode import EpisodeResult
from bridge.provenance import tokenizer_fingerprint
from bridge.rollout_process import warn_once
from bridge.slime_types import SlimeArgs, SlimeSample
from bridge.trajectory import EpisodeTokens, episode_trajectory
from contract.config import TrainConfig
from contract.task import TaskMeta

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
        warn_once(
            f"trajectory sink unavailable, episodes will not be recorded: {type(e).__name__}: {e}"
        )
        return None


def submit_episode(
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
        warn_once(f"trajectory not recorded: {type(e).__name__}: {e}")
