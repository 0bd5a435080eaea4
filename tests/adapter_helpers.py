"""Shared by the adapter tests (tests/test_adapter_*.py): the env server serving the adapter
environments, a config for one, its tasks prepared by prepare_tasks.py, an eval through
`python -m tools.eval` into the server's own store, and the web UI's pages of the stored
episodes, from that server."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from conftest import REPO, free_port, run_process

import tools.prepare_tasks as prepare_tasks
from tools.eval.__main__ import main as eval_main

TESTS = REPO / "tests"
TOKENIZER = REPO / ".cache" / "qwen3-tokenizer"
PYTHONPATH = os.pathsep.join([str(TESTS), str(REPO)])


def write_config(path: Path, env: str, url: str, **entry: Any) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "environments": {env: {"max_turns": 6, **entry}},
                "env_server": url,
                "run_name": "adapter-test",
                "trajectories": {"spool_dir": str(path.parent / "spool")},
            }
        )
    )
    return path


def prepare(config: Path, out: Path) -> tuple[list[dict], list[dict]]:
    """prepare_tasks.py in-process: (train rows, eval rows)."""
    ev = out.with_name("eval_" + out.name)
    assert prepare_tasks.main(["--config", str(config), "--output", str(out)]) == 0
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []
    return read(out), read(ev)


def evaluate(config: Path, stub_url: str, env_url: str, db: Path, capsys: Any) -> dict:
    """`python -m tools.eval` in-process on the config's eval split; its JSON report."""
    args = ["--config", str(config), "--db", str(db), "--out", str(db.parent / "eval-out")]
    args += ["--model", f"scripted={stub_url}", "--tokenizer", str(TOKENIZER)]
    args += ["--env-server", env_url, "--json"]
    assert eval_main(args) == 0
    out, _ = capsys.readouterr()
    return json.loads(out.strip().splitlines()[-1])


def ui_pages(url: str, run_name: str) -> list[str]:
    """The web UI's page of every rollout of run `run_name` on the server at `url`."""
    runs = httpx.get(f"{url}/api/runs", timeout=10).json()
    runs = runs.get("runs", runs) if isinstance(runs, dict) else runs
    run = next(r for r in runs if r["name"] == run_name)
    listed = httpx.get(f"{url}/api/runs/{run['id']}/rollouts", timeout=10).json()
    items = listed.get("rollouts", listed.get("items")) if isinstance(listed, dict) else listed
    pages = []
    for item in items:
        page = httpx.get(f"{url}/rollouts/{item['event_id']}", timeout=10)
        assert page.status_code == 200
        pages.append(page.text)
    return pages


class Served:
    """An env server serving the adapter environments, with its trajectory store."""

    def __init__(self, url: str, db: Path) -> None:
        self.url, self.db = url, db


def serve(names: list[str], db: Path) -> Iterator[Served]:
    """`python -m envs.server` for `names` (tests/ on PYTHONPATH) with the store `db`; the
    frameworks' imports take 10-15 s (more on a loaded machine), hence the long start timeout."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "envs.server", "--port", str(port), "--envs", ",".join(names)]
    with run_process(
        [*args, "--db", str(db)], f"{url}/health", env={"PYTHONPATH": PYTHONPATH}, timeout=240
    ):
        yield Served(url, db)
