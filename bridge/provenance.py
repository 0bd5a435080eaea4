"""Provenance: what produced a trajectory, so a stored episode can be traced and replayed.

Every trajectory carries `provenance` (bridge/generate.py builds it; the store keeps it in
the rollout's metadata; the rollout page shows it):

    env, env_version     the environment and its version as the env server reported it:
                         the package version plus a hash of the env's code and data
    task_id              `env/split/index`, or `env/spec:<hash>` for a task given by spec
    task_spec_hash       the env's hash of the task spec it ran (canonical JSON)
    tokenizer            path or name; `tokenizer_hash` (its vocabulary and rules) and
                         `chat_template_hash`
    sampling_params      what the engine was sent (max_new_tokens is the per-turn cap)
    weight_versions      the policy weight version of each turn (SGLang's `weight_version`,
                         recorded by the episode; a resumed partial rollout keeps them all)
    bridge_version       the package version plus a hash of the plugin's and the contract's code

Hashes are the first 16 hex digits of a SHA-256.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from contract.provenance import canonical_hash, files_hash, package_version, short_hash, task_id

_PLUGIN_DIR = Path(__file__).resolve().parent
_CONTRACT_DIR = _PLUGIN_DIR.parent / "contract"


@cache
def bridge_version() -> str:
    """`<package version>+<hash of bridge/*.py and contract/*.py>`: the plugin slime loads and the
    contract it reads (not the tools)."""
    files = [*_PLUGIN_DIR.glob("*.py"), *_CONTRACT_DIR.glob("*.py")]
    return f"{package_version()}+{files_hash(files)}"


_TOKENIZERS: dict[int, tuple[Any, dict[str, str]]] = {}
_TOKENIZERS_LOCK = threading.Lock()


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, str]:
    """`tokenizer`, `tokenizer_hash` and `chat_template_hash` of a transformers tokenizer.

    Hashing the vocabulary takes ~0.1 s: computed once per tokenizer (call it first off the event
    loop, where the tokenizer is loaded) and cached.
    """
    key = id(tokenizer)
    hit = _TOKENIZERS.get(key)
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        vocab = backend.to_str().encode()
    else:
        vocab = orjson.dumps(sorted(tokenizer.get_vocab().items()))
    template = getattr(tokenizer, "chat_template", None)
    fingerprint = {
        "tokenizer": str(getattr(tokenizer, "name_or_path", "") or "unknown"),
        "tokenizer_hash": short_hash(vocab),
        "chat_template_hash": canonical_hash(template) if template is not None else "none",
    }
    with _TOKENIZERS_LOCK:
        _TOKENIZERS[key] = (tokenizer, fingerprint)  # keeps the tokenizer (renderers do anyway)
    return fingerprint


def episode_provenance(
    *,
    env: str,
    split: str | None,
    index: int | None,
    task_spec: Any,
    env_reported: Mapping[str, str],
    tokenizer: Mapping[str, str],
    sampling_params: Mapping[str, Any],
    turn_weight_versions: Sequence[str | None],
) -> dict[str, Any]:
    """The provenance record of one episode (see the module docstring)."""
    return {
        "env": env,
        "env_version": env_reported.get("env_version", "unknown"),
        "task_id": task_id(env, split, index, task_spec),
        "task_spec_hash": env_reported.get("task_spec_hash")
        or (canonical_hash(task_spec) if task_spec is not None else "unknown"),
        **tokenizer,
        "sampling_params": _jsonable(sampling_params),
        "weight_versions": [str(v) for v in turn_weight_versions if v is not None],
        "bridge_version": bridge_version(),
    }


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    """Sampling params as plain JSON values (anything else as its repr)."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        try:
            orjson.dumps(v)
            out[str(k)] = v
        except TypeError:
            out[str(k)] = repr(v)
    return out
