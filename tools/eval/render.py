"""An eval's report as text: the terminal table, Markdown and CSV (what a paper's table needs).

Scores per environment and model (mean reward with its 95% CI, solve rate, pass@k, turns, tool
calls, error shares), the models (what each name is: target, served model, checkpoint), the paired
comparisons, and the reward parts side by side with their paired differences: "why B wins" in
one table.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from envs.trajectories.evals import share_text
from tools.eval.report import ALL

__all__ = ["comparisons_csv", "format_markdown", "format_table", "scores_csv"]


def _num(x: float | None, digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _ci(e: dict[str, Any] | None, digits: int = 3, sign: bool = False) -> str:
    if not e:
        return "-"
    return (
        f"{_num(e['value'], digits, sign)} "
        f"[{_num(e['lo'], digits, sign)}, {_num(e['hi'], digits, sign)}]"
    )


def _errors(scores: dict[str, Any]) -> str:
    parts = [f"{k} {share_text(v['value'])}" for k, v in scores["errors"].items() if v["value"] > 0]
    return ", ".join(parts) or "-"


def _best_pass(scores: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    if not scores["pass_at"]:
        return "pass@k", None
    kk = max(scores["pass_at"], key=int)
    return f"pass@{kk}", scores["pass_at"][kk]


def _scopes(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The report's environments, plus `all` when there are several."""
    items = list(report["envs"].items())
    return items if len(items) > 2 else [(e, b) for e, b in items if e != ALL]


def _score_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for env, block in _scopes(report):
        for m, s in block["models"].items():
            label, p = _best_pass(s)
            rows.append(
                [
                    env,
                    m,
                    str(s["tasks"]),
                    str(s["episodes"]),
                    _ci(s["reward"]),
                    _num(s["solve_rate"]["value"], 2),
                    f"{_num(p['value'], 2) if p else '-'} ({label})",
                    _num(s["turns"]["value"], 1),
                    _num(s["tool_calls"]["value"], 1),
                    _errors(s),
                ]
            )
    return rows


def _comparison_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for env, block in _scopes(report):
        for c in block["comparisons"]:
            mark = " *" if c["reward"]["significant"] else ""
            rows.append(
                [
                    env,
                    f"{c['b']} - {c['a']}",
                    str(c["tasks"]),
                    _ci(c["reward"]["delta"], sign=True) + mark,
                    _ci(c["solve_rate"]["delta"], 2, sign=True),
                    f"{c['reward']['won']}/{c['reward']['lost']}/{c['reward']['tied']}",
                ]
            )
    return rows


