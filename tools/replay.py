"""Replay stored episodes against their environment: `python -m tools.replay ROLLOUT_ID`.

Reads a stored rollout (from the trajectory store `--db`, or the JSON API of the server at
`--trajectories`/`--url`), opens a fresh session of the same task (in-process, or on the env
server at `--url` through the bridge's own session client), re-executes the stored tool calls
in order and compares every tool output (text), reward and `finished` flag with the stored
ones. Calls the bridge answered itself (unparseable calls, unknown tools, calls after the
episode finished) never reached the env and are skipped, as they were then.

`--run RUN --sample N` replays N rollouts of a run (a seeded random choice) and names the
environments that did not reproduce their episodes: nondeterministic, or changed since (the
report says when the env version or the task spec differs from the stored provenance).

Exit status: 0 every replay matched, 1 some differed, 2 the replay could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from tools.errors import ReplayError

os.environ.setdefault("OPENREWARD_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENREWARD_DISABLE_UPDATE_CHECK", "1")

from tools.replay_compare import ReplayReport, replay_rollout
from tools.replay_source import ApiSource, RolloutSource, StoreSource

DEFAULT_DB = "runs/trajectories.db"


def nondeterministic_envs(reports: Iterable[ReplayReport]) -> dict[str, tuple[int, int]]:
    """env -> (rollouts that differed, rollouts replayed), for envs where any differed."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in reports:
        counts[r.env][1] += 1
        counts[r.env][0] += not r.identical
    return {env: (d, n) for env, (d, n) in sorted(counts.items()) if d}


async def replay_many(
    source: RolloutSource, ids: list[str], url: str | None, out: Any
) -> list[ReplayReport]:
    """Replay rollouts one after another, printing each report."""
    reports = []
    for rid in ids:
        report = await replay_rollout(await source.rollout(rid), url)
        out.write(report.render() + "\n")
        reports.append(report)
    return reports


async def run(args: argparse.Namespace, out: Any = sys.stdout) -> int:
    if args.api_key:
        os.environ["ENV_SERVER_API_KEY"] = args.api_key
    if args.config and not args.url:
        configure_envs(args.config)
    source: RolloutSource
    api_url = args.trajectories or (args.url if not args.db else None)
    source = ApiSource(api_url, args.api_key) if api_url else StoreSource(args.db or DEFAULT_DB)
    try:
        if args.run:
            ids = await source.run_rollout_ids(args.run)
            if not ids:
                raise ReplayError(f"run {args.run!r} has no rollouts")
            ids = random.Random(args.seed).sample(ids, min(args.sample, len(ids)))
        else:
            ids = [args.rollout_id]
        reports = await replay_many(source, ids, args.url, out)
    finally:
        if isinstance(source, ApiSource):
            await source.close()
        if args.url:
            from bridge.env_client import close_shared_http

            await close_shared_http()
    bad = nondeterministic_envs(reports)
    if args.run:
        if bad:
            listed = ", ".join(f"{env} ({d} of {n} rollouts differ)" for env, (d, n) in bad.items())
            out.write(f"== not reproducible: {listed} ==\n")
        else:
            out.write(f"== all {len(reports)} replays identical ==\n")
    return 1 if bad else 0


def configure_envs(config_path: str) -> None:
    """Apply train_config.yaml's env options to the in-process env classes."""
    from contract.config import is_hosted, load_config
    from contract.errors import ConfigError
    from envs.registry import configure_env, load_env_class

    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        raise ReplayError(str(e)) from None
    for name, entry in cfg.environments.items():
        if not is_hosted(name):
            try:
                configure_env(load_env_class(name), entry.options)
            except Exception as e:
                raise ReplayError(f"{config_path}: environments.{name}.options: {e}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "rollout_id",
        nargs="?",
        help="the rollout to replay: its id in the store (the number the web UI shows after "
        "'#') or its event id (UUID)",
    )
    p.add_argument("--run", help="replay rollouts of this run (name or id) instead")
    p.add_argument("--sample", type=int, default=10, help="with --run: how many rollouts [10]")
    p.add_argument("--seed", type=int, default=0, help="with --run: which rollouts are drawn [0]")
    p.add_argument(
        "--url",
        help=(
            "env server to replay on (python -m envs.server); also where the rollout is read "
            "unless --db or --trajectories says otherwise. Default: the envs in-process"
        ),
    )
    p.add_argument("--db", help=f"trajectory database to read the rollout from [{DEFAULT_DB}]")
    p.add_argument("--trajectories", help="server whose trajectory API holds the rollout")
    p.add_argument("--config", help="train_config.yaml whose env options apply (in-process)")
    p.add_argument("--api-key", help="X-API-Key for the servers (default: $ENV_SERVER_API_KEY)")


def main(args: argparse.Namespace) -> int:
    """Entry point for `python -m tools.replay` (and its alias `python -m envs replay`)."""
    if bool(args.rollout_id) == bool(args.run):
        print("replay: error: give a ROLLOUT_ID or --run RUN (not both)", file=sys.stderr)
        return 2
    if args.run and args.sample < 1:
        print("replay: error: --sample must be at least 1", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(args))
    except ReplayError as e:
        print(f"replay: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def parser(prog: str = "python -m tools.replay") -> argparse.ArgumentParser:
    """The command line of `python -m tools.replay`."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=(__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    return p


if __name__ == "__main__":
    sys.exit(main(parser().parse_args()))
