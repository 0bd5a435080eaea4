"""Local services run.sh starts when they are not already running: the env server, the CPU
engine, the scripted engine.

`managed_process` starts a command, waits for its health URL, and always stops it again;
`SupervisedService` also restarts it on its URL when it crashes or is killed (the env servers of a
run: run.sh's on this machine, ray_job's on a cluster).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

import httpx

from tools.errors import ServiceError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def answers(url: str, path: str = "/health", timeout: float = 2.0) -> bool:
    """True when GET url+path returns 200."""
    try:
        return httpx.get(f"{url.rstrip('/')}{path}", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def is_loopback(url: str) -> bool:
    return (urlparse(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


def http_url(host: str, port: int) -> str:
    """`http://host:port`, with an IPv6 host in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now at `host`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn` (Linux): the child gets `sig` when the process that started it dies, even
    by SIGKILL (PR_SET_PDEATHSIG), and at once if that process died before the child set it up.

    The signal follows the thread that forks: start the child from a thread that lives as long
    as the parent process does (the main thread, or a watchdog)."""
    parent = os.getpid()

    def arm() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent is already gone: it cannot signal us any more
            os.kill(os.getpid(), sig)

    return arm


_PR_SET_PDEATHSIG = 1


def env_server_command(config: str, url: str, db: str, tokenizers: Sequence[str] = ()) -> list[str]:
    """`python -m envs.server` serving the config's local environments at `url`; the web UI's
    token view may load `tokenizers` (the model's), nothing an upload names."""
    u = urlparse(url)
    return [
        sys.executable,
        "-m",
        "envs.server",
        "--config",
        str(Path(config).resolve()),
        *(arg for t in tokenizers for arg in ("--tokenizer", t)),
        "--host",
        u.hostname or "127.0.0.1",
        "--port",
        str(u.port or 80),
        "--db",
        db,
    ]


def local_engine_command(model: str, url: str) -> list[str]:
    """`python -m tools.engines.local_engine` (CPU, for debugging) serving `/generate` at `url`."""
    u = urlparse(url)
    return [
        sys.executable,
        "-m",
        "tools.engines.local_engine",
        "--model",
        model,
        "--host",
        u.hostname or "127.0.0.1",
        "--port",
        str(u.port or 80),
    ]


def scripted_engine_command(tokenizer: str, url: str) -> list[str]:
    """`python -m tools.engines.scripted` (no model: a fixed player of the environments) at
    `url`."""
    u = urlparse(url)
    return [
        sys.executable,
        "-m",
        "tools.engines.scripted",
        "--tokenizer",
        tokenizer,
        "--host",
        u.hostname or "127.0.0.1",
        "--port",
        str(u.port or 80),
    ]


def wait_until_up(name: str, url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(
                f"{name} exited with code {proc.returncode} before {url}/health answered"
            )
        if answers(url):
            return
        time.sleep(0.2)
    raise ServiceError(f"{name} did not answer {url}/health within {timeout:.0f}s")


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# Credentials in run.sh's environment that no service it starts uses: an env server must not
# hold a hosted key a client could make it spend (issue 13), and the CPU engine needs none.
_CREDENTIAL = re.compile(r"API_KEY|SECRET|PASSWORD|ACCESS_KEY|(^|_)TOKEN$", re.IGNORECASE)
# ... except these: the env server's own key, the haiku judge's key, Hugging Face downloads.
SERVICE_CREDENTIALS = ("ENV_SERVER_API_KEY", "LLM_JUDGE_API_KEY", "HF_TOKEN")


def service_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without the credentials of hosted services (OPENREWARD_API_KEY, WANDB_API_KEY,
    ...), keeping SERVICE_CREDENTIALS: the environment run.sh gives the services it starts."""
    return {
        k: v for k, v in environ.items() if k in SERVICE_CREDENTIALS or not _CREDENTIAL.search(k)
    }


def start_process(
    cmd: list[str], stdout: IO[bytes] | None = None, die_with_parent: bool = False
) -> subprocess.Popen:
    """`cmd` in the project root with the project on PYTHONPATH (output to `stdout`, or inherited).

    `die_with_parent` also stops it when this process is killed outright (a Ray actor's worker).
    """
    env = {
        **service_environ(os.environ),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])
        ),
    }
    return subprocess.Popen(
        cmd,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout else None,
        preexec_fn=parent_death_signal() if die_with_parent and sys.platform == "linux" else None,
    )


@contextlib.contextmanager
def managed_process(
    name: str,
    cmd: list[str],
    url: str,
    timeout: float = 120.0,
    log_path: Path | None = None,
    die_with_parent: bool = False,
) -> Iterator[subprocess.Popen]:
    """Start `cmd`, wait until `url`/health answers, yield the process, and stop it on exit
    (`die_with_parent`: also when this process is killed outright)."""
    out = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")
    try:
        proc = start_healthy(name, cmd, url, timeout, out, die_with_parent)
        try:
            yield proc
        finally:
            stop(proc)
    finally:
        if out is not None:
            out.close()


def start_healthy(
    name: str,
    cmd: list[str],
    url: str,
    timeout: float,
    stdout: IO[bytes] | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen:
    """`cmd` started and answering `url`/health; ServiceError (the process stopped) if it does
    not within `timeout`."""
    proc = start_process(cmd, stdout, die_with_parent=die_with_parent)
    try:
        wait_until_up(name, url, proc, timeout)
    except ServiceError:
        stop(proc)
        raise
    return proc


STOPPED_ON_PURPOSE = frozenset({0, -signal.SIGINT, -signal.SIGTERM})
"""Exit codes of a service that was stopped, not one that crashed: a clean exit, Ctrl-C (which
reaches the whole process group, the services too), SIGTERM."""
WATCH_INTERVAL_S = 1.0


class SupervisedService:
    """A service process, restarted on the same URL and command when it crashes or is killed
    (SIGKILL, the OOM killer, an exception, a segfault), until `stop()`. One stopped on purpose
    (STOPPED_ON_PURPOSE) stays down. Each restart prints one line under `prefix`; what the process
    held in memory (an env server's sessions) is lost, and its clients count those as failures.

    The first start runs in the calling thread, restarts in a watchdog thread; each process also
    dies with the thread that started it (the parent-death signal), and both live until `stop()`
    (or this process's death)."""

    def __init__(
        self, name: str, cmd: list[str], url: str, timeout: float = 120.0, prefix: str = "run.sh"
    ) -> None:
        self.name, self.cmd, self.url, self.timeout, self.prefix = name, cmd, url, timeout, prefix
        self.restarts = 0  # times it came back up after a crash
        self._proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start it and wait for `url`/health (ServiceError if it does not answer), then watch."""
        self._spawn()
        threading.Thread(target=self._watch, name=f"{self.name}-watchdog", daemon=True).start()

    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        """Stop it for good (the watchdog first, so it restarts nothing behind this)."""
        self._stopping.set()
        with self._lock:
            if self._proc is not None:
                stop(self._proc)

    def _spawn(self) -> None:
        proc = start_healthy(self.name, self.cmd, self.url, self.timeout, die_with_parent=True)
        self._proc = proc

    def _watch(self) -> None:
        down = False  # a restart failed: try again on the next tick
        while not self._stopping.wait(WATCH_INTERVAL_S):
            with self._lock:
                if self._stopping.is_set():
                    return
                proc = self._proc
                if not down:
                    if proc is None or proc.poll() is None:
                        continue
                    if proc.returncode in STOPPED_ON_PURPOSE:
                        print(
                            f"{self.prefix}: {self.name} at {self.url} was stopped "
                            f"({proc.returncode}); not restarting it",
                            flush=True,
                        )
                        return
                    print(
                        f"{self.prefix}: {self.name} at {self.url} exited ({proc.returncode}); "
                        "restarting it there (the sessions it held are lost)",
                        flush=True,
                    )
                try:
                    self._spawn()
                    self.restarts += 1
                    down = False
                except ServiceError as e:
                    print(f"{self.prefix}: {e}; trying again", flush=True)
                    down = True


@contextlib.contextmanager
def supervised_process(
    name: str, cmd: list[str], url: str, timeout: float = 120.0, prefix: str = "run.sh"
) -> Iterator[SupervisedService]:
    """A `SupervisedService` started (health-checked) for the block, stopped after it."""
    service = SupervisedService(name, cmd, url, timeout, prefix)
    service.start()
    try:
        yield service
    finally:
        service.stop()
