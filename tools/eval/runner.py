"""Running an eval's missing episodes: every model concurrently, each through the bridge's episode
loop.

Per episode: open an ORS session, build the model's step (`TokenModel` for /generate and local
models, `ChatModel` for OpenAI endpoints), run `bridge.episode.Episode`, then hand it to the
writer thread, which stores the rollout with its eval row (the episodes that finished meanwhile
share a transaction). The store is the eval's state: an interrupted run loses at most the
episodes in flight.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bridge.chat import ChatRenderer
from bridge.engine import EngineClient
from bridge.env_client import open_session
from bridge.episode import Budget, Episode, EpisodeResult
from bridge.model_step import ModelStep
from bridge.provenance import tokenizer_fingerprint
from bridge.rewards import RewardOutcome
from bridge.token_model import TokenModel
from bridge.trajectory import EpisodeTokens, episode_trajectory
from bridge.trajectory_codec import trajectory_events
from contract.vocab import EpisodeStatus, StopReason
from envs.trajectories.evals import EpisodeRow, EvalRecords
from tools.errors import EvalError
from tools.eval.chat_model import ChatClient, ChatModel
from tools.eval.spec import ModelSpec, Sampling
from tools.eval.tasks import EvalTask
from tools.prepare_tasks import gather_or_cancel

log = logging.getLogger(__name__)

__all__ = ["Job", "ModelRuntime", "RunSettings", "run_jobs", "solved"]

SOLVE_EPS = 1e-6
TOKEN_KEYS = ("token_ids", "loss_mask", "logprobs", "prompt_length")


@dataclass(frozen=True)
class Job:
    """One episode to run: a task, its position in the eval (its group), and the sample number."""

    task: EvalTask
    ordinal: int
    sample: int


@dataclass
class ModelRuntime:
    """A model ready to run episodes: its endpoint resolved and its client or renderer loaded."""

    spec: ModelSpec
    url: str
    run_name: str
    renderer: ChatRenderer | None = None
    chat: ChatClient | None = None
    engine: EngineClient | None = None

    def step(
        self, routing_key: str, system_prompt: str | None, sampling_args: dict[str, Any]
    ) -> ModelStep:
        """The model's side of one episode; a chat model sends `sampling_args` in its bodies (a
        token model gets them in the episode's sampling params)."""
        if self.chat is not None:
            return ChatModel(self.chat, system_prompt, sampling_args)
        assert self.renderer is not None
        if self.engine is None:
            self.engine = EngineClient(self.url)
        return TokenModel(self.engine, self.renderer, routing_key)


@dataclass
class RunSettings:
    """What every episode of the run shares."""

    eval_name: str
    eval_id: int
    sampling: Sampling
    env_urls: list[str]
    system_prompt: str | None
    concurrency: int
    solve_threshold: float | None = None
    progress: bool = True
    done: dict[str, int] = field(default_factory=dict)
    """Episodes already stored per model (the progress bars start there)."""
    totals: dict[str, int] = field(default_factory=dict)

    def sampling_args(self, model: ModelSpec) -> dict[str, Any]:
        """The sampling arguments a model's engine gets: the shared ones, then its own."""
        return {**self.sampling.args, **model.sampling_args}


def solved(reward: float, task: EvalTask, threshold: float | None) -> bool:
    """Solved at the task's max_reward, or at `threshold` when one is set."""
    bar = threshold if threshold is not None else task.meta.reward.max_reward
    return reward >= bar - SOLVE_EPS


def _failed_result(message: str, stop_reason: StopReason) -> EpisodeResult:
    return EpisodeResult(
        ledger=None,
        messages=[],
        turn_rewards=[],
        env_finished=False,
        stop_reason=stop_reason,
        status=EpisodeStatus.FAILED,
        num_turns=0,
        num_tool_calls=0,
        tool_errors={},
        reward=RewardOutcome(0.0, 0.0, []),
        failure=message,
    )


