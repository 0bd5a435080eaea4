"""The reward chart of a run page: mean reward per environment over time, as inline SVG."""

from __future__ import annotations

import html
from typing import Any

from envs.trajectories.formats import fmt_time

__all__ = ["PALETTE", "reward_chart_svg"]

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"]


def reward_chart_svg(series: dict[str, Any], width: int = 760, height: int = 260) -> str:
    """Mean reward per env over time as an inline SVG; every label is escaped."""
    pad_l, pad_r, pad_t, pad_b = 48, 130, 16, 34
    lines = series.get("series") or {}
    if not lines:
        return (
            f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="60" '
            'role="img" aria-label="no rewards yet"><text x="10" y="35">No rewards '
            "yet.</text></svg>"
        )
    t0, t1 = float(series["t0"]), float(series["t1"])
    values = [p[1] for pts in lines.values() for p in pts]
    lo, hi = min(0.0, min(values)), max(1.0, max(values))
    if hi - lo < 1e-9:
        hi = lo + 1.0
    span = max(t1 - t0, 1e-9)
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b

    def x(t: float) -> float:
        return pad_l + (pw * (t - t0) / span if t1 > t0 else pw / 2)

    def y(v: float) -> float:
        return pad_t + ph * (1 - (v - lo) / (hi - lo))

    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="mean reward over time per '
        'environment">'
    ]
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        out.append(
            f'<line x1="{pad_l}" x2="{pad_l + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
            'stroke="#e5e7eb"/>'
        )
        out.append(
            f'<text x="{pad_l - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#555">{v:.2f}</text>'
        )
    out.append(
        f'<line x1="{pad_l}" x2="{pad_l + pw}" y1="{pad_t + ph}" y2="{pad_t + ph}" stroke="#999"/>'
    )
    out.append(
        f'<text x="{pad_l}" y="{height - 8}" font-size="11" '
        f'fill="#555">{html.escape(fmt_time(t0))}</text>'
    )
    out.append(
        f'<text x="{pad_l + pw}" y="{height - 8}" font-size="11" fill="#555" text-anchor="end">'
        f"{html.escape(fmt_time(t1))} UTC</text>"
    )
    for i, (env, pts) in enumerate(sorted(lines.items())):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{x(p[0]):.1f},{y(p[1]):.1f}" for p in pts)
        out.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coords}">'
            f"<title>{html.escape(env)}</title></polyline>"
        )
        for p in pts:
            out.append(
                f'<circle cx="{x(p[0]):.1f}" cy="{y(p[1]):.1f}" r="2.5" fill="{color}">'
                f"<title>{html.escape(env)}: {p[1]:.3f} (n={int(p[2])})</title></circle>"
            )
        ly = pad_t + 14 + 18 * i
        out.append(
            f'<rect x="{pad_l + pw + 12}" y="{ly - 9}" width="10" height="10" fill="{color}"/>'
        )
        out.append(
            f'<text x="{pad_l + pw + 26}" y="{ly}" font-size="12">{html.escape(env[:18])}</text>'
        )
    out.append("</svg>")
    return "".join(out)
