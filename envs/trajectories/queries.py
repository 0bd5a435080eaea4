"""The store's reads: runs, a rollout with its messages and token arrays, GRPO groups, reward
series and counts, each on a connection of the shared read pool.

`StoreQueries` is the read half of `TrajectoryStore` (envs/trajectories/store.py); it needs
only `_read()`, a pooled connection for the length of a `with` block.
"""

from __future__ import annotations

import array
import contextlib
import math
import sqlite3
from dataclasses import dataclass
from typing import Any

from envs.trajectories import tripwires
from envs.trajectories.packing import json_text, json_value
from envs.trajectories.read_pool import read_blob
from envs.trajectories.rollout_list import (
    LIST_COLUMNS,
    PAGE_SIZE_MAX,
    RolloutFilter,
    RolloutPage,
    SortKey,
    decode_cursor,
    encode_cursor,
    list_rollouts,
)

__all__ = [
    "JSON_COLUMNS",
    "MESSAGE_COLUMNS",
    "RUNS_PAGE",
    "RunsPage",
    "StoreQueries",
    "TokenInfo",
    "merge_patch",
]

RUNS_PAGE = 100
MESSAGE_PAGE = 256
MESSAGE_PAGE_BYTES = 1 << 20
CUT_CHARS = 2_000  # what a message cut by `messages(max_chars=...)` keeps at least


