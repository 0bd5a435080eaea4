"""Scoring an accusation: each correct part earns 1/3 (1/4 when a motive is asked).

Answers match the names the tools list regardless of case, punctuation, spacing and a leading
article ("family secret" = "A Family-Secret"), never a different name. A part of more than
MAX_ANSWER_CHARS characters names nothing a case lists and is wrong without being normalized: a
300 KB name cost 13 ms of the server's loop to normalize (the worst-inputs attack of
`bench/env_server.py --attack`).
"""

from __future__ import annotations

import re

_APOSTROPHES = re.compile(r"['\u2018\u2019\u02bc`]")
_PUNCTUATION = re.compile(r"[^\w\s]|_")
_ARTICLE = re.compile(r"^(?:the|an|a) ")
MAX_ANSWER_CHARS = 200
"""Longer than any name a case lists (the longest is under 40 characters), with room for spacing."""


def normalize_name(text: str | None) -> str:
    """Comparison key of an answer: case, punctuation, spacing and one leading article ignored.

    "A Family-Secret!" and "family secret" give the same key; apostrophes vanish
    ("lady's" = "ladys"), other punctuation separates words ("cast-iron" = "cast iron").
    Every name a case lists keeps its own key (tests check the whole pools).
    """
    s = _APOSTROPHES.sub("", str(text or "").casefold())
    s = " ".join(_PUNCTUATION.sub(" ", s).split())
    return _ARTICLE.sub("", s)


def score_answer(
    answer: dict[str, str], submitted: dict[str, str | None]
) -> tuple[float, dict[str, bool]]:
    """Fraction of correct components (1/3 each, or 1/4 each when a motive is asked) and per-part
    results."""
    parts = {k: _same_name(submitted.get(k), v) for k, v in answer.items()}
    return sum(parts.values()) / len(parts), parts


def _same_name(given: str | None, listed: str) -> bool:
    if given is not None and len(given) > MAX_ANSWER_CHARS:
        return False
    return normalize_name(given) == normalize_name(listed)
