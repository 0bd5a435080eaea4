"""The trajectory sink's uploader: finished episodes -> journal -> batches -> `/v1/rollouts`,
spooled to disk while the server cannot take them.

Long on purpose: one state machine (journal -> queue -> batch -> server | spool | rejected |
overflow) whose steps share its queues, backoff and counters; the files live in
bridge/trajectory_spool.py, the encoding in bridge/trajectory_codec.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bridge.errors import DeliveryError
from bridge.trajectory import Trajectory
from bridge.trajectory_codec import (
    HARNESS,
    encode,
    encode_line,
    is_unit,
    journal_line,
    request_bodies,
    trajectory_events,
    trajectory_from_journal,
)
from bridge.trajectory_spool import (
    Journal,
    JournalSegment,
    Spool,
    append_lines,
    process_file,
    quarantine,
    read_lines,
    spool_area,
)

__all__ = ["HOSTED_SETTINGS", "LIVE_UPLOADERS", "SinkSettings", "TrajectoryUploader"]

log = logging.getLogger(__name__)

# Status codes worth retrying (server busy, down, or auth to be fixed): everything else 4xx is
# final.
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


@dataclass(eq=False)
class _Unit:
    """One trajectory on its way: its request unit (the spool line) and its journal segment."""

    line: bytes
    seg: JournalSegment | None
    in_memory_only: bool = False  # counted once in stats when the spool could not take it


async def _wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for `event` up to `timeout`; whether it is set. (asyncio.wait_for in Python 3.11 can
    swallow a cancellation that arrives as the event is set: close() would then hang.)"""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return event.is_set()


