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
import json
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from envs.trajectories import tripwires
from envs.trajectories.chart import reward_chart_svg
from envs.trajectories.evals import share_text
from envs.trajectories.formats import fmt_reward, fmt_time
from envs.trajectories.group_view import GroupView, failure_reason, group_view
from envs.trajectories.store import RUNS_PAGE, RolloutFilter, SortKey, TrajectoryStore

log = logging.getLogger(__name__)

_SORTS: dict[str, SortKey] = {"time": "time", "reward": "reward", "turns": "turns"}

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSETS = {"app.css": "text/css", "app.js": "text/javascript", "favicon.svg": "image/svg+xml"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
MAX_TOKEN_VIEW = 32_768
MAX_GROUP_SIDE_BY_SIDE = 16
# What one rollout page shows at most (the JSON API streams everything).
MAX_PAGE_MESSAGES = 2_000
MAX_PAGE_CHARS = 4_000_000  # message text on one page; later messages are cut short
MAX_GROUP_MESSAGES = 200
MAX_GROUP_CHARS = 200_000


def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(STATIC_DIR / "templates")),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters["time"] = fmt_time
    env.filters["pathpart"] = lambda v: quote(str(v), safe="")  # ids with / ? # in links
    env.filters["reward"] = fmt_reward
    env.filters["pct"] = share_text
    return env


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
    """(pretty JSON, parsed?) for tool arguments; what cannot be pretty-printed (not JSON,
    nested past the parser's recursion: once a 500 for the page and its group) is the text."""
    if text is None:
        return "", False
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False), True
    except (ValueError, TypeError, RecursionError):
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
    def runs_page(after: str | None = None) -> HTMLResponse:
        try:
            pg = store.runs_page(RUNS_PAGE, after)
        except ValueError as e:
            return page("error.html", status=400, title="Bad page", message=str(e))
        for r in pg.runs:
            total = sum(r["envs"].values()) or 1
            r["mix"] = [
                (env, n, n / total) for env, n in sorted(r["envs"].items(), key=lambda kv: -kv[1])
            ]
        next_link = "/?" + urlencode({"after": pg.next_cursor}) if pg.next_cursor else None
        return page(
            "runs.html",
            title="Runs",
            runs=pg.runs,
            total=pg.total,
            first_page=after is None,
            next_link=next_link,
        )

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
