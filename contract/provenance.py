"""Hashes and versions that both sides write into provenance: the keys must agree byte for byte.

    short_hash(data)        the first 16 hex digits of a SHA-256
    canonical_hash(value)   a hash of a JSON value independent of key order and formatting
    files_hash(files)       a hash of files' names and contents (an env's or the plugin's code)
    package_version()       slime-envs' version (installed metadata, else pyproject.toml)
    task_id(...)            `env/split/index`, or `env/spec:<hash>` for a task given by spec

The environments hash their code and task specs with these (envs/provenance.py), the plugin its
own code and the episode's provenance record (bridge/provenance.py).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import orjson

PACKAGE = "slime-envs"
HASH_CHARS = 16
_ROOT = Path(__file__).resolve().parent.parent


def short_hash(data: bytes) -> str:
    """The first HASH_CHARS hex digits of data's SHA-256."""
    return hashlib.sha256(data).hexdigest()[:HASH_CHARS]


def canonical_hash(value: Any) -> str:
    """A hash of a JSON value that does not depend on key order or formatting."""
    return short_hash(orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS))


def files_hash(files: Iterable[Path], root: Path = _ROOT) -> str:
    """A hash of files' names (relative to `root` when inside it) and contents, in sorted order."""
    h = hashlib.sha256()
    for path in sorted(Path(f).resolve() for f in files):
        name = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
        h.update(name.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:HASH_CHARS]


@cache
def package_version() -> str:
    """slime-envs' version: installed metadata, else pyproject.toml beside the code (a PYTHONPATH
    checkout)."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        text = (_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    return m.group(1) if m else "unknown"


def task_id(env: str, split: str | None, index: int | None, task_spec: Any) -> str:
    """`env/split/index`, or `env/spec:<hash>` for a task that is only a spec."""
    if index is not None:
        return f"{env}/{split}/{index}"
    return f"{env}/spec:{canonical_hash(task_spec)}"
