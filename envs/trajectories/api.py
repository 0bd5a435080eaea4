"""TrajectoryService: the OpenReward rollout-upload endpoints, a JSON API over the store, and the web UI.

Mounted by `envs.server` (`create_app(..., services=[TrajectoryService(db)])`):
  GET  /v1/environments/{owner}/{name}           -> {"id", "owner", "name"}   (what the SDK asks first)
  GET  /v1/environments/{owner}/{name}/variants  -> []
  POST /v1/rollouts  {"events": [...]}            -> {"ok", "rollouts", "messages", "updates", "duplicates"}
  GET  /api/runs, /api/runs/{id}, /api/runs/{id}/rollouts, /api/runs/{id}/reward_series,
       /api/runs/{id}/groups/{group_key}, /api/rollouts/{event_id}
  GET  /api/evals, /api/evals/{id}, /api/evals/{id}/tasks     (evals: envs/trajectories/evalui.py)
  pages: /, /runs/{id}, /runs/{id}/chart.svg, /rollouts/{event_id}, /assets/*,
         /evals, /evals/{id}, /evals/{id}/task
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from envs.trajectories.evalui import eval_api_router, eval_pages_router
from envs.trajectories.events import EventBatch
from envs.trajectories.store import RolloutFilter, TrajectoryStore
from envs.trajectories.webui import pages_router

MAX_BODY_BYTES = 64 * 1024 * 1024
_INLINE_VALIDATION_BYTES = 64 * 1024


def error(status: int, message: str, reason: str) -> JSONResponse:
    """A typed error body: {"ok": false, "error": one line, "reason": machine-readable kind}."""
    return JSONResponse({"ok": False, "error": message, "reason": reason}, status_code=status)


def _describe(err: ValidationError) -> tuple[str, str]:
    """(one-line message, reason) for a failed batch validation."""
    errors = err.errors(include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        return (
            f"request body is not valid JSON: {errors[0].get('ctx', {}).get('error', errors[0]['msg'])}",
            "bad_json",
        )
    parts = []
    for e in errors[:3]:
        loc = ".".join(str(x) for x in e["loc"]) or "<body>"
        parts.append(f"{loc}: {e['msg']}")
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "invalid rollout events: " + "; ".join(parts) + more, "invalid_event"


def _timed(payload: Any, started: float) -> JSONResponse:
    ms = (time.perf_counter() - started) * 1000
    return JSONResponse(payload, headers={"Server-Timing": f"db;dur={ms:.2f}"})


class TrajectoryService:
    """Receives OpenReward rollout uploads into SQLite and serves the JSON API and web UI."""

    def __init__(self, db_path: str, tokenizer: str | None = None) -> None:
        """`tokenizer`: path (or cached HF name) used by the token view when a rollout names none;
        defaults to $TRAJECTORIES_TOKENIZER."""
        self.db_path = str(db_path)
        self.store = TrajectoryStore(self.db_path)
        tokenizer = tokenizer or os.environ.get("TRAJECTORIES_TOKENIZER") or None
        self.default_tokenizer = tokenizer
        self.routers: list[APIRouter] = [
            self._ingest_router(),
            self._api_router(),
            pages_router(self.store, tokenizer),
            eval_api_router(self.store),
            eval_pages_router(self.store),
        ]

    async def start(self) -> None:
        self.store.start()

    async def stop(self) -> None:
        await anyio.to_thread.run_sync(self.store.stop)

    # -- OpenReward upload endpoints

    def _ingest_router(self) -> APIRouter:
        router = APIRouter(tags=["rollout upload"])
        store = self.store

        @router.get("/v1/environments/{owner}/{name}")
        def environment(owner: str, name: str) -> dict[str, Any]:
            return {"id": f"local:{owner}/{name}", "owner": owner, "name": name}

        @router.get("/v1/environments/{owner}/{name}/variants")
        def variants(owner: str, name: str) -> list[dict[str, Any]]:
            return []

        @router.post("/v1/rollouts")
        async def post_rollouts(request: Request) -> JSONResponse:
            body = await request.body()
            if len(body) > MAX_BODY_BYTES:
                return error(
                    413, f"request body of {len(body)} bytes exceeds {MAX_BODY_BYTES}", "too_large"
                )
            try:
                if len(body) <= _INLINE_VALIDATION_BYTES:
                    batch = EventBatch.model_validate_json(body)
                else:
                    batch = await anyio.to_thread.run_sync(EventBatch.model_validate_json, body)
            except ValidationError as e:
                message, reason = _describe(e)
                return error(400 if reason == "bad_json" else 422, message, reason)
            if not batch.events:
                return JSONResponse(
                    {"ok": True, "rollouts": 0, "messages": 0, "updates": 0, "duplicates": 0}
                )
            try:
                result = await asyncio.wrap_future(store.submit(batch.events))
            except Exception as e:  # storage failure: retriable
                return error(
                    503, f"trajectory store failed: {type(e).__name__}: {e}", "storage_error"
                )
            return JSONResponse({"ok": True, **result.__dict__})

        return router

    # -- JSON API for the UI and scripts

    def _api_router(self) -> APIRouter:
        router = APIRouter(prefix="/api", tags=["trajectories"])
        store = self.store

        @router.get("/runs")
        def runs() -> JSONResponse:
            t = time.perf_counter()
            return _timed({"runs": store.list_runs()}, t)

        @router.get("/runs/{run_id}")
        def run(run_id: int) -> JSONResponse:
            info = store.get_run(run_id)
            if info is None:
                return error(404, f"no run with id {run_id}", "not_found")
            return JSONResponse(info)

        @router.get("/runs/{run_id}/rollouts")
        def rollouts(
            run_id: int,
            env: str | None = None,
            split: str | None = None,
            status: str | None = None,
            stop_reason: str | None = None,
            min_reward: float | None = None,
            max_reward: float | None = None,
            tripwire: str | None = None,
            sort: str = "time",
            order: str = "desc",
            after: str | None = None,
            before: str | None = None,
            limit: int = Query(50, ge=1, le=500),
        ) -> JSONResponse:
            t = time.perf_counter()
            if order not in ("asc", "desc"):
                return error(422, f"order must be asc or desc, got {order!r}", "bad_query")
            flt = RolloutFilter(
                env=env,
                split=split,
                status=status,
                stop_reason=stop_reason,
                min_reward=min_reward,
                max_reward=max_reward,
                tripwire=tripwire,
            )
            try:
                page = store.list_rollouts(
                    run_id,
                    flt,
                    sort=sort,
                    descending=order == "desc",  # type: ignore[arg-type]
                    after=after,
                    before=before,
                    limit=limit,
                )
            except ValueError as e:
                return error(422, str(e), "bad_query")
            return _timed(
                {
                    "rollouts": page.rows,
                    "total": page.total,
                    "next": page.next_cursor,
                    "prev": page.prev_cursor,
                },
                t,
            )

        @router.get("/runs/{run_id}/reward_series")
        def reward_series(run_id: int, buckets: int = Query(60, ge=1, le=1000)) -> JSONResponse:
            t = time.perf_counter()
            return _timed(store.reward_series(run_id, buckets), t)

        @router.get("/runs/{run_id}/groups/{group_key}")
        def group(run_id: int, group_key: str) -> JSONResponse:
            return JSONResponse({"rollouts": store.group(run_id, group_key)})

        @router.get("/rollouts/{event_id}")
        def rollout(event_id: str) -> JSONResponse:
            r = store.get_rollout(event_id)
            if r is None:
                return error(404, f"no rollout with id {event_id!r}", "not_found")
            return JSONResponse(r)

        return router
