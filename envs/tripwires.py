"""Tripwires: cheap invariants of an honest success, checked when an episode ends.

A reward a model can game is a bug that training finds. A tripwire catches a success that
looks dishonest (a correct accusation without the evidence, a correct answer without the
work) without changing the reward: it is stored with the trajectory, counted per env in the
W&B metrics (`tripwires/<name>`) and filterable in the web UI.

An environment declares its wires in `TRIPWIRES` and checks them in `check_tripwires(calls)`
(envs/reporting.py calls it on the tool output that ends the episode). Two scopes:

- `episode`: the env decides from the episode alone and names the wires that tripped;
- `group`: the env reports a key (e.g. a hash of the final poem); episodes of one GRPO group
  that report the same key all trip the wire. The bridge's metrics and the trajectory store
  compare the keys (contract/env_report.py `group_tripwires`), since one session sees one episode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Scope(str, Enum):
    """Where a tripwire is decided."""

    EPISODE = "episode"
    """By the environment, from the episode alone."""
    GROUP = "group"
    """Across the episodes of one GRPO group, from the keys the environment reports."""


@dataclass(frozen=True)
class Tripwire:
    """One declared invariant of an honest success."""

    name: str
    description: str
    scope: Scope = Scope.EPISODE


@dataclass(frozen=True)
class CallRecord:
    """One successful tool call of the episode, as the tripwire checks see it."""

    name: str
    arguments: dict[str, Any]
    reward: float | None
    finished: bool
    metadata: dict[str, Any] | None = None


@dataclass
class Verdict:
    """What the checks found for one episode: tripped episode wires and group-wire keys."""

    tripped: list[str] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)


def declared(wires: tuple[Tripwire, ...], verdict: Verdict) -> Verdict:
    """`verdict` restricted to the declared wires of the right scope (a typo is a bug: raise)."""
    episode = {w.name for w in wires if w.scope is Scope.EPISODE}
    group = {w.name for w in wires if w.scope is Scope.GROUP}
    unknown = (set(verdict.tripped) - episode) | (set(verdict.keys) - group)
    if unknown:
        raise ValueError(f"tripwires not declared with that scope: {sorted(unknown)}")
    return Verdict(sorted(set(verdict.tripped)), dict(verdict.keys))
