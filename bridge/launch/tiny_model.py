"""Alias of `python -m tools.engines.tiny_model` (the old path, kept for one release)."""

import runpy
import sys

if __name__ == "__main__":
    print("note: bridge.launch.tiny_model is now tools.engines.tiny_model", file=sys.stderr)
    runpy.run_module("tools.engines.tiny_model", run_name="__main__", alter_sys=True)
