"""Benchmark: the bridge's own throughput and CPU cost per turn.

    .venv/bin/python bench/bridge.py [--episodes 256] [--rounds 3] [--thinking]

Runs `--episodes` concurrent WhoDunIt episodes (6 turns each: five information tools, then the
answer; `--samples-per-task` episodes share a case, as GRPO groups do) on ONE event loop through
`bridge.generate.generate`, against an instant scripted
`/generate` stub and the real env server (`python -m envs.server`), both in their own processes,
so the CPU time of this process is the bridge's own work (turn loop, HTTP clients, tokenizing
deltas, parsing, filling the sample). Reports per round: turns/s and bridge CPU per turn; then the
median over rounds against the targets (>= 1000 turns/s, < 0.5 ms CPU per turn) and against the
public example's approach measured in the same run: re-tokenizing the whole history with the chat
template before every turn (only that tokenization is timed, so the baseline is flattered).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# this file is bench/bridge.py: keep `import bridge` pointing at the package, not at this script
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OPENREWARD_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("OPENREWARD_LOG_LEVEL", "ERROR")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402

from bench.procs import free_port, wait_http  # noqa: E402

TARGET_TURNS_PER_S = 1000.0
TARGET_CPU_MS_PER_TURN = 0.5
INFO_TOOLS = ["list_suspects", "list_weapons", "list_locations", "list_clues", "list_statements"]


def _call(name: str, args: dict[str, Any]) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(args)}}}\n</tool_call>'


ACCUSATION = {"who": "Nobody", "what": "spoon", "where": "moon", "why": "x"}


def _script_turns(tok: Any, thinking: bool) -> list[dict[str, Any]]:
    think = (
        "<think>\nI should look at the next piece of evidence before deciding.\n</think>\n\n"
        if thinking
        else ""
    )
    texts = [
        f"{think}Checking {n.replace('list_', '')}.{_call(n, {})}<|im_end|>" for n in INFO_TOOLS
    ]
    texts.append(f"{think}{_call('submit_answer', ACCUSATION)}<|im_end|>")
    return [{"output_ids": tok.encode(t, add_special_tokens=False)} for t in texts]


class SlowSteps(logging.Handler):
    """Collects asyncio debug-mode reports of single loop steps slower than
    slow_callback_duration."""

    def __init__(self) -> None:
        super().__init__()
        self.durations: list[float] = []
        self.examples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        m = re.search(r"took ([0-9.]+) seconds", msg)
        if m:
            self.durations.append(float(m.group(1)))
            if len(self.examples) < 3:
                self.examples.append(msg[:300])


class CaptureSink:
    """Keeps finished episodes in memory (the benchmark's trajectory sink)."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def submit(self, trajectory: Any) -> None:
        self.items.append(trajectory)


async def _round(
    args: Any,
    keys: list[str],
    env_url: str,
    params: dict[str, Any],
    thinking: bool,
    tools: list[dict[str, Any]],
    per_task: int,
) -> tuple[list[Any], float, float]:
    from bridge.generate import generate
    from bridge.sample import FallbackSample

    # without a TRAIN_CONFIG the bridge reads `thinking` from the task metadata; `tools` is there
    # because prepare_tasks.py writes each task's tool schemas into its metadata
    samples = [
        FallbackSample(
            metadata={
                "env": "whodunit",
                "env_server": [env_url],
                "split": "train",
                "index": i // per_task,
                "thinking": thinking,
                "tools": tools,
            },
            session_id=k,
        )
        for i, k in enumerate(keys)
    ]
    c0, t0 = time.process_time(), time.perf_counter()
    done = await asyncio.gather(*(generate(args, s, dict(params)) for s in samples))
    return done, time.perf_counter() - t0, time.process_time() - c0


def _baseline_cpu_per_turn(
    tok: Any, trajectories: list[Any], tools: list[dict[str, Any]], thinking: bool
) -> float:
    """CPU seconds per turn to re-render + re-tokenize the whole history before each turn."""
    t0 = time.thread_time()
    n = 0
    for traj in trajectories:
        msgs = traj.messages
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                tok.apply_chat_template(
                    msgs[:i],
                    tools=tools,
                    tokenize=True,
                    add_generation_prompt=True,
                    enable_thinking=thinking,
                )
                n += 1
    return (time.thread_time() - t0) / max(n, 1)


async def _main(opts: argparse.Namespace) -> int:
    from bridge.chat import load_tokenizer
    from bridge.generate import close_clients, set_trajectory_sink
    from contract.task import ors_tool_to_openai

    tok_dir = str(REPO / ".cache" / "qwen3-tokenizer")
    tok = load_tokenizer(tok_dir)
    tmp = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    keys_per_round = [[f"r{r}-e{i}" for i in range(opts.episodes)] for r in range(opts.rounds)]
    warm = [f"warm-{i}" for i in range(8)]
    turns = _script_turns(tok, opts.thinking)
    script = {k: turns for k in warm + [k for ks in keys_per_round for k in ks]}
    (tmp / "script.json").write_text(json.dumps(script))
    env_port, engine_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "envs.server",
                "--host",
                "127.0.0.1",
                "--port",
                str(env_port),
                "--envs",
                "whodunit",
                "--db",
                str(tmp / "t.db"),
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests" / "sglang_stub.py"),
                "--port",
                str(engine_port),
                "--script",
                str(tmp / "script.json"),
                "--instant",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    env_url = f"http://127.0.0.1:{env_port}"
    try:
        wait_http(f"{env_url}/health", procs[0])
        wait_http(f"http://127.0.0.1:{engine_port}/health", procs[1])
        ors_tools = httpx.get(f"{env_url}/whodunit/tools", timeout=10).json()["tools"]
        tools = [ors_tool_to_openai(t) for t in ors_tools]
        sink = CaptureSink()
        set_trajectory_sink(sink)
        args = types.SimpleNamespace(
            sglang_router_ip="127.0.0.1",
            sglang_router_port=engine_port,
            hf_checkpoint=tok_dir,
            rollout_max_context_len=None,
            rollout_max_response_len=8192,
        )
        params = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 1024}
        os.environ.pop("TRAIN_CONFIG", None)
        await _round(
            args, warm, env_url, params, opts.thinking, tools, 1
        )  # tokenizer, renderer and connections warm up
        print(
            f"bridge benchmark: {opts.episodes} concurrent WhoDunIt episodes x {len(turns)} turns "
            f"({opts.episodes // opts.samples_per_task} cases x {opts.samples_per_task} samples), "
            f"{opts.rounds} rounds, thinking={'on' if opts.thinking else 'off'} "
            f"(2-core machine shared with other work: numbers are noisy)"
        )
        slow = None
        # asyncio debug mode: report every loop step longer than 20 ms (slower run)
        if opts.find_blocking:
            slow = SlowSteps()
            logging.getLogger("asyncio").addHandler(slow)
            loop = asyncio.get_running_loop()
            loop.set_debug(True)
            loop.slow_callback_duration = 0.02
        rates, cpus = [], []
        for r, keys in enumerate(keys_per_round):
            sink.items.clear()
            prof = None
            if opts.profile and r == 0:
                import cProfile

                prof = cProfile.Profile()
                prof.enable()
            done, wall, cpu = await _round(
                args, keys, env_url, params, opts.thinking, tools, opts.samples_per_task
            )
            if prof is not None:
                import pstats

                prof.disable()
                pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            n_turns = sum(s.metadata.get("num_turns", 0) for s in done)
            bad = [
                s.metadata.get("stop_reason")
                for s in done
                if s.status.value != "completed" or s.metadata.get("drift_count")
            ]
            rates.append(n_turns / wall)
            cpus.append(cpu / max(n_turns, 1) * 1000)
            print(
                f"  round {r}: {n_turns} turns in {wall:.2f} s = {rates[-1]:.0f} turns/s; "
                f"bridge CPU {cpu:.2f} s = {cpus[-1]:.3f} ms/turn; not completed: {len(bad)} "
                f"{sorted(set(bad))}"
            )
        if slow is not None:
            asyncio.get_running_loop().set_debug(False)
            print(
                f"loop steps > 20 ms: {len(slow.durations)}, longest "
                f"{max(slow.durations, default=0) * 1000:.0f} ms"
            )
            for ex in slow.examples:
                print("   ", ex)
        base_ms = _baseline_cpu_per_turn(tok, sink.items, tools, opts.thinking) * 1000
        rate, cpu_ms = statistics.median(rates), statistics.median(cpus)
        print(
            f"median turns/s            {rate:8.0f}   target {TARGET_TURNS_PER_S:.0f}  -> ratio "
            f"{rate / TARGET_TURNS_PER_S:.2f}x"
        )
        print(
            f"median bridge CPU/turn    {cpu_ms:8.3f} ms  target {TARGET_CPU_MS_PER_TURN} ms -> "
            f"ratio {TARGET_CPU_MS_PER_TURN / cpu_ms:.2f}x (target / measured)"
        )
        print(
            f"baseline (re-tokenize whole history each turn, tokenization only) {base_ms:.3f} "
            "ms/turn -> "
            f"bridge is {base_ms / cpu_ms:.2f}x cheaper per turn, all its work included"
        )
        return 0
    finally:
        set_trajectory_sink(None)
        await close_clients()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--samples-per-task",
        type=int,
        default=8,
        help="episodes per task, like GRPO's --n-samples-per-prompt (1: every episode a new case)",
    )
    ap.add_argument("--thinking", action="store_true", help="scripted turns carry thinking text")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the first round")
    ap.add_argument(
        "--find-blocking",
        action="store_true",
        help=(
            "asyncio debug mode: list loop steps longer than 20 ms (the bridge is slower meanwhile)"
        ),
    )
    opts = ap.parse_args()
    return asyncio.run(_main(opts))


if __name__ == "__main__":
    raise SystemExit(main())
