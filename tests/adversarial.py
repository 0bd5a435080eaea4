"""The most expensive tool inputs we know for every tool of every environment.

Used by tests/test_server.py (each must come back as a quick, clear answer) and by
`bench/env_server.py --attack` (a well-behaved client's p99 while an attacker sends them).
Each entry is (tool, arguments, whether it ends a fresh episode); the strings are what an RL
policy can write.
"""

from __future__ import annotations

from typing import Any

MIB = 1 << 20
# The longest tool-argument string that still fits the server's 1 MiB body limit.
BIG = "x" * (MIB - 4096)


def _haiku_line() -> str:
    """A 2,000-character line of words with several CMUdict pronunciations each."""
    words = "actually every separate different family interesting chocolate camera"
    return (words + " ") * 40


WORST_INPUTS: dict[str, list[tuple[str, dict[str, Any], bool]]] = {
    "gsm8k": [
        ("calculator", {"expression": "((((1/3)**64+1)**64)**64)**64"}, False),
        ("calculator", {"expression": "(((((1/3)**64+1)**64)**64)**64)**64"}, False),
        (
            "calculator",
            {"expression": "(1/3)**64*(1/7)**64*(1/11)**64*(1/13)**64*(1/17)**64"},
            False,
        ),
        ("calculator", {"expression": "9**9**9"}, False),
        ("calculator", {"expression": "1e-300**64 + 5e-324**64"}, False),
        ("calculator", {"expression": "(" * 99 + "1" + ")" * 99}, False),
        ("calculator", {"expression": "-" * 199 + "1"}, False),
        ("calculator", {"expression": BIG}, False),
        ("calculator", {"expression": [0] * 100_000}, False),
        (BIG[:100_000], {}, False),  # an unknown tool with a long name
        ("submit_answer", {"answer": "1e10000000"}, True),
        ("submit_answer", {"answer": BIG}, True),
    ],
    "haiku": [
        ("submit_haiku", {"poem": _haiku_line()}, False),
        ("submit_haiku", {"poem": "\n".join([_haiku_line()[:200]] * 10)}, False),
        ("submit_haiku", {"poem": BIG}, False),
    ],
    "whodunit": [
        ("list_clues", {"junk": BIG}, False),
        ("list_statements", {f"k{i}": i for i in range(50_000)}, False),
        (
            "submit_answer",
            {"who": BIG[:300_000], "what": BIG[:300_000], "where": BIG[:300_000]},
            True,
        ),
    ],
}
