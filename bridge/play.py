"""One sample's play: a resumed or new episode, replayed from scratch on a new env session when
the environment loses it.

Only an episode whose env session is gone is replayed (`ENV_ERROR`: the env server failed its
calls past their retries, or lost the session); an engine outage was already retried request by
request (bridge/engine.py) and the session was fine, so an engine error is not replayed. The
replays stay inside the sample's GRPO group: a dropped group makes slime draw a whole
over-sampling batch to refill it (issue 21.6), so a short env outage is waited out. Tries are
spaced by a doubling backoff and go on while less than `$BRIDGE_REPLAY_WINDOW_S` (default
`REPLAY_WINDOW_S`) passed since the first loss, `EPISODE_ATTEMPTS` tries at least; with a
window of 0 those tries follow each other at once. slime's abort ends the replays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from bridge.chat import ChatRenderer
from bridge.env_client import open_session
from bridge.env_seconds import env_seconds
from bridge.episode import Budget, Episode, EpisodeResult
from bridge.errors import SessionSetupError
from bridge.rollout_process import engine_client
from bridge.slime_state import slime_aborted
from bridge.slime_types import SlimeArgs
from bridge.token_model import TokenModel
from contract.config import TrainConfig
from contract.task import TaskMeta
from contract.vocab import StopReason

log = logging.getLogger(__name__)

EPISODE_ATTEMPTS = 3
"""Tries per sample at least when the environment loses its episodes."""
REPLAY_WINDOW_S = 30.0
"""Seconds after an episode's first loss during which it is still replayed ($BRIDGE_REPLAY_WINDOW_S
overrides)."""
REPLAY_WINDOW_ENV = "BRIDGE_REPLAY_WINDOW_S"
REPLAY_BACKOFF_S = 0.5
"""First wait before a replay (doubled each time, at most REPLAY_BACKOFF_MAX_S)."""
REPLAY_BACKOFF_MAX_S = 8.0
ABORT_POLL_S = 0.05
"""How often a wait before a replay looks at slime's abort state."""


def replay_window_s() -> float:
    """$BRIDGE_REPLAY_WINDOW_S, else REPLAY_WINDOW_S (a bad value: the default)."""
    return env_seconds(REPLAY_WINDOW_ENV, REPLAY_WINDOW_S)


def replay_delay(tries: int, since_loss: float, window: float) -> float | None:
    """Seconds to wait before another try after `tries` lost ones, the first `since_loss` s ago;
    None: no more tries."""
    if tries >= EPISODE_ATTEMPTS and since_loss >= window:
        return None
    if window <= 0:
        return 0.0
    backoff = min(REPLAY_BACKOFF_S * 2.0 ** (tries - 1), REPLAY_BACKOFF_MAX_S)
    return min(backoff, max(window - since_loss, 0.0))


class Play:
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
        self.restarted = False
        """A suspended episode of this sample was lost (its session gone): it starts over."""
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
            raise SessionSetupError(f"cannot open env session: {e}") from None
        routed_experts = bool(getattr(self.args, "use_rollout_routing_replay", False))
        model = TokenModel(engine_client(self.args), self.renderer, self.key, routed_experts)
        return Episode(
            session,
            model,
            self.task,
            self.params,
            self.budget,
            hand_back_engine_aborts=self.hand_back_engine_aborts,
        )

    async def run(self, resumed: Episode | None, keep: bool) -> EpisodeResult:
        """The first try the environment does not lose, else the last one."""
        first_loss: float | None = None
        window = replay_window_s()
        attempt = 0
        while True:
            if attempt == 0 and resumed is not None:
                episode, self.resumed = resumed, True
            else:
                episode = self._new_episode(attempt)
            self.episode = episode
            self.attempts = attempt + 1
            env_before = episode.t_env
            result = await episode.run(keep_on_abort=keep)
            self.env_time += episode.t_env - env_before
            if result.stop_reason != StopReason.ENV_ERROR or slime_aborted():
                return result
            first_loss = time.monotonic() if first_loss is None else first_loss
            delay = replay_delay(attempt + 1, time.monotonic() - first_loss, window)
            if delay is None:
                return result
            self.failures.append(f"{result.stop_reason.value}: {(result.failure or '')[:300]}")
            log.warning(
                "bridge: episode %s lost (%s); replaying it in %.1f s (try %d)",
                self.key,
                result.failure,
                delay,
                attempt + 2,
            )
            if await _sleep_unless_aborted(delay):
                return result
            attempt += 1


async def _sleep_unless_aborted(seconds: float) -> bool:
    """Wait `seconds`; True as soon as slime aborts."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if slime_aborted():
            return True
        await asyncio.sleep(min(left, ABORT_POLL_S))
    return slime_aborted()
