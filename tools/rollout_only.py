"""Rollout-only mode: run the bridge on N tasks against a `/generate` engine, without training.

    bash run.sh --rollout-only --engine-url http://HOST:PORT --model TOKENIZER_DIR --num-tasks N
    bash run.sh --rollout-only --engine local --model PATH --num-tasks N      (CPU, for debugging)
    bash run.sh --rollout-only --engine scripted                  (no model: a smoke test, seconds)

For environment authors without a GPU cluster: episodes run exactly as in training (same
generate function, same samples, same trajectory sink), so they show up in the env server's
web UI. Starts the env server when the config's env_server does not answer, and with
`--engine local` a CPU Hugging Face model speaking SGLang's `/generate` format (needs
`pip install -e '.[local]'`). A tiny offline model to try it with:
`python -m tools.engines.tiny_model ./tiny-qwen3` (tools/engines/tiny_model.py). `--engine
scripted` starts the scripted engine (tools/engines/scripted.py): no model, a fixed player that
makes real tool calls in each environment; `--model` defaults to the Qwen3 tokenizer
`bash setup.sh --test` fetches. What it starts: tools/rollout_services.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bridge.metrics import ALL, episode_metrics, log_rollout
from contract.config import TRAIN_CONFIG_ENV, TrainConfig, is_hosted, load_config
from contract.errors import ConfigError
from tools.errors import RolloutOnlyError, ServiceError, TaskSourceError
from tools.launch.services import PROJECT_ROOT, answers
from tools.rollout_failures import FailureWatch, check_envs_served
from tools.rollout_services import (
    check_model,
    config_for_run,
    default_scripted_tokenizer,
    env_servers,
    start_engine,
    start_env_servers,
)
from tools.task_source import read_task_rows

EXIT_BAD_INPUT = 2


def parse_options(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bash run.sh --rollout-only",
        description=(
            "Run the bridge on N tasks against an SGLang-compatible /generate endpoint, "
            "without "
            "training; trajectories go to the store (web UI) like in training."
        ),
    )
    a = ap.add_argument
    a("--rollout-only", action="store_true", help=argparse.SUPPRESS)
    a(
        "--engine-url",
        default=None,
        help="SGLang-compatible server or router, e.g. http://127.0.0.1:30000",
    )
    a(
        "--engine",
        choices=["local", "scripted"],
        default=None,
        help=(
            "local: start tools.engines.local_engine (CPU Hugging Face model, for debugging) on a "
            "free port; needs pip install -e '.[local]'; a tiny offline model: "
            "python -m tools.engines.tiny_model ./tiny-qwen3. scripted: start the scripted "
            "engine (no model: fixed tool calls in every environment, a smoke test in seconds; "
            "--model defaults to .cache/qwen3-tokenizer)"
        ),
    )
    a(
        "--model",
        default=None,
        help="HF model dir or id: tokenizer + chat template (and the local engine's weights)",
    )
    a("--num-tasks", type=int, default=8, help="tasks to run (default: 8)")
    a("--n-samples", type=int, default=1, help="episodes per task, as a GRPO group (default: 1)")
    a(
        "--config",
        default="train_config.yaml",
        help="train_config.yaml (default: train_config.yaml)",
    )
    a(
        "--task-data",
        default=None,
        help=(
            "task rows from prepare_tasks.py (default: prepared from the config into "
            "runs/<run_name>/)"
        ),
    )
    a("--env-server", default=None, help="env server URL (default: env_server in the config)")
    a("--db", default="runs/trajectories.db", help="trajectory store of an env server this starts")
    a(
        "--max-response-len",
        type=int,
        default=4096,
        help="response token budget per episode (default: 4096)",
    )
    a(
        "--max-context-len",
        type=int,
        default=None,
        help="context budget (prompt + response) per episode",
    )
    a("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    a("--top-p", type=float, default=1.0)
    a("--concurrency", type=int, default=8, help="episodes in flight at once (default: 8)")
    a(
        "--evaluation",
        action="store_true",
        help="run as evaluation episodes (marked so in the store)",
    )
    a(
        "--wandb-project",
        default=None,
        help="also log the per-env metrics to W&B (offline without WANDB_API_KEY)",
    )
    a("--json", action="store_true", help="print the summary as JSON")
    a(
        "--serve",
        action="store_true",
        help=(
            "keep an env server this started (and its web UI) running after the episodes, until "
            "Ctrl-C"
        ),
    )
    opts = ap.parse_args(argv)
    if (opts.engine_url is None) == (opts.engine is None):
        ap.error("give exactly one of --engine-url URL or --engine local|scripted")
    if opts.engine == "local" and not opts.model:
        ap.error("--engine local needs --model PATH (a Hugging Face model directory)")
    if opts.engine_url and not opts.model:
        ap.error(
            "--engine-url needs --model (the served model's tokenizer dir or id, for the chat "
            "template)"
        )
    if opts.num_tasks < 1 or opts.n_samples < 1 or opts.concurrency < 1:
        ap.error("--num-tasks, --n-samples and --concurrency must be >= 1")
    return opts


def slime_args(engine_url: str, opts: argparse.Namespace) -> Namespace:
    """The slime `args` fields the generate function and the metrics hook read."""
    u = urlparse(engine_url)
    if not u.hostname or not u.port:
        raise RolloutOnlyError(
            f"--engine-url {engine_url!r} needs a host and a port, e.g. http://127.0.0.1:30000"
        )
    return Namespace(
        sglang_router_ip=u.hostname,
        sglang_router_port=u.port,
        hf_checkpoint=opts.model,
        rollout_max_context_len=opts.max_context_len,
        rollout_max_response_len=opts.max_response_len,
        rollout_temperature=opts.temperature,
        rollout_top_p=opts.top_p,
        rollout_top_k=-1,
        rollout_batch_size=opts.num_tasks,
        n_samples_per_prompt=opts.n_samples,
        global_batch_size=None,
        use_wandb=bool(opts.wandb_project),
        wandb_project=opts.wandb_project,
        wandb_group=None,
        wandb_mode=None if os.environ.get("WANDB_API_KEY") else "offline",
        wandb_always_use_train_step=False,
    )


def sampling_params(args: Namespace) -> dict[str, Any]:
    """What slime's rollout passes to the generate function for training samples."""
    return dict(
        temperature=args.rollout_temperature,
        top_p=args.rollout_top_p,
        top_k=args.rollout_top_k,
        max_new_tokens=args.rollout_max_response_len,
        skip_special_tokens=False,
        no_stop_trim=True,
        spaces_between_special_tokens=False,
    )