class StoreQueries:
    """Read methods of the trajectory store (it provides `_read`)."""

    def _read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def list_runs(self) -> list[dict[str, Any]]:
        """Every run with its env mix, rollout count, mean reward and last update (newest first).

        All of them at once (tools, tests); the API and the pages read `runs_page`."""
        with self._read() as conn:
            rows = conn.execute("SELECT id, name, created_at, updated_at FROM runs").fetchall()
            stats = conn.execute(
                "SELECT run_id, env, n, reward_n, reward_sum FROM run_env_stats WHERE n > 0"
            ).fetchall()
        out = _run_summaries(rows, stats)
        out.sort(key=lambda r: r["updated_at"], reverse=True)
        return out

    def runs_page(self, limit: int = RUNS_PAGE, after: str | None = None) -> RunsPage:
        """One page of runs (as list_runs gives them), newest update first, keyset-paginated on
        (updated_at, id): 100,000 runs once made the runs index 4.6 s and 26 MB."""
        limit = max(1, min(int(limit), PAGE_SIZE_MAX))
        where, args = "", []
        if after is not None:
            value, rid = decode_cursor(after)
            where, args = "WHERE (updated_at, id) < (?, ?)", [value, rid]
        with self._read() as conn:
            total = int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
            rows = conn.execute(
                f"SELECT id, name, created_at, updated_at FROM runs {where} "
                "ORDER BY updated_at DESC, id DESC LIMIT ?",
                [*args, limit + 1],
            ).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            ids = [r["id"] for r in rows]
            stats = conn.execute(
                "SELECT run_id, env, n, reward_n, reward_sum FROM run_env_stats "
                f"WHERE n > 0 AND run_id IN ({','.join('?' * len(ids))})",
                ids,
            ).fetchall()
        last = rows[-1] if rows else None
        cursor = encode_cursor(last["updated_at"], last["id"]) if more and last else None
        return RunsPage(_run_summaries(rows, stats), total, cursor)

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        """One run's summary (as in list_runs) plus its run_info and per-env stats."""
        with self._read() as conn:
            r = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if r is None:
                return None
            envs = [
                dict(s)
                for s in conn.execute(
                    "SELECT env, n, reward_n, reward_sum, last_ts FROM run_env_stats "
                    "WHERE run_id = ? AND n > 0 ORDER BY env",
                    (run_id,),
                )
            ]
        for e in envs:
            e["mean_reward"] = _mean(e["reward_sum"], e["reward_n"])
        n = sum(e["n"] for e in envs)
        rn = sum(e["reward_n"] for e in envs)
        return {
            "id": r["id"],
            "name": r["name"],
            "created_at": r["created_at"],
            "updated_at": r["updated_at"],
            "run_info": json_value(r["run_info"]),
            "envs": envs,
            "rollouts": n,
            "mean_reward": _mean(sum(e["reward_sum"] for e in envs), rn),
        }

    def run_id_by_name(self, name: str) -> int | None:
        with self._read() as conn:
            row = conn.execute("SELECT id FROM runs WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def facets(self, run_id: int) -> dict[str, list[str]]:
        """Values present in a run for each filterable column (for the filter form)."""
        with self._read() as conn:
            out: dict[str, list[str]] = {
                "env": [
                    r[0]
                    for r in conn.execute(
                        "SELECT env FROM run_env_stats WHERE run_id = ? AND n > 0 ORDER BY env",
                        (run_id,),
                    )
                ]
            }
            for col in ("split", "status", "stop_reason"):
                out[col] = []
            for col, value in conn.execute(
                "SELECT col, value FROM run_facets WHERE run_id = ? AND n > 0 ORDER BY col, value",
                (run_id,),
            ):
                out[col].append(value)
            out["tripwire"] = list(tripwires.counts(conn, run_id))
        return out

    def tripwire_counts(self, run_id: int) -> dict[str, int]:
        """wire -> rollouts of the run that tripped it."""
        with self._read() as conn:
            return tripwires.counts(conn, run_id)

    def list_rollouts(
        self,
        run_id: int,
        flt: RolloutFilter | None = None,
        sort: SortKey = "time",
        descending: bool = True,
        after: str | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> RolloutPage:
        """One page of a run's rollouts, keyset-paginated on (sort column, id)."""
        with self._read() as conn:
            return list_rollouts(conn, run_id, flt, sort, descending, after, before, limit)

    def rollout_head(self, event_id: str) -> dict[str, Any] | None:
        """A rollout's row and run name, or None; its JSON columns stay JSON text (`*_json`)."""
        with self._read() as conn:
            r = conn.execute(
                "SELECT rollouts.*, runs.name AS run_name FROM rollouts "
                "LEFT JOIN runs ON runs.id = rollouts.run_id WHERE event_id = ?",
                (event_id,),
            ).fetchone()
            if r is None or r["run_id"] is None:
                return None
            wires = tripwires.of_rollout(conn, event_id)
            updates = [
                u[0]
                for u in conn.execute(
                    "SELECT info FROM rollout_updates WHERE event_id = ? ORDER BY id", (event_id,)
                )
            ]
        out = dict(r)
        out.pop("reward_key", None)
        if updates:
            info = json_value(out["rollout_info"])
            for patch in updates:
                info = merge_patch(info, json_value(patch))
            out["rollout_info"] = json_text(info)
        for key in JSON_COLUMNS:
            out[f"{key}_json"] = out.pop(key)
        out["tripwires"] = wires
        return out

    def event_id_of(self, rollout: str) -> str | None:
        """The event id of a rollout named by its event id or by its numeric id in the store."""
        with self._read() as conn:
            r = conn.execute(
                "SELECT event_id FROM rollouts WHERE event_id = ? AND run_id IS NOT NULL",
                (rollout,),
            ).fetchone()
            if r is None and rollout.isascii() and rollout.isdigit() and len(rollout) < 19:
                r = conn.execute(
                    "SELECT event_id FROM rollouts WHERE id = ? AND run_id IS NOT NULL",
                    (int(rollout),),
                ).fetchone()
        return None if r is None else str(r["event_id"])

    def get_rollout(
        self,
        event_id: str,
        max_messages: int | None = None,
        max_tokens: int | None = None,
        max_chars: int | None = None,
    ) -> dict[str, Any] | None:
        """A rollout with its messages (see `messages`) and token arrays (see `tokens`), or
        None; without limits, everything."""
        head = self.rollout_head(event_id)
        if head is None:
            return None
        for key in JSON_COLUMNS:
            head[key] = json_value(head.pop(f"{key}_json"))
        head["messages"] = self.messages(event_id, limit=max_messages, max_chars=max_chars)
        head["tokens"] = self.tokens(event_id, max_tokens=max_tokens)
        return head

    def message_rows(
        self, event_id: str, after: tuple[int, int] | None = None, limit: int = MESSAGE_PAGE
    ) -> list[sqlite3.Row]:
        """One page of a rollout's messages after the (idx, id) key `after` (metadata as text):
        at most `limit` rows, and no more once MESSAGE_PAGE_BYTES of text have been read."""
        key = after or (-1, -1)
        rows: list[sqlite3.Row] = []
        size = 0
        with self._read() as conn:
            cur = conn.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE rollout_event_id = ? "
                "AND (idx, id) > (?, ?) ORDER BY idx, id LIMIT ?",
                (event_id, key[0], key[1], limit),
            )
            try:
                for row in cur:  # SQLite reads a row only when it is asked for
                    rows.append(row)
                    size += sum(len(row[c] or "") for c in ("content", "summary", "metadata"))
                    if size >= MESSAGE_PAGE_BYTES:
                        break
            finally:
                cur.close()
        return rows

    def messages(
        self, event_id: str, limit: int | None = None, max_chars: int | None = None
    ) -> list[dict[str, Any]]:
        """A rollout's messages in index order: all, or the first `limit`. With `max_chars`,
        contents are cut once that much text has been kept (each keeps at least CUT_CHARS);
        a cut message says its full length in `content_chars`."""
        out: list[dict[str, Any]] = []
        after = None
        left = max_chars
        while limit is None or len(out) < limit:
            page = self.message_rows(event_id, after, MESSAGE_PAGE)
            for m in page:
                d = dict(m)
                d.pop("id")
                d["is_finished"] = bool(d["is_finished"])
                d["metadata"] = json_value(d["metadata"])
                content = d["content"]
                if left is not None and isinstance(content, str):
                    keep = max(left, CUT_CHARS)
                    if len(content) > keep:
                        d["content"], d["content_chars"] = content[:keep], len(content)
                    left = max(0, left - len(d["content"]))
                out.append(d)
            if not page:
                break
            after = (page[-1]["idx"], page[-1]["id"])
        return out if limit is None else out[:limit]

    def token_info(self, event_id: str) -> TokenInfo | None:
        """Where a rollout's token arrays are and how long they are, or None."""
        with self._read() as conn:
            t = conn.execute(
                "SELECT rowid, prompt_length, length(token_ids), length(loss_mask), "
                "length(logprobs) FROM rollout_tokens WHERE rollout_event_id = ?",
                (event_id,),
            ).fetchone()
        if t is None:
            return None
        return TokenInfo(t[0], t[1], t[2] // 4, t[3], t[4] // 4)

    def token_slice(self, info: TokenInfo, column: str, start: int, count: int) -> list[Any]:
        """Items [start, start + count) of one token array, read from its blob piecewise."""
        code, size = _ARRAY_CODES[column]
        total = {"token_ids": info.n_tokens, "loss_mask": info.n_mask, "logprobs": info.n_logprobs}
        count = max(0, min(count, total[column] - start))
        if count == 0:
            return []
        with self._read() as conn:
            blob = read_blob(conn, column, info.rowid, start * size, count * size)
        a = array.array(code)
        a.frombytes(blob)
        return a.tolist()

    def tokens(self, event_id: str, max_tokens: int | None = None) -> dict[str, Any] | None:
        """Token arrays: all of them, or at most the last `max_tokens` prompt tokens and the
        first `max_tokens` response tokens; then `prompt_shown` and `response_length` say how
        many prompt tokens `token_ids` starts with and how long the response really is."""
        info = self.token_info(event_id)
        if info is None:
            return None
        plen = min(max(0, info.prompt_length), info.n_tokens)
        if max_tokens is None:
            first, n_resp = 0, info.n_tokens - plen
        else:
            first, n_resp = max(0, plen - max_tokens), min(info.n_tokens - plen, max_tokens)
        ids = self.token_slice(info, "token_ids", first, plen - first + n_resp)
        n_mask = min(info.n_mask, n_resp)
        logprobs = self.token_slice(info, "logprobs", 0, min(info.n_logprobs, n_resp))
        out = {
            "prompt_length": info.prompt_length,
            "token_ids": ids,
            "loss_mask": self.token_slice(info, "loss_mask", 0, n_mask),
            "logprobs": [None if math.isnan(v) else v for v in logprobs],
        }
        if max_tokens is not None:
            out["prompt_shown"] = plen - first
            out["response_length"] = info.n_tokens - plen
        return out

    def group(self, run_id: int, group_key: str, limit: int = 64) -> list[dict[str, Any]]:
        """The rollouts of one GRPO group, by sample index (then time), with their
        `sample_index`."""
        with self._read() as conn:
            return [
                dict(r)
                for r in conn.execute(
                    f"SELECT {LIST_COLUMNS}, json_extract(metadata, '$.sample_index') AS "
                    "sample_index "
                    "FROM rollouts WHERE run_id = ? AND group_key = ? "
                    "ORDER BY sample_index IS NULL, sample_index, ts, id LIMIT ?",
                    (run_id, group_key, limit),
                )
            ]

    def reward_series(self, run_id: int, buckets: int = 60) -> dict[str, Any]:
        """Mean reward per env in up to `buckets` equal time slices: {t0, t1, series: {env: [[t,
        mean, n]]}}.

        Reads the 10-second aggregates kept by triggers, so it costs the same for 1k or 1M rollouts.
        """
        with self._read() as conn:
            rows = conn.execute(
                "SELECT env, bucket, n, reward_sum FROM run_reward_buckets WHERE run_id = ? AND "
                "n > 0",
                (run_id,),
            ).fetchall()
        if not rows:
            return {"t0": None, "t1": None, "series": {}}
        t0 = min(r[1] for r in rows) * 10.0
        t1 = (max(r[1] for r in rows) + 1) * 10.0
        width = (t1 - t0) / buckets
        acc: dict[str, dict[int, list[float]]] = {}
        for env, bucket, n, total in rows:
            b = min(int((bucket * 10.0 - t0) / width), buckets - 1)
            slot = acc.setdefault(env, {}).setdefault(b, [0.0, 0.0])
            slot[0] += n
            slot[1] += total
        series = {
            env: [
                [t0 + (b + 0.5) * width, _mean(total, n), n]
                for b, (n, total) in sorted(slots.items())
            ]
            for env, slots in sorted(acc.items())
        }
        return {"t0": t0, "t1": t1, "series": series}

    def counts(self) -> dict[str, int]:
        with self._read() as conn:
            return {
                t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("runs", "rollouts", "messages", "rollout_tokens")
            }


@dataclass
class RunsPage:
    """One page of the runs index, and the cursor of the next (None on the last page)."""

    runs: list[dict[str, Any]]
    total: int
    next_cursor: str | None


def _run_summaries(rows: list[sqlite3.Row], stats: list[sqlite3.Row]) -> list[dict[str, Any]]:
    """Runs with their env mix, rollout count and mean reward, in the order of `rows`."""
    runs: dict[int, dict[str, Any]] = {
        r["id"]: {
            "id": r["id"],
            "name": r["name"],
            "created_at": r["created_at"],
            "updated_at": r["updated_at"],
            "rollouts": 0,
            "reward_n": 0,
            "reward_sum": 0.0,
            "envs": {},
        }
        for r in rows
    }
    for s in stats:
        run = runs.get(s["run_id"])
        if run is None:
            continue
        run["rollouts"] += s["n"]
        run["reward_n"] += s["reward_n"]
        run["reward_sum"] += s["reward_sum"]
        run["envs"][s["env"]] = s["n"]
    for run in runs.values():
        run["mean_reward"] = _mean(run.pop("reward_sum"), run.pop("reward_n"))
    return list(runs.values())


def merge_patch(target: Any, patch: Any) -> Any:
    """`patch` applied to `target` as a JSON merge patch (RFC 7396, SQLite's json_patch): objects
    merge key by key, null deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _mean(total: float, n: float) -> float | None:
    """total / n, or None when there is nothing to average or the sum is not finite."""
    return total / n if n and math.isfinite(total) else None


JSON_COLUMNS = ("metadata", "task_spec", "run_info", "rollout_info")
MESSAGE_COLUMNS = (
    "id, event_id, idx, type, content, summary, content_reference, name, call_id, reward, "
    "is_finished, metadata, ts"
)
_ARRAY_CODES = {"token_ids": ("i", 4), "loss_mask": ("B", 1), "logprobs": ("f", 4)}


@dataclass(frozen=True)
class TokenInfo:
    """A rollout's token arrays: the blob row and the length of each array."""

    rowid: int
    prompt_length: int
    n_tokens: int
    n_mask: int
    n_logprobs: int
