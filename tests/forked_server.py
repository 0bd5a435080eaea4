"""Env servers for the tests, forked from one process per test worker that imported them once.

`python -m envs.server` spends ~3 s of CPU importing before it serves (2.5 s of it `import
openreward`, which imports the anthropic, openai and google-genai SDKs), and the suite starts
dozens. Here multiprocessing's forkserver imports the server's modules once per pytest worker;
each server is then a fork of it that runs the command line's own `main(argv)` in a process of
its own, on its own port, with the caller's environment as it is at the call, logging to its
own file: the same code from the parsed flags on, without the import. A server that must see
another environment than the test's (PYTHONPATH for a plugin; a variable read at import) is
started as a command instead (conftest.env_server's `env`), and so are the servers of the tests
of the command itself (test_server_startup's and test_server's exit codes).

`TESTS_FORK_ENV_SERVERS=0` starts every server as a command.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import sys
from collections.abc import Iterator, Sequence
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import IO, Any

PRELOAD = ["forked_server", "envs.server.__main__"]
"""What the forkserver imports once (this module: the children's target lives here)."""

_context: ForkServerContext | None = None


def enabled() -> bool:
    """Whether env servers are forked (the default) rather than started as commands."""
    return os.environ.get("TESTS_FORK_ENV_SERVERS", "1") != "0"


def _forkserver() -> ForkServerContext:
    global _context
    if _context is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        _context = context
    return _context


def _serve(argv: list[str], environ: dict[str, str], log: str) -> None:
    """The child: the caller's environment (the forkserver's is from when it started), its
    stdout and stderr to `log`, then `python -m envs.server ARGV`'s main."""
    os.environ.clear()
    os.environ.update(environ)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)
    from envs.server.__main__ import main

    main(argv)


class ForkedServer:
    """A forked server with the part of `subprocess.Popen` that conftest.wait_http reads."""

    def __init__(self, process: Any, log: Path) -> None:
        self.process = process
        self.log = log

    def poll(self) -> int | None:
        return None if self.process.is_alive() else self.process.exitcode

    @property
    def returncode(self) -> int | None:
        return self.poll()

    @property
    def stdout(self) -> IO[str]:
        """What the server printed so far (its log file)."""
        return io.StringIO(self.log.read_text(errors="replace") if self.log.exists() else "")

    def stop(self) -> None:
        """SIGTERM (uvicorn shuts down gracefully), SIGKILL after 10 s."""
        self.process.terminate()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


@contextlib.contextmanager
def forked_env_server(argv: Sequence[str], log: Path) -> Iterator[ForkedServer]:
    """`python -m envs.server ARGV` as a fork of the preloaded process; always stopped."""
    process = _forkserver().Process(
        target=_serve, args=(list(argv), dict(os.environ), str(log)), daemon=True
    )
    process.start()
    server = ForkedServer(process, log)
    try:
        yield server
    finally:
        server.stop()
