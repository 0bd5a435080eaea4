"""Which model an eval evaluated: each model's identity, what is checked before its numbers are
reused.

Two parts, both stored with the eval's model (`eval_models.endpoint`):

- static, read before anything is contacted: the kind, the target (URL or path), the served model
  id when named, the sampling arguments of this model, the tokenizer (path and a hash of its
  files) and, for a local checkpoint, the checkpoint itself (`checkpoint_identity`). It is part
  of the default eval name: a model pointed elsewhere makes a new eval, never a silent reuse.
- `served`, what the server says it serves, asked before episodes run (and, with a short timeout,
  when they are all stored): SGLang's `/get_model_info` (model path, weight version) or the
  OpenAI `/models` entry (id, and vLLM's `root`, the checkpoint path). A checkpoint swapped behind
  the same URL is caught here.

A checkpoint's identity is its resolved path, the training step its path names (`iter_0000100`,
`checkpoint-100`, `step_100`, `global_step100`), a hash of its config and weights index, and a
stamp of its weight files (names, sizes, modification times) when the directory is readable here.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import httpx
import orjson

from tools.eval.spec import ModelKind, ModelSpec

__all__ = [
    "checkpoint_identity",
    "generate_served_identity",
    "served_from_model_info",
    "served_from_models",
    "static_identity",
    "tokenizer_identity",
]

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "tokenizer.model",
)
CONFIG_FILES = ("config.json", "generation_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
MAX_WEIGHT_FILES = 4096
MAX_INFO_BYTES = 1 << 20
MAX_VALUE_CHARS = 500
_STEP = re.compile(r"(?:iter_|checkpoint-|step_|global_step|step-)0*(\d{1,12})\b")


def _hash(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p + b"\0")
    return h.hexdigest()[:16]


def _files_hash(d: Path, names: tuple[str, ...] | list[str]) -> str | None:
    """A hash of the named files of `d` that exist (name and contents), None when none does."""
    parts = []
    for name in names:
        f = d / name
        if f.is_file():
            parts += [name.encode(), f.read_bytes()]
    return _hash(parts) if parts else None


def step_of(path: str) -> int | None:
    """The training step a checkpoint path names (the last match), else None."""
    found = _STEP.findall(path)
    return int(found[-1]) if found else None


def checkpoint_identity(path: str) -> dict[str, Any]:
    """Path, step, and (for a directory readable here) config hash and weight-file stamp."""
    p = Path(path).expanduser()
    out: dict[str, Any] = {"path": str(p.resolve()) if p.exists() else path}
    step = step_of(out["path"])
    if step is not None:
        out["step"] = step
    if not p.is_dir():
        return out
    try:
        indexes = sorted(f.name for f in p.glob("*.index.json"))
        config = _files_hash(p, [*CONFIG_FILES, *indexes])
        weights = sorted(f for f in p.iterdir() if f.name.endswith(WEIGHT_SUFFIXES))
        stamp = [
            f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode()
            for f in weights[:MAX_WEIGHT_FILES]
            if (st := f.stat())
        ]
    except OSError:
        return out
    if config:
        out["config_hash"] = config
    if stamp:
        out["weights_stamp"] = _hash(stamp)
    return out


def tokenizer_identity(path: str) -> dict[str, Any]:
    """The tokenizer's path and, for a directory, a hash of its files."""
    p = Path(path).expanduser()
    out: dict[str, Any] = {"path": str(p.resolve()) if p.exists() else path}
    if p.is_dir():
        try:
            files = _files_hash(p, TOKENIZER_FILES)
        except OSError:
            files = None
        if files:
            out["files_hash"] = files
    return out


def static_identity(m: ModelSpec) -> dict[str, Any]:
    """What a model is before it is contacted (module docstring)."""
    out: dict[str, Any] = {"kind": m.kind.value, "target": m.target}
    if m.served_model:
        out["model"] = m.served_model
    if m.tokenizer:
        out["tokenizer"] = tokenizer_identity(m.tokenizer)
    if m.kind is ModelKind.LOCAL:
        out["checkpoint"] = checkpoint_identity(m.target)
    if m.sampling_args:
        out["sampling_args"] = dict(m.sampling_args)
    return out


def _short(value: Any) -> Any:
    """A scalar from a server's answer, bounded (strings cut, other types dropped)."""
    if isinstance(value, str):
        return value[:MAX_VALUE_CHARS]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return None


async def _get_json(client: httpx.AsyncClient, url: str, timeout: float) -> Any:
    """The JSON body of GET `url` (at most MAX_INFO_BYTES), None on any failure."""
    try:
        async with client.stream("GET", url, timeout=timeout) as r:
            if r.status_code != 200:
                return None
            data = bytearray()
            async for chunk in r.aiter_bytes():
                data += chunk
                if len(data) > MAX_INFO_BYTES:
                    return None
        return orjson.loads(bytes(data))
    except (httpx.HTTPError, orjson.JSONDecodeError):
        return None


def served_from_models(entries: list[dict[str, Any]], served_model: str | None) -> dict[str, Any]:
    """The served identity of an OpenAI endpoint from its `/models` entries: the served id, and
    vLLM's `root` (the checkpoint path) with that checkpoint's identity."""
    entry = next((x for x in entries if x.get("id") == served_model), None) or {}
    out = {"model": _short(entry.get("id", served_model)), "root": _short(entry.get("root"))}
    return _with_checkpoint(out, out["root"])


def served_from_model_info(info: Any) -> dict[str, Any] | None:
    """The served identity of an SGLang server from its `/get_model_info` answer."""
    if not isinstance(info, dict):
        return None
    out = {
        "model_path": _short(info.get("model_path")),
        "weight_version": _short(info.get("weight_version")),
    }
    return _with_checkpoint(out, out["model_path"])


def _with_checkpoint(out: dict[str, Any], path: Any) -> dict[str, Any]:
    if isinstance(path, str) and path:
        out["checkpoint"] = checkpoint_identity(path)
    return {k: v for k, v in out.items() if v is not None}


async def generate_served_identity(url: str, timeout: float = 10.0) -> dict[str, Any] | None:
    """What the SGLang-compatible server at `url` says it serves; None when it does not say."""
    async with httpx.AsyncClient(trust_env=False) as client:
        return served_from_model_info(await _get_json(client, f"{url}/get_model_info", timeout))
