"""Relevance: whether a poem is on its topic (its words share a Snowball stem with the topic's
words) and whether it copies the prompt (half or more of its words in three-word runs of the
prompt, or content words that are all the topic's own).

Stems come from PyStemmer, the Snowball project's C build of the same algorithm the pure-Python
`snowballstemmer` runs (identical stems on all 126,052 CMUdict words) at ~1 us a word instead of
~30: one submission of 2,000 characters stems every word, and with the pure-Python stemmer a
client repeating such submissions held the server's loop ~10 ms a call (the budget-hog attack of
`bench/env_server.py --attack`: a well-behaved client's p99 2.8x quiet, 1.05-1.96x with this)."""

from __future__ import annotations

import threading

import Stemmer

from contract.provenance import short_hash
from envs.haiku.syllables import line_words

# Words too common to say what a poem is about (topic words minus these count when a topic has no
# list).
SMALL_WORDS = frozenset(
    """a an the of on in at by to for from with into onto over under through after before behind
    across along among around about above below beside between beyond near off out up down and or
    but nor so yet its it's their his her my our your this that these those is are was were be been
    being as it they them he she we you i me us him not no all each every some 3 am pm do does did
    has have had will would can could may might must shall should very just""".split()
)
COPY_RUN = 3  # words in a run shared with the prompt
COPY_SHARE = 0.5  # share of the poem's words in shared runs at which it counts as a copy

_stemmer = Stemmer.Stemmer("english")
_stem_lock = threading.Lock()


def stem(word: str) -> str:
    """The Snowball (Porter2) stem of a lower-case word: 'raining', 'rains' -> 'rain'."""
    with _stem_lock:  # the stemmer keeps per-call state
        return _stemmer.stemWord(word.replace("'", ""))


def topic_words(topic: str, listed: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The words that make a poem on topic: the bundled list, else the topic's own content words."""
    if listed:
        return [w.lower() for w in listed]
    return [w for w in line_words(topic) if w not in SMALL_WORDS]


def on_topic_words(words: list[str], accepted: list[str]) -> list[str]:
    """The poem's words that share a stem with an accepted word (in poem order, each once)."""
    stems = {stem(w) for w in accepted}
    hits: dict[str, None] = {}
    for w in words:
        if w in accepted or stem(w) in stems:
            hits.setdefault(w, None)
    return list(hits)


def _runs(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def copy_reason(words: list[str], prompt_words: list[str], topic: str) -> str | None:
    """Why a poem counts as a copy of the prompt, or None.

    A copy has half or more of its words inside three-word runs that also occur in the prompt,
    or content words that are all the topic's own.
    """
    if not words:
        return None
    shared = _runs(prompt_words, COPY_RUN)
    covered = [False] * len(words)
    for i in range(len(words) - COPY_RUN + 1):
        if tuple(words[i : i + COPY_RUN]) in shared:
            covered[i : i + COPY_RUN] = [True] * COPY_RUN
    if sum(covered) >= COPY_SHARE * len(words):
        return "it repeats the prompt's words"
    content = {stem(w) for w in words if w not in SMALL_WORDS}
    if content and content <= {stem(w) for w in line_words(topic)}:
        return "it uses no word of its own beyond the topic's"
    return None


def poem_fingerprint(poem: str) -> str:
    """A hash of a poem's words (case, punctuation and line breaks do not matter)."""
    return short_hash(" ".join(line_words(poem)).encode())
