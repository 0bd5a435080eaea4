"""Replay stored episodes against their environment: `python -m tools.replay ROLLOUT_ID`.

Reads a stored rollout (from the trajectory store `--db`, or the JSON API of the server at
`--trajectories`/`--url`), opens a fresh session of the same task (in-process, or on the env
server at `--url` through the bridge's own session client), re-executes the stored tool calls
in order and compares every tool output (text), reward and `finished` flag with the stored
ones. Calls the bridge answered itself (unparseable calls, unknown tools, calls after the
episode finished) never reached the env and are skipped, as they were then.

`--run RUN --sample N` replays N rollouts of a run (a seeded random choice) and names the
environments that did not reproduce their episodes: nondeterministic, or changed since (the
report says when the env version or the task spec differs from the stored provenance).

Exit status: 0 every replay matched, 1 some differed, 2 the replay could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import os
import random
import re
import sys
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tools.errors import ReplayError

os.environ.setdefault("OPENREWARD_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENREWARD_DISABLE_UPDATE_CHECK", "1")

import httpx
import orjson

from bridge.env_session import ToolResult
from bridge.errors import EnvFailure
from contract.env_report import PROVENANCE_KEY
from contract.task import TaskMeta, blocks_to_text
from contract.vocab import ToolErrorKind

DEFAULT_DB = "runs/trajectories.db"
REWARD_TOLERANCE = 1e-9
PAGE = 500
MAX_DIFF_LINES = 12


# ---------------------------------------------------------------- stored rollouts


@dataclass(frozen=True)
class StoredCall:
    """One tool call of the stored episode and what the model saw come back."""

    position: int
    name: str
    arguments: dict[str, Any] | None  # None: not a JSON object (the bridge could not parse it)
    text: str | None
    reward: float | None
    finished: bool
    executed: bool | None = None
    """Whether the env ran it, as the bridge recorded it (None: an older rollout that does not
    say)."""


def stored_calls(messages: list[dict[str, Any]]) -> list[StoredCall]:
    """The tool calls of a stored conversation, each paired with its result (by call id)."""
    results = {m.get("call_id"): m for m in messages if m.get("type") == "tool_result"}
    out: list[StoredCall] = []
    for m in messages:
        if m.get("type") != "tool_call":
            continue
        try:
            args = orjson.loads(m.get("content") or "")
        except orjson.JSONDecodeError:
            args = None
        res = results.get(m.get("call_id")) or {}
        executed = (res.get("metadata") or {}).get("executed")
        out.append(
            StoredCall(
                position=len(out) + 1,
                name=str(m.get("name") or ""),
                arguments=args if isinstance(args, dict) else None,
                text=res.get("content"),
                reward=res.get("reward"),
                finished=bool(res.get("is_finished")),
                executed=executed if isinstance(executed, bool) else None,
            )
        )
    return out


def rollout_event_id(rollout_id: str) -> str:
    """The store's id of a rollout: the dashed UUID form of a 32-hex trajectory id."""
    rid = rollout_id.strip()
    if re.fullmatch(r"[0-9a-fA-F]{32}", rid):
        return str(uuid.UUID(hex=rid))
    return rid


class RolloutSource(Protocol):
    async def rollout(self, rollout_id: str) -> dict[str, Any]: ...
    async def run_rollout_ids(self, run: str) -> list[str]: ...


class StoreSource:
    """Rollouts read from a trajectory database file."""

    def __init__(self, path: str) -> None:
        if not Path(path).is_file():
            raise ReplayError(f"no trajectory database at {path} (give --db or --url)")
        from envs.trajectories.errors import StoreError
        from envs.trajectories.store import TrajectoryStore

        try:
            self.store = TrajectoryStore(path)
        except StoreError as e:
            raise ReplayError(str(e)) from None

    async def rollout(self, rollout_id: str) -> dict[str, Any]:
        r = await asyncio.to_thread(self.store.get_rollout, rollout_event_id(rollout_id))
        if r is None:
            raise ReplayError(f"no rollout {rollout_id!r} in {self.store.path}")
        return r

    async def run_rollout_ids(self, run: str) -> list[str]:
        run_id = self.store.run_id_by_name(run)
        if run_id is None and run.isdigit() and self.store.get_run(int(run)) is not None:
            run_id = int(run)
        if run_id is None:
            raise ReplayError(f"no run {run!r} in {self.store.path}")
        ids: list[str] = []
        after = None
        while True:
            page = self.store.list_rollouts(run_id, sort="time", after=after, limit=PAGE)
            ids += [r["event_id"] for r in page.rows]
            if page.next_cursor is None:
                return ids
            after = page.next_cursor


