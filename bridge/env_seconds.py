"""Durations the bridge reads from `$BRIDGE_*` variables: one parser for every such knob.

A value that is not a number, or is out of range (negative; zero where it must be positive), is
logged once and replaced by the default: a typo in a job's environment never stops a rollout.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def env_seconds(name: str, default: float, *, positive: bool = False) -> float:
    """`$name` as seconds (>= 0, or > 0 when `positive`), else `default`."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if value > 0 or (value == 0 and not positive):
        return value
    log.warning("%s=%r is not a usable number of seconds; using %g s", name, raw, default)
    return default
