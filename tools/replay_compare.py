"""One stored rollout replayed in a fresh session of its task and compared, call by call, with what
was stored: the report of what differs (output text, reward, `finished`) and provenance notes.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from bridge.env_session import ToolResult
from bridge.errors import EnvFailure
from contract.env_report import PROVENANCE_KEY
from tools.errors import ReplayError
from tools.replay_session import open_replay_session, task_of
from tools.replay_source import StoredCall, stored_calls

REWARD_TOLERANCE = 1e-9
MAX_DIFF_LINES = 12


@dataclass
class CallDiff:
    """One replayed call: what changed against the stored one (empty: identical)."""

    call: StoredCall
    differences: list[str] = field(default_factory=list)
    skipped: str | None = None
    result: ToolResult | None = None
    """What the env answered this time (None when skipped)."""


@dataclass
class ReplayReport:
    """The replay of one stored rollout."""

    rollout_id: str
    env: str
    task: str
    calls: list[CallDiff] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def differing(self) -> list[CallDiff]:
        return [c for c in self.calls if c.differences]

    @property
    def identical(self) -> bool:
        return not self.differing

    def render(self) -> str:
        replayed = [c for c in self.calls if c.skipped is None]
        head = (
            f"replay {self.rollout_id} ({self.env} {self.task}): {len(replayed)} tool calls "
            f"replayed, {len(self.calls) - len(replayed)} skipped: "
            + ("identical" if self.identical else f"{len(self.differing)} differ")
        )
        lines = [head, *(f"  note: {n}" for n in self.notes)]
        for c in self.calls:
            if c.skipped is not None:
                lines.append(f"  #{c.call.position} {c.call.name}: skipped ({c.skipped})")
            elif c.differences:
                lines.append(f"  #{c.call.position} {c.call.name}: differs")
                lines += [f"    {d}" for d in c.differences]
        return "\n".join(lines)


def _reward_differs(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is not b
    return abs(float(a) - float(b)) > REWARD_TOLERANCE


def _text_diff(stored: str, replayed: str) -> list[str]:
    lines = list(
        difflib.unified_diff(
            stored.splitlines(), replayed.splitlines(), "stored", "replayed", lineterm="", n=1
        )
    )
    if len(lines) > MAX_DIFF_LINES:
        lines = [*lines[:MAX_DIFF_LINES], f"... ({len(lines) - MAX_DIFF_LINES} more diff lines)"]
    return lines or [f"stored {stored!r} vs replayed {replayed!r}"]


def compare(call: StoredCall, result: ToolResult) -> list[str]:
    """What differs between a stored call's result and its replay."""
    out = []
    if (call.text or "") != result.text:
        out.append("output text:")
        out += [f"  {line}" for line in _text_diff(call.text or "", result.text)]
    if _reward_differs(call.reward, result.reward):
        out.append(f"reward: stored {call.reward} vs replayed {result.reward}")
    if call.finished != result.finished:
        out.append(f"finished: stored {call.finished} vs replayed {result.finished}")
    return out


def _provenance_notes(stored: dict[str, Any], reported: dict[str, Any]) -> list[str]:
    notes = []
    for key, what in (("env_version", "env version"), ("task_spec_hash", "task spec")):
        before, now = stored.get(key), reported.get(key)
        if before and now and before != "unknown" and before != now:
            notes.append(f"{what} differs from the stored provenance: stored {before}, now {now}")
    return notes


async def replay_rollout(rollout: dict[str, Any], url: str | None) -> ReplayReport:
    """Replay one stored rollout in a fresh session of its task (see the module docstring)."""
    task = task_of(rollout)
    label = f"{task.split}/{task.index}" if task.index is not None else "task spec"
    report = ReplayReport(str(rollout.get("event_id")), task.env, label)
    session = open_replay_session(task, url)
    meta = rollout.get("metadata") or {}
    prov = meta.get("provenance")
    stored_prov: dict[str, Any] = prov if isinstance(prov, dict) else {}
    try:
        await session.open()
        names = {t.get("name") for t in await session.tools()}
        finished = False
        for call in stored_calls(rollout.get("messages") or []):
            diff = CallDiff(call)
            report.calls.append(diff)
            if finished:
                diff.skipped = "after the episode finished"
            elif call.executed is False or call.arguments is None:
                diff.skipped = "the bridge rejected it, never sent to the env"
            elif call.name not in names:
                diff.skipped = "not a tool of this env"
            if diff.skipped is not None or call.arguments is None:
                continue
            result = await session.call(call.name, call.arguments)
            if not report.notes and isinstance(result.metadata, dict):
                reported = result.metadata.get(PROVENANCE_KEY)
                if isinstance(reported, dict):
                    report.notes = _provenance_notes(stored_prov, reported)
            diff.result = result
            diff.differences = compare(call, result)
            finished = finished or result.finished
    except EnvFailure as e:
        raise ReplayError(f"{task.env}: {e}") from None
    finally:
        await session.close()
    return report
