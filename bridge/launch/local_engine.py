"""Alias of `python -m tools.engines.local_engine` (the old path, kept for one release)."""

import runpy
import sys

if __name__ == "__main__":
    print("note: bridge.launch.local_engine is now tools.engines.local_engine", file=sys.stderr)
    runpy.run_module("tools.engines.local_engine", run_name="__main__", alter_sys=True)
