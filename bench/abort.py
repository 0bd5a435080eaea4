"""How fast slime's abort gets the rollout back: time from slime's `abort()` to `generate_rollout`
returning, with slime's REAL rollout code (the vendored sources) and the bridge as generate
function.

    python bench/abort.py [--versions v0.3.1,main-624b824] [--turn-delay 1.0]

Scenario (tests/test_slime_control_flow.py's partial-rollout one): one fast group fills the batch
while a slow group's episodes are mid-episode, each turn of theirs taking `--turn-delay` seconds in
the scripted engine; slime then aborts. Target: at most one in-flight turn (`--turn-delay`). The
ratio is printed against the ~12 s the bridge took before it read slime's abort state (issue 9,
measured with the same scripted engine). Needs ../shared/vendor (or $SLIME_VENDOR_DIR) and
`bash setup.sh --test`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

OLD_SECONDS = 12.0
"""slime's abort -> generate_rollout returning, before this bridge checked slime's abort state."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", default="v0.3.1,main-624b824")
    ap.add_argument("--turn-delay", type=float, default=1.0)
    opts = ap.parse_args()
    import os

    os.environ.setdefault("OPENREWARD_DISABLE_UPDATE_CHECK", "1")
    # GSM8K: the bundled copy (the env server's default) unless the caller names another
    from slime_vendor import missing_reason

    if (why := missing_reason()) is not None:
        print(f"bench/abort.py: {why}")
        return 2
    from conftest import env_server
    from sglang_stub import SGLangStub
    from test_slime_control_flow import Model, gsm8k_tasks, run_driver
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(REPO / ".cache" / "qwen3-tokenizer"))
    with tempfile.TemporaryDirectory() as tmp, env_server("--envs", "gsm8k") as url:
        for version in opts.versions.split(","):
            tasks = gsm8k_tasks(2, url)
            tasks[1]["metadata"]["max_turns"] = 12
            model = Model(tok, tasks, slow=(1,), delay=opts.turn_delay)
            with SGLangStub(model, tokenizer=tok, weight_version="v1") as stub:
                model.stub = stub
                spec = {
                    "scenario": "rollout",
                    "tasks": tasks,
                    "argv": [
                        "--rollout-batch-size",
                        "1",
                        "--n-samples-per-prompt",
                        "2",
                        "--over-sampling-batch-size",
                        "2",
                        "--partial-rollout",
                        "--rollout-max-response-len",
                        "4096",
                    ],
                    "set": {"sglang_router_ip": "127.0.0.1", "sglang_router_port": stub.port},
                    "stub_url": stub.url,
                    "rollouts": [{"weight_version": "v1", "train": False}],
                }
                d = Path(tmp) / version
                d.mkdir()
                out = run_driver(version, spec, d)
            secs = out["rollouts"][0]["abort_to_return"]
            print(
                f"slime {version}: abort -> generate_rollout returned in {secs:.3f} s "
                f"(target <= one in-flight turn, {opts.turn_delay:g} s: "
                f"{'met' if secs <= opts.turn_delay else 'MISSED'}); "
                f"{secs / OLD_SECONDS:.4f}x the old ~{OLD_SECONDS:g} s "
                f"({OLD_SECONDS / max(secs, 1e-3):.0f}x faster)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
