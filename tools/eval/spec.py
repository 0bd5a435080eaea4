"""What an eval is: the models (`--model NAME=TARGET`), the sampling settings, and its identity.

A model is one of three kinds, told apart by its TARGET:

    NAME=http://host:30000             SGLang-compatible /generate (token in, token out)
    NAME=http://host:8000/v1           OpenAI-compatible /v1/chat/completions (a path ending in /v1)
    NAME=local:PATH                    the CPU engine (tools.engines.local_engine) on a local model
    NAME=generate:URL, NAME=openai:URL say the kind outright

followed by optional `,key=value` settings: `tokenizer=DIR` (/generate and local: the checkpoint's
tokenizer and chat template; default `--tokenizer`, for local the model itself), `model=ID`
(OpenAI: the served model name; default the endpoint's only model) and `api_key_env=VAR` (OpenAI:
send $VAR as the bearer key; no key is ever sent unless named here).

Sampling arguments (`--sampling-args JSON`, or `NAME=JSON` for one model) go to the engine as
they are, over the eval's temperature and top-p; the eval's own budget keys are refused.

An eval's identity is its spec (the tasks and their content, k, sampling, solve threshold, the
settings that shape an episode) and each model's identity (tools/eval/identity.py): the same
spec under the same name resumes; a different spec under an existing name is refused.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

import orjson

from tools.errors import EvalError

__all__ = [
    "EvalError",
    "EvalSpec",
    "ModelKind",
    "ModelSpec",
    "Sampling",
    "default_eval_name",
    "parse_model",
    "parse_sampling_args",
]

SPEC_VERSION = 2
"""2: the spec names its task set's content (`task_set`) and the shared sampling arguments."""
RESERVED_SAMPLING = frozenset(
    {
        "max_new_tokens",
        "max_tokens",
        "max_completion_tokens",
        "min_new_tokens",
        "n",
        "stream",
        "messages",
        "tools",
        "tool_choice",
        "model",
        "input_ids",
        "skip_special_tokens",
        "no_stop_trim",
        "spaces_between_special_tokens",
        "return_logprob",
        "logprobs",
    }
)
"""Sampling keys the eval sets itself (budgets, output format, the request's own fields)."""
MAX_SAMPLING_KEYS = 32
MAX_SAMPLING_BYTES = 8192
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SETTINGS = {
    "tokenizer": ("generate", "local"),
    "model": ("openai",),
    "api_key_env": ("openai",),
}


class ModelKind(str, Enum):
    """How the eval talks to a model."""

    GENERATE = "generate"
    """SGLang's /generate: token ids in and out, the bridge's own episode (chat template, token
    ledger)."""
    OPENAI = "openai"
    """/v1/chat/completions: messages in and out, tool calls parsed by the server."""
    LOCAL = "local"
    """tools.engines.local_engine started on a free port, then spoken to like GENERATE."""


@dataclass(frozen=True)
class ModelSpec:
    """One `--model NAME=TARGET[,key=value...]`."""

    name: str
    kind: ModelKind
    target: str
    """The endpoint URL (GENERATE, OPENAI) or the model directory or hub id (LOCAL)."""
    tokenizer: str | None = None
    served_model: str | None = None
    api_key_env: str | None = None
    sampling_args: dict[str, Any] = field(default_factory=dict)
    """`--sampling-args NAME=JSON` of this model (over the shared ones)."""

    @property
    def uses_tokens(self) -> bool:
        return self.kind is not ModelKind.OPENAI

    def describe(self) -> dict[str, Any]:
        """What the report names the model by (never a key)."""
        out: dict[str, Any] = {"kind": self.kind.value, "target": self.target}
        if self.tokenizer:
            out["tokenizer"] = self.tokenizer
        if self.served_model:
            out["model"] = self.served_model
        if self.sampling_args:
            out["sampling_args"] = dict(self.sampling_args)
        return out


