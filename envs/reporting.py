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

What a session keeps of its calls is bounded in bytes: a call's arguments and metadata are kept
whole until the checks of that call have run, then cut to MAX_RECORD_BYTES (long strings and
long lists shortened: a 1 MiB argument once stayed with its session for every call); past
MAX_RECORDED_CALLS records, the first call of each tool and the latest half are kept. What was
cut is counted (`calls_cut` per session, `records_cut()` per process).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import orjson
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
# What a session keeps of each earlier call (arguments and metadata as JSON), and how many calls.
MAX_RECORD_BYTES = 4096
MAX_RECORDED_CALLS = 512
_CUT_STRING_CHARS = 512
_CUT_ITEMS = 32
_CUT_DEPTH = 6
_records_cut = [0]


def records_cut() -> int:
    """Call records cut or dropped in this process so far (the server's metrics report it)."""
    return _records_cut[0]


def _cut(value: Any, depth: int = 0) -> Any:
    """A JSON-like value with long strings, long containers and deep nesting shortened."""
    if isinstance(value, str):
        if len(value) <= _CUT_STRING_CHARS:
            return value
        return f"{value[:_CUT_STRING_CHARS]}... ({len(value)} characters)"
    if depth >= _CUT_DEPTH and isinstance(value, (dict, list, tuple)):
        return f"({type(value).__name__} of {len(value)})"
    if isinstance(value, dict):
        items = list(value.items())
        out = {str(k)[:_CUT_STRING_CHARS]: _cut(v, depth + 1) for k, v in items[:_CUT_ITEMS]}
        if len(items) > _CUT_ITEMS:
            out["..."] = f"{len(items) - _CUT_ITEMS} more"
        return out
    if isinstance(value, (list, tuple)):
        kept = [_cut(v, depth + 1) for v in value[:_CUT_ITEMS]]
        if len(value) > _CUT_ITEMS:
            kept.append(f"... {len(value) - _CUT_ITEMS} more")
        return kept
    return value


def _over(value: Any) -> bool:
    try:
        return len(orjson.dumps(value, default=str)) > MAX_RECORD_BYTES
    except (TypeError, ValueError):  # not JSON (too deep, odd keys): cut it
        return True


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
        calls = self.episode_calls
        calls.append(CallRecord(name, dict(input), out.reward, out.finished, out.metadata))
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
        self._bound_records(calls)
        return res

    @property
    def calls_cut(self) -> int:
        """Call records of this session cut or dropped to bound its memory."""
        return int(self.__dict__.get("_calls_cut", 0))

    def _bound_records(self, calls: list[CallRecord]) -> None:
        """Cut the newest record (its checks have run) and drop old ones past the cap."""
        last = calls[-1]
        cut = 0
        long_args, long_meta = _over(last.arguments), _over(last.metadata)
        if long_args or long_meta:
            calls[-1] = CallRecord(
                last.name,
                _cut(last.arguments) if long_args else last.arguments,
                last.reward,
                last.finished,
                _cut(last.metadata) if long_meta else last.metadata,
            )
            cut += 1
        if len(calls) > MAX_RECORDED_CALLS:
            keep_from = len(calls) - MAX_RECORDED_CALLS // 2
            seen: set[str] = set()
            first_of_each = []
            for i, c in enumerate(calls[:keep_from]):
                if c.name not in seen:
                    seen.add(c.name)
                    first_of_each.append(i)
            kept = [calls[i] for i in first_of_each] + calls[keep_from:]
            cut += len(calls) - len(kept)
            calls[:] = kept
        if cut:
            self.__dict__["_calls_cut"] = self.calls_cut + cut
            _records_cut[0] += cut

    def _verdict(self) -> Verdict:
        try:
            return declared(self.TRIPWIRES, self.check_tripwires(list(self.episode_calls)))
        except Exception as e:  # a broken check must not break the episode
            log.exception("%s: tripwire check failed: %s", type(self).__name__, e)
            return Verdict(tripped=[CHECK_FAILED])