class TrajectoryUploader:
    """Non-blocking, lossless uploader of trajectories as OpenReward rollout events.

    Where a submitted trajectory is, in order: the journal (always, unless the disk is full),
    the in-memory queue and batches, then the server; or the spool file while the server is
    down, or `rejected-*.jsonl` when the server refuses it. When the disk is full, what does not
    fit stays in memory (`overflow`) and is sent from there; `stats` counts every case and the
    log says so, once per case.
    """

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
        area = spool_area(spool_dir, self.url if hosted else None)
        self.spool = Spool(area, run_name)
        self.journal = Journal(area, run_name)
        self.stats = {
            "submitted": 0,
            "delivered": 0,
            "spooled": 0,
            "rejected": 0,
            "duplicates": 0,
            "recovered": 0,  # from the journals of processes that died (kill -9)
            "quarantined": 0,  # unreadable spool or journal lines, set aside
            "not_journaled": 0,  # submitted while the journal could not be written
            "in_memory_only": 0,  # could not be spooled (full disk): kept in memory
            "lost": 0,  # neither delivered nor on disk when the sink closed (logged)
        }
        self._queue: asyncio.Queue[tuple[Trajectory, JournalSegment | None]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._inflight: dict[int, list[_Unit]] = {}
        self._batch: list[_Unit] = []
        self._overflow: list[_Unit] = []  # not on disk (full disk), not delivered yet
        self._send_slots = asyncio.Semaphore(self.settings.max_in_flight)
        self._client: httpx.AsyncClient | None = None
        self._in_memory = 0  # trajectories in the queue or the batch being sent
        self._flush_now: asyncio.Event | None = None
        self._spool_ready: asyncio.Event | None = None
        self._down_until = 0.0
        self._failures = 0
        self._env_ids: dict[str, str | None] = {}
        self._closed = False
        LIVE_UPLOADERS.add(self)

    # -- public API

    def submit(self, trajectory: Trajectory) -> None:
        """Journal a finished episode and queue it; returns at once and never raises.

        The episode is in the OS page cache when this returns (a kill -9 of the process loses
        nothing); ~0.2 ms for a 20-turn episode, p99 ~0.3 ms (bench/trajectories.py)."""
        try:
            self.stats["submitted"] += 1
            seg = self._journal(trajectory)
            if self._closed or not self._ensure_started():
                self._spool_now([(trajectory, seg)])
                return
            assert self._queue is not None
            try:
                self._queue.put_nowait((trajectory, seg))
                self._in_memory += 1
            except asyncio.QueueFull:
                self._spool_now([(trajectory, seg)])
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
            if self._settled():
                return True
            await asyncio.sleep(0.05)
        return self._settled()

    async def close(self, timeout: float = 10.0) -> bool:
        """Flush for up to `timeout`, then spool whatever is left and stop; True when all was
        delivered. Counts in `stats`; anything lost is logged as an error."""
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
        self.journal.close()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        return ok and not self.stats["lost"]

    # -- internals

    def _settled(self) -> bool:
        return self._in_memory == 0 and not self._overflow and not self.spool.pending_files()

    def _journal(self, traj: Trajectory) -> JournalSegment | None:
        try:
            line = journal_line(traj)
        except TypeError as e:
            log.error("trajectory sink: trajectory %s cannot be journaled: %s", traj.rollout_id, e)
            seg = None
        else:
            seg = self.journal.record(line)
        if seg is None:
            self.stats["not_journaled"] += 1
        return seg

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

    def _encode_units(self, items: list[tuple[Trajectory, JournalSegment | None]]) -> list[_Unit]:
        """Encode trajectories into units; one that cannot be encoded is set aside."""
        units = []
        for traj, seg in items:
            try:
                units.append(_Unit(encode(traj, self._env_ids.get(traj.env))[1], seg))
            except Exception as e:
                self._unencodable(traj, seg, e)
        return units

    def _unencodable(self, traj: Any, seg: JournalSegment | None, e: Exception) -> None:
        log.error(
            "trajectory sink: cannot encode trajectory %s: %s: %s",
            getattr(traj, "rollout_id", "?"),
            type(e).__name__,
            e,
        )
        try:
            line = journal_line(traj)
        except Exception:
            line = repr(traj).encode("utf-8", "replace").replace(b"\n", b" ")
        self.stats["quarantined"] += quarantine(self.spool.dir, [line], f"cannot encode: {e}")
        self.journal.settle(seg)

    def _spool_now(self, items: list[tuple[Trajectory, JournalSegment | None]]) -> None:
        """Encode and spool trajectories on the calling thread (no loop, or the queue is full)."""
        self._spool_units(self._encode_units(items))
        if self._spool_ready is not None:
            self._spool_ready.set()

    def _spool_units(self, units: list[_Unit]) -> int:
        """Write units to the spool; what does not fit (full disk) goes to the overflow."""
        n = self.spool.append([u.line for u in units])
        self.stats["spooled"] += n
        for u in units[:n]:
            self.journal.settle(u.seg)
        if n < len(units):
            rest = units[n:]
            self._overflow += rest
            newly = [u for u in rest if not u.in_memory_only]
            for u in newly:
                u.in_memory_only = True
            self.stats["in_memory_only"] += len(newly)
            log.error(
                "trajectory sink: %d trajectories could not be spooled to %s; kept in memory "
                "(%d now) and sent when the server answers",
                len(rest),
                self.spool.dir,
                len(self._overflow),
            )
        return n

    def _spool_memory(self) -> None:
        """Move everything still in memory to the spool file (shutdown, atexit)."""
        items: list[tuple[Trajectory, JournalSegment | None]] = []
        if self._queue is not None:
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
        units = [u for batch in self._inflight.values() for u in batch] + self._batch
        units += self._overflow
        self._batch, self._overflow = [], []
        self._inflight.clear()
        units += self._encode_units(items)
        if units:
            self._spool_units(units)
        left, self._overflow = self._overflow, []
        lost = [u for u in left if u.seg is None]  # the rest stay recoverable from the journal
        if lost:
            self.stats["lost"] += len(lost)
            log.error(
                "trajectory sink: %d trajectories LOST: the disk at %s is full and the server "
                "%s could not be reached before the sink closed",
                len(lost),
                self.spool.dir,
                self.url,
            )
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
        while True:
            try:
                await self._batch_loop_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop uploads silently
                log.exception("trajectory sink: batcher failed; restarting it")
                await asyncio.sleep(1.0)

    async def _batch_loop_once(self) -> None:
        assert self._queue is not None and self._flush_now is not None
        size = n_events = 0
        started = time.monotonic()
        while True:
            timeout = (
                None
                if not self._batch
                else max(0.0, started + self.settings.max_age_s - time.monotonic())
            )
            get = asyncio.ensure_future(self._queue.get())
            flush = asyncio.ensure_future(self._flush_now.wait())
            try:
                done, _ = await asyncio.wait(
                    {get, flush}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            except asyncio.CancelledError:
                get.cancel()
                flush.cancel()
                raise
            flush.cancel()
            if get in done:
                traj, seg = get.result()
                try:
                    env_id = await self._environment_id(traj.env)
                    # On the loop, one episode per step (~1.5 ms for 20 turns with tokens). A
                    # worker thread saves no time (the encoder holds the GIL) and made every
                    # syscall of the loop wait for it: submit() p99 1.4-1.8 ms, vs 0.3 ms here
                    # (bench/trajectories.py, the sink section).
                    events, line = encode(traj, env_id)
                except Exception as e:
                    self._unencodable(traj, seg, e)
                    self._in_memory -= 1
                    continue
                if not self._batch:
                    started = time.monotonic()
                self._batch.append(_Unit(line, seg))
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
                units, self._batch = self._batch, []
                size = n_events = 0
                await self._send_slots.acquire()  # at most max_in_flight requests at once
                task = asyncio.create_task(self._send_batch(units))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
            elif not self._batch:
                self._flush_now.clear()

    async def _send_or_spool(self, units: list[_Unit]) -> None:
        """Deliver a batch, or spool it while the server is down / when delivery fails."""
        self._inflight[id(units)] = units  # close() spools these if it cancels us mid-request
        try:
            if time.monotonic() < self._down_until:
                await asyncio.to_thread(self._spool_units, units)
            else:
                try:
                    await self._deliver([u.line for u in units])
                    self._settle(units)
                except DeliveryError as e:
                    if e.retry:
                        self._note_failure(str(e))
                        await asyncio.to_thread(self._spool_units, units)
                        assert self._spool_ready is not None
                        self._spool_ready.set()
                    else:
                        await self._deliver_one_by_one(units, str(e))
        finally:
            self._inflight.pop(id(units), None)

    def _settle(self, units: list[_Unit]) -> None:
        for u in units:
            self.journal.settle(u.seg)

    async def _send_batch(self, units: list[_Unit]) -> None:
        try:
            await self._send_or_spool(units)
        except Exception:
            log.exception("trajectory sink: sending a batch failed; keeping it in memory")
            self._overflow += units
        finally:
            self._in_memory -= len(units)
            self._send_slots.release()

    async def _deliver_one_by_one(self, units: list[_Unit], first_error: str) -> None:
        """A refused batch: send its trajectories singly so only the bad ones are rejected."""
        if len(units) == 1:
            self._reject(units, first_error)
            return
        for u in units:
            try:
                await self._deliver([u.line])
                self._settle([u])
            except DeliveryError as e:
                if e.retry:
                    self._note_failure(str(e))
                    await asyncio.to_thread(self._spool_units, [u])
                    assert self._spool_ready is not None
                    self._spool_ready.set()
                else:
                    self._reject([u], str(e))

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

    def _reject(self, units: list[_Unit], message: str) -> None:
        log.error(
            "trajectory sink: server refused %d trajectories (%s); kept in %s/rejected-*.jsonl",
            len(units),
            message,
            self.spool.dir,
        )
        try:
            self.spool.dir.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
        path = process_file(self.spool.dir, "rejected")
        n = append_lines(path, [u.line for u in units])
        self.stats["rejected"] += n
        self._settle(units[:n])
        for u in units[n:]:  # the disk is full: a refused unit can only wait in its journal
            if u.seg is None:
                self.stats["lost"] += 1
                log.error("trajectory sink: a refused trajectory could not be kept (disk full)")

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
        s = self.settings
        return request_bodies(lines, s.max_batch_events, s.max_batch_bytes, self.hosted)

    async def _spool_loop(self) -> None:
        """Deliver spool files, journals of dead processes and the overflow, backing off while
        the server is down. Never stops: an unexpected error is logged and retried later."""
        assert self._spool_ready is not None
        while True:
            await self._spool_ready.wait()
            self._spool_ready.clear()
            while True:
                wait = self._down_until - time.monotonic()
                if wait > 0:  # flush() clears the backoff and sets the event to retry at once
                    if await _wait_event(self._spool_ready, wait):
                        self._spool_ready.clear()
                    continue
                try:
                    more = await self._spool_pass()
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.exception("trajectory sink: spool delivery failed; retrying later")
                    self._note_failure(f"{type(e).__name__}: {e}")
                    continue
                if not more:
                    break

    async def _spool_pass(self) -> bool:
        """One pass over what waits on disk and in the overflow; True when more is left."""
        for path in await asyncio.to_thread(self.spool.claim_journals):
            await asyncio.to_thread(self._recover_journal, path)
        if self._overflow and not await self._drain_overflow():
            return True
        files = await asyncio.to_thread(self.spool.claim)
        if not files:
            return bool(self._overflow)
        for path in files:
            lines = await asyncio.to_thread(self._readable_units, path)
            if lines is None:
                continue
            try:
                for i in range(0, len(lines), 64):
                    await self._deliver(lines[i : i + 64])
            except DeliveryError as e:
                if e.retry:
                    self._note_failure(str(e))
                    return True
                await self._deliver_one_by_one([_Unit(line, None) for line in lines], str(e))
            await asyncio.to_thread(self.spool.done, path)
        # off the loop: each file is probed for its lock (a round trip to an NFS server)
        return bool(self._overflow) or await asyncio.to_thread(self.spool.pending_files)

    def _readable_units(self, path: Path) -> list[bytes] | None:
        """A claimed spool file's whole units; torn lines are quarantined. None if unreadable."""
        try:
            lines = read_lines(path)
        except OSError as e:
            log.error("trajectory sink: cannot read spool file %s: %s", path, e)
            return None
        good = [line for line in lines if is_unit(line)]
        if len(good) < len(lines):
            bad = [line for line in lines if not is_unit(line)]
            self.stats["quarantined"] += quarantine(
                self.spool.dir, bad, f"torn lines in {path.name}"
            )
        return good

    def _recover_journal(self, path: Path) -> None:
        """A dead process's journal: its episodes become spool lines (the server ignores the
        ones it already has), and the journal goes. A line that cannot become a unit, whatever
        its shape (torn, not a trajectory, a trajectory whose fields hold the wrong types), is
        quarantined: one such line once made every pass fail and blocked the whole spool."""
        try:
            lines = read_lines(path)
        except OSError as e:
            log.error("trajectory sink: cannot read journal %s: %s", path, e)
            return
        units, bad = [], []
        why = ""
        for line in lines:
            try:
                traj = trajectory_from_journal(line)
                units.append(encode_line(trajectory_events(traj, self._env_ids.get(traj.env))))
            except Exception as e:
                bad.append(line)
                why = why or f"{type(e).__name__}: {e}"[:200]
        kept = quarantine(self.spool.dir, bad, f"unreadable lines in {path.name}: {why}")
        self.stats["quarantined"] += kept
        if kept == len(bad) and self.spool.append(units) == len(units):
            self.stats["recovered"] += len(units)
            self.spool.done(path)
            if units:
                log.warning(
                    "trajectory sink: recovered %d trajectories from %s (a process that stopped "
                    "without closing its sink)",
                    len(units),
                    path.name,
                )
        # else: the disk is full; the journal stays and is recovered on a later pass (lines
        # already spooled or quarantined again are harmless: the server ignores duplicates)

    async def _drain_overflow(self) -> bool:
        """Spool the overflow if the disk has room again, else deliver it; True when empty."""
        units, self._overflow = self._overflow, []
        n = await asyncio.to_thread(self.spool.append, [u.line for u in units])
        self.stats["spooled"] += n
        self._settle(units[:n])
        rest = units[n:]
        for i in range(0, len(rest), 64):
            chunk = rest[i : i + 64]
            try:
                await self._deliver([u.line for u in chunk])
                self._settle(chunk)
            except DeliveryError as e:
                if not e.retry:
                    await self._deliver_one_by_one(chunk, str(e))
                    continue
                self._overflow += rest[i:]
                self._note_failure(str(e))
                return False
        return True


LIVE_UPLOADERS: weakref.WeakSet[TrajectoryUploader] = weakref.WeakSet()
"""Every uploader not yet collected: what is in their memory is spooled at exit."""
