"""The Haiku environment: `submit_haiku(poem)` scored on structure and topic (and style by the
optional judge), with revisions; see envs/haiku/__init__.py for the formula."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

from openreward.environments import TextBlock, ToolOutput, tool
from pydantic import BaseModel, ConfigDict, Field

from contract.env_report import REWARD_PARTS_KEY
from envs.errors import JudgeError
from envs.haiku.judge import JUDGE_URL_ENV, judge_style
from envs.haiku.relevance import copy_reason, on_topic_words, poem_fingerprint, topic_words
from envs.haiku.syllables import (
    SyllableTable,
    analyze,
    line_words,
    loaded_syllable_table,
    syllable_table,
)
from envs.haiku.topics import (
    HUB_DATASET,
    TOPICS_FILE,
    load_hub_topics,
    read_topics,
    topic_split,
    topic_table,
)
from envs.options import parse_options, reset_task_cache
from envs.reporting import ReportingEnvironment
from envs.tripwires import CallRecord, Scope, Tripwire, Verdict

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
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
    """One submission's scores (envs/haiku/__init__.py gives the formula)."""

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
    REWARD_PARTS = ("structure", "topic", "original", "judge")
    """structure in [0, 1]; topic and original 1 or 0; judge the style score (with a judge)."""

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
            listed = topic_table().get(topic.strip(), ())
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
        syllable_table()

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

    def score(self, poem: str, table: SyllableTable) -> Score:
        """Structure, topic words, copying and the content score of one poem (no judge)."""
        lines, counts, structure = analyze(poem, table)
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
        loaded = loaded_syllable_table()
        table = loaded if loaded is not None else await _load_table_off_loop()
        s = self.score(params.poem[:MAX_POEM_CHARS], table)
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
                REWARD_PARTS_KEY: self._parts(s, style, judge_error),
            },
        )

    def _parts(self, s: Score, style: float | None, judge_error: str | None) -> dict[str, float]:
        """What the submission's reward is made of: structure, topic (on topic or not), original
        (not a copy of the prompt) and, when the judge scores, judge (its style score; 0 for a
        poem it is not asked about)."""
        parts = {
            "structure": s.structure,
            "topic": float(s.on_topic),
            "original": float(s.copied is None),
        }
        if self.judge_enabled() and judge_error is None:
            parts["judge"] = style if style is not None else 0.0
        return parts

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


def _task(split: str, index: int, topic: str) -> dict[str, Any]:
    """A task spec: the topic and its on-topic words (so the spec alone fixes the reward)."""
    return {
        "split": split,
        "index": index,
        "topic": topic,
        "words": topic_words(topic, topic_table().get(topic, ())),
    }


async def _load_table_off_loop() -> SyllableTable:
    return await asyncio.to_thread(syllable_table)
