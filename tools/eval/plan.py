"""An eval's plan: everything decided before anything is contacted or written.

The config, the models (`--model`, `--sampling-args`), the tasks, the spec and each model's
static identity (tools/eval/identity.py), the eval's name (`--name`, else a hash of the spec and
the identities), and which episodes the store does not have yet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from contract.config import TrainConfig, load_config
from contract.errors import ConfigError
from contract.vocab import EpisodeStatus
from envs.trajectories.evals import IDENTITY_VERSION, EvalModel, EvalRecords
from tools.errors import EvalError, RolloutOnlyError
from tools.eval.identity import static_identity
from tools.eval.runner import Job
from tools.eval.spec import (
    EvalSpec,
    ModelKind,
    ModelSpec,
    Sampling,
    default_eval_name,
    parse_model,
    parse_sampling_args,
)
from tools.eval.tasks import (
    EvalTask,
    interleave,
    task_set_digest,
    tasks_from_config,
    tasks_from_file,
)
from tools.rollout_services import check_model

__all__ = ["Plan", "episode_settings", "missing_jobs", "plan"]


def say(msg: str) -> None:
    print(f"eval: {msg}", file=sys.stderr, flush=True)


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
        identities: dict[str, dict[str, Any]],
    ) -> None:
        self.opts = opts
        self.config = config
        self.models = models
        self.tasks = tasks
        self.spec = spec
        self.name = name
        self.env_urls = env_urls
        self.identities = identities
        """Each model's static identity (the `served` part is added when it is contacted)."""
        self.db = Path(opts.db).resolve()
        self.out = Path(opts.out).resolve() if opts.out else Path("runs", "eval", name).resolve()

    @property
    def report_seed(self) -> int:
        """Bootstrap seed: a function of the spec, so an eval's report never changes by
        rerunning."""
        return int(self.spec.digest()[:8], 16)

    def run_name(self, model: str) -> str:
        return f"{self.name}/{model}"

    def eval_model(self, m: ModelSpec, served: dict[str, Any] | None = None) -> EvalModel:
        """The store's record of a model: its identity, with what its server reported."""
        endpoint = {"v": IDENTITY_VERSION, **self.identities[m.name]}
        if served:
            endpoint["served"] = served
        return EvalModel(m.name, m.kind.value, endpoint, self.run_name(m.name))


def _models(opts: argparse.Namespace) -> tuple[list[ModelSpec], dict[str, Any]]:
    """The models with their sampling arguments, and the shared sampling arguments."""
    models = [parse_model(m, opts.tokenizer) for m in opts.model]
    names = [m.name for m in models]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise EvalError(f"--model {dup} is given twice: model names must be unique")
    shared, models = parse_sampling_args(opts.sampling_args, models)
    for m in models:  # tokenizers and local weights load offline, checked before anything starts
        if m.uses_tokens:
            try:
                check_model(m.tokenizer or m.target, engine_local=m.kind is ModelKind.LOCAL)
            except RolloutOnlyError as e:
                raise EvalError(f"model {m.name}: {e}") from None
    return models, shared


def plan(opts: argparse.Namespace) -> Plan:
    """Config, models and tasks; EvalError (one line) for anything unusable."""
    try:
        config = load_config(opts.config)
    except ConfigError as e:
        raise EvalError(str(e)) from None
    models, shared = _models(opts)
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
        args=shared,
    )
    spec = EvalSpec(
        tasks=tuple(t.ident for t in tasks),
        k=opts.k,
        sampling=sampling,
        solve_threshold=opts.solve_threshold,
        task_set=task_set_digest(tasks),
        settings=episode_settings(config, tasks),
    )
    identities = {m.name: static_identity(m) for m in models}
    name = opts.name or default_eval_name(spec, identities)
    if not 1 <= len(name) <= 200 or any(c in name for c in "\n\r\t"):
        raise EvalError(f"--name {name!r}: 1-200 characters, no line breaks")
    return Plan(opts, config, models, tasks, spec, name, env_urls, identities)


def episode_settings(config: TrainConfig, tasks: list[EvalTask]) -> dict[str, Any]:
    """The settings besides sampling that shape an episode (part of the eval's identity): per env
    its max_turns, no-tool-call rule, reward settings and options; thinking and system prompt."""
    envs: dict[str, Any] = {}
    for t in tasks:
        if t.env not in envs:
            m = t.meta
            envs[t.env] = {
                "max_turns": m.max_turns,
                "on_no_tool_call": m.on_no_tool_call,
                "reward": m.reward.model_dump(mode="json"),
            }
            entry = config.environments.get(t.env)
            if entry is not None and entry.options:
                envs[t.env]["options"] = entry.options
    return {
        "envs": envs,
        "thinking": config.thinking,
        "system_prompt": config.system_prompt,
    }


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
