"""The trajectory store's SQLite schema: versioned migrations, and the connection every user opens.

Each migration is one SQL script applied in its own transaction; `migrate` brings a database
of any older version up to SCHEMA_VERSION and refuses a newer one.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from envs.trajectories.errors import StoreError

__all__ = ["SCHEMA_VERSION", "StoreError", "connect", "migrate", "schema_version"]

SCHEMA_VERSION = 5


_MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    run_info TEXT
);
CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    run_id INTEGER REFERENCES runs(id),      -- NULL: placeholder made by an early rollout_update
    name TEXT,
    env TEXT NOT NULL DEFAULT '',
    environment_id TEXT,
    split TEXT,
    step INTEGER,
    ts REAL NOT NULL DEFAULT 0,              -- rollout event time, seconds
    updated_at REAL NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'running',
    status_explicit INTEGER NOT NULL DEFAULT 0,
    stop_reason TEXT,
    reward REAL,
    reward_explicit INTEGER NOT NULL DEFAULT 0,
    reward_reduction TEXT,
    num_turns INTEGER NOT NULL DEFAULT 0,
    turns_explicit INTEGER NOT NULL DEFAULT 0,
    num_messages INTEGER NOT NULL DEFAULT 0,
    group_key TEXT,
    task_index INTEGER,
    metadata TEXT,
    task_spec TEXT,
    run_info TEXT,
    rollout_info TEXT,
    reward_key REAL GENERATED ALWAYS AS (IFNULL(reward, -1e300)) VIRTUAL
);
CREATE INDEX rollouts_run_ts ON rollouts(run_id, ts, id);
CREATE INDEX rollouts_run_reward ON rollouts(run_id, reward_key, id);
CREATE INDEX rollouts_run_turns ON rollouts(run_id, num_turns, id);
CREATE INDEX rollouts_run_env_ts ON rollouts(run_id, env, ts, id);
CREATE INDEX rollouts_run_group ON rollouts(run_id, group_key);
CREATE INDEX rollouts_run_env_ts_reward ON rollouts(run_id, env, ts, reward);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    rollout_event_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    type TEXT NOT NULL,
    content TEXT,
    summary TEXT,
    content_reference TEXT,
    name TEXT,
    call_id TEXT,
    reward REAL,
    is_finished INTEGER NOT NULL DEFAULT 0,
    metadata TEXT,
    ts REAL NOT NULL
);
CREATE INDEX messages_rollout ON messages(rollout_event_id, idx);
CREATE TABLE rollout_tokens (
    rollout_event_id TEXT PRIMARY KEY,
    prompt_length INTEGER NOT NULL,
    token_ids BLOB NOT NULL,     -- int32 array
    loss_mask BLOB NOT NULL,     -- uint8 array (response only)
    logprobs BLOB NOT NULL       -- float32 array (response only), NaN = unknown
);
CREATE TABLE run_env_stats (
    run_id INTEGER NOT NULL,
    env TEXT NOT NULL,
    n INTEGER NOT NULL DEFAULT 0,
    reward_n INTEGER NOT NULL DEFAULT 0,
    reward_sum REAL NOT NULL DEFAULT 0,
    last_ts REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, env)
);
CREATE TRIGGER rollouts_stats_ins AFTER INSERT ON rollouts WHEN NEW.run_id IS NOT NULL BEGIN
    INSERT INTO run_env_stats(run_id, env, n, reward_n, reward_sum, last_ts)
    VALUES (NEW.run_id, NEW.env, 1, NEW.reward IS NOT NULL, IFNULL(NEW.reward, 0), NEW.ts)
    ON CONFLICT(run_id, env) DO UPDATE SET n = n + 1,
        reward_n = reward_n + (NEW.reward IS NOT NULL),
        reward_sum = reward_sum + IFNULL(NEW.reward, 0),
        last_ts = MAX(last_ts, NEW.ts);
END;
CREATE TRIGGER rollouts_stats_upd AFTER UPDATE OF run_id, env, reward, ts ON rollouts BEGIN
    UPDATE run_env_stats SET n = n - 1, reward_n = reward_n - (OLD.reward IS NOT NULL),
        reward_sum = reward_sum - IFNULL(OLD.reward, 0)
    WHERE OLD.run_id IS NOT NULL AND run_id = OLD.run_id AND env = OLD.env;
    INSERT INTO run_env_stats(run_id, env, n, reward_n, reward_sum, last_ts)
    SELECT NEW.run_id, NEW.env, 1, NEW.reward IS NOT NULL, IFNULL(NEW.reward, 0), NEW.ts
    WHERE NEW.run_id IS NOT NULL
    ON CONFLICT(run_id, env) DO UPDATE SET n = n + 1,
        reward_n = reward_n + (NEW.reward IS NOT NULL),
        reward_sum = reward_sum + IFNULL(NEW.reward, 0),
        last_ts = MAX(last_ts, NEW.ts);
END;
""",
    # v2: filter indexes; facet values and reward-per-time-bucket kept by triggers (the run page
    # reads small tables, not 100k rows); messages are deduplicated per rollout (rollout_event_id,
    # event_id), and that one index also
    # serves "messages of a rollout": one rollout's messages land on a few adjacent index pages
    # instead of one random page per message in each of two indexes (less write amplification).
    2: """
CREATE TABLE messages_v2 (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    rollout_event_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    type TEXT NOT NULL,
    content TEXT,
    summary TEXT,
    content_reference TEXT,
    name TEXT,
    call_id TEXT,
    reward REAL,
    is_finished INTEGER NOT NULL DEFAULT 0,
    metadata TEXT,
    ts REAL NOT NULL,
    UNIQUE (rollout_event_id, event_id)
);
INSERT INTO messages_v2 SELECT id, event_id, rollout_event_id, idx, type, content, summary,
    content_reference, name, call_id, reward, is_finished, metadata, ts FROM messages
    ORDER BY rollout_event_id, idx;
DROP TABLE messages;
ALTER TABLE messages_v2 RENAME TO messages;
DROP TRIGGER rollouts_stats_upd;
CREATE TRIGGER rollouts_stats_upd AFTER UPDATE OF run_id, env, reward, ts ON rollouts
WHEN OLD.run_id IS NOT NEW.run_id OR OLD.env IS NOT NEW.env OR OLD.reward IS NOT NEW.reward
     OR OLD.ts IS NOT NEW.ts BEGIN
    UPDATE run_env_stats SET n = n - 1, reward_n = reward_n - (OLD.reward IS NOT NULL),
        reward_sum = reward_sum - IFNULL(OLD.reward, 0)
    WHERE OLD.run_id IS NOT NULL AND run_id = OLD.run_id AND env = OLD.env;
    INSERT INTO run_env_stats(run_id, env, n, reward_n, reward_sum, last_ts)
    SELECT NEW.run_id, NEW.env, 1, NEW.reward IS NOT NULL, IFNULL(NEW.reward, 0), NEW.ts
    WHERE NEW.run_id IS NOT NULL
    ON CONFLICT(run_id, env) DO UPDATE SET n = n + 1,
        reward_n = reward_n + (NEW.reward IS NOT NULL),
        reward_sum = reward_sum + IFNULL(NEW.reward, 0),
        last_ts = MAX(last_ts, NEW.ts);
END;
CREATE INDEX rollouts_run_status_ts ON rollouts(run_id, status, ts, id);
CREATE INDEX rollouts_run_stop_ts ON rollouts(run_id, stop_reason, ts, id);
CREATE INDEX rollouts_run_split_ts ON rollouts(run_id, split, ts, id);
DROP INDEX rollouts_run_env_ts_reward;
CREATE TABLE run_facets (
    run_id INTEGER NOT NULL,
    col TEXT NOT NULL,
    value TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (run_id, col, value)
) WITHOUT ROWID;
INSERT INTO run_facets SELECT run_id, 'split', split, COUNT(*) FROM rollouts
    WHERE run_id IS NOT NULL AND split IS NOT NULL GROUP BY run_id, split;
INSERT INTO run_facets SELECT run_id, 'status', status, COUNT(*) FROM rollouts
    WHERE run_id IS NOT NULL AND status IS NOT NULL GROUP BY run_id, status;
INSERT INTO run_facets SELECT run_id, 'stop_reason', stop_reason, COUNT(*) FROM rollouts
    WHERE run_id IS NOT NULL AND stop_reason IS NOT NULL GROUP BY run_id, stop_reason;
CREATE TRIGGER rollouts_facets_ins AFTER INSERT ON rollouts WHEN NEW.run_id IS NOT NULL BEGIN
    INSERT INTO run_facets(run_id, col, value, n)
    SELECT NEW.run_id, c, v, 1 FROM (SELECT 'split' AS c, NEW.split AS v UNION ALL
        SELECT 'status', NEW.status UNION ALL SELECT 'stop_reason', NEW.stop_reason)
    WHERE v IS NOT NULL
    ON CONFLICT(run_id, col, value) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER rollouts_facets_upd AFTER UPDATE OF run_id, split, status, stop_reason ON rollouts
WHEN OLD.run_id IS NOT NEW.run_id OR OLD.split IS NOT NEW.split OR OLD.status IS NOT NEW.status
     OR OLD.stop_reason IS NOT NEW.stop_reason BEGIN
    UPDATE run_facets SET n = n - 1 WHERE OLD.run_id IS NOT NULL AND run_id = OLD.run_id AND (
        (col = 'split' AND value = OLD.split) OR (col = 'status' AND value = OLD.status)
        OR (col = 'stop_reason' AND value = OLD.stop_reason));
    INSERT INTO run_facets(run_id, col, value, n)
    SELECT NEW.run_id, c, v, 1 FROM (SELECT 'split' AS c, NEW.split AS v UNION ALL
        SELECT 'status', NEW.status UNION ALL SELECT 'stop_reason', NEW.stop_reason)
    WHERE v IS NOT NULL AND NEW.run_id IS NOT NULL
    ON CONFLICT(run_id, col, value) DO UPDATE SET n = n + 1;
END;
-- Rewards per run, env and 10-second bucket: the reward-over-time chart reads these, not the
-- rollouts.
CREATE TABLE run_reward_buckets (
    run_id INTEGER NOT NULL,
    env TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    n INTEGER NOT NULL,
    reward_sum REAL NOT NULL,
    PRIMARY KEY (run_id, env, bucket)
) WITHOUT ROWID;
INSERT INTO run_reward_buckets SELECT run_id, env, CAST(ts / 10 AS INTEGER), COUNT(*), SUM(reward)
    FROM rollouts WHERE run_id IS NOT NULL AND reward IS NOT NULL GROUP BY 1, 2, 3;
CREATE TRIGGER rollouts_buckets_ins AFTER INSERT ON rollouts
WHEN NEW.run_id IS NOT NULL AND NEW.reward IS NOT NULL BEGIN
    INSERT INTO run_reward_buckets
    VALUES (NEW.run_id, NEW.env, CAST(NEW.ts / 10 AS INTEGER), 1, NEW.reward)
    ON CONFLICT(run_id, env, bucket) DO UPDATE SET n = n + 1, reward_sum = reward_sum + NEW.reward;
END;
CREATE TRIGGER rollouts_buckets_upd AFTER UPDATE OF run_id, env, reward, ts ON rollouts
WHEN OLD.run_id IS NOT NEW.run_id OR OLD.env IS NOT NEW.env OR OLD.reward IS NOT NEW.reward
     OR OLD.ts IS NOT NEW.ts BEGIN
    UPDATE run_reward_buckets SET n = n - 1, reward_sum = reward_sum - OLD.reward
    WHERE OLD.run_id IS NOT NULL AND OLD.reward IS NOT NULL AND run_id = OLD.run_id
        AND env = OLD.env AND bucket = CAST(OLD.ts / 10 AS INTEGER);
    INSERT INTO run_reward_buckets
    SELECT NEW.run_id, NEW.env, CAST(NEW.ts / 10 AS INTEGER), 1, NEW.reward
    WHERE NEW.run_id IS NOT NULL AND NEW.reward IS NOT NULL
    ON CONFLICT(run_id, env, bucket) DO UPDATE SET n = n + 1, reward_sum = reward_sum + NEW.reward;
END;
""",
    # v3: tripwires (envs/trajectories/tripwires.py): which rollout tripped which wire, and the keys
    # of group wires; filled from the metadata of rollouts stored before.
    3: """
CREATE TABLE rollout_tripwires (
    event_id TEXT NOT NULL,
    wire TEXT NOT NULL,
    run_id INTEGER NOT NULL,
    PRIMARY KEY (event_id, wire)
) WITHOUT ROWID;
CREATE INDEX rollout_tripwires_run ON rollout_tripwires(run_id, wire);
CREATE TABLE rollout_tripwire_keys (
    run_id INTEGER NOT NULL,
    group_key TEXT NOT NULL,
    wire TEXT NOT NULL,
    key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (run_id, group_key, wire, key, event_id)
) WITHOUT ROWID;
INSERT OR IGNORE INTO rollout_tripwires(event_id, wire, run_id)
    SELECT r.event_id, j.value, r.run_id FROM rollouts r, json_each(
        CASE WHEN json_valid(r.metadata) AND json_type(r.metadata, '$.tripwires') = 'array'
        THEN json_extract(r.metadata, '$.tripwires') ELSE '[]' END) j
    WHERE r.run_id IS NOT NULL AND j.type = 'text';
INSERT OR IGNORE INTO rollout_tripwire_keys
    SELECT r.run_id, r.group_key, j.key, j.value, r.event_id FROM rollouts r, json_each(
        CASE WHEN json_valid(r.metadata) AND json_type(r.metadata, '$.tripwire_keys') = 'object'
        THEN json_extract(r.metadata, '$.tripwire_keys') ELSE '{}' END) j
    WHERE r.run_id IS NOT NULL AND r.group_key IS NOT NULL AND j.type = 'text';
INSERT OR IGNORE INTO rollout_tripwires(event_id, wire, run_id)
    SELECT a.event_id, a.wire, a.run_id FROM rollout_tripwire_keys a JOIN rollout_tripwire_keys b
    ON a.run_id = b.run_id AND a.group_key = b.group_key AND a.wire = b.wire AND a.key = b.key
        AND a.event_id <> b.event_id;
""",
    # v4: evals (`python -m tools.eval`): an eval's spec and report, its models, and one
    # row per episode naming its stored rollout. A row exists only once its rollout is stored
    # (both in one transaction), so a resumed eval reruns exactly the episodes without a row.
    4: """
CREATE TABLE evals (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,                  -- JSON: tasks, k, sampling, solve threshold
    spec_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    report TEXT                          -- JSON: the last report the eval command wrote
);
CREATE TABLE eval_models (
    eval_id INTEGER NOT NULL REFERENCES evals(id),
    model TEXT NOT NULL,
    position INTEGER NOT NULL,
    kind TEXT NOT NULL,
    endpoint TEXT,                       -- JSON: target, tokenizer, served model (never a key)
    run_name TEXT NOT NULL,              -- the trajectory run holding its episodes
    created_at REAL NOT NULL,
    PRIMARY KEY (eval_id, model)
) WITHOUT ROWID;
CREATE TABLE eval_episodes (
    eval_id INTEGER NOT NULL,
    model TEXT NOT NULL,
    env TEXT NOT NULL,
    task TEXT NOT NULL,                  -- split/index, or spec:<hash>
    sample INTEGER NOT NULL,             -- 0 .. k-1
    rollout_event_id TEXT NOT NULL,
    reward REAL NOT NULL,
    solved INTEGER NOT NULL,
    num_turns INTEGER NOT NULL,
    num_tool_calls INTEGER NOT NULL,
    stop_reason TEXT NOT NULL,
    status TEXT NOT NULL,
    tool_errors TEXT,                    -- JSON {kind: count}
    failure TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (eval_id, model, env, task, sample)
) WITHOUT ROWID;
""",
    # v5: linear ingest and a paged runs index. A rollout_update is appended as it came (merged
    # onto the rollout's info when read) instead of rewriting the growing info on every update:
    # 4,000 updates of one rollout once took 76 s. The runs index pages on (updated_at, id).
    5: """
CREATE TABLE rollout_updates (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    info TEXT NOT NULL
);
CREATE INDEX rollout_updates_event ON rollout_updates(event_id, id);
CREATE INDEX runs_updated ON runs(updated_at, id);
""",
}


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection with the pragmas every user of the store needs (WAL, busy timeout)."""
    conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA cache_size=-65536")
    conn.row_factory = sqlite3.Row
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the database (0 for a new file)."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Apply the migrations the database lacks, each in its own transaction; returns the version.

    Safe when several processes open the same file at once: each step re-checks the version
    inside its write transaction.
    """
    current = schema_version(conn)
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"trajectory database has schema version {current}, newer than this "
            f"code ({SCHEMA_VERSION}); upgrade slime-envs or use another --db"
        )
    for version in range(current + 1, target + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if schema_version(conn) < version:
                for statement in _split_sql(_MIGRATIONS[version]):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return max(target, current)


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies whole."""
    out, buf = [], []
    for line in script.strip().splitlines():
        buf.append(line)
        text = "\n".join(buf).strip()
        if sqlite3.complete_statement(text):
            out.append(text)
            buf = []
    if "\n".join(buf).strip():
        out.append("\n".join(buf))
    return out
