"""What an environment reports beside its reward, read from tool-output metadata: provenance,
tripwires and the reward's parts.

The environments of this project (envs/reporting.py) add to every tool output's `metadata`:

    env_provenance   {"env", "env_version", "task_spec_hash"}: which code ran which task
    tripwires        (the output that ends the episode) names of the episode tripwires that
                     tripped: cheap invariants of an honest success that this episode broke
    tripwire_keys    (the output that ends the episode) {tripwire: key} for group tripwires:
                     two episodes of one GRPO group reporting the same key both trip it
    reward_parts     (a rewarded output) {part: number}: what the reward is made of, e.g.
                     WhoDunIt {who, what, where, why}, GSM8K {answer, format}, haiku
                     {structure, topic, original, judge}; reduced over the episode like its
                     rewards (bridge/rewards.py), reported and compared per part by the eval

A tripped wire never changes the reward, nor do the parts (they explain it). Other environments
(hosted ones) report nothing, and their trajectories carry no env version, tripwires or parts.
The metadata is the env server's answer, so everything read here is bounded: a bad value is
dropped, never raised.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

PROVENANCE_KEY = "env_provenance"
TRIPWIRES_KEY = "tripwires"
TRIPWIRE_KEYS_KEY = "tripwire_keys"
REWARD_PARTS_KEY = "reward_parts"
PROVENANCE_FIELDS = ("env", "env_version", "task_spec_hash")

MAX_NAME_CHARS = 64
MAX_VALUE_CHARS = 200
MAX_TRIPWIRES = 16
MAX_PARTS = 16
MAX_PART_VALUE = 1e6
MAX_REWARDED_OUTPUTS = 1024


def reward_parts(value: Any) -> dict[str, float]:
    """A `reward_parts` mapping, bounded: at most MAX_PARTS names of at most MAX_NAME_CHARS, each
    to a finite number within +-MAX_PART_VALUE; anything else is dropped, never raised."""
    if not isinstance(value, Mapping):
        return {}
    out: dict[str, float] = {}
    for name, v in itertools.islice(value.items(), MAX_PARTS):
        if (
            _short_str(name, MAX_NAME_CHARS)
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            and abs(v) <= MAX_PART_VALUE
        ):
            out[name] = float(v)
    return out


def _short_str(value: Any, limit: int) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


@dataclass
class EnvReport:
    """What the environment reported over one episode (the first provenance, the last tripwires)."""

    provenance: dict[str, str] = field(default_factory=dict)
    tripwires: list[str] = field(default_factory=list)
    tripwire_keys: dict[str, str] = field(default_factory=dict)
    checked: bool = False
    """True once the env reported its tripwire verdict (the episode ended in the env)."""
    rewarded: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    """(reward, its parts) of each rewarded output that reported parts, in order."""

    def read(self, metadata: Any, reward: float | None = None) -> None:
        """Take what one tool output's metadata reports (`reward`: the output's reward, whose
        parts it may report); anything malformed is ignored."""
        if not isinstance(metadata, Mapping):
            return
        parts = reward_parts(metadata.get(REWARD_PARTS_KEY))
        if parts and reward is not None and len(self.rewarded) < MAX_REWARDED_OUTPUTS:
            self.rewarded.append((float(reward), parts))
        prov = metadata.get(PROVENANCE_KEY)
        if not self.provenance and isinstance(prov, Mapping):
            for key in PROVENANCE_FIELDS:
                value = _short_str(prov.get(key), MAX_VALUE_CHARS)
                if value is not None:
                    self.provenance[key] = value
        wires = metadata.get(TRIPWIRES_KEY)
        if isinstance(wires, list):
            names = (_short_str(w, MAX_NAME_CHARS) for w in wires[:MAX_TRIPWIRES])
            self.tripwires = sorted({n for n in names if n is not None})
            self.checked = True
        keys = metadata.get(TRIPWIRE_KEYS_KEY)
        if isinstance(keys, Mapping):
            self.tripwire_keys = {
                name: value
                for name, value in itertools.islice(keys.items(), MAX_TRIPWIRES)
                if _short_str(name, MAX_NAME_CHARS) and _short_str(value, MAX_VALUE_CHARS)
            }
            self.checked = True


def group_tripwires(items: Iterable[tuple[Hashable | None, Mapping[str, str]]]) -> list[set[str]]:
    """For (group, tripwire_keys) per episode: the group tripwires each episode trips.

    An episode trips a group tripwire when another episode of the same group (not None)
    reported the same key for it.
    """
    items = list(items)
    seen: dict[tuple[Hashable, str, str], list[int]] = defaultdict(list)
    for i, (group, keys) in enumerate(items):
        if group is None:
            continue
        for name, key in keys.items():
            seen[(group, name, key)].append(i)
    out: list[set[str]] = [set() for _ in items]
    for (_, name, _), members in seen.items():
        if len(members) > 1:
            for i in members:
                out[i].add(name)
    return out
