"""Drift forensics: where the token context diverged, so the rollout page can show it.

The bridge counts a drift (`drift_count`, must stay 0) when the engine's view of the context
differs from the ledger's: the engine reports a prompt length other than the context it was
sent, or the ids in its `output_token_logprobs` differ from its `output_ids` (the bridge, like
slime, trains the former). Each counted drift is also described, for the trajectory:

    {"turn": 3, "position": 1234, "kind": "output_ids" | "prompt_tokens",
     "expected": "...", "got": "...", "detail": "..."}

`position` indexes the episode's token ids (prompt included); `expected` and `got` are the
two token runs around it, decoded token by token (`|` between tokens, `▶` at the divergence).
At most MAX_EVENTS are kept per episode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

RUN = 8
"""Tokens shown on each side of the divergence."""
MAX_EVENTS = 16
MARK = "▶"

Decode = Callable[[Sequence[int]], str]


def token_run(ids: Sequence[int], at: int, decode: Decode) -> str:
    """The tokens around index `at`, each decoded on its own, the divergence marked."""
    before = [decode([t]) for t in ids[max(0, at - RUN) : at]]
    after = [decode([t]) for t in ids[at : at + RUN]]
    return "|".join(before) + MARK + "|".join(after)


def first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    """The first index where two id lists differ (the shorter length when one extends the other)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def output_mismatch(
    turn: int, context_len: int, trained: Sequence[int], reported: Sequence[int], decode: Decode
) -> dict[str, Any]:
    """A turn whose `output_ids` differ from the ids of its `output_token_logprobs` (`trained`)."""
    i = first_difference(trained, reported)
    return {
        "turn": turn,
        "position": context_len + i,
        "kind": "output_ids",
        "expected": token_run(trained, i, decode),
        "got": token_run(reported, i, decode),
        "detail": f"the engine's output_ids ({len(reported)} ids) differ from the ids of its "
        f"output_token_logprobs ({len(trained)} ids, the ones trained) at output token {i}",
    }


def prompt_mismatch(
    turn: int, sent: Sequence[int], reported_len: int, decode: Decode
) -> dict[str, Any]:
    """A turn whose engine counted `reported_len` prompt tokens for the `sent` context."""
    at = min(len(sent), reported_len)
    return {
        "turn": turn,
        "position": at,
        "kind": "prompt_tokens",
        "expected": token_run(sent, at, decode),
        "got": f"(the engine counted {reported_len} prompt tokens; it does not return them)",
        "detail": f"the bridge sent {len(sent)} tokens, the engine reported prompt_tokens="
        f"{reported_len}",
    }


def keep(events: list[dict[str, Any]], event: dict[str, Any]) -> None:
    """Append an event unless MAX_EVENTS are already kept."""
    if len(events) < MAX_EVENTS:
        events.append(event)
