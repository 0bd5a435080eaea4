"""The server's OpenAPI schema (`GET /openapi.json`): every route, so standard fuzzers can drive it.

The ORS routes are answered by the raw-ASGI router (envs/server/router.py), outside FastAPI,
so they are described here from one table; FastAPI describes the routes of the services it
carries (the rollout-upload API, the JSON API and the web UI pages), and `install_openapi`
merges the two. Request bodies are typed as the handlers read them; responses name the ORS
error shape.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, TypeAdapter

__all__ = ["install_openapi", "ors_paths"]

_REF = "#/components/schemas/{model}"

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The ORS error shape; `detail` is what the stock client shows.",
    "properties": {
        "ok": {"type": "boolean", "const": False},
        "error": {"type": "string"},
        "reason": {"type": "string"},
        "detail": {"type": "string"},
    },
    "required": ["ok", "error", "reason"],
}


def _body(properties: dict[str, Any], required: Iterable[str] = ()) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": properties, "required": list(required)}
            }
        },
    }


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# Bodies the server must refuse at the door (400 json_too_deep), for fuzzers' example phase: a
# task spec nested 300 deep once made every tool call of its session a 500. 40 levels is past
# the server's limit (wire.MAX_JSON_DEPTH, 32) and within what schemathesis can copy (300 made
# it stop on "Recursion limit reached").
TOO_DEEP = _nested(40)


def _with_examples(body: dict[str, Any], **examples: Any) -> dict[str, Any]:
    content = body["content"]["application/json"]
    content["examples"] = {name: {"value": value} for name, value in examples.items()}
    return body


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema or {}}}}


def _sse(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "text/event-stream": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }


_ERRORS = {
    "4XX": _json(
        "refused: the ORS error shape (429: this client's share of sessions; Retry-After)",
        {"$ref": _REF.format(model="OrsError")},
    ),
    "503": _json(
        "at the session or connection limit, or work stopped at its CPU budget (Retry-After)",
        {"$ref": _REF.format(model="OrsError")},
    ),
}
_SESSION = {
    "name": "X-Session-ID",
    "in": "header",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
    "description": "the session (from POST /create_session)",
}
_SECRETS = {
    "name": "X-Secrets",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": 'base64(JSON {name: {"value": v}}): secrets for the environment',
}
_DEPLOYMENT = {
    "name": "X-Deployment",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "the environment a bare path (no /{env}/) addresses",
}


def _op(
    summary: str,
    ok: dict[str, Any],
    body: dict[str, Any] | None = None,
    params: Iterable[dict[str, Any]] = (),
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "tags": ["ORS"],
        "summary": summary,
        "parameters": list(params),
        "responses": {"200": ok, **_ERRORS},
    }
    if body is not None:
        op["requestBody"] = body
    return op


def ors_paths(env_names: list[str], split_names: list[str]) -> dict[str, Any]:
    """The OpenAPI `paths` of the ORS routes for a server hosting `env_names`."""
    split = {"type": "string", "enum": split_names} if split_names else {"type": "string"}
    index = {"type": "integer", "minimum": 0}
    split_body = _body({"split": split}, ["split"])
    env_ops: dict[str, tuple[str, dict[str, Any]]] = {
        "splits": ("get", _op("the environment's splits", _json("splits"))),
        "tools": ("get", _op("the environment's tools", _json("ListToolsOutput"))),
        "tasks": ("post", _op("every task of a split", _json("tasks"), split_body)),
        "num_tasks": ("post", _op("how many tasks a split has", _json("count"), split_body)),
        "task": (
            "post",
            _op(
                "one task",
                _json("task"),
                _body({"split": split, "index": index}, ["split", "index"]),
            ),
        ),
        "task_range": (
            "post",
            _op(
                "tasks [start, stop) of a split",
                _json("tasks"),
                _body({"split": split, "start": index, "stop": index}, ["split"]),
            ),
        ),
        "prompt": ("get", _op("the session's prompt blocks", _json("blocks"), params=[_SESSION])),
        "messages": ("get", _op("the session's messages", _json("messages"), params=[_SESSION])),
        "task_tools": (
            "get",
            _op("the session's tools", _json("ListToolsOutput"), params=[_SESSION]),
        ),
        "call": (
            "post",
            _op(
                "call a tool: SSE (task_id, chunk*, end) with Accept: text/event-stream, else JSON",
                _sse("RunToolOutput"),
                _with_examples(
                    _body(
                        {
                            "name": {"type": "string"},
                            "input": {"type": "object"},
                            "task_id": {"type": "string"},
                        },
                        ["name"],
                    ),
                    nested_too_deep={"name": "calculator", "input": {"x": TOO_DEEP}},
                ),
                [_SESSION],
            ),
        ),
        "score_group": (
            "post",
            _op(
                "score a group of candidates",
                _sse("ScoreGroupOutput"),
                {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": _REF.format(model="ScoreGroup")}}
                    },
                },
                [_SESSION],
            ),
        ),
    }
    env_param = {
        "name": "env",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": env_names} if env_names else {"type": "string"},
    }
    paths: dict[str, Any] = {}
    for action, (method, op) in env_ops.items():
        paths[f"/{{env}}/{action}"] = {method: {**op, "parameters": [env_param, *op["parameters"]]}}
        bare = {**op, "parameters": [*op["parameters"], _DEPLOYMENT]}
        paths[f"/{action}"] = {method: {**bare, "operationId": f"bare_{action}"}}
    create = _with_examples(
        _body(
            {
                "env_name": (
                    {"type": "string", "enum": env_names} if env_names else {"type": "string"}
                ),
                "split": split,
                "index": index,
                "task_spec": {"type": "object"},
                "toolset_name": {"type": "string"},
            }
        ),
        nested_too_deep={"task_spec": {"question": "2+2?", "label": "4", "x": TOO_DEEP}},
    )
    root = {
        "/health": ("get", _op("liveness (no key needed)", _json("status"))),
        "/list_environments": ("get", _op("the hosted environments", _json("names"))),
        "/version": ("get", _op("SDK version this server speaks", _json("version"))),
        "/metrics": (
            "get",
            _op(
                "Prometheus metrics",
                {"description": "text", "content": {"text/plain": {"schema": {"type": "string"}}}},
            ),
        ),
        "/create_session": (
            "post",
            _op("a new session id (SSE: task_id, end)", _sse("session id"), None),
        ),
        "/create": (
            "post",
            _op(
                "start an episode: task_spec, or split + index (body at most 64 KiB)",
                _json("sid"),
                create,
                [_SESSION, _SECRETS],
            ),
        ),
        "/ping": ("post", _op("keep a session alive", _json("status"), params=[_SESSION])),
        "/delete": ("post", _op("end a session", _json("sid"), params=[_SESSION])),
        "/delete_session": ("post", _op("end a session", _json("sid"), params=[_SESSION])),
    }
    for path, (method, op) in root.items():
        paths[path] = {method: {**op, "operationId": path.strip("/")}}
    for path, item in paths.items():
        for method, op in item.items():
            op.setdefault("operationId", f"{method}_{path.strip('/').replace('/', '_')}")
            op["operationId"] = op["operationId"].replace("{", "").replace("}", "")
    return paths


def _component_schemas(models: dict[str, type[BaseModel] | TypeAdapter[Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"OrsError": ERROR_SCHEMA}
    for name, model in models.items():
        adapter = model if isinstance(model, TypeAdapter) else TypeAdapter(model)
        schema = adapter.json_schema(ref_template=_REF)
        out.update(schema.pop("$defs", {}))
        out[name] = schema
    return out


def install_openapi(
    app: FastAPI,
    env_names: list[str],
    split_names: list[str],
    extra_schemas: dict[str, type[BaseModel] | TypeAdapter[Any]] | None = None,
) -> None:
    """Make `app` (made with openapi_url="/openapi.json") serve FastAPI's routes plus the ORS
    ones."""
    from openreward.environments.types import ScoreGroup

    cache: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        if not cache:
            schema = get_openapi(
                title="slime-envs env server",
                version="1",
                description=__doc__.split("\n\n")[1].replace("\n", " "),
                routes=app.routes,
            )
            schema["paths"] = {**ors_paths(env_names, split_names), **schema.get("paths", {})}
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(
                _component_schemas({"ScoreGroup": ScoreGroup, **(extra_schemas or {})})
            )
            cache.append(schema)
        return cache[0]

    app.openapi = openapi  # type: ignore[method-assign]
