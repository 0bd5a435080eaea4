"""Benchmark: eval throughput with an instant engine, and the eval layer's cost per episode.

    .venv/bin/python bench/eval.py [--tasks 64] [--k 4] [--rounds 3] [--concurrency 64]

Runs WhoDunIt episodes (6 turns: five information tools, then an answer) against an instant
scripted `/generate` stub and the real env server, each in its own process, so this process's CPU
time is the bridge's and the eval's own work. Each round runs the same episodes twice, side by side:

- baseline: the bridge's own episode (`bridge.episode.Episode` with its `TokenModel`), nothing else;
- eval: `tools.eval`'s runner on the same tasks: the same episodes plus building each
  trajectory, validating and writing it with its eval row to SQLite (one writer thread), progress,
  and at the end the report (bootstrap CIs, reward parts) and its exports (JSONL, CSV, Markdown,
  Parquet when pyarrow is installed).

Prints episodes/s of the eval, and the eval layer's CPU per episode (eval minus baseline) against
the bridge's own CPU per episode: the ratio, with its target (<= 0.5: the eval adds at most half of
what the episode itself costs). Medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# this file's folder holds bench/bridge.py: keep `import bridge` pointing at the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OPENREWARD_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("OPENREWARD_LOG_LEVEL", "ERROR")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.procs import free_port, wait_http  # noqa: E402

TARGET_OVERHEAD_RATIO = 0.5
TOKENIZER_DIR = REPO / ".cache" / "qwen3-tokenizer"
INFO_TOOLS = ["list_suspects", "list_weapons", "list_locations", "list_clues", "list_statements"]

# ---------------------------------------------------------------- the stub's responder

_TURNS: list[Any] = []
_SEEN: dict[str, int] = {}
_LOCK = threading.Lock()


def respond(req: Any) -> Any:
    """sglang_stub responder: turn n of a session (routing key) is the n-th scripted WhoDunIt
    turn."""
    from sglang_stub import Turn

    if not _TURNS:
        import json

        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))

        def call(name: str, args: dict[str, Any]) -> str:
            body = json.dumps({"name": name, "arguments": args})
            return f"<tool_call>\n{body}\n</tool_call>"

        texts = [f"Checking {n[5:]}.{call(n, {})}<|im_end|>" for n in INFO_TOOLS]
        answer = {"who": "Nobody", "what": "spoon", "where": "moon", "why": "x"}
        texts.append(call("submit_answer", answer) + "<|im_end|>")
        _TURNS.extend(Turn(tok.encode(t, add_special_tokens=False)) for t in texts)
    with _LOCK:
        n = _SEEN.get(req.routing_key, 0)
        _SEEN[req.routing_key] = n + 1
    return _TURNS[min(n, len(_TURNS) - 1)]


# ---------------------------------------------------------------- the benchmark


async def _baseline(tasks: list[Any], k: int, engine_url: str, concurrency: int) -> list[Any]:
    """The bridge's own episodes, nothing else."""
    import uuid

    from bridge.chat import get_renderer
    from bridge.engine import EngineClient
    from bridge.env_client import close_shared_http, open_session
    from bridge.episode import Budget, Episode
    from bridge.token_model import TokenModel
    from tools.eval.spec import Sampling

    renderer = get_renderer(str(TOKENIZER_DIR), False, None)
    engine = EngineClient(engine_url)
    params = Sampling().sglang_params()
    sem = asyncio.Semaphore(concurrency)

    async def one(task: Any) -> Any:
        async with sem:
            key = uuid.uuid4().hex
            session = open_session(task.meta, [], key)
            ep = Episode(session, TokenModel(engine, renderer, key), task.meta, params, Budget())
            return await ep.run()

    try:
        return await asyncio.gather(*(one(t) for t in tasks for _ in range(k)))
    finally:
        await close_shared_http()


async def _eval_round(
    tasks: list[Any], k: int, engine_url: str, concurrency: int, db: Path, name: str
) -> dict[str, Any]:
    """The eval's runner on the same episodes, then its report, on a fresh store."""
    from bridge.chat import get_renderer
    from bridge.env_client import close_shared_http
    from envs.trajectories.evals import EvalModel, EvalRecords
    from envs.trajectories.store import TrajectoryStore
    from tools.eval.exports import write_exports
    from tools.eval.report import build_report
    from tools.eval.runner import Job, ModelRuntime, RunSettings, run_jobs
    from tools.eval.spec import Sampling, parse_model

    store = TrajectoryStore(db)
    records = EvalRecords(store)
    spec = parse_model(f"m={engine_url}", str(TOKENIZER_DIR))
    rt = ModelRuntime(
        spec, engine_url, f"{name}/m", renderer=get_renderer(spec.tokenizer, False, None)
    )
    eval_id = records.ensure(name, {"k": k}, name)
    records.add_models(eval_id, [EvalModel("m", "generate", {}, f"{name}/m")])
    jobs = {"m": [Job(t, i, j) for j in range(k) for i, t in enumerate(tasks)]}
    settings = RunSettings(name, eval_id, Sampling(), [], None, concurrency, progress=False)
    try:
        await run_jobs([rt], jobs, records, settings)
    finally:
        await close_shared_http()
    episodes = records.episodes(eval_id, parts=True)
    header = {"name": name, "sampling": Sampling().to_json()}
    report = build_report(header, ["m"], [t.ident for t in tasks], k, episodes, 1)
    write_exports(db.parent / f"{name}-out", report, episodes, name)
    records.close()
    store.stop()
    return report