async def _play(rt: ModelRuntime, job: Job, settings: RunSettings) -> EpisodeResult:
    """One episode; failures outside the loop's own handling become a failed result."""
    key = uuid.uuid4().hex
    meta = job.task.meta
    try:
        session = open_session(meta, settings.env_urls, key)
        step = rt.step(key, settings.system_prompt, settings.sampling_args(rt.spec))
    except Exception as e:
        return _failed_result(
            f"cannot open the episode: {type(e).__name__}: {e}", StopReason.SETUP_ERROR
        )
    budget = Budget(
        max_context_len=settings.sampling.max_context_len,
        max_response_len=settings.sampling.max_tokens,
    )
    params = settings.sampling.sglang_params(rt.spec.sampling_args)
    episode = Episode(session, step, meta, params, budget)
    try:
        return await episode.run()
    except Exception as e:  # a bug, not an env or model failure: recorded, the eval goes on
        log.exception("eval: episode raised")
        return _failed_result(f"{type(e).__name__}: {e}", StopReason.BRIDGE_ERROR)


def _tokenizer(rt: ModelRuntime) -> dict[str, str]:
    """The tokenizer fingerprint provenance records for this model."""
    if rt.renderer is not None:
        return tokenizer_fingerprint(rt.renderer.tokenizer)
    # an OpenAI endpoint tokenizes with its own template, unseen here
    served = (rt.chat.served_model if rt.chat else None) or rt.spec.name
    return {
        "tokenizer": f"{served} (server)",
        "tokenizer_hash": "unknown",
        "chat_template_hash": "unknown",
    }


def episode_record(
    rt: ModelRuntime, job: Job, result: EpisodeResult, settings: RunSettings
) -> tuple[EpisodeRow, list[dict[str, Any]]]:
    """The eval row and the rollout events of a finished episode."""
    meta = job.task.meta
    failed = result.status == EpisodeStatus.FAILED
    reward = 0.0 if failed else result.reward.reward  # as training counts a failed episode
    traj = episode_trajectory(
        rt.run_name,
        meta,
        result,
        reward=reward,
        status=result.status.value,
        tokens=EpisodeTokens.from_ledger(result.ledger),
        tokenizer=_tokenizer(rt),
        sampling_params=settings.sampling.sglang_params(rt.spec.sampling_args),
        evaluation=True,
        group_index=job.ordinal,
        sample_index=job.sample,
        extra={
            "eval": settings.eval_name,
            "model": rt.spec.name,
            "task": job.task.key,
            "sample": job.sample,
            "model_name": (rt.chat.served_model if rt.chat else None) or rt.spec.name,
            "tokenizer": rt.spec.tokenizer,
            "session_url": result.session_url or None,
            "failure": result.failure,
        },
    )
    events = trajectory_events(traj)
    if result.ledger is None:  # a chat model: no tokens to show
        meta_out = events[0]["metadata"]
        for k in TOKEN_KEYS:
            meta_out.pop(k, None)
    row = EpisodeRow(
        model=rt.spec.name,
        env=job.task.env,
        task=job.task.key,
        sample=job.sample,
        rollout_event_id=events[0]["eventId"],
        reward=reward,
        solved=not failed and solved(reward, job.task, settings.solve_threshold),
        num_turns=result.num_turns,
        num_tool_calls=result.num_tool_calls,
        stop_reason=result.stop_reason.value,
        status=result.status.value,
        tool_errors=dict(result.tool_errors),
        failure=result.failure,
    )
    return row, events


class _Progress:
    """One progress bar per model (tqdm on a terminal, silent otherwise)."""

    def __init__(self, models: list[ModelRuntime], settings: RunSettings) -> None:
        from tqdm import tqdm

        width = max(len(m.spec.name) for m in models)
        self.bars = {
            m.spec.name: tqdm(
                total=settings.totals.get(m.spec.name, 0),
                initial=settings.done.get(m.spec.name, 0),
                desc=m.spec.name.ljust(width),
                unit="ep",
                position=i,
                file=sys.stderr,
                disable=None if settings.progress else True,
                dynamic_ncols=True,
            )
            for i, m in enumerate(models)
        }
        self.reward = {m.spec.name: [0.0, 0] for m in models}

    def update(self, model: str, reward: float) -> None:
        acc = self.reward[model]
        acc[0] += reward
        acc[1] += 1
        bar = self.bars[model]
        bar.set_postfix_str(f"reward {acc[0] / acc[1]:.3f}", refresh=False)
        bar.update(1)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


