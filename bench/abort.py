"""How fast slime's abort gets the rollout back: time from slime's `abort()` to `generate_rollout`
returning, with slime's REAL rollout code (the vendored sources) and the bridge as generate
function.

    python bench/abort.py [--versions v0.3.1,main-624b824] [--turn-delay 1.0] [--tool-delay 6.0]

Scenarios (tests/test_slime_control_flow.py's and tests/test_slime_seams.py's): one fast group
fills the batch while a slow group's episodes are mid-episode, then slime aborts;
- an engine turn in flight: each turn of the slow group takes `--turn-delay` s in the scripted
  engine (target: at most one in-flight turn; the ratio is against the ~12 s the bridge took
  before it read slime's abort state, issue 9);
- a tool call in flight: the slow group's episodes sit in a `--tool-delay` s tool call (a
  gateway holds it before the real env server), with and without --partial-rollout (target:
  well under one in-flight model turn, whatever the env does; the ratio is against the tool
  call, which slime's abort used to wait for whole, issue 21.4).
Needs ../shared/vendor (or $SLIME_VENDOR_DIR) and `bash setup.sh --test`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

OLD_SECONDS = 12.0
"""slime's abort -> generate_rollout returning, before this bridge checked slime's abort state."""


def _rollout(stub: Any, tasks: list[dict[str, Any]], more: list[str]) -> dict[str, Any]:
    return {
        "tasks": tasks,
        "argv": [
            *("--rollout-batch-size", "1", "--n-samples-per-prompt", "2"),
            *("--over-sampling-batch-size", "2", "--rollout-max-response-len", "4096", *more),
        ],
        "set": {"sglang_router_ip": "127.0.0.1", "sglang_router_port": stub.port},
        "stub_url": stub.url,
        "rollouts": [{"weight_version": "v1", "train": False}],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", default="v0.3.1,main-624b824")
    ap.add_argument("--turn-delay", type=float, default=1.0)
    ap.add_argument("--tool-delay", type=float, default=6.0)
    opts = ap.parse_args()
    import os

    os.environ.setdefault("OPENREWARD_DISABLE_UPDATE_CHECK", "1")
    # GSM8K: the bundled copy (the env server's default) unless the caller names another
    from slime_vendor import missing_reason

    if (why := missing_reason()) is not None:
        print(f"bench/abort.py: {why}")
        return 2
    import contextlib

    from conftest import env_server
    from sglang_stub import SGLangStub
    from slime_loop import Gateway, Model, gsm8k_tasks, run_driver_many
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(REPO / ".cache" / "qwen3-tokenizer"))
    with tempfile.TemporaryDirectory() as tmp, env_server("--envs", "gsm8k") as url:
        for version in opts.versions.split(","):
            with contextlib.ExitStack() as stack:
                specs = {}
                tasks = gsm8k_tasks(2, url)
                tasks[1]["metadata"]["max_turns"] = 12
                model = Model(tok, tasks, slow=(1,), delay=opts.turn_delay)
                stub = stack.enter_context(SGLangStub(model, tokenizer=tok, weight_version="v1"))
                model.stub = stub
                specs["engine turn"] = _rollout(stub, tasks, ["--partial-rollout"])
                gate = stack.enter_context(Gateway(url, slow_s=opts.tool_delay))
                for name, more in (
                    ("tool call, --partial-rollout", ["--partial-rollout"]),
                    ("tool call", []),
                ):
                    held = gsm8k_tasks(2, gate.url)
                    m = Model(tok, held, slow_tool=(1,))
                    s = stack.enter_context(SGLangStub(m, tokenizer=tok, weight_version="v1"))
                    m.stub = s
                    specs[name] = _rollout(s, held, more)
                out = run_driver_many(version, specs, Path(tmp) / version)
            for name, result in out.items():
                secs = result["rollouts"][0]["abort_to_return"]
                if name == "engine turn":
                    target, base, what = opts.turn_delay, OLD_SECONDS, f"the old ~{OLD_SECONDS:g} s"
                else:
                    target, base = opts.turn_delay, opts.tool_delay
                    what = f"the {opts.tool_delay:g} s tool call it used to wait for"
                print(
                    f"slime {version}, {name} in flight: abort -> generate_rollout returned in "
                    f"{secs:.3f} s (target <= one in-flight model turn, {target:g} s: "
                    f"{'met' if secs <= target else 'MISSED'}); {secs / base:.4f}x {what} "
                    f"({base / max(secs, 1e-3):.0f}x faster)"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
