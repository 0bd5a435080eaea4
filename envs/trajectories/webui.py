"""Server-rendered pages of the trajectory viewer: runs, a run's rollouts, one rollout, reward
chart.

A run page filters its rollouts (env, split, status, stop reason, reward, tripwire) and counts
tripwires; a rollout page shows the conversation, per-turn rewards, tokens, provenance,
tripwires, where the token context drifted, and its GRPO group with each sample's advantage.

Jinja2 with autoescape renders every page, so model and environment text always shows as text.
The pages use one bundled stylesheet and one small script from envs/trajectories/static/assets (no
CDN), and are served with a Content-Security-Policy that forbids inline and foreign scripts.
"""

from __future__ import annotations

import functools
import html
import json
import logging
import math
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from envs.trajectories import tripwires
from envs.trajectories.evals import share_text
from envs.trajectories.group_view import GroupView, failure_reason, group_view
from envs.trajectories.store import RolloutFilter, SortKey, TrajectoryStore

log = logging.getLogger(__name__)

_SORTS: dict[str, SortKey] = {"time": "time", "reward": "reward", "turns": "turns"}

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSETS = {"app.css": "text/css", "app.js": "text/javascript", "favicon.svg": "image/svg+xml"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"]
MAX_TOKEN_VIEW = 32_768
MAX_GROUP_SIDE_BY_SIDE = 16
# What one rollout page shows at most (the JSON API streams everything).
MAX_PAGE_MESSAGES = 2_000
MAX_PAGE_CHARS = 4_000_000  # message text on one page; later messages are cut short
MAX_GROUP_MESSAGES = 200
MAX_GROUP_CHARS = 200_000


def _fmt_time(ts: float | None) -> str:
    if not ts:
        return ""
    try:
        return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):  # out of datetime's range: show the number
        return f"{ts:.0f} s"


def _fmt_reward(r: float | None) -> str:
    return "—" if r is None else f"{r:.3f}"


def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(STATIC_DIR / "templates")),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters["time"] = _fmt_time
    env.filters["pathpart"] = lambda v: quote(str(v), safe="")  # ids with / ? # in links
    env.filters["reward"] = _fmt_reward
    env.filters["pct"] = share_text
    return env


# ---------------------------------------------------------------- chart


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
        f'fill="#555">{html.escape(_fmt_time(t0))}</text>'
    )
    out.append(
        f'<text x="{pad_l + pw}" y="{height - 8}" font-size="11" fill="#555" text-anchor="end">'
        f"{html.escape(_fmt_time(t1))} UTC</text>"
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


# ---------------------------------------------------------------- token view


@functools.lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str) -> Any:
    """A tokenizer from a local path or the local HF cache (never the network); None if
    unavailable."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except Exception as e:  # missing files, unknown name: show ids instead
        log.info("tokenizer %r unavailable for the token view: %s", name_or_path, e)
        return None


def token_view(tokens: dict[str, Any] | None, tokenizer_name: str | None) -> dict[str, Any] | None:
    """Response tokens as [(text, trained, logprob shade 0-9, title)] plus the decoded prompt."""
    if not tokens:
        return None
    ids: list[int] = tokens["token_ids"]
    plen = int(tokens.get("prompt_shown", tokens["prompt_length"]))
    response_length = int(tokens.get("response_length", len(ids) - plen))
    response = ids[plen:][:MAX_TOKEN_VIEW]
    mask, lps = tokens["loss_mask"], tokens["logprobs"]
    tok = load_tokenizer(tokenizer_name) if tokenizer_name else None
    if tok is not None:
        pieces = tok.batch_decode([[t] for t in response])
        prompt_text = tok.decode(ids[:plen])
    else:
        pieces = [f"[{t}]" for t in response]
        prompt_text = " ".join(str(t) for t in ids[:plen])
    out = []
    for i, (tid, text) in enumerate(zip(response, pieces, strict=False)):
        trained = bool(mask[i]) if i < len(mask) else False
        lp = lps[i] if i < len(lps) else None
        if trained and lp is not None and math.isfinite(lp):
            prob = math.exp(min(lp, 0.0))
            shade = min(9, int(prob * 10))
            title = f"id {tid} · logprob {lp:.3f} · p={prob:.2f}"
        else:
            shade = None
            title = f"id {tid} · {'trained' if trained else 'not trained (env/harness)'}"
        out.append({"text": text, "trained": trained, "shade": shade, "title": title})
    return {
        "tokens": out,
        "prompt_text": prompt_text,
        "prompt_length": int(tokens["prompt_length"]),
        "response_length": response_length,
        "truncated": response_length > len(response),
        "decoded": tok is not None,
        "tokenizer": tokenizer_name,
        "trained": sum(1 for m in mask if m),
    }


# ---------------------------------------------------------------- conversation


def _pretty_json(text: str | None) -> tuple[str, bool]:
    """(pretty JSON, parsed?) for tool arguments."""
    if text is None:
        return "", False
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False), True
    except (ValueError, TypeError):
        return text, False


def conversation(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages prepared for the template (role label, pretty tool arguments)."""
    out = []
    for m in messages:
        item = dict(m)
        if m.get("content_chars"):  # cut by the store to keep the page bounded
            item["content"] = (
                f"{m['content']}\n... ({m['content_chars']} characters; "
                "the whole text is in the JSON API)"
            )
        if m["type"] == "tool_call":
            item["args"], item["args_ok"] = _pretty_json(item["content"])
        item["is_error"] = bool((m.get("metadata") or {}).get("is_error"))
        out.append(item)
    return out


