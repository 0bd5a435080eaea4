"""ReportingEnvironment: an Environment whose tool outputs say which code ran which task, which
tripwires the episode tripped, and what each reward is made of.

Every successful tool output gets `metadata["env_provenance"]` = {env, env_version,
task_spec_hash}; the output that ends the episode also gets `metadata["tripwires"]` (names of
the episode tripwires that tripped, possibly empty) and `metadata["tripwire_keys"]` (group
tripwires). A rewarded output may carry `metadata["reward_parts"]` ({part: number}, set by the
tool); only the parts the class declares in `REWARD_PARTS` are kept. The format is
contract/env_report.py's. None of it ever changes the reward, the text or `finished`; a check
that raises is logged and reported as the wire `tripwire_check_failed`.

It hooks the SDK's tool dispatch (`Environment._call_tool`), which the SDK's own server, this
project's server and `python -m envs play` all go through, so no tool can forget to report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from openreward.environments import Environment

from contract.env_report import (
    PROVENANCE_KEY,
    REWARD_PARTS_KEY,
    TRIPWIRE_KEYS_KEY,
    TRIPWIRES_KEY,
    reward_parts,
)
from envs.provenance import env_version, task_spec_hash
from envs.tripwires import CallRecord, Tripwire, Verdict, declared

log = logging.getLogger(__name__)

CHECK_FAILED = "tripwire_check_failed"


class ReportingEnvironment(Environment):
    """Base class of this project's environments: provenance on every output, tripwires at the
    end."""

    TRIPWIRES: ClassVar[tuple[Tripwire, ...]] = ()
    """The tripwires this environment declares (README lists them)."""
    DATA_FILES: ClassVar[tuple[Path, ...]] = ()
    """Bundled data that shapes rewards; hashed into the env version with the module."""
    REWARD_RANGE: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
    """Every reward a tool output carries lies in [low, high] (`python -m envs check` tests it);
    override it when the rewards lie elsewhere (None: undeclared, the config's min_reward and
    max_reward apply)."""
    REWARD_PARTS: ClassVar[tuple[str, ...]] = ()
    """The parts of its reward this environment reports (README lists them)."""

    def check_tripwires(self, calls: list[CallRecord]) -> Verdict:
        """The verdict on a finished episode; `calls` are its successful calls, the last one ended
        it."""
        return Verdict()

    def provenance(self) -> dict[str, str]:
        """{env, env_version, task_spec_hash} of this session."""
        cached = self.__dict__.get("_provenance")
        if cached is None:
            cls = type(self)
            klass: type = cls  # functools.cache wants a Hashable; the SDK base is untyped
            cached = self.__dict__["_provenance"] = {
                "env": cls.name().lower(),
                "env_version": env_version(klass),
                "task_spec_hash": task_spec_hash(self.task_spec),
            }
        return cached

    @property
    def episode_calls(self) -> list[CallRecord]:
        """The successful tool calls of this episode so far, in the order they completed."""
        return self.__dict__.setdefault("_episode_calls", [])

    async def _call_tool(self, name: str, input: dict[str, Any]) -> Any:
        res = await super()._call_tool(name, input)
        result = res.root
        if not result.ok:
            return res
        out = result.output
        metadata = dict(out.metadata or {})
        self.episode_calls.append(
            CallRecord(name, dict(input), out.reward, out.finished, out.metadata)
        )
        metadata[PROVENANCE_KEY] = self.provenance()
        if REWARD_PARTS_KEY in metadata:
            parts = reward_parts(metadata.pop(REWARD_PARTS_KEY))
            kept = {k: v for k, v in parts.items() if k in self.REWARD_PARTS}
            if kept and out.reward is not None:
                metadata[REWARD_PARTS_KEY] = kept
        if out.finished:
            verdict = self._verdict()
            metadata[TRIPWIRES_KEY] = verdict.tripped
            metadata[TRIPWIRE_KEYS_KEY] = verdict.keys
        out.metadata = metadata
        return res

    def _verdict(self) -> Verdict:
        try:
            return declared(self.TRIPWIRES, self.check_tripwires(list(self.episode_calls)))
        except Exception as e:  # a broken check must not break the episode
            log.exception("%s: tripwire check failed: %s", type(self).__name__, e)
            return Verdict(tripped=[CHECK_FAILED])