def _kind_of_url(url: str) -> ModelKind:
    path = urlsplit(url).path.rstrip("/")
    if path.endswith("/v1") or path.endswith("/v1/chat/completions"):
        return ModelKind.OPENAI
    return ModelKind.GENERATE


def _check_url(name: str, url: str, kind: ModelKind) -> str:
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise EvalError(f"--model {name}: {url!r} is not an http(s) URL")
    if kind is ModelKind.GENERATE and u.scheme != "http":
        raise EvalError(f"--model {name}: a /generate endpoint must be plain http:// (got {url})")
    try:
        u.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise EvalError(f"--model {name}: {url!r} has an invalid port") from None
    if kind is ModelKind.OPENAI:
        base = url.rstrip("/")
        if base.endswith("/chat/completions"):
            base = base[: -len("/chat/completions")]
        return base
    return url.rstrip("/")


def parse_model(text: str, default_tokenizer: str | None = None) -> ModelSpec:
    """Parse `NAME=TARGET[,key=value...]`; EvalError with one line on anything malformed."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not rest.strip():
        raise EvalError(f"--model {text!r}: expected NAME=URL or NAME=local:PATH")
    if not _NAME.match(name):
        raise EvalError(
            f"--model {text!r}: the name must be 1-64 letters, digits, '.', '_' or '-' "
            "(it names the model in reports and the store)"
        )
    target, *pairs = [p.strip() for p in rest.split(",")]
    settings: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not value:
            raise EvalError(f"--model {name}: setting {pair!r} is not key=value")
        if key not in _SETTINGS:
            raise EvalError(
                f"--model {name}: unknown setting {key!r} (known: {', '.join(_SETTINGS)})"
            )
        settings[key] = value
    prefix, colon, after = target.partition(":")
    if colon and prefix in ("local", "generate", "openai"):
        kind, target = ModelKind(prefix), after
    else:
        kind = _kind_of_url(target)
    if kind is ModelKind.LOCAL:
        if not target:
            raise EvalError(f"--model {name}: local: needs a model directory, e.g. local:./ckpt")
    else:
        target = _check_url(name, target, kind)
    for key in settings:
        if kind.value not in _SETTINGS[key]:
            raise EvalError(f"--model {name}: {key}= does not apply to a {kind.value} model")
    tokenizer = settings.get("tokenizer")
    if kind is ModelKind.LOCAL:
        tokenizer = tokenizer or target
    elif kind is ModelKind.GENERATE:
        tokenizer = tokenizer or default_tokenizer
        if not tokenizer:
            raise EvalError(
                f"--model {name}: a /generate model needs its checkpoint's tokenizer and chat "
                "template: pass --tokenizer DIR (or ,tokenizer=DIR after its URL)"
            )
    key_env = settings.get("api_key_env")
    if key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key_env):
        raise EvalError(f"--model {name}: api_key_env={key_env!r} is not an environment variable")
    return ModelSpec(
        name=name,
        kind=kind,
        target=target,
        tokenizer=tokenizer,
        served_model=settings.get("model"),
        api_key_env=key_env,
    )


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of every episode of an eval."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 4096
    """Response budget of an episode (sampled plus appended tokens), also each turn's cap."""
    max_context_len: int | None = None
    """Context budget (prompt plus response); when set it replaces prompt + max_tokens."""
    args: dict[str, Any] = field(default_factory=dict)
    """`--sampling-args JSON`: sent to every model's engine as they are."""

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise EvalError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EvalError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise EvalError(f"--max-tokens must be >= 1, got {self.max_tokens}")
        if self.max_context_len is not None and self.max_context_len < 2:
            raise EvalError(f"--max-context-len must be >= 2, got {self.max_context_len}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def sglang_params(self, model_args: dict[str, Any] | None = None) -> dict[str, Any]:
        """The sampling params the bridge sends to /generate (what slime sends in training), with
        the shared and then the model's sampling arguments over them."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": -1,
            "max_new_tokens": self.max_tokens,
            "skip_special_tokens": False,
            "no_stop_trim": True,
            "spaces_between_special_tokens": False,
            **self.args,
            **(model_args or {}),
        }

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "max_context_len": self.max_context_len,
        }
        if self.args:
            out["args"] = dict(self.args)
        return out


@dataclass(frozen=True)
class EvalSpec:
    """What must be the same for two runs to be the same eval."""

    tasks: tuple[tuple[str, str], ...]
    """(env, task key) of every task, in eval order."""
    k: int
    sampling: Sampling
    solve_threshold: float | None = None
    """An episode is solved at reward >= this; None: at the task's max_reward."""
    task_set: str = ""
    """A hash of every task's content (its label and task spec): the same keys over changed data
    are another task set."""
    settings: dict[str, Any] | None = None
    """What else shapes an episode: per env its max_turns, no-tool-call rule and reward settings,
    and the prompt's thinking mode and system prompt."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise EvalError(f"--k must be >= 1, got {self.k}")

    def to_json(self) -> dict[str, Any]:
        return {
            "version": SPEC_VERSION,
            "k": self.k,
            "sampling": self.sampling.to_json(),
            "solve_threshold": self.solve_threshold,
            "settings": self.settings or {},
            "task_set": self.task_set,
            "tasks": [list(t) for t in self.tasks],
        }

    def digest(self) -> str:
        """A stable hash of the spec (hex)."""
        blob = orjson.dumps(self.to_json(), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(blob).hexdigest()


def default_eval_name(spec: EvalSpec, identities: dict[str, dict[str, Any]]) -> str:
    """`eval-<hash>` of the spec and each model's name and identity (tools/eval/identity.py): the
    same command resumes the same eval; a model pointed elsewhere makes another one."""
    h = hashlib.sha256(spec.digest().encode())
    for name, identity in identities.items():
        h.update(b"\0" + name.encode() + b"\0")
        h.update(orjson.dumps(identity, option=orjson.OPT_SORT_KEYS))
    return f"eval-{h.hexdigest()[:10]}"


def _sampling_object(text: str, where: str) -> dict[str, Any]:
    """A bounded JSON object of sampling arguments; EvalError (one line) otherwise."""
    if len(text.encode()) > MAX_SAMPLING_BYTES:
        raise EvalError(f"{where}: more than {MAX_SAMPLING_BYTES} bytes")
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise EvalError(f"{where}: not JSON ({str(e).splitlines()[0][:100]})") from None
    if not isinstance(obj, dict):
        raise EvalError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if len(obj) > MAX_SAMPLING_KEYS:
        raise EvalError(f"{where}: more than {MAX_SAMPLING_KEYS} keys")
    for key in obj:
        if not _KEY.match(key):
            raise EvalError(f"{where}: {key[:40]!r} is not a parameter name")
        if key in RESERVED_SAMPLING:
            raise EvalError(
                f"{where}: {key!r} is set by the eval (--max-tokens, --max-context-len and the "
                "request format are its own)"
            )
    return obj


def parse_sampling_args(
    items: list[str], models: list[ModelSpec]
) -> tuple[dict[str, Any], list[ModelSpec]]:
    """(the shared sampling arguments, the models with their own) of `--sampling-args` values:
    `JSON` for every model, `NAME=JSON` for one; later ones override earlier ones key by key."""
    shared: dict[str, Any] = {}
    own: dict[str, dict[str, Any]] = {}
    names = {m.name for m in models}
    for item in items:
        text = item.strip()
        if text.startswith("{"):
            shared.update(_sampling_object(text, "--sampling-args"))
            continue
        name, eq, rest = text.partition("=")
        if not eq:
            raise EvalError(f"--sampling-args {item[:60]!r}: expected JSON or NAME=JSON")
        if name not in names:
            known = ", ".join(sorted(names))
            raise EvalError(f"--sampling-args {name}=...: no --model {name} (models: {known})")
        own.setdefault(name, {}).update(_sampling_object(rest, f"--sampling-args {name}"))
    return shared, [replace(m, sampling_args=own[m.name]) if m.name in own else m for m in models]