def _grid(head: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(r: list[str]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [line(head), "-" * len(line(head)), *(line(r) for r in rows)]


SCORE_HEAD = ["env", "model", "tasks", "episodes", "reward [95% CI]", "solved", "pass", "turns"]
SCORE_HEAD += ["calls", "errors"]
COMPARE_HEAD = ["env", "B - A", "tasks", "reward diff [95% CI]", "solved diff", "won/lost/tied"]
MODEL_HEAD = ["model", "kind", "target", "served model", "checkpoint", "tokenizer"]


def _part_head(report: dict[str, Any]) -> list[str]:
    return ["env", "part", *report["models"], *(f"{c} [95% CI]" for c in _pair_names(report))]


def _pair_names(report: dict[str, Any]) -> list[str]:
    models = report["models"]
    return [f"{b} - {a}" for i, a in enumerate(models) for b in models[i + 1 :]]


def _part_rows(report: dict[str, Any]) -> list[list[str]]:
    """Per env and reward part: each model's mean, then each pair's paired difference."""
    rows = []
    for env, block in _scopes(report):
        if env == ALL:  # each part belongs to one environment: `all` would repeat its rows
            continue
        names = list(
            dict.fromkeys(n for s in block["models"].values() for n in s.get("components", {}))
        )
        pairs = {f"{c['b']} - {c['a']}": c for c in block["comparisons"]}
        for name in names:
            row = [env, name]
            for m in report["models"]:
                e = block["models"].get(m, {}).get("components", {}).get(name)
                row.append(_num(e["value"]) if e else "-")
            for pair in _pair_names(report):
                d = pairs.get(pair, {}).get("components", {}).get(name)
                row.append(
                    _ci(d["delta"], sign=True) + (" *" if d["significant"] else "") if d else "-"
                )
            rows.append(row)
    return rows


def _model_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for m in report["models"]:
        info = report.get("model_info", {}).get(m, {})
        ckpt = str(info.get("checkpoint") or info.get("model_path") or "-")
        if info.get("step") is not None:
            ckpt += f" (step {info['step']})"
        if info.get("weight_version") is not None:
            ckpt += f" (weights {info['weight_version']})"
        rows.append(
            [
                m,
                str(info.get("kind") or "-"),
                str(info.get("target") or "-"),
                str(info.get("model") or "-"),
                ckpt,
                str(info.get("tokenizer") or "-"),
            ]
        )
    return rows


def format_table(report: dict[str, Any], disagree: int = 5) -> str:
    """The report as plain text for the terminal."""
    out = [_title(report), ""]
    out += [*_grid(MODEL_HEAD, _model_rows(report), set()), ""]
    out += _grid(SCORE_HEAD, _score_rows(report), {2, 3, 5, 7, 8})
    comps = _comparison_rows(report)
    if comps:
        out += ["", "paired over tasks (* : the 95% CI excludes 0; won = B scored higher)"]
        out += _grid(COMPARE_HEAD, comps, {2})
    parts = _part_rows(report)
    if parts:
        out += ["", "reward parts: mean per model, paired difference per pair"]
        out += _grid(_part_head(report), parts, set())
    for env, block in report["envs"].items():
        if env == ALL:
            continue
        for c in block["comparisons"]:
            if c["disagree"][:disagree]:
                out.append(f"\n{env}: {c['b']} vs {c['a']}, tasks they disagree on most:")
                for d in c["disagree"][:disagree]:
                    out.append(
                        f"  {d['task']:<20} {c['a']} {d['a']:.3f}  {c['b']} {d['b']:.3f}  "
                        f"({d['diff']:+.3f})"
                    )
    for w in report["warnings"]:
        out.append(f"warning: {w}")
    return "\n".join(out)


def _title(report: dict[str, Any]) -> str:
    state = (
        ""
        if report["complete"]
        else (f" - INCOMPLETE: {report['episodes']}/{report['episodes_expected']} episodes")
    )
    per_env = ", ".join(f"{env} {b['tasks']}" for env, b in report["envs"].items() if env != ALL)
    return (
        f"eval {report['name']}: {len(report['models'])} models x {per_env} tasks x k={report['k']}"
        f"{state}"
    )


def format_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown."""

    def table(head: list[str], rows: list[list[str]]) -> list[str]:
        esc = [[c.replace("|", "\\|") for c in r] for r in rows]
        return [
            "| " + " | ".join(head) + " |",
            "|" + "|".join("---" for _ in head) + "|",
            *("| " + " | ".join(r) + " |" for r in esc),
        ]

    s = report["sampling"]
    out = [
        f"# Eval `{report['name']}`",
        "",
        _title(report),
        "",
        f"Sampling: temperature {s['temperature']}, top-p {s['top_p']}, "
        f"max tokens {s['max_tokens']}; {int(100 * report['confidence'])}% bootstrap CIs over "
        "tasks.",
        "",
        "## Models",
        "",
        *table(MODEL_HEAD, _model_rows(report)),
        "",
        "## Scores",
        "",
        *table(SCORE_HEAD, _score_rows(report)),
    ]
    comps = _comparison_rows(report)
    if comps:
        out += ["", "## Comparisons (paired over tasks, B - A)", "", *table(COMPARE_HEAD, comps)]
    parts = _part_rows(report)
    if parts:
        out += ["", "## Reward parts (mean; paired difference B - A)", ""]
        out += table(_part_head(report), parts)
        for env, block in report["envs"].items():
            if env == ALL:
                continue
            for c in block["comparisons"]:
                if c["disagree"]:
                    out += ["", f"### {env}: {c['b']} vs {c['a']}, largest disagreements", ""]
                    out += table(
                        ["task", c["a"], c["b"], "diff"],
                        [
                            [d["task"], f"{d['a']:.3f}", f"{d['b']:.3f}", f"{d['diff']:+.3f}"]
                            for d in c["disagree"]
                        ],
                    )
    if report["warnings"]:
        out += ["", "## Warnings", "", *(f"- {w}" for w in report["warnings"])]
    return "\n".join(out) + "\n"


def _csv(head: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    w.writerows(rows)
    return buf.getvalue()


def _est(e: dict[str, Any] | None) -> list[Any]:
    return [e["value"], e["lo"], e["hi"]] if e else ["", "", ""]


def scores_csv(report: dict[str, Any]) -> str:
    """One row per environment (and `all`) and model: every score with its CI, and each reward
    part's mean with its CI (columns `part:<name>`)."""
    parts = list(
        dict.fromkeys(
            n
            for block in report["envs"].values()
            for s in block["models"].values()
            for n in s.get("components", {})
        )
    )
    head = ["env", "model", "tasks", "episodes"]
    for metric in ("reward", "solve_rate", f"pass@{report['k']}", "turns", "tool_calls"):
        head += [metric, f"{metric}_lo", f"{metric}_hi"]
    for name in parts:
        head += [f"part:{name}", f"part:{name}_lo", f"part:{name}_hi"]
    head += ["errors"]
    rows = []
    for env, block in report["envs"].items():
        for m, s in block["models"].items():
            row: list[Any] = [env, m, s["tasks"], s["episodes"]]
            row += _est(s["reward"]) + _est(s["solve_rate"])
            row += _est(s["pass_at"].get(str(report["k"])))
            row += _est(s["turns"]) + _est(s["tool_calls"])
            for name in parts:
                row += _est(s.get("components", {}).get(name))
            row.append(";".join(f"{k}={v['value']:.6g}" for k, v in s["errors"].items()))
            rows.append(row)
    return _csv(head, rows)


def comparisons_csv(report: dict[str, Any]) -> str:
    """One row per environment, pair and metric (reward, solve rate, each reward part): the
    paired difference B - A with its CI, whether the CI excludes 0, and won / lost / tied."""
    head = ["env", "a", "b", "metric", "tasks", "diff", "diff_lo", "diff_hi", "significant"]
    head += ["won", "lost", "tied"]
    rows = []
    for env, block in report["envs"].items():
        for c in block["comparisons"]:
            metrics = [("reward", c["reward"]), ("solve_rate", c["solve_rate"])]
            metrics += [(f"part:{n}", d) for n, d in c.get("components", {}).items()]
            for metric, d in metrics:
                rows.append(
                    [
                        env,
                        c["a"],
                        c["b"],
                        metric,
                        c["tasks"],
                        *_est(d["delta"]),
                        d["significant"],
                        d["won"],
                        d["lost"],
                        d["tied"],
                    ]
                )
    return _csv(head, rows)
