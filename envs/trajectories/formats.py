"""How the pages show stored values: times, rewards, and whatever a field holds that it should
not (shown as short text, never an error: stored data must never make a page 5xx)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

__all__ = ["as_text", "fmt_reward", "fmt_time", "is_number"]


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def as_text(v: Any, limit: int = 200) -> str:
    """Stored data that is not what a field should hold, shown as (short) text."""
    text = str(v)
    return text if len(text) <= limit else text[:limit] + "…"


def fmt_time(ts: Any) -> str:
    if not ts:
        return ""
    if not is_number(ts):
        return as_text(ts)
    try:
        return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):  # out of datetime's range: show the number
        return f"{ts:.0f} s"


def fmt_reward(r: Any) -> str:
    """A reward to three decimals; stored data that is not a number is shown as text."""
    if r is None:
        return "—"
    return f"{r:.3f}" if is_number(r) else as_text(r)