class _StoreWriter:
    """Stores finished episodes from one thread: whatever finished while the last write ran goes
    in the next transaction (each episode complete with its eval row, all of a batch or none).
    Building the rollout events happens on that thread too, off the event loop."""

    def __init__(self, records: EvalRecords, settings: RunSettings) -> None:
        self.records = records
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval-store")
        self.pending: list[tuple[ModelRuntime, Job, EpisodeResult, asyncio.Future[EpisodeRow]]] = []
        self.writing: asyncio.Future[None] | None = None
        self.error: Exception | None = None

    def submit(
        self, rt: ModelRuntime, job: Job, result: EpisodeResult
    ) -> asyncio.Future[EpisodeRow]:
        """A future of the episode's row, resolved once it is committed. After a failed write
        this raises it: the run stops instead of playing episodes it cannot keep."""
        if self.error is not None:
            raise self.error
        fut: asyncio.Future[EpisodeRow] = self.loop.create_future()
        self.pending.append((rt, job, result, fut))
        if self.writing is None:
            self._next()
        return fut

    def _next(self) -> None:
        batch, self.pending = self.pending, []
        self.writing = asyncio.ensure_future(self._write(batch))

    async def _write(self, batch: list[tuple[Any, ...]]) -> None:
        try:
            rows = await self.loop.run_in_executor(self.pool, self._store, batch)
        except Exception as e:  # the store failed: every waiter hears it, close() raises it
            self.error = self.error or e
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        finally:
            self.writing = None
        for (*_, fut), row in zip(batch, rows, strict=True):
            if not fut.done():
                fut.set_result(row)
        if self.pending:
            self._next()

    def _store(self, batch: list[tuple[Any, ...]]) -> list[EpisodeRow]:
        records = [episode_record(rt, job, result, self.settings) for rt, job, result, _ in batch]
        try:
            self.records.record_many(self.settings.eval_id, records)
        except Exception as e:
            msg = " ".join(str(e).split())[:300]
            raise EvalError(
                f"cannot store episodes in {self.records.store.path}: {type(e).__name__}: {msg}"
            ) from None
        return [row for row, _ in records]

    async def close(self) -> None:
        """Store what finished (also after a cancellation), stop the thread; raise a failed
        write."""
        try:
            while self.error is None and (self.writing is not None or self.pending):
                if self.writing is None:
                    self._next()
                assert self.writing is not None
                await asyncio.shield(self.writing)
        finally:
            self.pool.shutdown(wait=True)
        if self.error is not None:
            raise self.error


async def run_jobs(
    models: list[ModelRuntime],
    jobs: dict[str, list[Job]],
    records: EvalRecords,
    settings: RunSettings,
) -> int:
    """Run every model's jobs (`settings.concurrency` workers per model); returns episodes stored.

    A store failure stops the run (raised from here); finished episodes are stored first."""
    writer = _StoreWriter(records, settings)
    progress = _Progress(models, settings)
    stored = 0

    def committed(model: str, fut: asyncio.Future[EpisodeRow]) -> None:
        nonlocal stored
        if not fut.cancelled() and fut.exception() is None:
            stored += 1
            progress.update(model, fut.result().reward)

    async def run_model(rt: ModelRuntime) -> None:
        todo = iter(jobs.get(rt.spec.name, []))  # shared by the workers: each job is taken once

        async def worker() -> None:
            for job in todo:
                result = await _play(rt, job, settings)
                fut = writer.submit(rt, job, result)
                fut.add_done_callback(functools.partial(committed, rt.spec.name))

        n = min(settings.concurrency, len(jobs.get(rt.spec.name, [])))
        await gather_or_cancel([worker() for _ in range(n)])

    try:
        await gather_or_cancel([run_model(m) for m in models])
    finally:
        try:
            await writer.close()  # finished episodes are stored, also when the run was cancelled
            await asyncio.sleep(0)  # the last batch's done callbacks count it
        finally:
            progress.close()
    return stored