def read_tasks(path: Path, n: int) -> list[dict[str, Any]]:
    """The first `n` rows of a prepare_tasks.py JSONL file."""
    try:
        return [row for _, row in read_task_rows(path, n)]
    except TaskSourceError as e:
        raise RolloutOnlyError(str(e)) from None


def prepare_task_file(config: str, out: Path, n: int) -> Path:
    """Run prepare_tasks.py for at most `n` tasks per environment."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        str(PROJECT_ROOT / "prepare_tasks.py"),
        "--config",
        config,
        "--output",
        str(out),
        "--eval-output",
        str(out.with_name("eval_" + out.name)),
        "--max-tasks",
        str(n),
    ]
    print(f"rollout-only: preparing tasks: {' '.join(cmd[1:])}", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RolloutOnlyError(
            done.stderr.strip().splitlines()[-1]
            if done.stderr.strip()
            else f"prepare_tasks.py failed with exit code {done.returncode}"
        )
    return out


def make_samples(rows: list[dict[str, Any]], n_samples: int) -> list[Any]:
    """slime-like Samples (slime's own class when importable), as slime builds them from task
    rows."""
    from bridge.sample import sample_class

    cls = sample_class()
    samples = []
    for i, row in enumerate(rows):
        for j in range(n_samples):
            md = json.loads(json.dumps(row["metadata"]))  # each sample owns its metadata
            if "tools" in row:
                md["tools"] = row["tools"]
            s = cls()
            s.prompt, s.label, s.metadata = row.get("prompt", ""), row.get("label"), md
            s.index, s.group_index = i * n_samples + j, i
            samples.append(s)
    return samples


async def run_episodes(
    args: Namespace,
    samples: list[Any],
    params: dict[str, Any],
    concurrency: int,
    evaluation: bool,
    cfg: TrainConfig,
) -> float:
    """Run every sample through bridge.generate on one event loop; wait for trajectory delivery."""
    from bridge.generate import close_clients, generate

    sem = asyncio.Semaphore(concurrency)
    watch = FailureWatch(len(samples))
    stopped: list[str] = []

    async def one(sample: Any) -> None:
        async with sem:
            await generate(args, sample, params, evaluation=evaluation)
        if (message := watch.add(sample.metadata)) is not None and not stopped:
            stopped.append(message)
            for t in tasks:  # the episodes still playing (this one is done)
                if t is not asyncio.current_task():
                    t.cancel()
        print(
            f"rollout-only: {watch.done}/{len(samples)} episodes done",
            end="\r",
            flush=True,
            file=sys.stderr,
        )

    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(one(s)) for s in samples]
    try:
        await asyncio.wait(tasks)
    finally:
        await close_clients()
    for t in tasks:
        if not t.cancelled() and (e := t.exception()) is not None:
            raise e
    elapsed = time.perf_counter() - t0
    print(file=sys.stderr)
    await _deliver(cfg)
    if stopped:
        raise RolloutOnlyError(stopped[0])
    return elapsed


async def _deliver(cfg: TrainConfig) -> None:
    """Wait for the trajectories to reach the store (or the spool), then close the sink."""
    from bridge.trajectory_sink import get_sink

    sink = get_sink(cfg)
    flush = getattr(sink, "flush", None)
    if flush is not None and not await flush(60.0):
        print(
            "rollout-only: some trajectories are not delivered yet; they stay in the spool "
            f"({cfg.trajectories.spool_dir}) and are sent by the next run",
            file=sys.stderr,
        )
    close = getattr(sink, "close", None)
    if close is not None:
        await close()


def summary_rows(samples: list[Any]) -> list[dict[str, Any]]:
    """Per environment: episodes, mean reward, solve rate, mean turns, stop reasons."""
    rows = []
    for env, m in sorted(episode_metrics(samples).items(), key=lambda kv: (kv[0] == ALL, kv[0])):
        rows.append(
            {
                "env": env,
                "episodes": int(m["episodes"]),
                "reward_mean": m.get("reward_mean"),
                "solve_rate": m.get("solve_rate"),
                "turns_mean": m.get("turns_mean"),
                "tool_calls_mean": m.get("tool_calls_mean"),
                "parse_errors": int(m.get("parse_errors", 0)),
                "env_errors": int(m.get("env_errors", 0)),
                "token_drift": int(m.get("token_drift", 0)),
                "stop_reasons": {
                    k.split("/", 1)[1]: round(v * m["episodes"])
                    for k, v in m.items()
                    if k.startswith("stop/")
                },
            }
        )
    return rows


def format_summary(rows: list[dict[str, Any]]) -> str:
    def num(v: float | None, fmt: str = "{:.3f}") -> str:
        return "-" if v is None else fmt.format(v)

    head = f"{'env':<14} {'episodes':>8} {'reward':>7} {'solved':>6} {'turns':>5}  stop reasons"
    lines = [head, "-" * len(head)]
    for r in rows:
        stops = ", ".join(f"{k}={v}" for k, v in sorted(r["stop_reasons"].items())) or "-"
        lines.append(
            f"{r['env']:<14} {r['episodes']:>8} {num(r['reward_mean']):>7} "
            f"{num(r['solve_rate'], '{:.2f}'):>6} {num(r['turns_mean'], '{:.1f}'):>5}  {stops}"
        )
    return "\n".join(lines)


def run(opts: argparse.Namespace) -> int:
    """Prepare or read tasks, start what is missing, run the episodes, print the summary."""
    if opts.engine == "scripted" and not opts.model:
        opts.model = default_scripted_tokenizer()
    check_model(opts.model, opts.engine == "local")
    try:
        cfg = load_config(opts.config)
    except ConfigError as e:
        raise RolloutOnlyError(str(e)) from None
    env_url = opts.env_server.rstrip("/") if opts.env_server else None
    os.environ[TRAIN_CONFIG_ENV] = config_for_run(cfg, opts.config, env_url)
    if env_url is not None:
        cfg = load_config(os.environ[TRAIN_CONFIG_ENV])
    task_path = (
        Path(opts.task_data)
        if opts.task_data
        else prepare_task_file(
            opts.config,
            PROJECT_ROOT / "runs" / cfg.run_name / "rollout_only_tasks.jsonl",
            opts.num_tasks,
        )
    )
    rows = read_tasks(task_path, opts.num_tasks)
    needs_local = any(not is_hosted(str(r["metadata"].get("env", ""))) for r in rows)

    urls = env_servers(cfg, env_url)
    url = urls[0]
    if opts.engine is None:  # a dead engine URL stops the run before any server starts
        slime_args(opts.engine_url, opts)
        if not answers(opts.engine_url, "/health", timeout=5.0):
            raise RolloutOnlyError(f"engine {opts.engine_url} does not answer /health")
    with contextlib.ExitStack() as stack:
        started_server = start_env_servers(stack, urls if needs_local else [], opts)
        local_envs = {str(r["metadata"].get("env", "")) for r in rows}
        local_envs = {e for e in local_envs if not is_hosted(e)}
        for u in urls if local_envs else []:  # permanent errors said once, before any episode
            check_envs_served(u, local_envs)
        engine_url = start_engine(stack, opts)
        args = slime_args(engine_url, opts)
        samples = make_samples(rows, opts.n_samples)
        print(
            f"rollout-only: {len(samples)} episodes ({len(rows)} tasks x {opts.n_samples}) "
            f"against {engine_url}",
            flush=True,
        )
        elapsed = asyncio.run(
            run_episodes(
                args, samples, sampling_params(args), opts.concurrency, opts.evaluation, cfg
            )
        )
        _report(opts, cfg, args, samples, elapsed, started_server)
        if opts.serve and started_server:
            print(
                f"rollout-only: serving the env server and web UI at {url} until Ctrl-C", flush=True
            )
            while True:
                time.sleep(3600)
    return 0


def _report(
    opts: argparse.Namespace,
    cfg: TrainConfig,
    args: Namespace,
    samples: list[Any],
    elapsed: float,
    started_server: bool,
) -> None:
    if opts.wandb_project:
        import wandb

        log_rollout(0, args, samples, None, elapsed)
        wandb.finish()
    rows_out = summary_rows(samples)
    if opts.json:
        print(
            json.dumps(
                {
                    "elapsed_s": elapsed,
                    "envs": rows_out,
                    "env_server": cfg.env_server_urls[0],
                    "run_name": cfg.run_name,
                }
            )
        )
    else:
        print(format_summary(rows_out))
        where = cfg.trajectories.url or cfg.env_server_urls[0]
        print(
            f"rollout-only: {len(samples)} episodes in {elapsed:.1f}s; trajectories of run "
            f"'{cfg.run_name}' went to {where}"
        )
        if started_server and not opts.serve:
            print(
                "rollout-only: read them in the web UI: python -m envs.server --config "
                f"{opts.config} "
                f"--db {Path(opts.db).resolve()}  (or rerun with --serve)"
            )


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(sys.argv[1:] if argv is None else argv)
    try:
        return run(opts)
    except (RolloutOnlyError, ServiceError) as e:
        print(f"rollout-only: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("rollout-only: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
