"""`python -m envs.server` startup on a fresh machine: bundled GSM8K, and one-line refusals.

A port in use and a GSM8K directory that was asked for and is missing stop the server before
it serves anything: exit 2, one line on stderr naming the fix, nothing logged as served.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from conftest import REPO, env_server


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The server process, expected to exit by itself."""
    return subprocess.run(
        [sys.executable, "-m", "envs.server", "--host", "127.0.0.1", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "serving" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("envs.server: error: "), proc.stderr
    return lines[0]


def test_port_in_use_is_one_line_with_the_port_hint(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = start("--port", str(port), "--envs", "whodunit", "--db", str(tmp_path / "t.db"))
    line = one_error_line(proc)
    assert f"127.0.0.1:{port}" in line and "--port" in line
    assert not (tmp_path / "t.db").exists()  # refused before the store was opened


def test_missing_gsm8k_dir_fails_at_startup(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    env_line = one_error_line(
        start("--port", "0", "--envs", "gsm8k", env={"GSM8K_DATA_DIR": missing})
    )
    assert missing in env_line and "GSM8K_DATA_DIR" in env_line and "unset" in env_line
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"environments:\n  gsm8k:\n    options: {{data_dir: {missing}}}\n")
    cfg_line = one_error_line(start("--port", "0", "--config", str(cfg)))
    assert f"{cfg}: environments.gsm8k.options:" in cfg_line and "does not exist" in cfg_line


async def test_serves_bundled_gsm8k_with_no_setting(tmp_path: Path) -> None:
    """No GSM8K_DATA_DIR, no Hub: a gsm8k session opens at once on the bundled copy."""
    from ors_episodes import play_gsm8k

    assert "GSM8K_DATA_DIR" not in os.environ  # conftest clears it
    with env_server("--envs", "gsm8k", "--db", str(tmp_path / "t.db")) as url:
        ep = await play_gsm8k(url, "test", 0, correct=True)
        assert ep.final_reward == 1.0 and "Janet" in ep.prompt
        assert httpx.get(f"{url}/health").status_code == 200
