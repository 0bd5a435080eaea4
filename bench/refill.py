"""What one dropped GRPO group costs under slime's REAL rollout loop (the vendored sources) with
the bridge as generate function: episodes started, groups drawn from the data source, prompts
lost, seconds, with one group whose episode the env loses on every try vs none, side by side.

    python bench/refill.py [--versions v0.3.1] [--rollout-batch-size 32] [--n-samples 16]
                           [--partial-rollout]

Defaults are run.sh's (32 prompts x 16 samples; slime's --over-sampling-batch-size defaults to the
rollout batch size and may not be smaller). slime refills a dropped group by drawing a whole
over-sampling batch; when the batch is full it aborts the rest, and without --partial-rollout the
prompts it drew and aborted are never trained (with it they wait in slime's buffer). The engine
is the scripted stand-in (tests/sglang_stub.py), the env the real env server; the lost episode
fails its tries with no replay window (BRIDGE_REPLAY_WINDOW_S=0), so the drop happens at once.
Needs ../shared/vendor (or $SLIME_VENDOR_DIR) and `bash setup.sh --test`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def scenario(tok: Any, url: str, gate_url: str, a: argparse.Namespace, drop: bool) -> Any:
    from sglang_stub import SGLangStub, Turn
    from slime_loop import FAIL_MARKER, Model, call, gsm8k_tasks

    n_tasks = 4 * a.rollout_batch_size
    tasks = gsm8k_tasks(n_tasks, gate_url)
    fail = [Turn.of_text(tok, call("calculator", {"expression": FAIL_MARKER}) + "<|im_end|>")]
    stub = SGLangStub(Model(tok, tasks, [fail] if drop else []), tokenizer=tok, instant=True)
    argv = [
        *("--rollout-batch-size", str(a.rollout_batch_size)),
        *("--n-samples-per-prompt", str(a.n_samples)),
        *("--dynamic-sampling-filter-path", "bridge.filters.drop_infra_failures"),
        *(["--partial-rollout"] if a.partial_rollout else []),
    ]
    return stub, {
        "tasks": tasks,
        "argv": argv,
        "env": {"BRIDGE_REPLAY_WINDOW_S": "0"},
        "set": {"sglang_server_concurrency": a.rollout_batch_size * a.n_samples},
        "rollouts": [{"train": False}],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", default="v0.3.1")
    ap.add_argument("--rollout-batch-size", type=int, default=32)
    ap.add_argument("--n-samples", type=int, default=16)
    ap.add_argument("--partial-rollout", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("OPENREWARD_DISABLE_UPDATE_CHECK", "1")
    from slime_vendor import missing_reason

    if (why := missing_reason()) is not None:
        print(f"bench/refill.py: {why}")
        return 2
    from conftest import env_server
    from slime_loop import Gateway, run_driver_many
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(REPO / ".cache" / "qwen3-tokenizer"))
    batch = a.rollout_batch_size * a.n_samples
    print(
        f"rollout batch {a.rollout_batch_size} x {a.n_samples} = {batch} episodes, over-sampling "
        f"batch = {a.rollout_batch_size} groups (slime's default and minimum)"
        + (", --partial-rollout" if a.partial_rollout else "")
    )
    with tempfile.TemporaryDirectory() as tmp, env_server("--envs", "gsm8k") as url:
        with Gateway(url) as gate:
            for version in a.versions.split(","):
                stubs, specs = {}, {}
                for name, drop in (("no drop", False), ("one drop", True)):
                    stubs[name], specs[name] = scenario(tok, url, gate.url, a, drop)
                    stubs[name].start()
                    specs[name]["set"].update(
                        sglang_router_ip="127.0.0.1", sglang_router_port=stubs[name].port
                    )
                try:
                    out = run_driver_many(version, specs, Path(tmp) / version)
                finally:
                    for stub in stubs.values():
                        stub.stop()
                rows = {name: r["rollouts"][0] for name, r in out.items()}
                for name, r in rows.items():
                    drops = sum(
                        v for k, v in r["metrics"].items() if k.startswith("rollout/dynamic_filter")
                    )
                    trained = len(r["samples"]) // a.n_samples
                    kept = len(r["buffer"]) // a.n_samples
                    lost = r["groups_drawn"] - trained - drops - kept
                    print(
                        f"slime {version}, {name}: {r['generate_calls']} episodes started, "
                        f"{r['groups_drawn']} groups drawn, {trained} trained, {drops} dropped, "
                        f"{kept} buffered, {lost} prompts lost, {r['seconds']:.1f} s"
                    )
                base, one = rows["no drop"], rows["one drop"]
                extra = one["generate_calls"] - base["generate_calls"]
                print(
                    f"slime {version}: one dropped group started {extra} more episodes "
                    f"({one['generate_calls'] / max(base['generate_calls'], 1):.2f}x the rollout), "
                    f"{one['seconds'] / max(base['seconds'], 1e-3):.2f}x its time"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
