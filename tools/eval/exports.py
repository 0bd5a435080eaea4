"""An eval's files in `--out`: the report (JSON, Markdown, CSV) and every episode (JSONL, and
Parquet when pyarrow is installed).

    report.json       the whole report (what `--json` prints)
    report.md         the tables as Markdown (models, scores, comparisons, reward parts)
    scores.csv        one row per environment and model, every score with its 95% CI
    comparisons.csv   one row per environment, pair and metric: the paired difference B - A
    episodes.jsonl    one line per episode: eval, model, env, task, sample, reward, its parts,
                      solved, status, stop reason, turns, tool calls, tool errors, rollout id
    episodes.parquet  the same rows, reward parts as columns `part_<name>` (with pyarrow)

All files are written beside their targets first and moved into place together.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson

from envs.trajectories.evals import EpisodeRow
from tools.errors import EvalError
from tools.eval.render import comparisons_csv, format_markdown, scores_csv

__all__ = ["episode_records", "write_exports", "write_files"]


def episode_records(eval_name: str, rows: list[EpisodeRow]) -> list[dict[str, Any]]:
    """One JSON-able record per episode, in the store's order (env, task, model, sample)."""
    return [
        {
            "eval": eval_name,
            "model": r.model,
            "env": r.env,
            "task": r.task,
            "sample": r.sample,
            "reward": r.reward,
            "parts": dict(r.parts),
            "solved": r.solved,
            "status": r.status,
            "stop_reason": r.stop_reason,
            "num_turns": r.num_turns,
            "num_tool_calls": r.num_tool_calls,
            "tool_errors": dict(r.tool_errors),
            "failure": r.failure,
            "rollout_id": r.rollout_event_id,
        }
        for r in rows
    ]


def _parquet(records: list[dict[str, Any]]) -> bytes:
    """The records as Parquet: parts flattened to `part_<name>` columns, tool errors as JSON."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = list(dict.fromkeys(n for r in records for n in r["parts"]))
    flat = []
    for r in records:
        row = {k: v for k, v in r.items() if k not in ("parts", "tool_errors")}
        row["tool_errors"] = orjson.dumps(r["tool_errors"]).decode()
        row.update({f"part_{n}": r["parts"].get(n) for n in names})
        flat.append(row)
    columns = {k: [row.get(k) for row in flat] for k in (flat[0] if flat else {})}
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    return bytes(sink.getvalue().to_pybytes())


def write_exports(
    out: Path, report: dict[str, Any], episodes: list[EpisodeRow], eval_name: str
) -> list[Path]:
    """Write the report and episode files (module docstring); returns their paths."""
    records = episode_records(eval_name, episodes)
    files = [
        (out / "report.json", orjson.dumps(report, option=orjson.OPT_INDENT_2)),
        (out / "report.md", format_markdown(report).encode()),
        (out / "scores.csv", scores_csv(report).encode()),
        (out / "comparisons.csv", comparisons_csv(report).encode()),
        (out / "episodes.jsonl", b"".join(orjson.dumps(r) + b"\n" for r in records)),
    ]
    if importlib.util.find_spec("pyarrow") is not None:
        files.append((out / "episodes.parquet", _parquet(records)))
    write_files(files)
    return [path for path, _ in files]


def write_files(files: list[tuple[Path, bytes]]) -> None:
    """Write every file beside its target, then move them all into place: all or none."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        for tmp, path in temps:
            os.replace(tmp, path)
    except OSError as e:
        raise EvalError(f"cannot write the report: {e.strerror or e}: {e.filename or ''}") from None
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