class ApiSource:
    """Rollouts read from a server's trajectory JSON API (`/api/...`)."""

    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url.rstrip("/")
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.AsyncClient(timeout=60.0, headers=headers, trust_env=False)

    async def _get(self, path: str, **params: Any) -> Any:
        try:
            r = await self.http.get(self.url + path, params=params)
        except httpx.HTTPError as e:
            raise ReplayError(f"cannot reach {self.url}: {type(e).__name__}: {e}") from None
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise ReplayError(f"{self.url}{path}: HTTP {r.status_code}: {r.text[:200]}")
        return r.json()

    async def rollout(self, rollout_id: str) -> dict[str, Any]:
        r = await self._get(f"/api/rollouts/{rollout_event_id(rollout_id)}")
        if r is None:
            raise ReplayError(f"no rollout {rollout_id!r} on {self.url}")
        return r

    async def run_rollout_ids(self, run: str) -> list[str]:
        runs = (await self._get("/api/runs") or {}).get("runs", [])
        match = [r["id"] for r in runs if r["name"] == run or str(r["id"]) == run]
        if not match:
            raise ReplayError(f"no run {run!r} on {self.url}")
        ids: list[str] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": PAGE, **({"after": after} if after else {})}
            page = await self._get(f"/api/runs/{match[0]}/rollouts", **params) or {}
            ids += [r["event_id"] for r in page.get("rollouts", [])]
            after = page.get("next")
            if not after:
                return ids

    async def close(self) -> None:
        await self.http.aclose()


# ---------------------------------------------------------------- sessions


class ReplaySession(Protocol):
    async def open(self) -> None: ...
    async def tools(self) -> list[dict[str, Any]]: ...
    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult: ...
    async def close(self) -> None: ...


class InProcessSession:
    """The env class instantiated here, called through the SDK's tool dispatch; results become
    the text the bridge would have shown the model (bridge/env_local.py does the same)."""

    def __init__(self, task: TaskMeta) -> None:
        from envs.errors import UnknownEnvironment
        from envs.registry import load_env_class

        try:
            self.cls = load_env_class(task.env)
        except UnknownEnvironment as e:
            raise ReplayError(f"{e}; replay a hosted env with --url") from None
        self.task = task
        self.env: Any = None

    async def open(self) -> None:
        from openreward.environments.utils import run_user_callable

        spec = self.task.task_spec
        if self.task.index is not None:
            spec = await run_user_callable(self.cls.get_task, self.task.split, self.task.index)
        self.env = await run_user_callable(self.cls, task_spec=spec, secrets={})
        await run_user_callable(self.env.setup)

    async def tools(self) -> list[dict[str, Any]]:
        from openreward.environments.session import list_session_tools

        return [t.model_dump() for t in (await list_session_tools(self.env, None)).tools]

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        res = (await self.env._call_tool(name, arguments)).root
        if not res.ok:
            return ToolResult(
                f"Error: {res.error or res.reason}", None, False, ToolErrorKind.ENV_REJECTED
            )
        out = res.output
        return ToolResult(blocks_to_text(out.blocks), out.reward, out.finished, None, out.metadata)

    async def close(self) -> None:
        from openreward.environments.utils import run_user_callable

        if self.env is not None:
            await run_user_callable(self.env.teardown)


def task_of(rollout: dict[str, Any]) -> TaskMeta:
    """The task a stored rollout ran: split + index when known, else its task spec."""
    env = rollout.get("env") or ""
    if not env:
        raise ReplayError(f"rollout {rollout.get('event_id')} names no environment")
    split, index = rollout.get("split"), rollout.get("task_index")
    try:
        if index is not None and split is not None:
            return TaskMeta(env=env, split=split, index=index)
        return TaskMeta(env=env, task_spec=rollout.get("task_spec"))
    except ValueError:
        raise ReplayError(
            f"rollout {rollout.get('event_id')} has neither split+index nor a task spec"
        ) from None


def open_replay_session(task: TaskMeta, url: str | None) -> ReplaySession:
    """In-process without `url`; else the bridge's own client on the env server at `url`."""
    if url is None:
        return InProcessSession(task)
    from bridge.env_client import open_session

    return open_session(task, [url.rstrip("/")], uuid.uuid4().hex)


