"""`--wandb-project`: an eval's report in W&B, offline when WANDB_API_KEY is unset.

One W&B run per eval command (name: the eval's, job type `eval`, config: the sampling, spec hash,
task set and each model's identity summary). Its summary holds the per-env metrics as keys
`eval/<env>/<model>/<metric>`: reward, solve_rate, pass@k, turns, tool_calls, each reward part
(`part/<name>`) and each error share (`errors/<kind>`), and per pair
`eval/<env>/<b>-vs-<a>/<metric>_diff`. Its tables: `scores`, `comparisons` and `episodes` (one row
per episode with its reward parts), the same rows as the CSV and JSONL exports.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from envs.trajectories.evals import EpisodeRow
from tools.eval.exports import episode_records
from tools.eval.render import comparisons_csv, scores_csv

__all__ = ["log_report", "report_metrics"]


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's numbers as flat W&B keys (module docstring)."""
    out: dict[str, float] = {}
    for env, block in report["envs"].items():
        for m, s in block["models"].items():
            key = f"eval/{env}/{m}"
            out[f"{key}/reward"] = s["reward"]["value"]
            out[f"{key}/solve_rate"] = s["solve_rate"]["value"]
            for k, e in s["pass_at"].items():
                out[f"{key}/pass@{k}"] = e["value"]
            out[f"{key}/turns"] = s["turns"]["value"]
            out[f"{key}/tool_calls"] = s["tool_calls"]["value"]
            for name, e in s.get("components", {}).items():
                out[f"{key}/part/{name}"] = e["value"]
            for kind, e in s["errors"].items():
                out[f"{key}/errors/{kind}"] = e["value"]
        for c in block["comparisons"]:
            key = f"eval/{env}/{c['b']}-vs-{c['a']}"
            out[f"{key}/reward_diff"] = c["reward"]["delta"]["value"]
            out[f"{key}/solve_rate_diff"] = c["solve_rate"]["delta"]["value"]
            for name, d in c.get("components", {}).items():
                out[f"{key}/part/{name}_diff"] = d["delta"]["value"]
    return out


def _table(text: str) -> Any:
    import wandb

    rows = list(csv.reader(io.StringIO(text)))
    head: list[str | int] = list(rows[0]) if rows else []
    return wandb.Table(columns=head, data=rows[1:])


def log_report(
    report: dict[str, Any], episodes: list[EpisodeRow], project: str, group: str | None, out: Path
) -> str:
    """Log the report to W&B (module docstring); one line saying where it went."""
    import orjson
    import wandb

    offline = not os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "offline"
    out.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=project,
        group=group,
        name=str(report["name"]),
        job_type="eval",
        dir=str(os.environ.get("WANDB_DIR") or out),
        mode="offline" if offline else None,
        config={
            "eval": report["name"],
            "sampling": report.get("sampling"),
            "spec_hash": report.get("spec_hash"),
            "task_set": report.get("task_set"),
            "k": report["k"],
            "models": report.get("model_info"),
        },
        reinit="finish_previous",
    )
    try:
        records = episode_records(str(report["name"]), episodes)
        names = ["model", "env", "task", "sample", "reward", "parts", "solved", "stop_reason"]
        names += ["num_turns", "num_tool_calls", "rollout_id"]
        columns: list[str | int] = list(names)
        episode_rows = [
            [orjson.dumps(r[c]).decode() if c == "parts" else r[c] for c in names] for r in records
        ]
        run.log(
            {
                **report_metrics(report),
                "scores": _table(scores_csv(report)),
                "comparisons": _table(comparisons_csv(report)),
                "episodes": wandb.Table(columns=columns, data=episode_rows),
            }
        )
        where = run.dir if offline else (run.url or run.dir)
    finally:
        run.finish()
    if offline:
        return f"W&B: offline run in {Path(where).parent} (upload: wandb sync {Path(where).parent})"
    return f"W&B: {where}"
