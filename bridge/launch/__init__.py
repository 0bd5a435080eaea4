"""Old paths of the tools' commands, kept as aliases for one release (they moved to `tools/`).

    python -m bridge.launch.eval          ->  python -m tools.eval
    python -m bridge.launch.local_engine  ->  python -m tools.engines.local_engine
    python -m bridge.launch.tiny_model    ->  python -m tools.engines.tiny_model

Each alias runs the new module by name with `runpy`, so the plugin never imports the
tools; tests/test_layout.py checks that these are all it holds.
"""
