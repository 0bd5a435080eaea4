"""One eval from start to report: plan, resume, preflight, episodes, report.

1. Plan (tools/eval/plan.py): config, models, tasks, spec, identities, name; nothing contacted.
2. Look the eval up in the store: a different spec, or a stored model with another identity,
   is refused with the differing leaves named; the episodes it has are not run again.
3. Check every model with work (a local engine is started; OpenAI endpoints must accept tools;
   tokenizers load) and ask each server what it serves; a model with nothing left to run is only
   asked that, with a short timeout. Then start the env servers that do not answer.
4. Record the eval and its models, run the missing episodes (each stored as it finishes).
5. Compute the report from the store; save it in the store and write the exports
   (tools/eval/exports.py); log to W&B when asked.

SIGTERM cancels the episodes in flight as Ctrl-C does, whatever the shell: what finished is
stored, the services started here stop (tools/eval/services.py), the exit code is 130.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from envs.trajectories.errors import SpecMismatch, StoreError
from envs.trajectories.evals import EvalRecords, model_summary
from envs.trajectories.store import TrajectoryStore
from tools.errors import EvalError
from tools.eval.exports import write_exports
from tools.eval.identity import generate_served_identity, served_from_models
from tools.eval.plan import Plan, missing_jobs, plan
from tools.eval.render import format_table
from tools.eval.report import build_report
from tools.eval.runner import Job, ModelRuntime, RunSettings, run_jobs
from tools.eval.services import start_env_servers, start_local_engine, start_ui
from tools.eval.spec import ModelKind, ModelSpec
from tools.eval.tasks import EvalTask

__all__ = ["evaluate"]

PROBE_TIMEOUT_S = 3.0


def say(msg: str) -> None:
    print(f"eval: {msg}", file=sys.stderr, flush=True)


def _open_store(db: Path) -> tuple[TrajectoryStore, EvalRecords]:
    try:
        store = TrajectoryStore(db)
    except StoreError as e:
        raise EvalError(str(e)) from None
    return store, EvalRecords(store)


def _lookup(p: Plan) -> tuple[EvalRecords | None, int | None]:
    """The store's records and this eval's id (None when new); EvalError when the stored eval
    has another spec or a stored model is another model now."""
    if not p.db.exists():  # created only once the run is known to be able to start
        return None, None
    _, records = _open_store(p.db)
    try:
        eval_id = records.check(p.name, p.spec.to_json(), p.spec.digest())
        if eval_id is not None:
            records.check_models(eval_id, [p.eval_model(m) for m in p.models])
    except SpecMismatch as e:
        raise EvalError(str(e)) from None
    return records, eval_id


def evaluate(opts: argparse.Namespace) -> int:
    """Run (or resume) the eval `opts` describes and print its report; returns the exit code."""
    p = plan(opts)
    records, eval_id = _lookup(p)
    jobs, done = missing_jobs(p, records, eval_id)
    todo = sum(len(v) for v in jobs.values())
    per_env = ", ".join(f"{env} {n}" for env, n in _task_counts(p.tasks).items())
    say(
        f"{p.name}: {len(p.models)} models x {len(p.tasks)} tasks ({per_env}) x k={p.spec.k}; "
        f"{todo} episodes to run, {sum(done.values())} already stored in {p.db}"
    )
    interrupted = False
    with contextlib.ExitStack() as stack:
        urls = {
            m.name: start_local_engine(stack, m.name, m.target)
            if m.kind is ModelKind.LOCAL
            else m.target
            for m in p.models
            if jobs[m.name]
        }
        run = _Run(p, stack, records, eval_id, jobs, done, urls)
        try:
            interrupted = asyncio.run(run.main())
        except SpecMismatch as e:
            raise EvalError(str(e)) from None
        except (KeyboardInterrupt, asyncio.CancelledError):  # before any episode ran
            interrupted = True
        records = run.records
        if records is not None:
            eval_id = records.check(p.name, p.spec.to_json(), p.spec.digest())
        if records is None or eval_id is None:  # stopped before anything was recorded
            say("interrupted before anything was stored")
            return 130
        _finish(p, records, eval_id, interrupted)
        if opts.serve and not interrupted:
            _serve(p, run.ui, eval_id)
    return 130 if interrupted else 0


def _task_counts(tasks: list[EvalTask]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in tasks:
        out[t.env] = out.get(t.env, 0) + 1
    return out


@contextlib.contextmanager
def _sigterm_cancels(task: asyncio.Task[Any] | None) -> Iterator[None]:
    """While the loop runs: SIGTERM cancels `task` (as asyncio's own Ctrl-C handling does)."""
    if task is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


async def _preflight(p: Plan, m: ModelSpec, url: str) -> tuple[ModelRuntime, dict[str, Any]]:
    """A model ready to run and what its server says it serves; EvalError: unreachable
    endpoint, no tool support, bad tokenizer."""
    from bridge.chat import get_renderer
    from tools.eval.chat_model import ChatClient

    rt = ModelRuntime(spec=m, url=url, run_name=p.run_name(m.name))
    if m.kind is ModelKind.OPENAI:
        rt.chat = ChatClient(m)
        await rt.chat.preflight()
        return rt, served_from_models(rt.chat.listed, rt.chat.served_model)
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            r = await client.get(f"{url}/health", timeout=10.0)
        if r.status_code != 200:
            raise EvalError(f"model {m.name} ({url}): /health answered HTTP {r.status_code}")
    except httpx.HTTPError as e:
        raise EvalError(f"model {m.name} ({url}) is unreachable: {type(e).__name__}: {e}") from None
    assert m.tokenizer is not None
    try:
        rt.renderer = await asyncio.to_thread(
            get_renderer, m.tokenizer, p.config.thinking, p.config.system_prompt
        )
    except Exception as e:
        msg = " ".join(str(e).split())[:300]
        raise EvalError(
            f"model {m.name}: cannot load the tokenizer and chat template from {m.tokenizer!r}: "
            f"{type(e).__name__}: {msg}"
        ) from None
    return rt, await generate_served_identity(url) or {}


async def _probe(m: ModelSpec) -> dict[str, Any] | None:
    """What a model's server says it serves, asked with a short timeout and never more (its
    episodes are all stored); None when it does not answer (a local model is not started)."""
    from bridge.errors import EngineError
    from tools.eval.chat_model import ChatClient

    if m.kind is ModelKind.LOCAL:
        return None
    if m.kind is ModelKind.GENERATE:
        return await generate_served_identity(m.target, PROBE_TIMEOUT_S)
    try:
        client = ChatClient(m, timeout=PROBE_TIMEOUT_S, attempts=1)
    except EvalError:  # its key is not set: nothing to ask with
        return None
    try:
        await client.models()
    except EngineError:
        return None
    finally:
        await client.close()
    served = m.served_model or (client.listed[0].get("id") if len(client.listed) == 1 else None)
    return served_from_models(client.listed, served) if served else None


class _Run:
    """The asynchronous part of a run: preflight, then (only if all is well) record and play."""

    def __init__(
        self,
        p: Plan,
        stack: contextlib.ExitStack,
        records: EvalRecords | None,
        eval_id: int | None,
        jobs: dict[str, list[Job]],
        done: dict[str, int],
        urls: dict[str, str],
    ) -> None:
        self.p = p
        self.stack = stack
        self.records = records
        self.eval_id = eval_id
        self.jobs = jobs
        self.done = done
        self.urls = urls
        self.ui: str | None = None
        self.served: dict[str, dict[str, Any] | None] = {}

    async def main(self) -> bool:
        """Preflight every model with work, probe the others, start the env servers, record the
        eval, run the episodes; True when interrupted. Nothing is written before every check
        passed."""
        from bridge.env_client import close_shared_http

        p = self.p
        runtimes: list[ModelRuntime] = []
        with _sigterm_cancels(asyncio.current_task()):
            try:
                for m in p.models:
                    if self.jobs[m.name]:
                        rt, self.served[m.name] = await _preflight(p, m, self.urls[m.name])
                        runtimes.append(rt)
                    else:
                        self.served[m.name] = await _probe(m)
                        if self.served[m.name] is None and m.kind is not ModelKind.LOCAL:
                            say(f"model {m.name}: its server did not say what it serves now")
                if not runtimes:  # every episode is stored: keep what the servers reported
                    assert self.records is not None and self.eval_id is not None
                    self.records.add_models(self.eval_id, self._eval_models())
                    return False
                self.ui = self._start_env_servers()
                if self.records is None:
                    _, self.records = _open_store(p.db)
                return await self._play(self.records, runtimes)
            finally:
                for rt in runtimes:
                    if rt.chat is not None:
                        await rt.chat.close()
                await close_shared_http()

    def _eval_models(self) -> list[Any]:
        return [self.p.eval_model(m, self.served.get(m.name)) for m in self.p.models]

    def _start_env_servers(self) -> str | None:
        """The env servers of local tasks (started from the loop's thread, the main one, so that
        they die with this process)."""
        p = self.p
        if all(t.meta.hosted for t in p.tasks):
            return None
        urls: list[str] = []
        for t in p.tasks:
            for u in p.env_urls or t.meta.env_server:  # the precedence of bridge.env_client
                if u.rstrip("/") not in urls:
                    urls.append(u.rstrip("/"))
        return start_env_servers(self.stack, urls, p.opts.config, p.db)

    async def _play(self, records: EvalRecords, runtimes: list[ModelRuntime]) -> bool:
        p = self.p
        eval_id = records.ensure(p.name, p.spec.to_json(), p.spec.digest())
        records.add_models(eval_id, self._eval_models())
        settings = RunSettings(
            eval_name=p.name,
            eval_id=eval_id,
            sampling=p.spec.sampling,
            env_urls=p.env_urls,
            system_prompt=p.config.system_prompt,
            concurrency=p.opts.concurrency,
            solve_threshold=p.spec.solve_threshold,
            progress=not p.opts.json,
            done=self.done,
            totals={m.name: len(p.tasks) * p.spec.k for m in p.models},
        )
        t0 = time.perf_counter()
        try:
            n = await run_jobs(runtimes, self.jobs, records, settings)
        except asyncio.CancelledError:
            say(
                "interrupted: the episodes that finished are stored; rerun the same command to "
                "resume"
            )
            return True
        say(f"{n} episodes in {time.perf_counter() - t0:.1f} s")
        return False


def _finish(p: Plan, records: EvalRecords, eval_id: int, interrupted: bool) -> None:
    """Compute the report from the store; save it (store and files) and print it."""
    stored = {m.name: m for m in records.models(eval_id)}
    header = {
        "name": p.name,
        "eval_id": eval_id,
        "db": str(p.db),
        "spec_hash": p.spec.digest(),
        "task_set": p.spec.task_set,
        "sampling": p.spec.sampling.to_json(),
        "solve_threshold": p.spec.solve_threshold,
        "model_info": {
            m.name: model_summary(stored[m.name].endpoint if m.name in stored else {})
            for m in p.models
        },
        "runs": {m.name: p.run_name(m.name) for m in p.models},
    }
    episodes = records.episodes(eval_id, parts=True)
    report = build_report(
        header, [m.name for m in p.models], list(p.spec.tasks), p.spec.k, episodes, p.report_seed
    )
    if not interrupted:
        records.save_report(eval_id, report)
        files = write_exports(p.out, report, episodes, p.name)
    if p.opts.json:
        import orjson

        print(orjson.dumps(report).decode())
    else:
        print(format_table(report))
    if interrupted:
        return
    say(f"reports: {', '.join(str(f) for f in files)}")
    if p.opts.wandb_project:
        from tools.eval.wandb_log import log_report

        say(log_report(report, episodes, p.opts.wandb_project, p.opts.wandb_group, p.out))
    if not p.opts.serve:
        say(
            f"comparison page: python -m envs.server --role trajectories --db {p.db} "
            f"--port 8081, then http://127.0.0.1:8081/evals/{eval_id} (or rerun with --serve)"
        )


def _serve(p: Plan, ui: str | None, eval_id: int) -> None:
    """Keep a web UI on the eval's store up until Ctrl-C or SIGTERM (the env server started here,
    else a trajectory server started for it)."""
    with contextlib.ExitStack() as stack:
        url = ui or start_ui(stack, p.db)
        say(f"serving the comparison page at {url}/evals/{eval_id} until Ctrl-C")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
