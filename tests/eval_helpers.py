"""Shared pieces of the eval tests: a config on a running env server, the CLI's arguments, reading
the store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from conftest import REPO

TOKENIZER_DIR = REPO / ".cache" / "qwen3-tokenizer"


def write_config(
    path: Path,
    env_url: str,
    eval_split: bool = True,
    max_turns: int = 4,
    envs: tuple[str, ...] = ("gsm8k",),
    options: dict[str, dict[str, Any]] | None = None,
) -> Path:
    split = "    eval_split: test\n" if eval_split else ""
    body = ""
    for e in envs:
        body += f"  {e}:\n    max_turns: {max_turns}\n{split}"
        if options and e in options:
            body += f"    options: {json.dumps(options[e])}\n"
    path.write_text(
        f"environments:\n{body}env_server: {env_url}\n"
        f"run_name: eval-test\ntrajectories:\n  spool_dir: {path.parent / 'spool'}\n"
    )
    return path


def eval_args(config: Path, db: Path, *extra: str) -> list[str]:
    return ["--config", str(config), "--db", str(db), "--out", str(db.parent / "out"), *extra]


def stored(db: Path, sql: str, *args: object) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def last_json(out: str) -> dict[str, Any]:
    """The report `--json` printed (its last line)."""
    return json.loads(out.strip().splitlines()[-1])


WHODUNIT_CASES = 12
"""The test split of WhoDunIt in these tests (`test_size`): a Detective knows every case."""


def wandb_history(path: Path) -> dict[str, Any]:
    """The last value of each key an offline W&B run logged, read from its `run-*.wandb` file
    (a LevelDB-style log of wandb's protobuf records after a 7-byte header; this wandb version
    writes no summary file offline)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    block, pos, buf, out = 32768, 7, b"", {}
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if left < 7 or (length == 0 and kind == 0):  # block padding
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                for item in rec.history.item:
                    out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out
