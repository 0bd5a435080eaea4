"""Where an environment class comes from: the built-in three, installed plugins, or `module:Class`.

An environment name (a key under `environments:` in train_config.yaml, the server's `--envs`,
`python -m envs play NAME`, a task's `env`) resolves, first match wins:

1. a built-in name: `gsm8k`, `whodunit`, `haiku` (any case);
2. a name an installed package registers in the entry point group `slime_envs.environments`
   (any case; its value is `module:attr`), e.g. in the package's pyproject.toml:
   `[project.entry-points."slime_envs.environments"]` / `counter = "counter_env.env:Counter"`;
3. `module:attr` (it has a colon): that attribute of that importable module.

The attribute is an `openreward.environments.Environment` subclass, or something an adapter
serves (envs/adapters/, imported only then): an OpenEnv `Environment` subclass, a verifiers
environment, or a verifiers `load_environment` function. Anything else, or a module that cannot
be imported, is `UnknownEnvironment` with one line naming what was tried.

Served name: an environment is served, stored and logged under its name as written here (the
server compares names in lower case), so `my_envs.counter:Counter` is the ORS path segment
`/my_envs.counter:Counter/...`, the task's `env` and the W&B key `rollout/env/my_envs.counter:
Counter/...`. A colon and dots are legal in all three; a name without a slash is never hosted.
Register an entry point to give a plugin a short name.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from typing import Any

from openreward.environments import Environment

from envs.errors import UnknownEnvironment

__all__ = [
    "ENTRY_POINT_GROUP",
    "ENVIRONMENTS",
    "configure_env",
    "load_env_class",
    "plugin_names",
]

ENVIRONMENTS: dict[str, str] = {
    "gsm8k": "envs.gsm8k:GSM8K",
    "whodunit": "envs.whodunit:WhoDunIt",
    "haiku": "envs.haiku:Haiku",
}
"""The built-in environments: name -> `module:Class` (imported on demand)."""

ENTRY_POINT_GROUP = "slime_envs.environments"
"""The entry point group installed packages register environments in (name -> `module:attr`)."""

# An adapter's class is built once per wrapped object, so a name resolves to one class per
# process (configure() sets options on it).
_adapted: dict[int, tuple[Any, type[Environment]]] = {}


def plugin_names() -> dict[str, str]:
    """Names registered by installed packages in ENTRY_POINT_GROUP: lower-cased name -> value."""
    found: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name.lower(), ep.value)
    return found


def _entry_point(name: str) -> importlib.metadata.EntryPoint | None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name.lower() == name.lower():
            return ep
    return None


def load_env_class(name: str) -> type[Environment]:
    """The Environment class `name` resolves to (see the module docstring); UnknownEnvironment
    with one line naming what was tried when it resolves to none."""
    key = name.strip()
    builtin = ENVIRONMENTS.get(key.lower())
    if builtin is not None:
        return _target(name, builtin, "built-in")
    ep = _entry_point(key)
    if ep is not None:
        dist = getattr(ep, "dist", None)
        package = f" of package {dist.name} {dist.version}" if dist is not None else ""
        return _target(name, ep.value, f"entry point {ep.name} = {ep.value}{package}")
    if ":" in key:
        return _target(name, key, "")
    raise UnknownEnvironment(name, [*ENVIRONMENTS, *plugin_names()])


def _target(name: str, target: str, where: str) -> type[Environment]:
    """The class `module:attr` names, adapted when it is another framework's environment."""
    module_name, _, attr = target.partition(":")
    via = f" ({where})" if where else ""
    if not module_name or not attr:
        raise UnknownEnvironment(name, detail=f"{target!r}{via} is not of the form module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UnknownEnvironment(
            name,
            detail=(
                f"cannot import module {module_name!r}{via}: {_one_line(e)}; install the package "
                "that provides it (pip install -e DIR) or put its directory on PYTHONPATH"
            ),
        ) from None
    except Exception as e:
        raise UnknownEnvironment(
            name, detail=f"importing module {module_name!r}{via} raised {_one_line(e)}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UnknownEnvironment(
                name,
                detail=(
                    f"module {module_name!r}{via} ({getattr(module, '__file__', '?')}) has no "
                    f"attribute {attr!r}"
                ),
            )
        obj = getattr(obj, part)
    return _as_environment(name, obj, f"{target}{via}")


def _as_environment(name: str, obj: Any, what: str) -> type[Environment]:
    if isinstance(obj, type) and issubclass(obj, Environment):
        return obj
    adapter = _adapter_for(obj)
    if adapter is None:
        kind = "class" if isinstance(obj, type) else type(obj).__name__
        raise UnknownEnvironment(
            name,
            detail=(
                f"{what} is a {kind}, not an openreward Environment subclass (nor an OpenEnv "
                "environment class, a verifiers environment or its load_environment function)"
            ),
        )
    cached = _adapted.get(id(obj))
    if cached is not None and cached[0] is obj:
        return cached[1]
    module_name, factory = adapter
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        extra = module_name.rsplit(".", 1)[-1]
        raise UnknownEnvironment(
            name,
            detail=(
                f"{what} needs the {extra} adapter: {_one_line(e)}; install it with "
                f"pip install -e '.[{extra}]'"
            ),
        ) from None
    try:
        cls: type[Environment] = getattr(module, factory)(obj)
    except Exception as e:
        raise UnknownEnvironment(name, detail=f"{what}: {_one_line(e)}") from None
    _adapted[id(obj)] = (obj, cls)
    return cls


def _adapter_for(obj: Any) -> tuple[str, str] | None:
    """(adapter module, factory) for another framework's environment, found without importing
    that framework (its module names are enough)."""
    kind = obj if isinstance(obj, type) else type(obj)
    mro = [f"{c.__module__}.{c.__name__}" for c in inspect.getmro(kind)]
    if isinstance(obj, type) and "openenv.core.env_server.interfaces.Environment" in mro:
        return ("envs.adapters.openenv", "openenv_environment")
    if not isinstance(obj, type) and any(m.startswith("verifiers.") for m in mro):
        if any(m.endswith(".Environment") for m in mro):
            return ("envs.adapters.verifiers", "verifiers_environment")
    if inspect.isfunction(obj) and obj.__name__ == "load_environment":
        return ("envs.adapters.verifiers", "verifiers_environment")
    return None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def configure_env(cls: type[Environment], options: dict[str, Any]) -> None:
    """Apply `environments.<name>.options` from train_config.yaml to an env class, if it takes
    any."""
    configure = getattr(cls, "configure", None)
    if configure is None:
        if options:
            raise ValueError(f"environment {cls.__name__} takes no options, got {sorted(options)}")
        return
    configure(options)
