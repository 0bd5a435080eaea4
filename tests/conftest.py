"""Shared fixtures: real servers on 127.0.0.1 free ports, the real Qwen3 tokenizer, GSM8K data.

The suite needs nothing outside the repository: GSM8K is the copy bundled in envs/data/gsm8k,
whatever $GSM8K_DATA_DIR says in the shell that runs it. Tests pass in any order
(pytest-randomly shuffles them; `-p no:randomly` keeps file order): class-level state of the
environments (options from `configure()`, the SDK's task cache) is put back after every test.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import gzip
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from forked_server import ForkedServer

REPO = Path(__file__).resolve().parent.parent

os.environ.setdefault("OPENREWARD_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("OPENREWARD_LOG_LEVEL", "ERROR")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every test and every server it starts reads the bundled GSM8K unless the test says otherwise.
os.environ.pop("GSM8K_DATA_DIR", None)


# --- parallel runs (pytest-xdist; pyproject's addopts say `-n auto`) -----------------------------
WORKERS_PER_CORE = 2
"""Most tests wait on servers and subprocesses, so two workers per core keep the cores busy
(measured on 2 cores: see the README's Tests section)."""


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: $PYTEST_XDIST_AUTO_NUM_WORKERS if set; else WORKERS_PER_CORE per core, but no
    more than the modules named when the arguments are test files under `--dist loadscope` (a
    module runs on one worker), and none when they name single tests or one module: those run in
    this process, at once."""
    if env := os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = WORKERS_PER_CORE * (cores or 1)
    args = config.args
    if args and all("::" in a for a in args):
        return 0
    files = {a.split("::")[0] for a in args}
    if args and config.getoption("dist") == "loadscope" and all(f.endswith(".py") for f in files):
        return 0 if len(files) == 1 else min(workers, len(files))
    return workers


SPLIT_BY_PARAMETER = {
    "test_loop.py": "each cell is minutes of slime's whole loop",
    "test_slime_control_flow.py": "one slime driver run per version",
}
"""Modules whose tests go to the workers in parts, one per parameter id ([v0.3.1-sync], ...),
instead of whole: a part's tests share its module-scoped fixtures (set up once per part), and
the parts run at once on different workers instead of one after another on one."""


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadscope` (pyproject's addopts), except the modules of SPLIT_BY_PARAMETER."""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module, _, test = nodeid.partition("::")
            if Path(module).name in SPLIT_BY_PARAMETER and test.endswith("]"):
                return f"{module}[{test.rsplit('[', 1)[1]}"
            return str(super()._split_scope(nodeid))

    return Scheduling(config, log)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules marked `long(minutes)` first, the longest first; the rest keep their (shuffled)
    order. Under `--dist loadscope` a module is one unit of work, handed out in this order (with
    pyproject's `--no-loadscope-reorder`: xdist's own reorder hands out the units with the most
    tests first, and a whole-loop cell is a unit of one test): a module of many minutes that
    started last would run on alone after the others are done."""

    def minutes(item: pytest.Item) -> float:
        mark = item.get_closest_marker("long")
        return float(mark.args[0]) if mark is not None and mark.args else 0.0

    items.sort(key=lambda item: -minutes(item))  # stable: same-length modules stay as shuffled


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(
    url: str,
    timeout: float = 180.0,
    proc: subprocess.Popen | ForkedServer | None = None,
) -> None:
    """Poll `url` until it answers 200; fail early if `proc` dies. The bound is generous: parallel
    workers on a loaded 2-core machine start a server in tens of seconds, not the usual few."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(
                f"server exited with {proc.returncode} before {url} answered:\n{out}"
            )
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


@contextlib.contextmanager
def run_process(
    args: list[str], health_url: str, env: dict[str, str] | None = None, timeout: float = 180.0
) -> Iterator[subprocess.Popen]:
    """Start a server subprocess, wait for its health URL, and always stop it."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.Popen(
        args, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_http(health_url, timeout=timeout, proc=proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def env_server(
    *extra: str, port: int | None = None, env: dict[str, str] | None = None
) -> Iterator[str]:
    """`python -m envs.server` on 127.0.0.1:<free port>; yields its base URL.

    Forked from the worker's preloaded server process (tests/forked_server.py), or started as
    the command when `env` changes its environment."""
    import forked_server  # here: tests/test_isolation.py runs this file alone as a conftest

    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    argv = ["--host", "127.0.0.1", "--port", str(port), *extra]
    if env is None and forked_server.enabled():
        with tempfile.TemporaryDirectory(prefix="env-server-") as logs:
            with forked_server.forked_env_server(argv, Path(logs) / "server.log") as proc:
                wait_http(f"{base}/health", proc=proc)
                yield base
        return
    with run_process([sys.executable, "-m", "envs.server", *argv], f"{base}/health", env=env):
        yield base


def _env_classes() -> list[type]:
    """Every Environment subclass defined so far: the registered envs (imported here) and the
    tests'."""
    from openreward.environments import Environment

    from envs.registry import ENVIRONMENTS, load_env_class

    for name in ENVIRONMENTS:
        load_env_class(name)
    found: list[type] = []
    todo: list[type] = [Environment]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.append(sub)
                todo.append(sub)
    return found


