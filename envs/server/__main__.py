"""`python -m envs.server`: parse flags, load the environments and the trajectory service, run
uvicorn."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from openreward.environments import Environment

from envs.server.app import (
    DEFAULT_MAX_SESSIONS,
    DEFAULT_MAX_STOPPED_CALLS,
    ServerSettings,
    TrajectoryServiceLike,
    create_app,
)
from envs.server.budget import DEFAULT_TOOL_BUDGET_S
from envs.server.connections import ConnectionLimits, default_max_connections, guarded_protocol

log = logging.getLogger(__name__)


def _fail(msg: str) -> NoReturn:
    print(f"envs.server: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def load_served_classes(
    names: Sequence[str], config_path: str | None
) -> dict[str, type[Environment]]:
    """Import the named environments and apply `environments.<name>.options` from the config."""
    from contract.config import is_hosted, load_config
    from contract.errors import ConfigError
    from envs.errors import UnknownEnvironment
    from envs.registry import configure_env, load_env_class

    options: dict[str, dict[str, Any]] = {}
    if config_path:
        try:
            cfg = load_config(config_path)
        except ConfigError as e:
            _fail(str(e))
        local = [n for n in cfg.environments if not is_hosted(n)]
        options = {n.lower(): cfg.environments[n].options for n in local}
        if not names:
            names = local
    if not names:
        from envs.registry import ENVIRONMENTS

        names = list(ENVIRONMENTS)
    classes: dict[str, type[Environment]] = {}
    for name in names:
        # Served under the name in lower case; resolved as written (module:Class is case-sensitive).
        key = name.strip().lower()
        if not key:
            continue
        try:
            cls = load_env_class(name.strip())
        except UnknownEnvironment as e:
            _fail(str(e))
        except Exception as e:
            _fail(f"cannot load environment {key!r}: {type(e).__name__}: {e}")
        try:
            configure_env(cls, options.get(key, {}))
        except Exception as e:
            where = name.strip()
            _fail(
                f"{config_path}: environments.{where}.options: {e}"
                if config_path
                else f"{where}: {e}"
            )
        warm_up = getattr(cls, "warm_up", None)
        if callable(warm_up):  # load data now, not under the first calls (haiku: CMUdict, ~1 s)
            try:
                warm_up()
            except Exception as e:
                log.warning(
                    "%s.warm_up failed: %s: %s (loaded on first use)", key, type(e).__name__, e
                )
        classes[key] = cls
    return classes


def check_port_free(host: str, port: int) -> None:
    """Exit 2 with one line (and the --port hint) when host:port cannot be bound.

    Checked first, before the store is opened and the "serving" line is logged (uvicorn would
    log it, then fail to bind and exit 3).
    """
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            s.bind(addr)
    except OSError as e:
        _fail(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another port with --port")


def freeze_startup_objects() -> None:
    """Keep the ~300k objects created by imports out of the garbage collector's full passes.

    Without this, a full (generation 2) collection walks them all and stalls the event loop
    for 100-400 ms under load: the tail of the call latency. Objects created later are
    collected as usual, but less often: the request path allocates a lot and makes almost no
    reference cycles, so a full collection about once a minute under load is plenty.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)