def _timed(fn: Any) -> tuple[Any, float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    opts = ap.parse_args()

    from bridge.chat import get_renderer
    from contract.config import parse_config
    from tools.eval.tasks import tasks_from_config

    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    env_port, engine_port = free_port(), free_port()
    env_url, engine_url = f"http://127.0.0.1:{env_port}", f"http://127.0.0.1:{engine_port}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = [sys.executable, "-m", "envs.server", "--host", "127.0.0.1", "--port", str(env_port)]
    server += ["--envs", "whodunit", "--db", str(tmp / "server.db"), "--log-level", "warning"]
    stub = [sys.executable, str(REPO / "tests" / "sglang_stub.py"), "--port", str(engine_port)]
    stub += ["--responder", f"{Path(__file__).resolve()}:respond", "--instant"]
    procs = [
        subprocess.Popen(
            server, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ),
        subprocess.Popen(
            stub, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ),
    ]
    try:
        wait_http(f"{env_url}/health", procs[0])
        wait_http(f"{engine_url}/health", procs[1])
        config = parse_config(
            {
                "environments": {"whodunit": {"eval_split": "test", "max_turns": 10}},
                "env_server": env_url,
            }
        )
        tasks = tasks_from_config(config, None, opts.tasks, 0, [])
        get_renderer(str(TOKENIZER_DIR), False, None)
        n = len(tasks) * opts.k
        # warm-up: connections, caches, the env server's task cache
        asyncio.run(_baseline(tasks[:8], 1, engine_url, opts.concurrency))
        print(
            f"eval benchmark: {len(tasks)} WhoDunIt tasks x k={opts.k} = {n} episodes of 6 turns "
            f"per run, {opts.concurrency} in flight, {opts.rounds} rounds of baseline + eval "
            "(2-core machine shared with other work: numbers are noisy)"
        )
        base_cpu, eval_cpu, rates = [], [], []
        for r in range(opts.rounds):
            done, wall_b, cpu_b = _timed(
                lambda: asyncio.run(_baseline(tasks, opts.k, engine_url, opts.concurrency))
            )
            bad = sum(1 for x in done if x.stop_reason != "env_finished" or x.num_turns != 6)
            report, wall_e, cpu_e = _timed(
                lambda r=r: asyncio.run(
                    _eval_round(
                        tasks, opts.k, engine_url, opts.concurrency, tmp / f"e{r}.db", f"b{r}"
                    )
                )
            )
            stored = report["envs"]["whodunit"]["models"]["m"]["episodes"]
            base_cpu.append(cpu_b / n * 1000)
            eval_cpu.append(cpu_e / n * 1000)
            rates.append(n / wall_e)
            print(
                f"  round {r}: baseline {n / wall_b:6.0f} episodes/s, CPU {base_cpu[-1]:.2f} "
                "ms/episode "
                f"(not 6-turn finished: {bad}) | eval {rates[-1]:6.0f} episodes/s, CPU "
                f"{eval_cpu[-1]:.2f} ms/episode, {stored} stored"
            )
        b, e, rate = (
            statistics.median(base_cpu),
            statistics.median(eval_cpu),
            statistics.median(rates),
        )
        over = e - b
        print(f"eval episodes/s (instant engine)      {rate:8.0f}")
        print(f"bridge's own CPU per episode          {b:8.2f} ms")
        print(
            f"eval layer CPU per episode            {over:8.2f} ms (eval {e:.2f} - baseline "
            f"{b:.2f})"
        )
        ratio = over / b
        verdict = "meets" if ratio <= TARGET_OVERHEAD_RATIO else "MISSES"
        print(
            f"eval layer / bridge episode cost      {ratio:8.2f}   target <= "
            f"{TARGET_OVERHEAD_RATIO} "
            f"-> {verdict} the target"
        )
        return 0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    raise SystemExit(main())