# Packages that define or configure environment classes in the test's own process.
_ENV_PACKAGES = frozenset({"envs", "openreward", "tools", "prepare_tasks"})
_TESTS = Path(__file__).resolve().parent


def _imported_tops(path: Path) -> set[str]:
    """The top-level names of every module `path` imports, at any depth."""
    tops: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            tops.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            tops.add(node.module.split(".")[0])
    return tops


@functools.cache
def _may_touch_env_classes(path: Path, _seen: frozenset[Path] = frozenset()) -> bool:
    """Whether the test file `path`, or a test helper it imports, imports a package that defines
    or configures environment classes (anywhere in the file, function-level imports included)."""
    tops = _imported_tops(path)
    if tops & _ENV_PACKAGES:
        return True
    seen = _seen | {path}
    helpers = (_TESTS / f"{t}.py" for t in tops - {"conftest"})
    return any(h.is_file() and h not in seen and _may_touch_env_classes(h, seen) for h in helpers)


_ABSENT = object()


@pytest.fixture(autouse=True)
def isolated_env_classes(request: pytest.FixtureRequest) -> Iterator[None]:
    """Put every environment class's own attributes back as they were before the test.

    `configure()` sets class attributes (options) and the openreward SDK caches a class's task
    list on the class: without this a test that configures an env changes it for the rest of
    the process. Caches mutated in place (GSM8K's rows per data source) are keyed by what they
    depend on and stay.

    Only tests that can reach an environment class pay for it: when the SDK is not loaded yet
    and neither the test's file nor a helper it imports imports envs/openreward/tools, nothing is
    imported (tests of the plugin alone never load the SDK).
    """
    loaded = "openreward.environments" in sys.modules
    if not loaded and not _may_touch_env_classes(Path(str(request.node.path))):
        yield
        return
    before = {cls: dict(vars(cls)) for cls in _env_classes()}
    yield
    for cls, saved in before.items():
        now: dict[str, Any] = dict(vars(cls))
        for key in now.keys() - saved.keys():
            delattr(cls, key)
        for key, value in saved.items():
            if now.get(key, _ABSENT) is not value:
                setattr(cls, key, value)


@pytest.fixture(scope="session")
def gsm8k_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled GSM8K as a plain directory of train.jsonl/test.jsonl (as `data_dir` takes it)."""
    from envs.gsm8k_data import SPLITS, bundled_path

    out = tmp_path_factory.mktemp("gsm8k")
    for split in SPLITS:
        with bundled_path(split).open("rb") as raw, gzip.open(raw) as src:
            with (out / f"{split}.jsonl").open("wb") as dst:
                shutil.copyfileobj(src, dst)
    return out


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir() -> Path:
    d = Path(os.environ.get("QWEN3_TOKENIZER_DIR", REPO / ".cache" / "qwen3-tokenizer"))
    if not (d / "tokenizer.json").is_file():
        pytest.fail(f"Qwen3 tokenizer missing at {d}: run `bash setup.sh --test`")
    return d


@pytest.fixture(scope="session")
def qwen3_tokenizer(qwen3_tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir))


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One env server with all three environments and a fresh trajectory DB, per test module."""
    db = tmp_path_factory.mktemp("store") / "trajectories.db"
    with env_server("--envs", "gsm8k,whodunit,haiku", "--db", str(db)) as url:
        yield url


# --- headless Debian Chromium for the web UI tests (tests/webui_helpers.py) ---
@pytest.fixture(scope="module")
def browser():
    from webui_helpers import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: run `bash setup.sh --test`")
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, tmp_path: Path):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    pg.problems = problems  # type: ignore[attr-defined]
    yield pg
    ctx.close()
