"""One sample's play: a resumed or new episode, replayed from scratch on a new env session when
it is lost to the infrastructure, `EPISODE_ATTEMPTS` tries in all."""

from __future__ import annotations

import logging
from typing import Any

from bridge.chat import ChatRenderer
from bridge.env_client import open_session
from bridge.episode import Budget, Episode, EpisodeResult
from bridge.errors import SessionSetupError
from bridge.rollout_process import engine_client
from bridge.slime_state import slime_aborted
from bridge.slime_types import SlimeArgs
from bridge.token_model import TokenModel
from contract.config import TrainConfig
from contract.task import TaskMeta

log = logging.getLogger(__name__)

EPISODE_ATTEMPTS = 3
"""Tries per sample when episodes are lost to the env, the network or the engine."""


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
        self.failures: list[str] = []
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
        return Episode(session, model, self.task, self.params, self.budget)

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
