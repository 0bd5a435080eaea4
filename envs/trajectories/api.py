"""TrajectoryService: the OpenReward rollout-upload endpoints, a JSON API over the store, and the
web UI.

Mounted by `envs.server` (`create_app(..., services=[TrajectoryService(db)])`):
  GET  /v1/environments/{owner}/{name}           -> {"id", "owner", "name"}   (what the SDK asks
       first)
  GET  /v1/environments/{owner}/{name}/variants  -> []
  POST /v1/rollouts  {"events": [...]}            -> {"ok", "rollouts", "messages", "updates",
  "duplicates"}
  GET  /api/runs, /api/runs/{id}, /api/runs/{id}/rollouts, /api/runs/{id}/reward_series,
       /api/runs/{id}/groups/{group_key}, /api/rollouts/{event_id}
  GET  /api/evals, /api/evals/{id}, /api/evals/{id}/tasks     (evals: envs/trajectories/evalui.py)
  pages: /, /runs/{id}, /runs/{id}/chart.svg, /rollouts/{event_id}, /assets/*,
         /evals, /evals/{id}, /evals/{id}/task
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Annotated, Any, TypeVar

import anyio
import orjson
import pydantic_core
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter, ValidationError

from contract.trajectory_events import Event, EventBatch, IngestResult, Rejected
from envs.trajectories.errors import ApiReason
from envs.trajectories.evalui import eval_api_router, eval_pages_router
from envs.trajectories.memory import release_memory_soon, tune_malloc
from envs.trajectories.store import READ_CONNECTIONS, RUNS_PAGE, RolloutFilter, TrajectoryStore
from envs.trajectories.webui import pages_router

MAX_BODY_BYTES = 64 * 1024 * 1024
_INLINE_VALIDATION_BYTES = 64 * 1024
# A 422 lists at most this many refused events (the count is always complete).
MAX_REJECTED_LISTED = 100
# Ids in paths: SQLite rowids (a larger integer once answered 500).
MAX_ROW_ID = 2**63 - 1

RunId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]
T = TypeVar("T")

_EVENT_LIST: TypeAdapter[list[Event]] = TypeAdapter(list[Event])


class JsonResponse(Response):
    """JSON by orjson: non-finite floats become null, so no stored value can make a reply fail."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error(status: int, message: str, reason: ApiReason, **extra: Any) -> JsonResponse:
    """A typed error body: {"ok": false, "error": one line, "reason": machine-readable kind}."""
    return JsonResponse(
        {"ok": False, "error": message, "reason": reason, **extra}, status_code=status
    )