def _build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m envs.server",
        description="Serve environments over the OpenReward (ORS) protocol.",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--envs",
        default="",
        help=(
            "comma-separated env names: built-in, registered by an installed package, or "
            "module:Class (default: the config's local environments, else gsm8k,whodunit,haiku)"
        ),
    )
    p.add_argument("--config", help="train_config.yaml; applies environments.<name>.options")
    p.add_argument(
        "--api-key",
        default=os.environ.get("ENV_SERVER_API_KEY"),
        help="require this X-API-Key on every request but /health (default: $ENV_SERVER_API_KEY)",
    )
    p.add_argument(
        "--session-ttl", type=float, default=900.0, help="seconds before an idle session is closed"
    )
    p.add_argument(
        "--max-sessions",
        type=int,
        default=DEFAULT_MAX_SESSIONS,
        help=f"cap on open sessions (503 + Retry-After beyond; default {DEFAULT_MAX_SESSIONS})",
    )
    p.add_argument(
        "--max-sessions-per-client",
        type=int,
        default=None,
        help=(
            "cap on the sessions one client (peer address) holds (429 + Retry-After beyond; "
            "default 3/4 of --max-sessions, so one client cannot take every slot)"
        ),
    )
    p.add_argument(
        "--tool-budget",
        type=float,
        default=DEFAULT_TOOL_BUDGET_S,
        help=(
            "seconds of CPU a call's own code may use on the event loop (a tool call, loading "
            "or listing tasks) before the server stops it; a stopped tool call is the server's "
            "fact, answered as budget_exceeded with the env's state unchanged "
            f"(default {DEFAULT_TOOL_BUDGET_S:g})"
        ),
    )
    p.add_argument(
        "--max-stopped-calls",
        type=int,
        default=DEFAULT_MAX_STOPPED_CALLS,
        help=(
            "calls of one session stopped at the budget before the session is ended "
            f"(410 session_over_budget; default {DEFAULT_MAX_STOPPED_CALLS})"
        ),
    )
    p.add_argument(
        "--db", default="runs/trajectories.db", help="trajectory store (roles all, trajectories)"
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help=(
            "cap on open client connections; beyond it idle ones are closed, else new ones get "
            "503 (default: 8192, or what the open-files limit allows)"
        ),
    )
    p.add_argument(
        "--max-connections-per-client",
        type=int,
        default=None,
        help=(
            "cap on the connections one client (peer address) holds; beyond it its own idle "
            "ones are closed, else its new ones get 503 (default 3/4 of --max-connections)"
        ),
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=ConnectionLimits.header_timeout_s,
        help=(
            "seconds a client has to send a request's headers "
            f"(default {ConnectionLimits.header_timeout_s:g})"
        ),
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=ConnectionLimits.body_timeout_s,
        help=(
            "seconds a request body may stall (or, past them, crawl below 16 KiB/s) before "
            f"the connection is closed (default {ConnectionLimits.body_timeout_s:g})"
        ),
    )
    p.add_argument(
        "--send-timeout",
        type=float,
        default=ConnectionLimits.send_timeout_s,
        help=(
            "seconds an answer may wait for a client that reads none of it before the "
            f"connection is dropped (default {ConnectionLimits.send_timeout_s:g})"
        ),
    )
    p.add_argument(
        "--tokenizer",
        action="append",
        default=[],
        metavar="PATH",
        help=(
            "a tokenizer the web UI's token view may load when a rollout names it (repeatable; "
            "the first is used for rollouts naming none); uploads cannot name any other"
        ),
    )
    p.add_argument(
        "--role",
        choices=("all", "env", "trajectories"),
        default="all",
        help="env: environments only; trajectories: the trajectory store/UI only; all: both",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point: parse flags, load envs and services, run uvicorn."""
    args = _build_arg_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.session_ttl <= 0:
        _fail("--session-ttl must be positive")
    if args.max_sessions < 1:
        _fail("--max-sessions must be at least 1")
    for flag in ("max_sessions_per_client", "max_connections_per_client"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            _fail(f"--{flag.replace('_', '-')} must be at least 1")
    if args.max_stopped_calls < 1:
        _fail("--max-stopped-calls must be at least 1")
    if not args.tool_budget > 0:
        _fail("--tool-budget must be positive")
    if not (args.header_timeout > 0 and args.body_timeout > 0 and args.send_timeout > 0):
        _fail("--header-timeout, --body-timeout and --send-timeout must be positive")
    if args.max_connections is not None and args.max_connections < 1:
        _fail("--max-connections must be at least 1")
    check_port_free(args.host, args.port)

    classes: dict[str, type[Environment]] = {}
    if args.role in ("all", "env"):
        classes = load_served_classes([n for n in args.envs.split(",") if n.strip()], args.config)
    services: list[TrajectoryServiceLike] = []
    if args.role in ("all", "trajectories"):
        try:
            from envs.trajectories.api import TrajectoryService
        except ImportError as e:
            _fail(
                f"--role {args.role} needs the trajectory service (envs/trajectories/api.py): {e}; "
                "use --role env to serve environments only"
            )
        from envs.trajectories.errors import StoreError

        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.db)), exist_ok=True)
            services.append(TrajectoryService(args.db, tokenizers=args.tokenizer))
        except (StoreError, OSError) as e:
            _fail(f"--db {args.db}: {e}")

    settings = ServerSettings(
        api_key=args.api_key or None,
        session_ttl_s=args.session_ttl,
        max_sessions=args.max_sessions,
        max_sessions_per_client=args.max_sessions_per_client,
        tool_budget_s=args.tool_budget,
        max_stopped_calls=args.max_stopped_calls,
        log_requests=args.log_level == "debug",
    )
    try:
        app = create_app(classes, settings, services)
    except ValueError as e:
        _fail(str(e))

    import uvicorn

    freeze_startup_objects()

    def have(mod: str) -> bool:
        try:
            __import__(mod)
            return True
        except ImportError:
            return False

    log.info(
        "serving %s on http://%s:%d (role %s)",
        ", ".join(classes) or "no environments",
        args.host,
        args.port,
        args.role,
    )
    limits = ConnectionLimits(
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        send_timeout_s=args.send_timeout,
        max_connections=default_max_connections(args.max_connections or 8192),
        max_connections_per_client=args.max_connections_per_client,
    )
    if args.max_connections is not None and limits.max_connections < args.max_connections:
        log.warning(
            "--max-connections %d is over what the open-files limit allows; using %d",
            args.max_connections,
            limits.max_connections,
        )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop" if have("uvloop") else "asyncio",
        http=guarded_protocol(limits, app.state.metrics.connections_closed),
        access_log=False,
        log_level=args.log_level,
        timeout_keep_alive=75,
        backlog=4096,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
