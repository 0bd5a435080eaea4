"""Benchmark: prepare_tasks.py writing 10,000 local tasks. Target: under 5 s on the 2-core dev
machine.

    python bench/prepare_tasks.py [--tasks 10000] [--repeat 3] [--gsm8k-dir DIR]

Uses the real GSM8K environment on a train.jsonl of `--tasks` real GSM8K rows (cycled when the
source has fewer) from the bundled copy, or from DIR/train.jsonl ($GSM8K_DATA_DIR). Reports,
each against the 5 s target (ratio = target / measured, >1 is good):
- in-process: `prepare()` after imports (read, render, shuffle, write), best and median of --repeat;
- CLI: `python prepare_tasks.py` in a fresh interpreter, imports of the openreward SDK included,
  next to `python -c "import openreward"` alone (the SDK's import cost, outside prepare_tasks);
- whodunit: 1,000 generated cases in-process (bound by the env's own case generator), for scale.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Import the project, not this directory's benchmark scripts of the same names (bridge.py,
# prepare_tasks.py).
sys.path[:] = [str(REPO)] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent
]
os.environ.setdefault("OPENREWARD_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("OPENREWARD_LOG_LEVEL", "ERROR")

TARGET_S = 5.0


def gsm8k_lines(source: Path | None) -> list[str]:
    """GSM8K train rows as JSON lines: from `source`/train.jsonl, else the bundled copy."""
    if source is not None:
        text = (source / "train.jsonl").read_text()
    else:
        from envs.gsm8k_data import bundled_path

        text = gzip.decompress(bundled_path("train").read_bytes()).decode()
    return [line for line in text.splitlines() if line.strip()]


def make_gsm8k_dir(source: Path | None, n: int, dest: Path) -> None:
    rows = gsm8k_lines(source)
    with (dest / "train.jsonl").open("w") as f:
        for i in range(n):
            f.write(rows[i % len(rows)] + "\n")
    (dest / "test.jsonl").write_text("\n".join(rows[:10]) + "\n")


def write_config(path: Path, env: str, options: dict, num_samples: int | None = None) -> None:
    entry = {"splits": ["train"], "options": options}
    if num_samples:
        entry["num_samples"] = num_samples
    path.write_text(json.dumps({"environments": {env: entry}}))  # JSON is YAML


def in_process(config_path: Path, out: Path, repeat: int) -> list[float]:
    import envs.registry  # noqa: F401  (the openreward SDK import: timed separately)
    import prepare_tasks
    from contract.config import load_config

    times = []
    for _ in range(repeat):
        config = load_config(
            config_path
        )  # fresh config; env data caches stay warm after the first run
        t0 = time.perf_counter()
        asyncio.run(prepare_tasks.prepare(config, out, out.with_name("eval.jsonl"), None, 0))
        times.append(time.perf_counter() - t0)
    return times


def line(label: str, seconds: float, tasks: int) -> str:
    return (
        f"{label:<34} {seconds:7.3f} s  {tasks / seconds:9.0f} tasks/s  "
        f"ratio to {TARGET_S:.0f} s target: {TARGET_S / seconds:5.2f}x"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--gsm8k-dir",
        default=os.environ.get("GSM8K_DATA_DIR"),
        help="directory with GSM8K train.jsonl (default: $GSM8K_DATA_DIR, else the bundled copy)",
    )
    args = p.parse_args()
    source = Path(args.gsm8k_dir) if args.gsm8k_dir else None
    if source is not None and not (source / "train.jsonl").is_file():
        print(f"bench/prepare_tasks.py: error: {source} has no train.jsonl", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        make_gsm8k_dir(source, args.tasks, tmp_path)
        cfg = tmp_path / "cfg.yaml"
        write_config(cfg, "gsm8k", {"data_dir": tmp, "use_hub": False})
        out = tmp_path / "tasks.jsonl"

        times = in_process(cfg, out, args.repeat)
        written = sum(1 for _ in out.open())
        assert written == args.tasks, f"wrote {written} rows, expected {args.tasks}"

        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                str(REPO / "prepare_tasks.py"),
                "--config",
                str(cfg),
                "--output",
                str(out),
            ],
            capture_output=True,
            text=True,
            cwd=tmp,
        )
        cli_s = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import openreward"], check=True)
        import_s = time.perf_counter() - t0

        wcfg = tmp_path / "whodunit.yaml"
        write_config(wcfg, "whodunit", {}, num_samples=1000)
        who_s = in_process(wcfg, tmp_path / "who.jsonl", 1)[0]

    print(
        f"prepare_tasks benchmark: {args.tasks} GSM8K tasks ({os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f})"
    )
    print(line("in-process, first (cold data)", times[0], args.tasks))
    print(line("in-process, best", min(times), args.tasks))
    print(line("in-process, median", statistics.median(times), args.tasks))
    print(line("CLI incl. interpreter + imports", cli_s, args.tasks))
    print(f"{'  of which `import openreward` alone':<34} {import_s:7.3f} s")
    print(
        f"{'whodunit 1,000 cases in-process':<34} {who_s:7.3f} s  {1000 / who_s:9.0f} tasks/s  "
        f"(case generation inside the env)"
    )
    return 0 if times[0] < TARGET_S else 1  # the cold run counts


if __name__ == "__main__":
    sys.exit(main())
