"""Turn the environments in train_config.yaml into the JSONL prompt files slime reads.

    python prepare_tasks.py --config train_config.yaml [--output tasks.jsonl]
        [--eval-output eval_<output name>] [--max-tasks N] [--seed S]

One row per task: {"prompt": [user message], "label": str | null, "metadata": TaskMeta,
"tools": [OpenAI function schemas]}, read by slime with `--input-key prompt --label-key
label --metadata-key metadata --tool-key tools`. Training rows of all environments are
interleaved by a seeded shuffle; eval rows (from each env's `eval_split`) go to
--eval-output (by default `eval_` + the --output file name, beside it). Both files are
written atomically, both or neither, with the mode the umask gives new files.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from tqdm import tqdm

from contract.config import EnvConfig, TrainConfig, is_hosted, load_config
from contract.errors import ConfigError
from contract.task import TaskMeta
from tools.errors import TaskSourceError
from tools.task_source import RenderedTask, TaskSource, open_source

EXIT_BAD_INPUT = 2
RENDER_CHUNK = 1024  # tasks rendered per gather; bounds memory of pending coroutines


@dataclass(frozen=True)
class Pick:
    """One task chosen for a file."""

    env: str
    split: str
    index: int


@dataclass
class EnvPlan:
    """The tasks chosen from one environment, for training and for eval."""

    env: str
    cfg: EnvConfig
    source: TaskSource
    train: list[Pick] = field(default_factory=list)
    eval: list[Pick] = field(default_factory=list)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="prepare_tasks.py",
        description="Write the environments of a train_config.yaml as slime prompt JSONL files.",
    )
    p.add_argument(
        "--config", default="train_config.yaml", help="train config (default: %(default)s)"
    )
    p.add_argument("--output", default="tasks.jsonl", help="training rows (default: %(default)s)")
    p.add_argument(
        "--eval-output",
        default=None,
        help=(
            "eval rows from each env's eval_split; not written when no env has one "
            "(default: eval_ + the --output file name, beside it: eval_tasks.jsonl)"
        ),
    )
    p.add_argument(
        "--max-tasks",
        type=_positive_int,
        default=None,
        metavar="N",
        help=(
            "at most N training and N eval rows per environment (with num_samples, "
            "the smaller cap wins)"
        ),
    )
    p.add_argument(
        "--seed",
        type=int,
        default=42,
        help="seed for task sampling and shuffling (default: %(default)s)",
    )
    p.add_argument(
        "--concurrency",
        type=_positive_int,
        default=8,
        metavar="N",
        help="hosted envs: sessions open at once to fetch prompts (default: %(default)s)",
    )
    args = p.parse_args(argv)
    if args.eval_output is None:
        args.eval_output = str(default_eval_output(Path(args.output)))
    return args


def default_eval_output(output: Path) -> Path:
    """Where eval rows go unless --eval-output says: `eval_<name>` beside the training file."""
    return output.with_name(f"eval_{output.name}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cap(*caps: int | None) -> int | None:
    given = [c for c in caps if c is not None]
    return min(given) if given else None


def choose(env: str, counts: dict[str, int], cap: int | None, rng: random.Random) -> list[Pick]:
    """Every task of the given splits, or a seeded random `cap` of them, in split/index order."""
    total = sum(counts.values())
    chosen: Iterable[int] = (
        range(total) if cap is None or cap >= total else sorted(rng.sample(range(total), cap))
    )
    picks: list[Pick] = []
    bounds = []
    start = 0
    for split, n in counts.items():
        bounds.append((start, start + n, split))
        start += n
    b = 0
    for g in chosen:
        while g >= bounds[b][1]:
            b += 1
        lo, _, split = bounds[b]
        picks.append(Pick(env, split, g - lo))
    return picks


async def _split_counts(
    source: TaskSource, splits: list[str], available: list[str]
) -> dict[str, int]:
    counts: dict[str, int] = {}
    for split in splits:
        if split not in available:
            raise TaskSourceError(
                f"environment {source.name!r} has no split {split!r} (splits: "
                f"{', '.join(available) or 'none'})"
            )
        n = await source.count(split)
        if n <= 0:
            raise TaskSourceError(f"environment {source.name!r}: split {split!r} has no tasks")
        counts[split] = n
    return counts


async def plan_env(
    env: str, cfg: EnvConfig, source: TaskSource, max_tasks: int | None, seed: int
) -> EnvPlan:
    """Validate the env's splits and pick its training and eval tasks."""
    plan = EnvPlan(env, cfg, source)
    available = await source.splits()
    train_counts = await _split_counts(source, list(dict.fromkeys(cfg.splits)), available)
    plan.train = choose(
        env, train_counts, _cap(cfg.num_samples, max_tasks), random.Random(f"{seed}:{env}:train")
    )
    if cfg.eval_split is not None:
        if cfg.eval_split in cfg.splits:
            print(
                f"prepare_tasks: warning: {env}: eval_split {cfg.eval_split!r} is also a "
                "training split",
                file=sys.stderr,
            )
        eval_counts = await _split_counts(source, [cfg.eval_split], available)
        plan.eval = choose(
            env,
            eval_counts,
            _cap(cfg.num_eval_samples, max_tasks),
            random.Random(f"{seed}:{env}:eval"),
        )
    return plan


