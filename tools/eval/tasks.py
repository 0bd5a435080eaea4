"""The tasks of an eval: each environment's eval split from train_config.yaml, or a task file.

From the config, the tasks are chosen exactly as `prepare_tasks.py` chooses its eval rows (the same
seeded subset of each env's `eval_split`, capped by `num_eval_samples` and `--num-tasks`) and
rendered by the same code. From a task file (prepare_tasks.py rows), `--num-tasks` takes a seeded
subset per environment. A task is named by its environment and a key: `split/index`, or
`spec:<hash>` for a task given only by its task spec.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from contract.config import TrainConfig
from contract.task import TaskMeta
from tools.errors import EvalError, TaskSourceError
from tools.task_source import read_task_rows

__all__ = ["EvalTask", "interleave", "task_set_digest", "tasks_from_config", "tasks_from_file"]


@dataclass(frozen=True)
class EvalTask:
    """One task of the eval, with everything an episode needs."""

    env: str
    key: str
    meta: TaskMeta
    label: str | None = None
    content: str = ""
    """A hash of what the task row says (its prompt, label and task spec)."""

    @property
    def ident(self) -> tuple[str, str]:
        return (self.env, self.key)


def task_key(meta: TaskMeta) -> str:
    """`split/index`, or `spec:<hash>` of the task spec."""
    if meta.index is not None:
        return f"{meta.split}/{meta.index}"
    blob = orjson.dumps(meta.task_spec, option=orjson.OPT_SORT_KEYS)
    return "spec:" + hashlib.sha256(blob).hexdigest()[:16]


def _from_row(row: dict[str, Any], where: str) -> EvalTask:
    md = dict(row.get("metadata") or {})
    if "tools" in row and not md.get("tools"):
        md["tools"] = row["tools"]
    try:
        meta = TaskMeta.model_validate(md)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in first["loc"]) or "metadata"
        raise EvalError(f"{where}: not a task row: {loc}: {first['msg']}") from None
    label = row.get("label")
    content = {"prompt": row.get("prompt"), "label": label, "task_spec": meta.task_spec}
    return EvalTask(
        meta.env,
        task_key(meta),
        meta,
        label if isinstance(label, str) else None,
        hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16],
    )


def task_set_digest(tasks: list[EvalTask]) -> str:
    """A hash of every task's key and content, in eval order: changed data under the same keys
    is another task set."""
    h = hashlib.sha256()
    for t in tasks:
        h.update(f"{t.env}\0{t.key}\0{t.content}\n".encode())
    return h.hexdigest()[:16]


def _check_envs(wanted: Sequence[str] | None, available: Sequence[str], where: str) -> list[str]:
    if not wanted:
        return list(available)
    unknown = [e for e in wanted if e not in available]
    if unknown:
        raise EvalError(
            f"unknown environment {unknown[0]!r}: {where} has {', '.join(available) or 'none'}"
        )
    return list(dict.fromkeys(wanted))


def interleave(tasks: list[EvalTask]) -> list[EvalTask]:
    """Round-robin over environments (each keeps its order): an interrupted eval covers them all."""
    by_env: dict[str, list[EvalTask]] = {}
    for t in tasks:
        by_env.setdefault(t.env, []).append(t)
    out: list[EvalTask] = []
    queues = list(by_env.values())
    for i in range(max((len(q) for q in queues), default=0)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


def tasks_from_config(
    config: TrainConfig,
    envs: Sequence[str] | None,
    num_tasks: int | None,
    seed: int,
    notes: list[str],
) -> list[EvalTask]:
    """Each chosen env's eval split, picked and rendered as prepare_tasks.py does for
    --eval-output."""
    names = _check_envs(envs, list(config.environments), "the config")
    chosen = []
    for name in names:
        if config.environments[name].eval_split is None:
            if envs:
                raise EvalError(f"environment {name!r} has no eval_split in the config")
            notes.append(f"{name}: no eval_split in the config, not evaluated")
            continue
        chosen.append(name)
    if not chosen:
        raise EvalError(
            "no environment in the config has an eval_split: add `eval_split: test` to one, "
            "or pass --tasks FILE"
        )
    try:
        rows = asyncio.run(_render(config, chosen, num_tasks, seed))
    except TaskSourceError as e:
        raise EvalError(str(e)) from None
    return [_from_row(r, f"{r['metadata']['env']} task") for r in rows]


async def _render(
    config: TrainConfig, names: list[str], num_tasks: int | None, seed: int
) -> list[dict[str, Any]]:
    from tqdm import tqdm

    from tools import prepare_tasks  # the task picking and rendering of prepare_tasks.py
    from tools.task_source import open_source

    sources = []
    try:
        plans = []
        for name in names:
            cfg = config.environments[name]
            source = open_source(name, cfg.options, cfg.secrets, 8)
            sources.append(source)
            plans.append(await prepare_tasks.plan_env(name, cfg, source, num_tasks, seed))
        picks = [p for plan in plans for p in plan.eval]
        with tqdm(
            total=len(picks), desc="tasks", file=sys.stderr, disable=None, leave=False
        ) as bar:
            return await prepare_tasks.render_rows(config, plans, picks, bar)
    finally:
        for source in sources:
            await source.aclose()


def tasks_from_file(
    path: Path, envs: Sequence[str] | None, num_tasks: int | None, seed: int
) -> list[EvalTask]:
    """Rows of a prepare_tasks.py file; with `num_tasks`, a seeded subset of each environment."""
    try:
        rows = read_task_rows(path)
    except TaskSourceError as e:
        raise EvalError(str(e)) from None
    by_env: dict[str, list[EvalTask]] = {}
    seen: set[tuple[str, str]] = set()
    for lineno, row in rows:
        task = _from_row(row, f"{path}:{lineno}")
        if task.ident in seen:
            raise EvalError(f"{path}:{lineno}: task {task.env} {task.key} appears twice")
        seen.add(task.ident)
        by_env.setdefault(task.env, []).append(task)
    out: list[EvalTask] = []
    for env in _check_envs(envs, list(by_env), str(path)):
        tasks = by_env[env]
        if num_tasks is not None and num_tasks < len(tasks):
            keep = sorted(random.Random(f"{seed}:{env}:eval").sample(range(len(tasks)), num_tasks))
            tasks = [tasks[i] for i in keep]
        out.extend(tasks)
    return out
