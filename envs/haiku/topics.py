"""The topics: the bundled list with each topic's on-topic words (data/haiku_topics.txt), the
Hub's keywords (`hub_topics`), and the fixed train/test assignment of a topic."""

from __future__ import annotations

import functools
import zlib
from pathlib import Path

TOPICS_FILE = Path(__file__).parent.parent / "data" / "haiku_topics.txt"
HUB_DATASET = "statworx/haiku"


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


@functools.cache
def topic_table() -> dict[str, tuple[str, ...]]:
    """The bundled topic table, read once."""
    return read_topic_table()
