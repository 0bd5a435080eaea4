"""An environment's version (package version + hash of its code and data) and its task-spec hash.

`env_version(GSM8K)` is `0.1.0+<16 hex>`: the slime-envs version plus a hash of the module that
defines the class (every module of its package when the env is a package whose `__init__`
exports the class, as envs/whodunit/ and envs/haiku/) and of the data files it declares
(`DATA_FILES`), so an edited reward function or topic list gives a new version even when the
package version stays. `task_spec_hash(spec)` hashes the canonical JSON of a task spec (key order
and formatting do not matter).
"""

from __future__ import annotations

import inspect
import sys
from functools import cache
from pathlib import Path
from typing import Any

from contract.provenance import canonical_hash, files_hash, package_version


def env_code_files(cls: type) -> list[Path]:
    """The files whose contents make an environment's version: its code (`env_package_files`)
    and declared data files."""
    files = env_package_files(cls)
    files += [Path(p) for p in getattr(cls, "DATA_FILES", ())]
    return [f for f in files if f.is_file()]


def env_package_files(cls: type) -> list[Path]:
    """The module defining `cls`; when that module belongs to a package whose `__init__` exports
    `cls` (an env cut into modules, e.g. envs/whodunit/), every module of that package."""
    module = Path(inspect.getfile(cls))
    package = sys.modules.get(cls.__module__.rpartition(".")[0])
    init = getattr(package, "__file__", None)
    if package is None or init is None or getattr(package, cls.__name__, None) is not cls:
        return [module]
    return sorted(Path(init).parent.rglob("*.py"))


@cache
def env_version(cls: type) -> str:
    """`<package version>+<hash of the env's code and data>`, computed once per class."""
    return f"{package_version()}+{files_hash(env_code_files(cls))}"


def task_spec_hash(task_spec: Any) -> str:
    """The hash of a task spec's canonical JSON."""
    return canonical_hash(task_spec)