class RowBuilder:
    """Rows of one environment. The metadata its tasks share is validated once, as a TaskMeta."""

    def __init__(self, config: TrainConfig, plan: EnvPlan) -> None:
        self._config = config
        self._plan = plan
        self._shared: dict[str, Any] | None = None

    def _shared_metadata(self, pick: Pick, task: RenderedTask) -> dict[str, Any]:
        config, cfg = self._config, self._plan.cfg
        meta = TaskMeta.from_env_config(
            pick.env,
            cfg,
            env_server=[] if is_hosted(pick.env) else config.env_server_urls,
            split=pick.split,
            index=pick.index,
            tools=task.tools,
            source_name=pick.env,
            thinking=config.thinking,
            system_prompt=config.system_prompt,
            run_name=config.run_name,
        )
        # Secret values never go into task files: names only; the bridge reads the values.
        meta.secrets = {name: None for name in cfg.secrets}
        return meta.model_dump(mode="json")

    def row(self, pick: Pick, task: RenderedTask) -> dict[str, Any]:
        """One slime JSONL row; `metadata` is the TaskMeta the bridge reads, as a JSON object."""
        if self._shared is None:
            self._shared = self._shared_metadata(pick, task)
        metadata = {**self._shared, "split": pick.split, "index": pick.index, "tools": task.tools}
        return {
            "prompt": task.prompt,
            "label": task.label,
            "metadata": metadata,
            "tools": task.tools,
        }


async def render_env(
    config: TrainConfig, plan: EnvPlan, picks: list[Pick], bar: tqdm
) -> list[dict[str, Any]]:
    """The rows of one environment's picks, in order: concurrently for hosted envs, else in turn."""
    builder = RowBuilder(config, plan)
    source = plan.source

    async def one(pick: Pick) -> dict[str, Any]:
        row = builder.row(pick, await source.render(pick.split, pick.index))
        bar.update(1)
        return row

    if not source.concurrent:
        return [await one(p) for p in picks]
    rows: list[dict[str, Any]] = []
    for start in range(0, len(picks), RENDER_CHUNK):
        rows.extend(await gather_or_cancel([one(p) for p in picks[start : start + RENDER_CHUNK]]))
    return rows


async def render_rows(
    config: TrainConfig, plans: list[EnvPlan], picks: list[Pick], bar: tqdm
) -> list[dict[str, Any]]:
    """Render every pick into a row, in the order given."""
    rendered: dict[Pick, dict[str, Any]] = {}
    for plan in plans:
        mine = [p for p in picks if p.env == plan.env]
        rendered.update(zip(mine, await render_env(config, plan, mine, bar), strict=False))
    return [rendered[p] for p in picks]


