"""The conformance check's inputs: plausible ones that follow a tool's schema, and hostile ones.

`plausible(schema, rng)` gives arguments a model might send (right types, small values), used to
play episodes. `hostile(schema, rng)` gives what a bad model or a hostile client sends: huge and
deeply nested strings, expression bombs, numbers at the edges of their range and past it, wrong
types, missing and unknown fields. Each input fits the env server's 1 MiB body limit, so every
one reaches the tool (or its input validation): what a tool does with it is what is checked.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

__all__ = ["hostile", "plausible"]

MAX_STRING = 200_000
"""The longest hostile string (characters), well under the server's 1 MiB body limit."""

HOSTILE_STRINGS: tuple[str, ...] = (
    "",
    " ",
    "a" * MAX_STRING,
    "9" * 20_000,
    "9**9**9**9**9",
    "2**2**2**2**2**2**2",
    "10**10**10",
    "(" * 5_000 + "1" + ")" * 5_000,
    "[" * 5_000 + "]" * 5_000,
    "-" * 10_000 + "1",
    "1" + "+1" * 50_000,
    "1e309",
    "-1e309",
    "nan",
    "inf",
    "1/0",
    "0/0",
    "(a+)+$" + "a" * 40 + "!",
    "\x00\x01\x02",
    "\ud7ff\ue000\U0001f600" * 2_000,
    "\u202e\u200b" * 1_000,
    "%s%n%x{0}{}{{}}",
    "'; DROP TABLE tasks; --",
    "../../../../etc/passwd",
    "\n" * 20_000,
    "a," * 50_000,
    "<tool_call>{}</tool_call>",
    "{" * 2_000,
)
HOSTILE_NUMBERS: tuple[Any, ...] = (
    0,
    -1,
    1,
    2**31,
    2**63 - 1,
    -(2**63),
    10**18,
    1e308,
    -1e308,
    5e-324,
    0.1,
    -0.0,
)
OTHER_TYPES: tuple[Any, ...] = (None, True, 0, 1.5, "x", [], {}, [1, "a"], {"a": {"b": 1}})


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


def _properties(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    props = schema.get("properties")
    if not isinstance(props, dict):
        return {}
    return {k: v if isinstance(v, dict) else {} for k, v in props.items()}


def _types(prop: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    """The JSON types a property allows (anyOf/oneOf flattened, one $ref level resolved)."""
    ref = prop.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        prop = defs.get(ref.rsplit("/", 1)[-1], {})
    kinds = prop.get("type")
    if isinstance(kinds, str):
        return [kinds]
    if isinstance(kinds, list):
        return [k for k in kinds if isinstance(k, str)]
    found: list[str] = []
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in prop.get(key) or []:
            if isinstance(sub, dict):
                found += _types(sub, defs)
    if "enum" in prop or "const" in prop:
        found.append("enum")
    return found or ["string"]


def _plausible_value(prop: dict[str, Any], defs: dict[str, Any], rng: random.Random) -> Any:
    ref = prop.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        prop = defs.get(ref.rsplit("/", 1)[-1], {})
    if "const" in prop:
        return prop["const"]
    if isinstance(prop.get("enum"), list) and prop["enum"]:
        return rng.choice(prop["enum"])
    kind = next((k for k in _types(prop, defs) if k != "null"), "string")
    if kind in ("integer", "number"):
        lo = prop.get("minimum", prop.get("exclusiveMinimum", 0))
        lo = lo if isinstance(lo, (int, float)) else 0
        value = int(lo) + rng.randint(0, 3)
        return value if kind == "integer" else float(value)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array":
        raw = prop.get("items")
        items: dict[str, Any] = raw if isinstance(raw, dict) else {}
        return [_plausible_value(items, defs, rng) for _ in range(rng.randint(0, 2))]
    if kind == "object":
        return plausible(prop, rng, defs)
    words = ("1", "42", "yes", "a", "the answer", "3 apples")
    return rng.choice(words)


def plausible(
    schema: dict[str, Any], rng: random.Random, defs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Arguments that follow the schema: every required field, some optional ones, small values."""
    defs = defs if defs is not None else schema.get("$defs") or {}
    required = set(schema.get("required") or [])
    out: dict[str, Any] = {}
    for name, prop in _properties(schema).items():
        if name in required or rng.random() < 0.5:
            out[name] = _plausible_value(prop, defs, rng)
    return out


def _hostile_values(kind: str, rng: random.Random) -> Iterator[Any]:
    if kind == "string" or kind == "enum":
        yield from HOSTILE_STRINGS
    elif kind in ("integer", "number"):
        yield from HOSTILE_NUMBERS
    elif kind == "boolean":
        yield from (True, False)
    elif kind == "array":
        yield from ([], ["a"] * 20_000, [0] * 20_000, _nested(200), [HOSTILE_STRINGS[2]])
    elif kind == "object":
        yield from ({}, _nested(200), {f"k{i}": i for i in range(5_000)})


def hostile(schema: dict[str, Any], rng: random.Random, limit: int = 80) -> list[dict[str, Any]]:
    """Up to `limit` hostile argument sets for one tool, the edge cases first, in a fixed order
    for a given `rng` seed."""
    defs = schema.get("$defs") or {}
    props = _properties(schema)
    base = plausible(schema, rng, defs)
    cases: list[dict[str, Any]] = [{}, {**base, "__unexpected__": HOSTILE_STRINGS[2]}]
    per_field: list[dict[str, Any]] = []
    for name, prop in props.items():
        kinds = _types(prop, defs)
        for kind in dict.fromkeys(kinds):
            per_field += [{**base, name: v} for v in _hostile_values(kind, rng)]
        per_field += [{**base, name: v} for v in OTHER_TYPES]
    rng.shuffle(per_field)
    # everything at once: the largest string in every string field
    if props:
        cases.append(
            {
                name: HOSTILE_STRINGS[2] if "string" in _types(p, defs) else 2**63 - 1
                for name, p in props.items()
            }
        )
    cases += per_field
    return cases[:limit]