# ---------------------------------------------------------------- comparing


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


# ---------------------------------------------------------------- runs


def nondeterministic_envs(reports: Iterable[ReplayReport]) -> dict[str, tuple[int, int]]:
    """env -> (rollouts that differed, rollouts replayed), for envs where any differed."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in reports:
        counts[r.env][1] += 1
        counts[r.env][0] += not r.identical
    return {env: (d, n) for env, (d, n) in sorted(counts.items()) if d}


async def replay_many(
    source: RolloutSource, ids: list[str], url: str | None, out: Any
) -> list[ReplayReport]:
    """Replay rollouts one after another, printing each report."""
    reports = []
    for rid in ids:
        report = await replay_rollout(await source.rollout(rid), url)
        out.write(report.render() + "\n")
        reports.append(report)
    return reports


async def run(args: argparse.Namespace, out: Any = sys.stdout) -> int:
    if args.api_key:
        os.environ["ENV_SERVER_API_KEY"] = args.api_key
    if args.config and not args.url:
        configure_envs(args.config)
    source: RolloutSource
    api_url = args.trajectories or (args.url if not args.db else None)
    source = ApiSource(api_url, args.api_key) if api_url else StoreSource(args.db or DEFAULT_DB)
    try:
        if args.run:
            ids = await source.run_rollout_ids(args.run)
            if not ids:
                raise ReplayError(f"run {args.run!r} has no rollouts")
            ids = random.Random(args.seed).sample(ids, min(args.sample, len(ids)))
        else:
            ids = [args.rollout_id]
        reports = await replay_many(source, ids, args.url, out)
    finally:
        if isinstance(source, ApiSource):
            await source.close()
        if args.url:
            from bridge.env_client import close_shared_http

            await close_shared_http()
    bad = nondeterministic_envs(reports)
    if args.run:
        if bad:
            listed = ", ".join(f"{env} ({d} of {n} rollouts differ)" for env, (d, n) in bad.items())
            out.write(f"== not reproducible: {listed} ==\n")
        else:
            out.write(f"== all {len(reports)} replays identical ==\n")
    return 1 if bad else 0


def configure_envs(config_path: str) -> None:
    """Apply train_config.yaml's env options to the in-process env classes."""
    from contract.config import is_hosted, load_config
    from contract.errors import ConfigError
    from envs.registry import configure_env, load_env_class

    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        raise ReplayError(str(e)) from None
    for name, entry in cfg.environments.items():
        if not is_hosted(name):
            try:
                configure_env(load_env_class(name), entry.options)
            except Exception as e:
                raise ReplayError(f"{config_path}: environments.{name}.options: {e}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("rollout_id", nargs="?", help="the rollout to replay (its id in the store)")
    p.add_argument("--run", help="replay rollouts of this run (name or id) instead")
    p.add_argument("--sample", type=int, default=10, help="with --run: how many rollouts [10]")
    p.add_argument("--seed", type=int, default=0, help="with --run: which rollouts are drawn [0]")
    p.add_argument(
        "--url",
        help=(
            "env server to replay on (python -m envs.server); also where the rollout is read "
            "unless --db or --trajectories says otherwise. Default: the envs in-process"
        ),
    )
    p.add_argument("--db", help=f"trajectory database to read the rollout from [{DEFAULT_DB}]")
    p.add_argument("--trajectories", help="server whose trajectory API holds the rollout")
    p.add_argument("--config", help="train_config.yaml whose env options apply (in-process)")
    p.add_argument("--api-key", help="X-API-Key for the servers (default: $ENV_SERVER_API_KEY)")


def main(args: argparse.Namespace) -> int:
    """Entry point for `python -m tools.replay` (and its alias `python -m envs replay`)."""
    if bool(args.rollout_id) == bool(args.run):
        print("replay: error: give a ROLLOUT_ID or --run RUN (not both)", file=sys.stderr)
        return 2
    if args.run and args.sample < 1:
        print("replay: error: --sample must be at least 1", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(args))
    except ReplayError as e:
        print(f"replay: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def parser(prog: str = "python -m tools.replay") -> argparse.ArgumentParser:
    """The command line of `python -m tools.replay`."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=(__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    return p


if __name__ == "__main__":
    sys.exit(main(parser().parse_args()))