def _run_id(value: str) -> int | None:
    """A run id from the URL, or None when it is not one (the page answers 404, not FastAPI's
    422)."""
    return int(value) if value.isascii() and value.isdigit() and len(value) < 19 else None


def provenance_rows(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """The rollout's provenance as (label, text) rows, in a fixed order; [] when it has none."""
    prov = meta.get("provenance")
    if not isinstance(prov, dict):
        return []
    labels = [
        ("env", "Environment"),
        ("env_version", "Env version"),
        ("task_id", "Task"),
        ("task_spec_hash", "Task spec hash"),
        ("tokenizer", "Tokenizer"),
        ("tokenizer_hash", "Tokenizer hash"),
        ("chat_template_hash", "Chat template hash"),
        ("sampling_params", "Sampling"),
        ("weight_versions", "Weight versions"),
        ("bridge_version", "Bridge version"),
    ]
    rows = []
    for key, label in labels:
        value = prov.get(key)
        if value is None:
            continue
        if isinstance(value, dict):
            text = ", ".join(f"{k}={json.dumps(v)}" for k, v in value.items())
        elif isinstance(value, list):
            text = " → ".join(str(v) for v in value) or "none reported"
        else:
            text = str(value)
        rows.append((label, text))
    return rows


def drift_events(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Where the token context diverged, as the bridge stored it (`metadata.drift`)."""
    drift = meta.get("drift")
    return [d for d in drift if isinstance(d, dict)] if isinstance(drift, list) else []


def _float_or_none(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        v = float(value)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


# ---------------------------------------------------------------- routes


def pages_router(
    store: TrajectoryStore,
    default_tokenizer: str | None = None,
    allowed_tokenizers: Iterable[str] = (),
) -> APIRouter:
    """Routes of the HTML pages and their bundled assets."""
    # A rollout's token view uses the tokenizer its metadata names only when it is the default or
    # in `allowed_tokenizers`: an upload must not make the server load files from any path.
    allowed = {t for t in (default_tokenizer, *allowed_tokenizers) if t}
    router = APIRouter(tags=["web UI"])
    templates = _templates()

    def page(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        body = templates.get_template(name).render(**ctx)
        return HTMLResponse(
            body,
            status_code=status,
            headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"},
        )

    def not_found(what: str) -> HTMLResponse:
        return page("error.html", status=404, title="Not found", message=what)

    @router.get("/assets/{name}")
    def asset(name: str) -> Response:
        if name not in ASSETS:
            return Response("not found", status_code=404, media_type="text/plain")
        return FileResponse(
            STATIC_DIR / "assets" / name,
            media_type=ASSETS[name],
            headers={"Cache-Control": "max-age=300"},
        )

    @router.get("/", response_class=HTMLResponse)
    def runs_page() -> HTMLResponse:
        runs = store.list_runs()
        for r in runs:
            total = sum(r["envs"].values()) or 1
            r["mix"] = [
                (env, n, n / total) for env, n in sorted(r["envs"].items(), key=lambda kv: -kv[1])
            ]
        return page("runs.html", title="Runs", runs=runs)

    @router.get("/runs/{run_id}/chart.svg")
    def chart(run_id: str) -> Response:
        rid = _run_id(run_id)
        if rid is None:
            return Response("not found", status_code=404, media_type="text/plain")
        svg = reward_chart_svg(store.reward_series(rid))
        return Response(svg, media_type="image/svg+xml", headers={"Content-Security-Policy": CSP})

    @router.get("/runs/{run_key}", response_class=HTMLResponse)
    def run_page(request: Request, run_key: str) -> HTMLResponse:
        started = time.perf_counter()
        run_id = _run_id(run_key)
        run = store.get_run(run_id) if run_id is not None else None
        if run is None or run_id is None:
            return not_found(f"No run with id {run_key}.")
        q = request.query_params
        flt = RolloutFilter(
            env=q.get("env") or None,
            split=q.get("split") or None,
            status=q.get("status") or None,
            stop_reason=q.get("stop_reason") or None,
            min_reward=_float_or_none(q.get("min_reward")),
            max_reward=_float_or_none(q.get("max_reward")),
            tripwire=q.get("tripwire") or None,
        )
        sort = _SORTS.get(q.get("sort") or "", "time")
        order = "asc" if q.get("order") == "asc" else "desc"
        try:
            limit = max(1, min(int(q.get("limit") or 50), 500))
        except ValueError:
            limit = 50
        notice = None
        try:
            pg = store.list_rollouts(
                run_id,
                flt,
                sort=sort,
                descending=order == "desc",
                after=q.get("after") or None,
                before=q.get("before") or None,
                limit=limit,
            )
        except ValueError as e:
            notice = str(e)
            pg = store.list_rollouts(
                run_id, flt, sort=sort, descending=order == "desc", limit=limit
            )
        keep = {k: v for k, v in q.items() if k not in ("after", "before") and v}

        def link(**extra: str) -> str:
            return f"/runs/{run_id}?" + urlencode({**keep, **extra})

        chart_svg = Markup(reward_chart_svg(store.reward_series(run_id)))
        return page(
            "run.html",
            title=f"Run {run['name']}",
            run=run,
            page=pg,
            facets=store.facets(run_id),
            tripwire_counts=store.tripwire_counts(run_id),
            any_tripwire=tripwires.ANY,
            flt=flt,
            sort=sort,
            order=order,
            limit=limit,
            notice=notice,
            chart=chart_svg,
            next_link=link(after=pg.next_cursor) if pg.next_cursor else None,
            prev_link=link(before=pg.prev_cursor) if pg.prev_cursor else None,
            q={k: q.get(k, "") for k in ("min_reward", "max_reward")},
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )

    @router.get("/rollouts/{event_id:path}", response_class=HTMLResponse)
    def rollout_page(event_id: str) -> HTMLResponse:
        found = store.event_id_of(event_id)  # its event id, or its numeric id in the store
        r = (
            None
            if found is None
            else store.get_rollout(
                found,
                max_messages=MAX_PAGE_MESSAGES,
                max_tokens=MAX_TOKEN_VIEW,
                max_chars=MAX_PAGE_CHARS,
            )
        )
        if r is None:
            return not_found(f"No rollout with id {event_id[:300]}.")
        meta = r["metadata"] if isinstance(r["metadata"], dict) else {}
        named = meta.get("tokenizer")
        tokenizer_name = named if isinstance(named, str) and named in allowed else default_tokenizer
        view = GroupView([], [], None)
        if r["group_key"]:
            view = group_view(store, r)
            for g in view.members[:MAX_GROUP_SIDE_BY_SIDE]:
                g["conversation"] = [
                    m
                    for m in conversation(
                        store.messages(
                            g["event_id"], limit=MAX_GROUP_MESSAGES, max_chars=MAX_GROUP_CHARS
                        )
                    )
                    if m["type"] in ("assistant_message", "tool_call", "tool_result")
                ]
        turn_rewards = (
            meta.get("turn_rewards") if isinstance(meta.get("turn_rewards"), list) else None
        )
        return page(
            "rollout.html",
            title=f"Rollout {r['name'] or r['event_id']}",
            r=r,
            meta=meta,
            conversation=conversation(r["messages"]),
            messages_cut=len(r["messages"]) < (r["num_messages"] or 0),
            tokens=token_view(r["tokens"], tokenizer_name),
            group=view.trained if len(view.members) > 1 else [],
            group_infra_failed=view.infra_failed if len(view.members) > 1 else [],
            group_side_by_side=view.members[:MAX_GROUP_SIDE_BY_SIDE]
            if len(view.members) > 1
            else [],
            group_size=len(view.members),
            group_position=view.position,
            failure=failure_reason(meta),
            provenance=provenance_rows(meta),
            tripwires=r.get("tripwires") or [],
            drift=drift_events(meta),
            turn_rewards=turn_rewards,
            timings=meta.get("timings") if isinstance(meta.get("timings"), dict) else None,
            tool_errors=meta.get("tool_errors")
            if isinstance(meta.get("tool_errors"), dict)
            else None,
        )

    return router