async def gather_or_cancel(coros: list[Any]) -> list[Any]:
    """Results in order; on the first failure cancel the rest and raise that failure alone."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        _done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
        if failed or any(not t.done() for t in tasks):
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    if failed:
        raise failed[0].exception()
    return [t.result() for t in tasks]


def check_output_paths(*paths: Path) -> None:
    """Fail before any work when an output path cannot be a file (one line, the flag named)."""
    for flag, path in zip(("--output", "--eval-output"), paths, strict=False):
        if path.is_dir():
            raise TaskSourceError(
                f"{flag} {path} is a directory; give a file path, e.g. {path / 'tasks.jsonl'}"
            )


def write_jsonl_files(outputs: list[tuple[Path, list[dict[str, Any]]]]) -> None:
    """Write every file to a temp file beside it, then move all into place: all or none.

    The temp files are created with mode 0o666, so the umask decides the final mode as it does
    for any new file (tempfile.mkstemp would leave 0o600).
    """
    temps: list[tuple[Path, Path]] = []
    try:
        for path, rows in outputs:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(b"".join(orjson.dumps(r) + b"\n" for r in rows))
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)


def summary_table(rows: list[tuple[str, str, str, int]]) -> str:
    """A plain-text table of (file, env, split, rows)."""
    header = ("file", "env", "split", "rows")
    total = ("total", "", "", sum(r[3] for r in rows))
    lines = [header, *rows, total]
    widths = [max(len(str(line[i])) for line in lines) for i in range(4)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:3]) + f"  {{:>{widths[3]}}}"
    out = [fmt.format(*map(str, line)) for line in lines]
    out.insert(1, "-" * len(out[0]))
    out.insert(len(out) - 1, "-" * len(out[0]))
    return "\n".join(out)


def _counts(plans: list[EnvPlan], role: str, file: Path) -> list[tuple[str, str, str, int]]:
    """(file, env, split, rows) in config order."""
    out = []
    for plan in plans:
        seen: dict[str, int] = {}
        for p in getattr(plan, role):
            seen[p.split] = seen.get(p.split, 0) + 1
        out += [(str(file), plan.env, split, n) for split, n in seen.items()]
    return out


async def prepare(
    config: TrainConfig,
    output: Path,
    eval_output: Path,
    max_tasks: int | None,
    seed: int,
    concurrency: int = 8,
) -> list[tuple[str, str, str, int]]:
    """Read, render and write all tasks; returns the summary rows (file, env, split, rows)."""
    check_output_paths(output, eval_output)
    if output.resolve() == eval_output.resolve():
        raise TaskSourceError(f"--output and --eval-output are the same file: {output}")
    sources: list[TaskSource] = []
    try:
        plans = []
        for env, cfg in config.environments.items():
            source = open_source(env, cfg.options, cfg.secrets, concurrency)
            sources.append(source)
            plans.append(await plan_env(env, cfg, source, max_tasks, seed))
        train = [p for plan in plans for p in plan.train]
        evals = [p for plan in plans for p in plan.eval]
        random.Random(seed).shuffle(train)
        with tqdm(
            total=len(train) + len(evals),
            desc="tasks",
            unit="task",
            file=sys.stderr,
            disable=None,
            leave=False,
        ) as bar:
            train_rows = await render_rows(config, plans, train, bar)
            eval_rows = await render_rows(config, plans, evals, bar)
    finally:
        for source in sources:
            await source.aclose()
    outputs = [(output, train_rows)] + ([(eval_output, eval_rows)] if evals else [])
    write_jsonl_files(outputs)
    return _counts(plans, "train", output) + _counts(plans, "eval", eval_output)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
        summary = asyncio.run(
            prepare(
                config,
                Path(args.output),
                Path(args.eval_output),
                args.max_tasks,
                args.seed,
                args.concurrency,
            )
        )
    except (ConfigError, TaskSourceError) as e:
        print(f"prepare_tasks: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        print(
            f"prepare_tasks: error: cannot write output: {e.strerror or e}"
            f"{f': {e.filename}' if e.filename else ''}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    print(summary_table(summary))
    if not any(cfg.eval_split for cfg in config.environments.values()):
        print(f"(no environment has an eval_split: {args.eval_output} not written)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
