"""The trajectory sink of the generate function: finished episodes -> OpenReward rollout events -> server.

`get_sink(config).submit(trajectory)` returns at once and never raises. A background task on the
running event loop batches the events and POSTs them to `/v1/rollouts` of this project's env
server (default) or of hosted OpenReward. When the server cannot be reached the batch goes to a
JSONL spool file under `trajectories.spool_dir` and is delivered later with exponential backoff,
also by the next process that uses the same spool dir. The receiving side ignores events it
already has (eventId), so a retried batch is never stored twice. Batches the server refuses as
invalid (400/413/422) are kept in `rejected-*.jsonl` next to the spool, never dropped.

Event shapes are the `openreward` SDK's (RolloutStartedEvent, LogMessageEvent, RolloutUpdateEvent);
what only the trainer knows rides in the rollout event's `metadata`:
reward, reward_reduction, turn_rewards, stop_reason, status, num_turns, num_tool_calls, tool_errors,
drift_count, evaluation, group_index, sample_index, index, timings, prompt_length, token_ids,
loss_mask, logprobs, extra (and `tokenizer` when the trajectory's extra names one), provenance,
tripwires, tripwire_keys, drift. Tool results say in their metadata whether the env executed
the call (`executed`: false for calls the bridge answered itself).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import random
import re
import threading
import time
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from bridge.config import TrainConfig, config_from_env
from bridge.trajectory import Trajectory, TrajectorySink

log = logging.getLogger(__name__)

HOSTED_API_URL = "https://api.openreward.ai"
HARNESS = "slime-envs"
# Status codes worth retrying (server busy, down, or auth to be fixed): everything else 4xx is final.
RETRY_STATUS = {401, 403, 404, 408, 409, 425, 429}


@dataclass(frozen=True)
class SinkSettings:
    """Batching, spooling and retry knobs (tests shorten the backoff)."""

    queue_size: int = 4096  # trajectories waiting in memory; beyond this they go to the spool file
    max_batch_events: int = 4000
    max_batch_bytes: int = 1_000_000  # bigger requests only add event-loop lag (measured)
    max_age_s: float = 1.0  # a partial batch waits at most this long
    request_timeout_s: float = 30.0
    max_in_flight: int = 4  # concurrent upload requests (the server commits them together)
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0


HOSTED_SETTINGS = SinkSettings(max_batch_events=128, max_batch_bytes=1_000_000)


# ---------------------------------------------------------------- encoding


def _event_uuid(rollout_id: str, n: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"slime-envs:{rollout_id}:{n}"))


def _rollout_uuid(rollout_id: str) -> str:
    try:
        return str(uuid.UUID(hex=rollout_id))
    except ValueError:
        return rollout_id


def _args_text(arguments: Any) -> str:
    if isinstance(arguments, str):
        return arguments if arguments.strip() else "{}"
    try:
        return orjson.dumps(arguments).decode()
    except TypeError:
        return str(arguments)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal content parts
        return "\n".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def _strip_none(d: dict[str, Any]) -> dict[str, Any]:
    """Drop None values (recursively in dicts) the way the SDK does before sending."""
    return {k: _strip_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


def message_events(
    rollout_event_id: str,
    messages: list[dict[str, Any]],
    ts: int,
    environment_id: str | None = None,
) -> list[dict[str, Any]]:
    """Chat messages (the bridge's format) as SDK `message` events, in order."""
    out: list[dict[str, Any]] = []
    turn = 0

    def add(kind: str, content: str | None, **fields: Any) -> None:
        n = len(out)
        out.append(
            _strip_none(
                {
                    "eventType": "message",
                    "eventId": _event_uuid(rollout_event_id, n),
                    "timestamp": ts,
                    "index": n,
                    "rolloutEventId": rollout_event_id,
                    "environment_id": environment_id,
                    "type": kind,
                    "content": content,
                    **fields,
                }
            )
        )

    for m in messages:
        role = m.get("role")
        if role == "system":
            add("system_message", _content_text(m.get("content")))
        elif role == "user":
            add("user_message", _content_text(m.get("content")))
        elif role == "assistant":
            turn += 1
            if m.get("reasoning_content"):
                add("reasoning", _content_text(m["reasoning_content"]), metadata={"turn": turn})
            calls = m.get("tool_calls") or []
            text = _content_text(m.get("content"))
            if text or not calls:
                add("assistant_message", text, metadata={"turn": turn})
            for c in calls:
                fn = c.get("function") if isinstance(c.get("function"), dict) else c
                add(
                    "tool_call",
                    # a malformed call has no arguments: show what the model wrote
                    _args_text(fn["arguments"] if "arguments" in fn else fn.get("raw")),
                    name=str(fn.get("name") or "<unnamed>"),
                    callId=c.get("id"),
                    metadata={"turn": turn},
                )
        elif role == "tool":
            add(
                "tool_result",
                _content_text(m.get("content")),
                callId=m.get("tool_call_id"),
                reward=m.get("reward"),
                isFinished=bool(m.get("finished", False)),
                metadata={
                    "turn": turn,
                    "tool": m.get("name"),
                    "is_error": bool(m.get("is_error", False)),
                    "executed": m.get("executed"),
                },
            )
        else:
            add("user_message", _content_text(m.get("content")), metadata={"role": role})
    return out


def trajectory_events(traj: Trajectory, environment_id: str | None = None) -> list[dict[str, Any]]:
    """One finished episode as SDK events: `rollout`, its `message`s, then a `rollout_update`."""
    rid = _rollout_uuid(traj.rollout_id)
    ts = int(traj.created_at * 1000)
    metadata = {
        "source": HARNESS,
        "reward": traj.reward,
        "reward_reduction": traj.reward_reduction,
        "turn_rewards": traj.turn_rewards,
        "stop_reason": traj.stop_reason,
        "status": traj.status,
        "num_turns": traj.num_turns,
        "num_tool_calls": traj.num_tool_calls,
        "tool_errors": traj.tool_errors,
        "drift_count": traj.drift_count,
        "evaluation": traj.evaluation,
        "group_index": traj.group_index,
        "sample_index": traj.sample_index,
        "index": traj.index,
        "timings": traj.timings,
        "prompt_length": traj.prompt_length,
        "token_ids": traj.token_ids,
        "loss_mask": traj.loss_mask,
        "logprobs": traj.logprobs,
        "extra": traj.extra or None,
        "provenance": traj.provenance or None,
        "tripwires": traj.tripwires,
        "tripwire_keys": traj.tripwire_keys or None,
        "drift": traj.drift or None,
    }
    if isinstance(traj.extra.get("tokenizer"), str):
        metadata["tokenizer"] = traj.extra["tokenizer"]
    name = f"{traj.env}/{traj.split}/{traj.index}" if traj.index is not None else traj.env
    rollout = _strip_none(
        {
            "eventType": "rollout",
            "eventId": rid,
            "timestamp": ts,
            "runName": traj.run_name,
            "rolloutName": name,
            "environment": traj.env,
            "environment_id": environment_id,
            "split": traj.split,
            "metadata": metadata,
            "task_spec": traj.task_spec,
            "run_info": {
                "model_name": str(traj.extra.get("model_name") or "unknown"),
                "run_type": "eval" if traj.evaluation else "train",
                "training_stage": "rl",
                "framework": "slime",
            },
        }
    )
    events = [rollout, *message_events(rid, traj.messages, ts, environment_id)]
    total = traj.timings.get("total") if traj.timings else None
    events.append(
        _strip_none(
            {
                "eventType": "rollout_update",
                "eventId": rid,
                "timestamp": ts,
                "rollout_info": _strip_none(
                    {
                        "task_index": traj.index if traj.index is not None else -1,
                        "duration_ms": int(total * 1000)
                        if isinstance(total, (int, float))
                        else None,
                        "harness": HARNESS,
                    }
                ),
            }
        )
    )
    return events


_UNIT_HEAD = b'{"events":['
_UNIT_TAIL = b"]}"


def _encode(traj: Trajectory, environment_id: str | None) -> tuple[list[dict[str, Any]], bytes]:
    events = trajectory_events(traj, environment_id)
    return events, encode_line(events)


def encode_line(events: list[dict[str, Any]]) -> bytes:
    """One spool line / one request unit: {"events": [...]} as JSON (NaN and inf become null)."""
    return orjson.dumps({"events": events}, option=orjson.OPT_SERIALIZE_NUMPY)


# ---------------------------------------------------------------- spool files

_SPOOL_NAME = re.compile(
    r"^(?P<stem>[\w.-]+?)\.(?P<pid>\d+)\.(?P<state>active|ready|claimed)\.jsonl$"
)
_OPEN_IN_THIS_PROCESS: set[str] = set()
_OPEN_LOCK = threading.Lock()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Spool:
    """Append-only JSONL files of undelivered request units, shared safely between processes."""

    def __init__(self, directory: str | os.PathLike[str], stem: str) -> None:
        self.dir = Path(directory)
        self.stem = re.sub(r"[^\w.-]", "_", stem)[:60] or "spool"
        self._active: Path | None = None
        self._lock = threading.Lock()

    def append(self, lines: Iterable[bytes]) -> int:
        """Write units to this process's active file (blocking, small); returns how many."""
        n = 0
        with self._lock:
            if self._active is None:
                self.dir.mkdir(parents=True, exist_ok=True)
                self._active = (
                    self.dir / f"{self.stem}-{uuid.uuid4().hex[:8]}.{os.getpid()}.active.jsonl"
                )
                with _OPEN_LOCK:
                    _OPEN_IN_THIS_PROCESS.add(str(self._active))
            with open(self._active, "ab") as f:
                for line in lines:
                    f.write(line + b"\n")
                    n += 1
                f.flush()
                os.fsync(f.fileno())
        return n

    def seal(self) -> None:
        """Hand the active file to the deliverers (rename to .ready)."""
        with self._lock:
            active, self._active = self._active, None
            if active is None:
                return
            with _OPEN_LOCK:
                _OPEN_IN_THIS_PROCESS.discard(str(active))
            try:
                active.rename(
                    active.with_name(active.name.replace(".active.jsonl", ".ready.jsonl"))
                )
            except FileNotFoundError:
                pass

    def claim(self) -> list[Path]:
        """Take every deliverable file in the dir (ours and those left by dead processes)."""
        self.seal()
        if not self.dir.is_dir():
            return []
        claimed = []
        me = os.getpid()
        for path in sorted(self.dir.glob("*.jsonl")):
            m = _SPOOL_NAME.match(path.name)
            if m is None:
                continue
            pid, state = int(m["pid"]), m["state"]
            with _OPEN_LOCK:
                if str(path) in _OPEN_IN_THIS_PROCESS:
                    continue
            if state in ("active", "claimed") and pid != me and _pid_alive(pid):
                continue
            if state == "claimed" and pid == me:
                claimed.append(path)  # ours from an earlier pass
                continue
            target = path.with_name(f"{m['stem']}.{me}.claimed.jsonl")
            try:
                path.rename(target)
            except (FileNotFoundError, OSError):
                continue
            claimed.append(target)
        return claimed

    def pending_files(self) -> bool:
        """Whether the dir holds spool files this process would deliver (not other live processes' files)."""
        if not self.dir.is_dir():
            return False
        me = os.getpid()
        for path in self.dir.glob("*.jsonl"):
            m = _SPOOL_NAME.match(path.name)
            if m is None:
                continue
            pid = int(m["pid"])
            if m["state"] in ("active", "claimed") and pid != me and _pid_alive(pid):
                continue
            return True
        return False


def _read_lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]