def _describe(err: ValidationError) -> tuple[str, ApiReason]:
    """(one-line message, reason) for a failed batch validation."""
    errors = err.errors(include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        return (
            "request body is not valid JSON: "
            f"{errors[0].get('ctx', {}).get('error', errors[0]['msg'])}",
            ApiReason.BAD_JSON,
        )
    parts = []
    for e in errors[:3]:
        loc = ".".join(str(x) for x in e["loc"]) or "<body>"
        parts.append(f"{loc}: {e['msg']}")
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "invalid rollout events: " + "; ".join(parts) + more, ApiReason.INVALID_EVENT


def _per_event_errors(err: ValidationError) -> dict[int, str] | None:
    """{index: first error} when every error is inside one event, else None (a broken batch)."""
    out: dict[int, str] = {}
    for e in err.errors(include_url=False):
        loc = e["loc"]
        if len(loc) < 2 or loc[0] != "events" or not isinstance(loc[1], int):
            return None
        where = ".".join(str(x) for x in loc[2:] if not isinstance(x, str) or x not in _KINDS)
        out.setdefault(loc[1], f"{where or 'event'}: {e['msg']}")
    return out


_KINDS = ("rollout", "message", "rollout_update")


def validate_events(body: bytes) -> tuple[list[Event], list[int], list[Rejected]]:
    """The batch's valid events, their indices in the batch, and the refused ones.

    Raises ValidationError when the batch itself is broken (bad JSON, no `events` list)."""
    try:
        events = EventBatch.model_validate_json(body).events
        return events, list(range(len(events))), []
    except ValidationError as e:
        bad = _per_event_errors(e)
        if bad is None:
            raise
    raw = pydantic_core.from_json(body)["events"]
    keep = [i for i in range(len(raw)) if i not in bad]
    events = _EVENT_LIST.validate_python([raw[i] for i in keep])
    rejected = [Rejected(i, _event_id(raw[i]), msg) for i, msg in sorted(bad.items())]
    return events, keep, rejected


def _event_id(raw: Any) -> str | None:
    eid = raw.get("eventId") if isinstance(raw, dict) else None
    return eid[:256] if isinstance(eid, str) else None


async def read_body(request: Request, limit: int) -> bytes | JsonResponse:
    """The request body, refused with 413 by its Content-Length or as soon as it passes `limit`
    while streaming (a 512 MiB upload once took the server from 181 MB to 1 GB RSS)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            return error(400, "Content-Length is not a number", ApiReason.BAD_REQUEST)
        if int(declared) > limit:
            return error(
                413, f"request body of {declared} bytes exceeds {limit}", ApiReason.TOO_LARGE
            )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return error(413, f"request body exceeds {limit} bytes", ApiReason.TOO_LARGE)
        chunks.append(chunk)
    return b"".join(chunks)


def inline_schema(model: type[Any]) -> dict[str, Any]:
    """A model's JSON schema with its $defs put in place (for an OpenAPI request body)."""
    schema = TypeAdapter(model).json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.rsplit("/", 1)[1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def _timed(payload: Any, started: float) -> JsonResponse:
    ms = (time.perf_counter() - started) * 1000
    return JsonResponse(payload, headers={"Server-Timing": f"db;dur={ms:.2f}"})


# ---------------------------------------------------------------- one rollout, streamed

TOKEN_SLICE = 64 * 1024  # token-array items read and encoded per chunk
# Threads that read for streamed responses: as many as the store has read connections, so the
# same few threads (and their malloc arenas) do all of it.
_READ_THREADS = anyio.CapacityLimiter(READ_CONNECTIONS)


async def _read(fn: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(fn, *args, limiter=_READ_THREADS)


def _raw_json_fields(row: dict[str, Any]) -> bytes:
    """`row` as JSON without its closing brace; `*_json` columns are spliced in as stored text."""
    plain = {k: v for k, v in row.items() if not k.endswith("_json")}
    parts = [orjson.dumps(plain)[:-1]]
    for key, raw in row.items():
        if key.endswith("_json"):
            name = key[: -len("_json")].encode()
            parts.append(b',"' + name + b'":' + (raw.encode() if raw is not None else b"null"))
    return b"".join(parts)


def _message_json(row: Any) -> bytes:
    m = dict(row)
    m.pop("id", None)
    m["is_finished"] = bool(m["is_finished"])
    m["metadata_json"] = m.pop("metadata")
    return _raw_json_fields(m) + b"}"


async def rollout_json(store: TrajectoryStore, head: dict[str, Any]) -> AsyncIterator[bytes]:
    """GET /api/rollouts/{id} as JSON chunks: the row, its messages a page at a time, then its
    token arrays a slice at a time. Memory stays one page per reader whatever the rollout's size
    (20 readers of a 63 MB rollout once took the server from 165 MB to 6.3 GB)."""
    event_id = head["event_id"]
    try:
        yield _raw_json_fields(head) + b',"messages":['
        after: tuple[int, int] | None = None
        first = True
        while True:
            page = await _read(store.message_rows, event_id, after)
            if not page:
                break
            chunk = b",".join(_message_json(m) for m in page)
            yield chunk if first else b"," + chunk
            first = False
            after = (page[-1]["idx"], page[-1]["id"])
            del page, chunk
        info = await _read(store.token_info, event_id)
        if info is None:
            yield b'],"tokens":null}'
            return
        yield b'],"tokens":{"prompt_length":' + str(info.prompt_length).encode()
        for column, n in (
            ("token_ids", info.n_tokens),
            ("loss_mask", info.n_mask),
            ("logprobs", info.n_logprobs),
        ):
            yield b',"' + column.encode() + b'":['
            for start in range(0, n, TOKEN_SLICE):
                items = await _read(store.token_slice, info, column, start, TOKEN_SLICE)
                body = orjson.dumps(items)[1:-1]  # NaN logprobs become null
                del items
                yield body if start == 0 else b"," + body
                del body
            yield b"]"
        yield b"}}"
    finally:
        release_memory_soon()


class TrajectoryService:
    """Receives OpenReward rollout uploads into SQLite and serves the JSON API and web UI."""

    def __init__(
        self, db_path: str, tokenizer: str | None = None, tokenizers: Iterable[str] = ()
    ) -> None:
        """`tokenizers`: paths (or locally cached HF names) the token view may load when a
        rollout's metadata names one; `tokenizer`: the one used when a rollout names none
        (default: the first of `tokenizers`, else $TRAJECTORIES_TOKENIZER). Uploads never make
        the server load anything else."""
        self.db_path = str(db_path)
        self.store = TrajectoryStore(self.db_path)
        allowed = list(tokenizers)
        tokenizer = (
            tokenizer
            or (allowed[0] if allowed else None)
            or os.environ.get("TRAJECTORIES_TOKENIZER")
            or None
        )
        self.default_tokenizer = tokenizer
        self.routers: list[APIRouter] = [
            self._ingest_router(),
            self._api_router(),
            pages_router(self.store, tokenizer, allowed),
            eval_api_router(self.store),
            eval_pages_router(self.store),
        ]

    async def start(self) -> None:
        tune_malloc()
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

        @router.post(
            "/v1/rollouts",
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": inline_schema(EventBatch)}},
                }
            },
        )
        async def post_rollouts(request: Request) -> JsonResponse:
            body = await read_body(request, MAX_BODY_BYTES)
            if isinstance(body, JsonResponse):
                return body
            try:
                if len(body) <= _INLINE_VALIDATION_BYTES:
                    events, kept, rejected = validate_events(body)
                else:
                    events, kept, rejected = await anyio.to_thread.run_sync(validate_events, body)
            except ValidationError as e:
                message, reason = _describe(e)
                return error(400 if reason == ApiReason.BAD_JSON else 422, message, reason)
            result = IngestResult()
            if events:
                try:
                    result = await asyncio.wrap_future(store.submit(events))
                except Exception as e:  # storage failure: retriable
                    return error(
                        503,
                        f"trajectory store failed: {type(e).__name__}: {e}",
                        ApiReason.STORAGE_ERROR,
                    )
                for r in result.rejected:  # the writer's indices are into `events`
                    r.index = kept[r.index]
            total = len(kept) + len(rejected)
            if len(body) > _INLINE_VALIDATION_BYTES:
                release_memory_soon()
            rejected = sorted(rejected + result.rejected, key=lambda r: r.index)
            if not rejected:
                return JsonResponse({"ok": True, **result.counts()})
            first = rejected[0]
            return error(
                422,
                f"{len(rejected)} of {total} events refused (the others were stored); "
                f"first: event {first.index}: {first.error}",
                ApiReason.INVALID_EVENT,
                rejected=[dataclasses.asdict(r) for r in rejected[:MAX_REJECTED_LISTED]],
                **result.counts(),
            )

        return router

    # -- JSON API for the UI and scripts

    def _api_router(self) -> APIRouter:
        router = APIRouter(prefix="/api", tags=["trajectories"])
        store = self.store

        @router.get("/runs")
        def runs(
            after: str | None = None, limit: int = Query(RUNS_PAGE, ge=1, le=500)
        ) -> JsonResponse:
            t = time.perf_counter()
            try:
                page = store.runs_page(limit, after)
            except ValueError as e:
                return error(422, str(e), ApiReason.BAD_QUERY)
            return _timed({"runs": page.runs, "total": page.total, "next": page.next_cursor}, t)

        @router.get("/runs/{run_id}")
        def run(run_id: RunId) -> JsonResponse:
            info = store.get_run(run_id)
            if info is None:
                return error(404, f"no run with id {run_id}", ApiReason.NOT_FOUND)
            return JsonResponse(info)

        @router.get("/runs/{run_id}/rollouts")
        def rollouts(
            run_id: RunId,
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
        ) -> JsonResponse:
            t = time.perf_counter()
            if order not in ("asc", "desc"):
                return error(422, f"order must be asc or desc, got {order!r}", ApiReason.BAD_QUERY)
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
                    sort=sort,  # type: ignore[arg-type]  # the store checks it: ValueError -> 422
                    descending=order == "desc",
                    after=after,
                    before=before,
                    limit=limit,
                )
            except ValueError as e:
                return error(422, str(e), ApiReason.BAD_QUERY)
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
        def reward_series(run_id: RunId, buckets: int = Query(60, ge=1, le=1000)) -> JsonResponse:
            t = time.perf_counter()
            return _timed(store.reward_series(run_id, buckets), t)

        @router.get("/runs/{run_id}/groups/{group_key:path}")
        def group(run_id: RunId, group_key: str) -> JsonResponse:
            return JsonResponse({"rollouts": store.group(run_id, group_key)})

        @router.get("/rollouts/{event_id:path}")
        async def rollout(event_id: str) -> Response:
            found = await anyio.to_thread.run_sync(store.event_id_of, event_id)
            head = (
                None if found is None else await anyio.to_thread.run_sync(store.rollout_head, found)
            )
            if head is None:
                return error(404, f"no rollout with id {event_id[:300]!r}", ApiReason.NOT_FOUND)
            return StreamingResponse(rollout_json(store, head), media_type="application/json")

        return router
