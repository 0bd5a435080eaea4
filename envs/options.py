"""Validating an environment's `options` (train_config.yaml `environments.<name>.options`)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def options_error(where: str, err: ValidationError) -> ValueError:
    """One line naming every bad or unknown option."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown option '{loc}'")
        else:
            parts.append(f"option '{loc}': {e['msg']}" if loc else e["msg"])
    return ValueError(f"{where} options: " + "; ".join(parts))


def parse_options(model: type[M], options: dict[str, Any] | None, where: str) -> M:
    """`options` validated against `model`; raises ValueError from options_error()."""
    try:
        return model.model_validate(options or {})
    except ValidationError as e:
        raise options_error(where, e) from None


def reset_task_cache(env_cls: type) -> None:
    """Drop the openreward SDK's per-class task cache, so new options take effect."""
    for attr in ("_tasks_cache", "_tasks_cache_locks"):
        if attr in env_cls.__dict__:
            delattr(env_cls, attr)
