"""Tripwires in the store: which rollouts tripped which wire, for the run page's filter and facets.

Episode wires arrive in the rollout's metadata (`tripwires`, decided by the env). Group wires
are decided here as rollouts arrive, in any order: a rollout whose `tripwire_keys` match
another rollout of the same run and GRPO group trips the wire, and so does the other one
(the rule of contract/env_report.py `group_tripwires`, which the W&B metrics apply per batch).
A tripwire never changes a stored reward.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Mapping
from typing import Any

from contract.env_report import MAX_NAME_CHARS, MAX_TRIPWIRES, MAX_VALUE_CHARS

ANY = "any"
"""The filter value that matches a rollout with any tripped wire."""


def _names(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [w for w in value[:MAX_TRIPWIRES] if isinstance(w, str) and 0 < len(w) <= MAX_NAME_CHARS]


def _keys(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {
        w: k
        for w, k in itertools.islice(value.items(), MAX_TRIPWIRES)
        if isinstance(w, str)
        and 0 < len(w) <= MAX_NAME_CHARS
        and isinstance(k, str)
        and 0 < len(k) <= MAX_VALUE_CHARS
    }


def record(
    conn: sqlite3.Connection,
    event_id: str,
    run_id: int,
    group_key: str | None,
    metadata: Mapping[str, Any],
) -> None:
    """Store a new rollout's tripped wires and group keys; trip group wires it shares with
    others.

    Costs the same for the 8,000th twin of a key as for the second (8,000 twins once took 409 s):
    when two or more earlier rollouts share the key they have tripped already, so only a lone
    earlier twin needs tripping too."""
    rows = [(event_id, w, run_id) for w in _names(metadata.get("tripwires"))]
    keys = _keys(metadata.get("tripwire_keys")) if group_key is not None else {}
    for wire, key in keys.items():
        twins = conn.execute(
            "SELECT event_id FROM rollout_tripwire_keys WHERE run_id = ? AND group_key = ? "
            "AND wire = ? AND key = ? AND event_id <> ? LIMIT 2",
            (run_id, group_key, wire, key, event_id),
        ).fetchall()
        conn.execute(
            "INSERT OR IGNORE INTO rollout_tripwire_keys VALUES (?, ?, ?, ?, ?)",
            (run_id, group_key, wire, key, event_id),
        )
        if twins:
            rows.append((event_id, wire, run_id))
            if len(twins) == 1:
                rows.append((twins[0][0], wire, run_id))
    if rows:
        conn.executemany("INSERT OR IGNORE INTO rollout_tripwires VALUES (?, ?, ?)", rows)


def of_rollout(conn: sqlite3.Connection, event_id: str) -> list[str]:
    """The wires a rollout tripped (episode and group), sorted."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT wire FROM rollout_tripwires WHERE event_id = ? ORDER BY wire", (event_id,)
        )
    ]


def counts(conn: sqlite3.Connection, run_id: int) -> dict[str, int]:
    """wire -> rollouts of the run that tripped it."""
    return {
        wire: n
        for wire, n in conn.execute(
            "SELECT wire, COUNT(*) FROM rollout_tripwires WHERE run_id = ? GROUP BY wire "
            "ORDER BY wire",
            (run_id,),
        )
    }


def filter_clause(run_id: int | None, wire: str) -> tuple[str, list[Any]]:
    """A WHERE clause on `rollouts` keeping those that tripped `wire` (or any wire: ANY).

    A rowid list made from the (small) tripwire table: on a 100k-rollout run a page with its
    count takes ~45 ms instead of ~150 ms for a per-row EXISTS.
    """
    args: list[Any]
    where, args = ("t.run_id = ?", [run_id]) if run_id is not None else ("1", [])
    if wire != ANY:
        where, args = f"{where} AND t.wire = ?", [*args, wire]
    return (
        "id IN (SELECT r.id FROM rollout_tripwires t JOIN rollouts r ON r.event_id = t.event_id "
        f"WHERE {where})",
        args,
    )


LIST_COLUMN = (
    "(SELECT group_concat(wire, ' ') FROM rollout_tripwires t "
    "WHERE t.event_id = rollouts.event_id) AS tripwires"
)
"""A list column: the rollout's tripped wires, space-separated (NULL: none)."""