# ---------------------------------------------------------------- uploader


def _without_token_arrays(event: dict[str, Any]) -> dict[str, Any]:
    """A rollout event too big for one request (hosted limit): drop the token arrays, say so."""
    meta = {
        k: v
        for k, v in (event.get("metadata") or {}).items()
        if k not in ("token_ids", "loss_mask", "logprobs")
    }
    meta["tokens_omitted"] = "rollout event exceeded the upload size limit"
    return {**event, "metadata": meta}


class DeliveryError(Exception):
    """A request that did not land; `retry` says whether trying again later can help."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class TrajectoryUploader:
    """Non-blocking, lossless uploader of trajectories as OpenReward rollout events."""

    def __init__(
        self,
        url: str,
        spool_dir: str,
        run_name: str,
        api_key: str = "",
        hosted: bool = False,
        settings: SinkSettings | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.hosted = hosted
        self.settings = settings or (HOSTED_SETTINGS if hosted else SinkSettings())
        self.spool = Spool(spool_dir, run_name)
        self.stats = {"submitted": 0, "delivered": 0, "spooled": 0, "rejected": 0, "duplicates": 0}
        self._queue: asyncio.Queue[Trajectory] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task] = []
        self._sending: set[asyncio.Task] = set()
        self._inflight: dict[int, list[bytes]] = {}
        self._send_slots = asyncio.Semaphore(self.settings.max_in_flight)
        self._client: httpx.AsyncClient | None = None
        self._in_memory = 0  # trajectories in the queue or the batch being sent
        self._flush_now: asyncio.Event | None = None
        self._spool_ready: asyncio.Event | None = None
        self._down_until = 0.0
        self._failures = 0
        self._env_ids: dict[str, str | None] = {}
        self._closed = False
        _LIVE.add(self)

    # -- public API

    def submit(self, trajectory: Trajectory) -> None:
        """Queue a finished episode; returns at once and never raises."""
        try:
            self.stats["submitted"] += 1
            if self._closed or not self._ensure_started():
                self._spool_trajectories([trajectory])
                return
            assert self._queue is not None
            try:
                self._queue.put_nowait(trajectory)
                self._in_memory += 1
            except asyncio.QueueFull:
                self._spool_trajectories([trajectory])
        except Exception as e:  # never let the sink break generation
            log.error(
                "trajectory sink: submit failed, trajectory %s not queued: %s: %s",
                getattr(trajectory, "rollout_id", "?"),
                type(e).__name__,
                e,
            )

    async def flush(self, timeout: float = 30.0) -> bool:
        """Deliver what is queued and spooled; True when nothing is left undelivered."""
        deadline = time.monotonic() + timeout
        if self._loop is None:
            self._ensure_started()
        self._down_until = 0.0
        while time.monotonic() < deadline:
            if self._flush_now is not None:
                self._flush_now.set()
            if self._spool_ready is not None:
                self._spool_ready.set()
            if self._in_memory == 0 and not self.spool.pending_files():
                return True
            await asyncio.sleep(0.05)
        return self._in_memory == 0 and not self.spool.pending_files()

    async def close(self, timeout: float = 10.0) -> bool:
        """Flush for up to `timeout`, then spool whatever is left and stop; True when all was delivered."""
        ok = await self.flush(timeout) if not self._closed else True
        self._closed = True
        tasks = [*self._tasks, *self._sending]
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []
        self._spool_memory()
        self.spool.seal()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        return ok

    # -- internals

    def _ensure_started(self) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self._loop is loop and self._tasks:
            return True
        if self._loop is not None and self._loop is not loop:
            return False  # bound to another loop: get_sink hands out one sink per loop
        self._loop = loop
        self._queue = asyncio.Queue(self.settings.queue_size)
        self._flush_now = asyncio.Event()
        self._spool_ready = asyncio.Event()
        self._tasks = [
            loop.create_task(self._batch_loop(), name="trajectory-sink-batcher"),
            loop.create_task(self._spool_loop(), name="trajectory-sink-spool"),
        ]
        if self.spool.pending_files():
            self._spool_ready.set()
        return True

    def _spool_trajectories(self, trajectories: list[Trajectory]) -> None:
        lines = []
        for t in trajectories:
            lines.append(encode_line(trajectory_events(t, self._env_ids.get(t.env))))
        self.stats["spooled"] += self.spool.append(lines)
        if self._spool_ready is not None:
            self._spool_ready.set()

    def _spool_memory(self) -> None:
        """Move everything still in memory to the spool file (shutdown, atexit)."""
        left: list[Trajectory] = []
        if self._queue is not None:
            while True:
                try:
                    left.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
        lines = [line for batch in self._inflight.values() for line in batch]
        lines += getattr(self, "_batch", [])
        self._batch = []
        self._inflight.clear()
        if left or lines:
            self.stats["spooled"] += self.spool.append(lines)
            self._spool_trajectories(left)
        self._in_memory = 0

    def _http(self) -> httpx.AsyncClient:
        """The HTTP client, made on first use inside the background tasks (costly to build)."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.settings.request_timeout_s,
                headers={"x-api-key": self.api_key, "User-Agent": f"{HARNESS}-sink"},
            )
        return self._client

    async def _environment_id(self, env: str) -> str | None:
        """Hosted envs (`Owner/Name`): the id the SDK looks up first; cached, None when unknown."""
        if not self.hosted or "/" not in env:
            return None
        if env not in self._env_ids:
            owner, name = env.split("/", 1)
            try:
                r = await self._http().get(f"{self.url}/v1/environments/{owner}/{name}")
                self._env_ids[env] = r.json().get("id") if r.status_code == 200 else None
            except Exception:
                return None  # retry next time
        return self._env_ids[env]

    async def _batch_loop(self) -> None:
        assert self._queue is not None and self._flush_now is not None
        self._batch: list[bytes] = []
        counts: list[int] = []
        size = n_events = 0
        started = 0.0
        while True:
            timeout = (
                None
                if not self._batch
                else max(0.0, started + self.settings.max_age_s - time.monotonic())
            )
            get = asyncio.ensure_future(self._queue.get())
            flush = asyncio.ensure_future(self._flush_now.wait())
            done, _ = await asyncio.wait(
                {get, flush}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            flush.cancel()
            if get in done:
                traj = get.result()
                try:
                    env_id = await self._environment_id(traj.env)
                    # Encoding a long episode takes a few ms of CPU: off the generation loop.
                    events, line = await asyncio.to_thread(_encode, traj, env_id)
                except Exception as e:
                    log.error(
                        "trajectory sink: cannot encode trajectory %s: %s: %s",
                        traj.rollout_id,
                        type(e).__name__,
                        e,
                    )
                    self._in_memory -= 1
                    continue
                if not self._batch:
                    started = time.monotonic()
                self._batch.append(line)
                counts.append(1)
                size += len(line)
                n_events += len(events)
            else:
                get.cancel()
                try:
                    await get
                except asyncio.CancelledError:
                    pass
            full = (
                size >= self.settings.max_batch_bytes or n_events >= self.settings.max_batch_events
            )
            aged = self._batch and time.monotonic() - started >= self.settings.max_age_s
            if self._batch and (
                full or aged or self._flush_now.is_set() or (self._queue.empty() and flush in done)
            ):
                self._flush_now.clear()
                lines, self._batch = self._batch, []
                size = n_events = 0
                await self._send_slots.acquire()  # at most max_in_flight requests at once
                task = asyncio.create_task(self._send_batch(lines))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
            elif not self._batch:
                self._flush_now.clear()

    async def _send_or_spool(self, lines: list[bytes]) -> None:
        """Deliver a batch, or spool it while the server is down / when delivery fails."""
        self._inflight[id(lines)] = lines  # close() spools these if it cancels us mid-request
        if time.monotonic() < self._down_until:
            self.stats["spooled"] += await asyncio.to_thread(self.spool.append, lines)
        else:
            try:
                await self._deliver(lines)
            except DeliveryError as e:
                if e.retry:
                    self._note_failure(str(e))
                    self.stats["spooled"] += await asyncio.to_thread(self.spool.append, lines)
                    assert self._spool_ready is not None
                    self._spool_ready.set()
                else:
                    await self._deliver_one_by_one(lines, str(e))
        self._inflight.pop(id(lines), None)

    async def _send_batch(self, lines: list[bytes]) -> None:
        try:
            await self._send_or_spool(lines)
        finally:
            self._in_memory -= len(lines)
            self._send_slots.release()

    async def _deliver_one_by_one(self, lines: list[bytes], first_error: str) -> None:
        """A refused batch: send its trajectories singly so only the bad ones are rejected."""
        if len(lines) == 1:
            self._reject(lines, first_error)
            return
        for line in lines:
            try:
                await self._deliver([line])
            except DeliveryError as e:
                if e.retry:
                    self._note_failure(str(e))
                    self.stats["spooled"] += await asyncio.to_thread(self.spool.append, [line])
                    assert self._spool_ready is not None
                    self._spool_ready.set()
                else:
                    self._reject([line], str(e))

    def _note_failure(self, message: str) -> None:
        self._failures += 1
        delay = min(
            self.settings.backoff_cap_s, self.settings.backoff_base_s * 2 ** (self._failures - 1)
        )
        delay *= random.uniform(0.8, 1.2)
        if self._failures == 1 or self._failures % 10 == 0:
            log.warning(
                "trajectory sink: %s unreachable (%s); spooling to %s, retry in %.1fs",
                self.url,
                message,
                self.spool.dir,
                delay,
            )
        self._down_until = time.monotonic() + delay

    def _reject(self, lines: list[bytes], message: str) -> None:
        log.error(
            "trajectory sink: server refused %d trajectories (%s); kept in %s/rejected-*.jsonl",
            len(lines),
            message,
            self.spool.dir,
        )
        self.spool.dir.mkdir(parents=True, exist_ok=True)
        with open(self.spool.dir / f"rejected-{os.getpid()}.jsonl", "ab") as f:
            for line in lines:
                f.write(line + b"\n")
        self.stats["rejected"] += len(lines)

    async def _deliver(self, lines: list[bytes]) -> None:
        """POST units in requests within the batch limits; raises DeliveryError."""
        client = self._http()
        for body in await asyncio.to_thread(self._requests, lines):
            try:
                r = await client.post(
                    f"{self.url}/v1/rollouts",
                    content=body,
                    headers={"content-type": "application/json"},
                )
            except httpx.HTTPError as e:
                raise DeliveryError(f"{type(e).__name__}: {e}", retry=True) from None
            if r.status_code >= 500 or r.status_code in RETRY_STATUS:
                raise DeliveryError(f"HTTP {r.status_code}: {r.text[:200]}", retry=True)
            if r.status_code >= 400:
                raise DeliveryError(f"HTTP {r.status_code}: {r.text[:300]}", retry=False)
            try:
                self.stats["duplicates"] += int(r.json().get("duplicates", 0))
            except Exception:
                pass
        self.stats["delivered"] += len(lines)
        self._failures = 0
        self._down_until = 0.0

    def _requests(self, lines: list[bytes]) -> list[bytes]:
        """Join units into request bodies of at most max_batch_events / max_batch_bytes."""
        if not self.hosted:
            return self._join_units(lines)
        bodies: list[bytes] = []
        events: list[Any] = []
        size = 0
        for line in lines:
            unit = orjson.loads(line)["events"]
            for ev in unit:
                enc = orjson.dumps(ev)
                if (
                    self.hosted
                    and len(enc) > self.settings.max_batch_bytes
                    and ev.get("eventType") == "rollout"
                ):
                    enc = orjson.dumps(_without_token_arrays(ev))
                if events and (
                    len(events) >= self.settings.max_batch_events
                    or size + len(enc) > self.settings.max_batch_bytes
                ):
                    bodies.append(b'{"events":[' + b",".join(events) + b"]}")
                    events, size = [], 0
                events.append(enc)
                size += len(enc) + 1
        if events:
            bodies.append(b'{"events":[' + b",".join(events) + b"]}")
        return bodies

    def _join_units(self, lines: list[bytes]) -> list[bytes]:
        """Local server: whole trajectories per request, joined without re-parsing the JSON."""
        bodies: list[bytes] = []
        parts: list[bytes] = []
        size = n_events = 0
        for line in lines:
            inner = (
                line[len(_UNIT_HEAD) : -len(_UNIT_TAIL)] if line.startswith(_UNIT_HEAD) else None
            )
            if inner is None or not line.endswith(_UNIT_TAIL):
                inner = orjson.dumps(orjson.loads(line)["events"])[1:-1]
            count = inner.count(b'"eventType":')  # exact: a quote inside a string is escaped
            if parts and (
                n_events + count > self.settings.max_batch_events
                or size + len(inner) > self.settings.max_batch_bytes
            ):
                bodies.append(_UNIT_HEAD + b",".join(parts) + _UNIT_TAIL)
                parts, size, n_events = [], 0, 0
            if inner:
                parts.append(inner)
                size += len(inner) + 1
                n_events += count
        if parts:
            bodies.append(_UNIT_HEAD + b",".join(parts) + _UNIT_TAIL)
        return bodies

    async def _spool_loop(self) -> None:
        """Deliver spool files (ours and earlier processes'), backing off while the server is down."""
        assert self._spool_ready is not None
        while True:
            await self._spool_ready.wait()
            self._spool_ready.clear()
            while True:
                wait = self._down_until - time.monotonic()
                if wait > 0:
                    try:  # flush() clears the backoff and sets the event to retry at once
                        await asyncio.wait_for(self._spool_ready.wait(), timeout=wait)
                        self._spool_ready.clear()
                    except asyncio.TimeoutError:
                        pass
                    continue
                files = await asyncio.to_thread(self.spool.claim)
                if not files:
                    break
                failed = False
                for path in files:
                    try:
                        lines = await asyncio.to_thread(_read_lines, path)
                        for i in range(0, len(lines), 64):
                            await self._deliver(lines[i : i + 64])
                        path.unlink(missing_ok=True)
                    except DeliveryError as e:
                        if not e.retry:
                            await self._deliver_one_by_one(lines, str(e))
                            path.unlink(missing_ok=True)
                            continue
                        self._note_failure(str(e))
                        failed = True
                        break
                    except OSError as e:
                        log.error("trajectory sink: cannot read spool file %s: %s", path, e)
                if not failed and not self.spool.pending_files():
                    break


# ---------------------------------------------------------------- entry point


class DisabledSink:
    """`trajectories.enabled: false`: episodes are not recorded anywhere."""

    def submit(self, trajectory: Trajectory) -> None:
        return None

    async def flush(self, timeout: float = 0.0) -> bool:
        return True

    async def close(self, timeout: float = 0.0) -> bool:
        return True


_LIVE: weakref.WeakSet[TrajectoryUploader] = weakref.WeakSet()
_SINKS: weakref.WeakKeyDictionary[Any, dict[tuple, TrajectorySink]] = weakref.WeakKeyDictionary()
_NO_LOOP = type("_NoLoop", (), {})()
_SINK_LOCK = threading.Lock()


def _spool_all_at_exit() -> None:
    for up in list(_LIVE):
        try:
            up._spool_memory()
            up.spool.seal()
        except Exception:
            pass


atexit.register(_spool_all_at_exit)


def make_sink(config: TrainConfig | None, settings: SinkSettings | None = None) -> TrajectorySink:
    """A new sink for this config (use get_sink in the generate path)."""
    cfg = config if config is not None else config_from_env()
    if cfg is None:
        cfg = TrainConfig.model_validate({"environments": {"_": {}}})
    t = cfg.trajectories
    if not t.enabled:
        return DisabledSink()
    if t.target == "openreward":
        url = t.url or os.environ.get("OPENREWARD_API_URL") or HOSTED_API_URL
        key = os.environ.get("OPENREWARD_API_KEY", "")
        if not key:
            log.error(
                "trajectory sink: trajectories.target is openreward but OPENREWARD_API_KEY is unset; "
                "uploads will be spooled in %s until it is set",
                t.spool_dir,
            )
        s = settings or HOSTED_SETTINGS
        return TrajectoryUploader(
            url, t.spool_dir, cfg.run_name, api_key=key, hosted=True, settings=s
        )
    url = t.url or cfg.env_server_urls[0]
    return TrajectoryUploader(
        url,
        t.spool_dir,
        cfg.run_name,
        api_key=os.environ.get("ENV_SERVER_API_KEY", ""),
        settings=settings,
    )


def get_sink(config: TrainConfig | None, settings: SinkSettings | None = None) -> TrajectorySink:
    """The sink for this config on the running event loop (one per process and loop)."""
    try:
        loop: Any = asyncio.get_running_loop()
    except RuntimeError:
        loop = _NO_LOOP
    key = (
        "$TRAIN_CONFIG"
        if config is None
        else (
            config.run_name,
            config.trajectories.model_dump_json(),
            tuple(config.env_server_urls),
        ),
        settings,
    )
    with _SINK_LOCK:
        per_loop = _SINKS.setdefault(loop, {})
        sink = per_loop.get(key)
        if sink is None:
            sink = make_sink(config, settings)  # None: reads $TRAIN_CONFIG once, here
            per_loop[key] = sink
        return sink
