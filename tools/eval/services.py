"""The services an eval starts (env servers, CPU engines, the web UI) live exactly as long as it.

Each is started from the main thread with Linux's parent-death signal (`die_with_parent`), so it
stops when the eval stops, also when the eval is killed outright (SIGKILL): a later eval never
finds an orphan of this one. A server that already answers is used as it is, and the eval says
so, naming it: it runs whatever code it was started with.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from tools.errors import EvalError, ServiceError
from tools.launch.services import (
    answers,
    env_server_command,
    is_loopback,
    local_engine_command,
    start_process,
    stop,
    wait_until_up,
)

__all__ = ["free_url", "reuse_note", "start_env_servers", "start_local_engine", "start_ui"]


def say(msg: str) -> None:
    print(f"eval: {msg}", file=sys.stderr, flush=True)


def free_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@contextlib.contextmanager
def bound_process(name: str, cmd: list[str], url: str, timeout: float = 120.0) -> Iterator[None]:
    """`cmd` started here (dying with this process, even by SIGKILL), up at `url`/health;
    stopped on exit. ServiceError when it does not come up."""
    proc = start_process(cmd, die_with_parent=True)
    try:
        wait_until_up(name, url, proc, timeout)
        yield
    finally:
        stop(proc)


def reuse_note(what: str, url: str) -> str:
    return (
        f"{what} {url} already answers: using it (this eval did not start it; it runs the code it "
        "was started with)"
    )


def start_env_servers(
    stack: contextlib.ExitStack, urls: list[str], config: str, db: Path
) -> str | None:
    """Make sure every env server in `urls` answers; start the loopback ones that do not (on the
    eval's store, for its web UI). Returns the URL of the first one started here."""
    started = None
    for u in urls:
        if answers(u):
            say(reuse_note("env server", u))
            continue
        if not is_loopback(u):
            raise EvalError(
                f"env server {u} does not answer /health: start it there "
                f"(python -m envs.server --config {config}) or pass --env-server URL"
            )
        say(f"starting env server at {u} (store: {db})")
        db.parent.mkdir(parents=True, exist_ok=True)
        try:
            stack.enter_context(
                bound_process("env server", env_server_command(config, u, str(db)), u)
            )
        except ServiceError as e:
            raise EvalError(str(e)) from None
        started = started or u
    return started


def start_local_engine(stack: contextlib.ExitStack, name: str, model: str) -> str:
    """A CPU engine on `model` at a free loopback URL, for this eval's life; its URL."""
    url = free_url()
    say(
        f"model {name}: starting tools.engines.local_engine at {url} on {model} "
        "(CPU, one request at a time: a debugging engine)"
    )
    try:
        stack.enter_context(
            bound_process("local engine", local_engine_command(model, url), url, timeout=600.0)
        )
    except ServiceError as e:
        raise EvalError(f"model {name}: {e}") from None
    return url


def start_ui(stack: contextlib.ExitStack, db: Path) -> str:
    """A trajectory server (web UI only) on the eval's store, for this eval's life; its URL."""
    url = free_url()
    port = urlsplit(url).port
    cmd = [sys.executable, "-m", "envs.server", "--role", "trajectories", "--db", str(db)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    try:
        stack.enter_context(bound_process("trajectory server", cmd, url))
    except ServiceError as e:
        raise EvalError(str(e)) from None
    return url
