"""`python -m envs check NAME...`: start the env server on a free loopback port, run every check
on each environment, print one line per check, and stop the server.

Checks: options, tasks, tool_schemas, finishes, isolation, budget, bad_input, rewards,
provenance (README: The conformance check; envs/check/checks.py says what each one holds to).

Exit status: 0 when every check of every environment passes, 1 when one fails, 2 when the
check could not run (an unknown name, a bad config, a server that does not start).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx

from envs.check.checks import CHECKS, Play, Result, Settings, check_options, run_played_checks
from envs.check.client import CheckClient
from envs.errors import CheckError, ServerGone

__all__ = ["add_arguments", "main"]

DEFAULT_RANGE = (0.0, 1.0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(log: IO[str], lines: int = 3) -> str:
    log.flush()
    log.seek(0)
    text = [ln.strip() for ln in log.read().splitlines() if ln.strip()]
    return " | ".join(text[-lines:]) or "no output"


@contextlib.contextmanager
def env_server(
    names: list[str], config: str | None, budget: float, timeout: float
) -> Iterator[tuple[str, IO[str]]]:
    """`python -m envs.server` serving `names` on 127.0.0.1; yields (its URL, its log)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "envs.server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--role", "env", "--envs", ",".join(names), "--tool-budget", str(budget)]
    cmd += ["--log-level", "warning"] + (["--config", config] if config else [])
    env = {**os.environ, "OPENREWARD_DISABLE_UPDATE_CHECK": "1"}
    env.pop("ENV_SERVER_API_KEY", None)
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, text=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise CheckError(f"the env server exited with {proc.returncode}: {_tail(log)}")
                try:
                    if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise CheckError(
                        f"the env server did not start within {timeout:g} s: {_tail(log)}"
                    )
                time.sleep(0.1)
            yield url, log
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _config_entry(config: str | None, name: str) -> Any:
    if not config:
        return None
    from contract.config import load_config
    from contract.errors import ConfigError

    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise CheckError(str(e)) from None
    return {k.lower(): v for k, v in cfg.environments.items()}.get(name.lower())


def reward_range(cls: type, entry: Any) -> tuple[tuple[float, float], str]:
    """The declared reward range: the class's REWARD_RANGE, else the config's min_reward and
    max_reward (which the bridge clamps to), else [0, 1]."""
    declared = getattr(cls, "REWARD_RANGE", None)
    if declared is not None:
        lo, hi = declared
        return (float(lo), float(hi)), "REWARD_RANGE"
    if entry is not None:
        return (entry.min_reward, entry.max_reward), "the config's min_reward..max_reward"
    return DEFAULT_RANGE, "the default: declare REWARD_RANGE, or --config with min/max_reward"


def check_environments(args: argparse.Namespace, out: IO[str]) -> bool:
    """Every check on every named environment; True when all pass."""
    from envs.errors import UnknownEnvironment
    from envs.registry import configure_env, load_env_class

    settings = Settings(
        tasks_per_split=args.tasks,
        episodes=args.episodes,
        max_calls=args.max_calls,
        fuzz_per_tool=args.fuzz,
        tool_budget_s=args.tool_budget,
        seed=args.seed,
    )
    targets = []
    for name in args.names:
        try:
            cls = load_env_class(name)
        except UnknownEnvironment as e:
            raise CheckError(str(e)) from None
        entry = _config_entry(args.config, name)
        targets.append((name, cls, entry))
    passed = True
    with env_server(args.names, args.config, args.tool_budget, args.startup_timeout) as (url, log):
        for name, cls, entry in targets:
            out.write(f"{name}\n")
            results = [check_options(cls, configure_env, dict(entry.options) if entry else {})]
            rng, source = reward_range(cls, entry)
            client = CheckClient(url, name)
            play = Play(client, settings, rng, source)
            try:
                results += run_played_checks(play)
            except Exception as e:  # whatever stops the played checks ends them in one line
                gone = isinstance(e, ServerGone)
                why = f"the env server stopped answering ({e}): {_tail(log)}" if gone else str(e)
                why = why if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}"
                done = {r.check for r in results}
                results += [
                    Result(c, False, why, "see the line above") for c in CHECKS if c not in done
                ]
            finally:
                client.close()
            for r in results:
                out.write(r.line() + "\n")
            failed = [r.check for r in results if not r.ok]
            out.write(
                f"{name}: "
                + (
                    f"{len(failed)} of {len(results)} checks failed ({', '.join(failed)})"
                    if failed
                    else f"all {len(results)} checks pass"
                )
                + "\n"
            )
            out.flush()
            passed = passed and not failed
    return passed


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "names",
        nargs="+",
        metavar="NAME",
        help="environments: built-in, registered, or module:Class",
    )
    p.add_argument(
        "--config",
        help="train_config.yaml whose environments.<name>.options and reward range apply",
    )
    p.add_argument(
        "--tool-budget",
        type=float,
        default=0.25,
        help="the server's per-call time budget, seconds [0.25]",
    )
    p.add_argument("--tasks", type=int, default=3, help="tasks fetched per split [3]")
    p.add_argument("--episodes", type=int, default=4, help="episodes played to their end [4]")
    p.add_argument(
        "--max-calls", type=int, default=32, help="calls an episode may take to finish [32]"
    )
    p.add_argument("--fuzz", type=int, default=80, help="hostile inputs per tool [80]")
    p.add_argument("--seed", type=int, default=0, help="which tasks and inputs [0]")
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=300.0,
        help="seconds the server may take to start [300]",
    )


def main(args: argparse.Namespace) -> int:
    """Entry point of `python -m envs check`."""
    for flag in ("tasks", "episodes", "max_calls", "fuzz"):
        if getattr(args, flag) < 1:
            print(
                f"envs check: error: --{flag.replace('_', '-')} must be at least 1", file=sys.stderr
            )
            return 2
    if not args.tool_budget > 0:
        print("envs check: error: --tool-budget must be positive", file=sys.stderr)
        return 2
    if args.config and not Path(args.config).is_file():
        print(f"envs check: error: {args.config}: config file not found", file=sys.stderr)
        return 2
    try:
        return 0 if check_environments(args, sys.stdout) else 1
    except CheckError as e:
        print(f"envs check: error: {e}", file=sys.stderr)
        return 2
