"""One eval from start to report: tasks, resume, preflight, episodes, report.

1. Read the config and the models; choose the tasks (nothing is contacted yet).
2. Look the eval up in the store: the episodes it already has are not run again.
3. Nothing missing: print the report (a no-op). Else check everything the run needs before
   writing anything: env servers (started on loopback when they do not answer), each model's
   endpoint (a local engine is started; OpenAI endpoints must accept tools), tokenizers.
4. Record the eval and its models, run the missing episodes (each stored as it finishes).
5. Compute the report from the store; save it in the store and as report.json + report.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from contract.config import TrainConfig, load_config
from contract.errors import ConfigError
from contract.vocab import EpisodeStatus
from envs.trajectories.errors import SpecMismatch, StoreError
from envs.trajectories.evals import EvalModel, EvalRecords
from envs.trajectories.store import TrajectoryStore
from tools.errors import EvalError, RolloutOnlyError, ServiceError
from tools.eval.report import build_report, format_markdown, format_table
from tools.eval.runner import Job, ModelRuntime, RunSettings, run_jobs
from tools.eval.spec import (
    EvalSpec,
    ModelKind,
    ModelSpec,
    Sampling,
    default_eval_name,
    parse_model,
)
from tools.eval.tasks import EvalTask, interleave, tasks_from_config, tasks_from_file
from tools.launch.services import (
    answers,
    env_server_command,
    is_loopback,
    local_engine_command,
    managed_process,
)
from tools.rollout_services import check_model

__all__ = ["Plan", "evaluate", "plan"]

PREFIX = "eval"


def say(msg: str) -> None:
    print(f"{PREFIX}: {msg}", file=sys.stderr, flush=True)


class Plan:
    """Everything decided before anything is contacted or written."""

    def __init__(
        self,
        opts: argparse.Namespace,
        config: TrainConfig,
        models: list[ModelSpec],
        tasks: list[EvalTask],
        spec: EvalSpec,
        name: str,
        env_urls: list[str],
    ) -> None:
        self.opts = opts
        self.config = config
        self.models = models
        self.tasks = tasks
        self.spec = spec
        self.name = name
        self.env_urls = env_urls
        self.db = Path(opts.db).resolve()
        self.out = Path(opts.out).resolve() if opts.out else Path("runs", "eval", name).resolve()

    @property
    def report_seed(self) -> int:
        """Bootstrap seed: a function of the spec, so an eval's report never changes by
        rerunning."""
        return int(self.spec.digest()[:8], 16)

    def run_name(self, model: str) -> str:
        return f"{self.name}/{model}"


def plan(opts: argparse.Namespace) -> Plan:
    """Config, models and tasks; EvalError (one line) for anything unusable."""
    try:
        config = load_config(opts.config)
    except ConfigError as e:
        raise EvalError(str(e)) from None
    models = [parse_model(m, opts.tokenizer) for m in opts.model]
    names = [m.name for m in models]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise EvalError(f"--model {dup} is given twice: model names must be unique")
    for m in models:  # tokenizers and local weights load offline, checked before anything starts
        if m.uses_tokens:
            try:
                check_model(m.tokenizer or m.target, engine_local=m.kind is ModelKind.LOCAL)
            except RolloutOnlyError as e:
                raise EvalError(f"model {m.name}: {e}") from None
    envs = [e.strip() for e in opts.envs.split(",") if e.strip()] if opts.envs else None
    notes: list[str] = []
    if opts.tasks:
        tasks = tasks_from_file(Path(opts.tasks), envs, opts.num_tasks, opts.seed)
    else:
        tasks = tasks_from_config(config, envs, opts.num_tasks, opts.seed, notes)
    for n in notes:
        say(n)
    # as in training, the config's env servers (or --env-server) win over a task row's own
    env_urls = [opts.env_server.rstrip("/")] if opts.env_server else config.env_server_urls
    tasks = interleave(tasks)
    sampling = Sampling(
        temperature=0.0 if opts.greedy else opts.temperature,
        top_p=1.0 if opts.greedy else opts.top_p,
        max_tokens=opts.max_tokens,
        max_context_len=opts.max_context_len,
    )
    spec = EvalSpec(
        tasks=tuple(t.ident for t in tasks),
        k=opts.k,
        sampling=sampling,
        solve_threshold=opts.solve_threshold,
        settings=episode_settings(config, tasks),
    )
    name = opts.name or default_eval_name(spec, models)
    if not 1 <= len(name) <= 200 or any(c in name for c in "\n\r\t"):
        raise EvalError(f"--name {name!r}: 1-200 characters, no line breaks")
    return Plan(opts, config, models, tasks, spec, name, env_urls)


def episode_settings(config: TrainConfig, tasks: list[EvalTask]) -> dict[str, Any]:
    """The settings besides sampling that shape an episode (part of the eval's identity)."""
    envs: dict[str, Any] = {}
    for t in tasks:
        if t.env not in envs:
            m = t.meta
            envs[t.env] = {
                "max_turns": m.max_turns,
                "on_no_tool_call": m.on_no_tool_call,
                "reward": m.reward.model_dump(mode="json"),
            }
    return {
        "envs": envs,
        "thinking": config.thinking,
        "system_prompt": config.system_prompt,
    }


def _open_store(db: Path) -> tuple[TrajectoryStore, EvalRecords]:
    try:
        store = TrajectoryStore(db)
    except StoreError as e:
        raise EvalError(str(e)) from None
    return store, EvalRecords(store)


def missing_jobs(
    p: Plan, records: EvalRecords | None, eval_id: int | None
) -> tuple[dict[str, list[Job]], dict[str, int]]:
    """Per model, the episodes the store does not have yet (failed ones too with --retry-errors),
    and how many it has."""
    have: set[tuple[str, str, str, int]] = set()
    if records is not None and eval_id is not None:
        for r in records.episodes(eval_id):
            if not (p.opts.retry_errors and r.status == EpisodeStatus.FAILED):
                have.add((r.model, r.env, r.task, r.sample))
    jobs: dict[str, list[Job]] = {}
    done: dict[str, int] = {}
    for m in p.models:
        todo = [
            Job(task, ordinal, j)
            for j in range(p.spec.k)
            for ordinal, task in enumerate(p.tasks)
            if (m.name, task.env, task.key, j) not in have
        ]
        jobs[m.name] = todo
        done[m.name] = len(p.tasks) * p.spec.k - len(todo)
    return jobs, done


def evaluate(opts: argparse.Namespace) -> int:
    """Run (or resume) the eval `opts` describes and print its report; returns the exit code."""
    p = plan(opts)
    spec_json, digest = p.spec.to_json(), p.spec.digest()
    records: EvalRecords | None = None
    eval_id: int | None = None
    if p.db.exists():  # a missing store is created only once the run is known to be able to start
        _, records = _open_store(p.db)
        try:
            eval_id = records.check(p.name, spec_json, digest)
        except SpecMismatch as e:
            raise EvalError(str(e)) from None
    jobs, done = missing_jobs(p, records, eval_id)
    todo = sum(len(v) for v in jobs.values())
    per_env = ", ".join(f"{env} {n}" for env, n in _task_counts(p.tasks).items())
    say(
        f"{p.name}: {len(p.models)} models x {len(p.tasks)} tasks ({per_env}) x k={p.spec.k}; "
        f"{todo} episodes to run, {sum(done.values())} already stored in {p.db}"
    )
    interrupted = False
    if todo:
        with contextlib.ExitStack() as stack:
            urls = {m.name: _start_local_engine(stack, m) for m in p.models if jobs[m.name]}
            run = _Run(p, stack, records, jobs, done, urls)
            try:
                interrupted = asyncio.run(run.main())
            except SpecMismatch as e:
                raise EvalError(str(e)) from None
            except KeyboardInterrupt:  # Python 3.10: asyncio.run re-raises it after cancelling
                interrupted = True
            records = run.records
            eval_id = records.check(p.name, spec_json, digest) if records is not None else None
            if records is None or eval_id is None:  # stopped before anything was recorded
                return 130
            _finish(p, records, eval_id, interrupted)
            if opts.serve and not interrupted:
                _serve(p, run.ui, eval_id)
    else:
        assert records is not None and eval_id is not None
        _finish(p, records, eval_id, False)
        if opts.serve:
            _serve(p, None, eval_id)
    return 130 if interrupted else 0


def _task_counts(tasks: list[EvalTask]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in tasks:
        out[t.env] = out.get(t.env, 0) + 1
    return out


def _free_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _start_env_servers(stack: contextlib.ExitStack, p: Plan) -> str | None:
    """Make sure the env servers of local tasks answer; start loopback ones on the eval's store.
    Returns the URL of a server started here (it shows the eval in its web UI)."""
    if all(t.meta.hosted for t in p.tasks):
        return None
    urls: list[str] = []
    for t in p.tasks:
        for u in p.env_urls or t.meta.env_server:  # the precedence of bridge.env_client
            if u.rstrip("/") not in urls:
                urls.append(u.rstrip("/"))
    started = None
    for u in urls:
        if answers(u):
            continue
        if not is_loopback(u):
            raise EvalError(
                f"env server {u} does not answer /health: start it there "
                f"(python -m envs.server --config {p.opts.config}) or pass --env-server URL"
            )
        say(f"starting env server at {u} (store: {p.db})")
        p.db.parent.mkdir(parents=True, exist_ok=True)
        cmd = env_server_command(p.opts.config, u, str(p.db))
        try:
            stack.enter_context(managed_process("env server", cmd, u))
        except ServiceError as e:
            raise EvalError(str(e)) from None
        started = started or u
    return started


def _start_local_engine(stack: contextlib.ExitStack, m: ModelSpec) -> str:
    """The URL a model is reached at; a local model gets a CPU engine started here."""
    if m.kind is not ModelKind.LOCAL:
        return m.target
    url = _free_url()
    say(
        f"model {m.name}: starting tools.engines.local_engine at {url} on {m.target} "
        "(CPU, one request at a time: a debugging engine)"
    )
    try:
        stack.enter_context(
            managed_process("local engine", local_engine_command(m.target, url), url, timeout=600.0)
        )
    except ServiceError as e:
        raise EvalError(f"model {m.name}: {e}") from None
    return url


async def _preflight(p: Plan, m: ModelSpec, url: str) -> ModelRuntime:
    """A model ready to run, or EvalError: unreachable endpoint, no tool support, bad tokenizer."""
    from bridge.chat import get_renderer
    from tools.eval.chat_model import ChatClient

    rt = ModelRuntime(spec=m, url=url, run_name=p.run_name(m.name))
    if m.kind is ModelKind.OPENAI:
        rt.chat = ChatClient(m)
        await rt.chat.preflight()
        return rt
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
    return rt


class _Run:
    """The asynchronous part of a run: preflight, then (only if all is well) record and play."""

    def __init__(
        self,
        p: Plan,
        stack: contextlib.ExitStack,
        records: EvalRecords | None,
        jobs: dict[str, list[Job]],
        done: dict[str, int],
        urls: dict[str, str],
    ) -> None:
        self.p = p
        self.stack = stack
        self.records = records
        self.jobs = jobs
        self.done = done
        self.urls = urls
        self.ui: str | None = None

    async def main(self) -> bool:
        """Preflight every model with work and the env servers, record the eval, run the episodes;
        True when interrupted. Nothing is written before every check passed."""
        from bridge.env_client import close_shared_http

        p = self.p
        runtimes: list[ModelRuntime] = []
        try:
            for m in p.models:
                if self.jobs[m.name]:
                    runtimes.append(await _preflight(p, m, self.urls[m.name]))
            self.ui = await asyncio.to_thread(_start_env_servers, self.stack, p)
            if self.records is None:
                _, self.records = _open_store(p.db)
            return await self._play(self.records, runtimes)
        finally:
            for rt in runtimes:
                if rt.chat is not None:
                    await rt.chat.close()
            await close_shared_http()

    async def _play(self, records: EvalRecords, runtimes: list[ModelRuntime]) -> bool:
        p = self.p
        eval_id = records.ensure(p.name, p.spec.to_json(), p.spec.digest())
        records.add_models(
            eval_id,
            [EvalModel(m.name, m.kind.value, m.describe(), p.run_name(m.name)) for m in p.models],
        )
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
    header = {
        "name": p.name,
        "eval_id": eval_id,
        "db": str(p.db),
        "spec_hash": p.spec.digest(),
        "sampling": p.spec.sampling.to_json(),
        "solve_threshold": p.spec.solve_threshold,
        "model_info": {m.name: m.describe() for m in p.models},
        "runs": {m.name: p.run_name(m.name) for m in p.models},
    }
    report = build_report(
        header,
        [m.name for m in p.models],
        list(p.spec.tasks),
        p.spec.k,
        records.episodes(eval_id),
        p.report_seed,
    )
    if not interrupted:
        records.save_report(eval_id, report)
        write_files(
            [
                (p.out / "report.json", orjson.dumps(report, option=orjson.OPT_INDENT_2)),
                (p.out / "report.md", format_markdown(report).encode()),
            ]
        )
    if p.opts.json:
        print(orjson.dumps(report).decode())
    else:
        print(format_table(report))
    if not interrupted:
        say(f"reports: {p.out / 'report.json'}, {p.out / 'report.md'}")
        if not p.opts.serve:
            say(
                f"comparison page: python -m envs.server --role trajectories --db {p.db} "
                f"--port 8081, then http://127.0.0.1:8081/evals/{eval_id} (or rerun with --serve)"
            )


def write_files(files: list[tuple[Path, bytes]]) -> None:
    """Write every file beside its target, then move them all into place: all or none."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        for tmp, path in temps:
            os.replace(tmp, path)
    except OSError as e:
        raise EvalError(f"cannot write the report: {e.strerror or e}: {e.filename or ''}") from None
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _start_ui_server(stack: contextlib.ExitStack, p: Plan) -> str:
    url = _free_url()
    port = urlsplit(url).port
    cmd = [sys.executable, "-m", "envs.server", "--role", "trajectories", "--db", str(p.db)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    try:
        stack.enter_context(managed_process("trajectory server", cmd, url))
    except ServiceError as e:
        raise EvalError(str(e)) from None
    return url


def _serve(p: Plan, ui: str | None, eval_id: int) -> None:
    """Keep a web UI on the eval's store up until Ctrl-C (the env server started here, else a
    trajectory server started for it)."""
    with contextlib.ExitStack() as stack:
        url = ui or _start_ui_server(stack, p)
        say(f"serving the comparison page at {url}/evals/{eval_id} until Ctrl-C")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
