"""A run's rollout list: filters, sort orders, keyset pages and the index each query walks.

Pages are keyset-paginated on (sort column, id): a cursor is the last row's pair, so a page
90,000 rows deep costs what the first one does.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from typing import Any, Literal

from envs.trajectories import tripwires

__all__ = [
    "LIST_COLUMNS",
    "PAGE_SIZE_MAX",
    "RolloutFilter",
    "RolloutPage",
    "SortKey",
    "decode_cursor",
    "encode_cursor",
    "list_rollouts",
]

PAGE_SIZE_MAX = 500

SortKey = Literal["time", "reward", "turns"]
_SORT_COLUMN = {"time": "ts", "reward": "reward_key", "turns": "num_turns"}
_SORT_INDEX = {
    "time": "rollouts_run_ts",
    "reward": "rollouts_run_reward",
    "turns": "rollouts_run_turns",
}
_FILTER_INDEX = {
    "stop_reason": "rollouts_run_stop_ts",
    "status": "rollouts_run_status_ts",
    "env": "rollouts_run_env_ts",
    "split": "rollouts_run_split_ts",
}
# Below this many matching rows, reading them through a filter index and sorting is cheaper than
# walking the sort index past non-matching rows.
_SORT_IN_MEMORY_ROWS = 20_000


def _pick_index(flt: RolloutFilter, sort: str, total: int) -> str:
    """The index a page query walks: the sort order's, or a filter's when that reads fewer rows."""
    eq = next((c for c in _FILTER_INDEX if getattr(flt, c)), None)
    if eq is not None and (sort == "time" or total <= _SORT_IN_MEMORY_ROWS):
        return _FILTER_INDEX[eq]
    if (
        eq is None
        and sort == "time"
        and total <= _SORT_IN_MEMORY_ROWS
        and (flt.min_reward is not None or flt.max_reward is not None)
    ):
        return _SORT_INDEX["reward"]
    return _SORT_INDEX[sort]


MAX_FAILURE_CHARS = 300  # of a failed rollout's reason, in lists
LIST_COLUMNS = (
    "id, event_id, name, env, split, step, ts, status, stop_reason, reward, "
    f"reward_reduction, num_turns, num_messages, group_key, task_index, {tripwires.LIST_COLUMN}, "
    "CASE WHEN json_valid(metadata) THEN substr(json_extract(metadata, '$.extra.failure'), 1, "
    f"{MAX_FAILURE_CHARS}) END AS failure"
)


@dataclass
class RolloutFilter:
    """Server-side filters of a run's rollout list."""

    env: str | None = None
    split: str | None = None
    status: str | None = None
    stop_reason: str | None = None
    min_reward: float | None = None
    max_reward: float | None = None
    tripwire: str | None = None  # a wire name, or tripwires.ANY

    def where(self, run_id: int | None = None) -> tuple[list[str], list[Any]]:
        clauses, args = [], []
        for col in ("env", "split", "status", "stop_reason"):
            value = getattr(self, col)
            if value:
                clauses.append(f"{col} = ?")
                args.append(value)
        if self.min_reward is not None:
            clauses.append("reward >= ?")
            args.append(self.min_reward)
        if self.max_reward is not None:
            clauses.append("reward <= ?")
            args.append(self.max_reward)
        if self.tripwire:
            clause, more = tripwires.filter_clause(run_id, self.tripwire)
            clauses.append(clause)
            args += more
        return clauses, args


@dataclass
class RolloutPage:
    rows: list[dict[str, Any]]
    total: int
    next_cursor: str | None
    prev_cursor: str | None


def encode_cursor(value: float, row_id: int) -> str:
    return f"{value!r}~{row_id}"


def decode_cursor(cursor: str) -> tuple[float, int]:
    """Parse a page cursor; raises ValueError with a readable message."""
    try:
        value, _, rid = cursor.partition("~")
        if len(value) > 40 or len(rid) > 20:
            raise ValueError
        v, row_id = float(value), int(rid)
        if not (math.isfinite(v) and 0 <= row_id < 2**63):
            raise ValueError
        return v, row_id
    except ValueError:
        raise ValueError(f"bad page cursor {cursor[:60]!r}") from None


def list_rollouts(
    conn: sqlite3.Connection,
    run_id: int,
    flt: RolloutFilter | None = None,
    sort: SortKey = "time",
    descending: bool = True,
    after: str | None = None,
    before: str | None = None,
    limit: int = 50,
) -> RolloutPage:
    """One page of a run's rollouts, keyset-paginated on (sort column, id)."""
    if sort not in _SORT_COLUMN:
        raise ValueError(f"unknown sort {sort!r}; use one of {', '.join(_SORT_COLUMN)}")
    limit = max(1, min(int(limit), PAGE_SIZE_MAX))
    col = _SORT_COLUMN[sort]
    flt = flt or RolloutFilter()
    clauses, args = flt.where(run_id)
    base_clauses = ["run_id = ?", *clauses]
    base_args = [run_id, *args]
    backwards = before is not None and after is None
    cursor = before if backwards else after
    page_clauses, page_args = list(base_clauses), list(base_args)
    # Walking "forward" means: in display order (desc or asc); "backwards" flips it.
    forward_desc = descending != backwards
    if cursor is not None:
        value, rid = decode_cursor(cursor)
        op = "<" if forward_desc else ">"
        page_clauses.append(f"({col}, id) {op} (?, ?)")  # row value: an index range, not a scan
        page_args += [value, rid]
    direction = "DESC" if forward_desc else "ASC"
    total = conn.execute(
        f"SELECT COUNT(*) FROM rollouts WHERE {' AND '.join(base_clauses)}", base_args
    ).fetchone()[0]
    index = _pick_index(flt, sort, total)
    sql = (
        f"SELECT {LIST_COLUMNS}, {col} AS sort_value FROM rollouts INDEXED BY {index} "
        f"WHERE {' AND '.join(page_clauses)} ORDER BY {col} {direction}, id {direction} "
        "LIMIT ?"
    )
    rows = [dict(r) for r in conn.execute(sql, [*page_args, limit + 1])]
    more = len(rows) > limit
    rows = rows[:limit]
    if backwards:
        rows.reverse()
    next_cursor = prev_cursor = None
    if rows:
        first, last = rows[0], rows[-1]
        if more if not backwards else True:
            next_cursor = encode_cursor(last["sort_value"], last["id"])
        if (cursor is not None) if not backwards else more:
            prev_cursor = encode_cursor(first["sort_value"], first["id"])
    for r in rows:
        r.pop("sort_value", None)
    return RolloutPage(
        rows=rows, total=int(total), next_cursor=next_cursor, prev_cursor=prev_cursor
    )
