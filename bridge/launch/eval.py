"""Alias of `python -m tools.eval` (the old path, kept for one release)."""

import runpy
import sys

if __name__ == "__main__":
    print("note: bridge.launch.eval is now tools.eval", file=sys.stderr)
    runpy.run_module("tools.eval", run_name="__main__", alter_sys=True)
