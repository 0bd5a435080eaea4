"""A rollout page's GRPO group: the samples that train, with slime's advantages over them, and
the samples lost to the infrastructure, shown apart (slime's filter drops them, so they are in
no advantage); and a failed rollout's reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contract.vocab import INFRA_STOPS
from envs.trajectories.advantages import group_advantages
from envs.trajectories.store import TrajectoryStore

MAX_GROUP = 1024  # members read for the group's advantages


@dataclass(frozen=True)
class GroupView:
    """A rollout's GRPO group: the samples that train (each with its advantage), those lost to
    the infrastructure (shown apart: slime's filter drops them, so they are in no advantage),
    and this rollout's position among all of them."""

    trained: list[dict[str, Any]]
    infra_failed: list[dict[str, Any]]
    position: int | None

    @property
    def members(self) -> list[dict[str, Any]]:
        return [*self.trained, *self.infra_failed]


def group_view(store: TrajectoryStore, rollout: dict[str, Any]) -> GroupView:
    """The GRPO group of `rollout`, its infra-failed samples apart and out of the advantages."""
    members = store.group(rollout["run_id"], rollout["group_key"], limit=MAX_GROUP)
    infra = {s.value for s in INFRA_STOPS}
    trained = [m for m in members if m["stop_reason"] not in infra]
    failed = [m for m in members if m["stop_reason"] in infra]
    for m, adv in zip(trained, group_advantages([m["reward"] for m in trained]), strict=True):
        m["advantage"], m["advantage_normalized"] = adv.centered, adv.normalized
    for m in failed:
        m["advantage"] = m["advantage_normalized"] = None
    everyone = [*trained, *failed]
    for m in everyone:
        m["current"] = m["event_id"] == rollout["event_id"]
    position = next((i for i, m in enumerate(everyone, 1) if m["current"]), None)
    return GroupView(trained, failed, position)


def failure_reason(meta: dict[str, Any]) -> str | None:
    """Why the episode failed, as the bridge stored it (`metadata.extra.failure`)."""
    extra = meta.get("extra")
    failure = extra.get("failure") if isinstance(extra, dict) else None
    return failure if isinstance(failure, str) and failure else None
