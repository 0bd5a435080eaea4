"""Names of the local environments and where their classes live (imported on demand)."""

from __future__ import annotations

import importlib
from typing import Any

from openreward.environments import Environment

from envs.errors import UnknownEnvironment

ENVIRONMENTS: dict[str, str] = {
    "gsm8k": "envs.gsm8k:GSM8K",
    "whodunit": "envs.whodunit:WhoDunIt",
    "haiku": "envs.haiku:Haiku",
}


def load_env_class(name: str) -> type[Environment]:
    """The Environment subclass registered under `name` (case-insensitive)."""
    target = ENVIRONMENTS.get(name.lower())
    if target is None:
        raise UnknownEnvironment(name, ENVIRONMENTS)
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def configure_env(cls: type[Environment], options: dict[str, Any]) -> None:
    """Apply `environments.<name>.options` from train_config.yaml to an env class, if it takes
    any."""
    configure = getattr(cls, "configure", None)
    if configure is None:
        if options:
            raise ValueError(f"environment {cls.__name__} takes no options, got {sorted(options)}")
        return
    configure(options)
