"""Run slime's real `parse_args` on launcher plans, in a subprocess with slime's sources on its
path.

    PYTHONPATH=<shims>:<slime>:<megatron>:<repo> python tests/slime_parse_args.py PLANS.json

PLANS.json maps a plan name to the argv run.sh gives slime's driver (without the script). Each
is parsed as `train.py ARGV` would parse it (slime's validation included); prints one line
`RESULT {name: {attribute: value} | {"error": message}}`. The CPU shims (torchvision stand-in,
duplicate config registration) come from the vendored-slime harness, imported first.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback

import slime_cpu_shims  # noqa: F401  (must precede SGLang and transformers' auto classes)

ATTRS = (
    "actor_num_nodes",
    "actor_num_gpus_per_node",
    "rollout_num_gpus",
    "rollout_num_gpus_per_engine",
    "colocate",
    "offload_train",
    "offload_rollout",
    "use_fault_tolerance",
    "rollout_function_path",
    "eval_function_path",
    "update_weights_interval",
    "load",
    "ref_load",
    "eval_interval",
    "lr",
    "custom_generate_function_path",
)


def main() -> int:
    from slime.utils.arguments import parse_args

    out = {}
    for name, argv in json.load(open(sys.argv[1])).items():
        sys.argv = ["train.py", *argv]
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints every argument
                args = parse_args()
            out[name] = {k: getattr(args, k, None) for k in ATTRS}
        except BaseException as e:  # SystemExit from argparse included: report, go on
            where = traceback.extract_tb(e.__traceback__)[-1]
            out[name] = {
                "error": f"{type(e).__name__}: {e} ({where.filename}:{where.lineno}: {where.line})"
            }
    print("RESULT " + json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
