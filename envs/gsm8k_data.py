"""GSM8K data: which copy the gsm8k environment reads, and reading it.

Sources, first match wins:

1. `options.data_dir` (train_config.yaml `environments.gsm8k.options`): a directory with
   train.jsonl/test.jsonl or train*.parquet/test*.parquet;
2. `$GSM8K_DATA_DIR`: the same kind of directory;
3. the Hugging Face Hub (`datasets.load_dataset("openai/gsm8k", "main")`), only with
   `options.use_hub: true` (needs `pip install -e '.[hub]'` and the network);
4. the copy bundled in this package (envs/data/gsm8k: openai/grade-school-math, MIT; its
   README.md says where it comes from).

A directory that was asked for and is missing is an error at `check()` (the server calls it at
startup through `GSM8K.configure`), never a silent fallback to another copy. Rows are
`{question, answer}` with the answer ending in `#### N`.
"""

from __future__ import annotations

import enum
import gzip
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envs.errors import GSM8KDataMissing

if TYPE_CHECKING:  # annotations only
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

__all__ = [
    "BUNDLED_DIR",
    "DATA_DIR_ENV",
    "HUB_DATASET",
    "SPLITS",
    "DataSource",
    "GSM8KDataMissing",
    "SourceKind",
    "bundled_path",
    "load_tasks",
    "parse_final_answer",
    "resolve_source",
    "solution_steps",
]

SPLITS = ("train", "test")
DATA_DIR_ENV = "GSM8K_DATA_DIR"
HUB_DATASET = "openai/gsm8k"
BUNDLED_DIR = "data/gsm8k"  # inside the `envs` package: <split>.jsonl.gz, LICENSE, README.md


class SourceKind(str, enum.Enum):
    """Where a copy of GSM8K comes from."""

    OPTION_DIR = "options.data_dir"
    """A directory named in train_config.yaml."""
    ENV_DIR = "$" + DATA_DIR_ENV
    """A directory named by the environment variable."""
    HUB = "hub"
    """`datasets.load_dataset(HUB_DATASET, "main")`."""
    BUNDLED = "bundled"
    """The gzipped copy inside this package."""


@dataclass(frozen=True)
class DataSource:
    """One copy of GSM8K: its kind and, for a directory, its path."""

    kind: SourceKind
    path: str | None = None

    def __str__(self) -> str:
        if self.kind is SourceKind.HUB:
            return f"the Hub dataset {HUB_DATASET}"
        if self.kind is SourceKind.BUNDLED:
            return "the bundled copy"
        return f"{self.path} ({self.kind.value})"

    def check(self) -> None:
        """Raise GSM8KDataMissing now if this source cannot possibly be read."""
        if self.path is not None:
            data_dir = Path(self.path)
            if not data_dir.is_dir():
                raise GSM8KDataMissing(f"GSM8K data directory {self} does not exist{_hint(self)}")
            if not any(_split_files(data_dir, split) for split in SPLITS):
                raise GSM8KDataMissing(
                    f"GSM8K data directory {self} has no train.jsonl/test.jsonl "
                    f"or train*.parquet/test*.parquet{_hint(self)}"
                )
        elif self.kind is SourceKind.HUB:
            try:
                import datasets  # noqa: F401
            except ImportError:
                raise GSM8KDataMissing(_NO_DATASETS) from None


_NO_DATASETS = (
    "gsm8k use_hub: true needs the `datasets` package: pip install -e '.[hub]' "
    "(or drop use_hub to read the bundled copy)"
)


def _hint(source: DataSource) -> str:
    if source.kind is SourceKind.ENV_DIR:
        return f"; unset {DATA_DIR_ENV} to read the bundled copy"
    return "; drop options.data_dir to read the bundled copy"


def resolve_source(data_dir: str | None, use_hub: bool) -> DataSource:
    """The copy to read: `data_dir` > $GSM8K_DATA_DIR > the Hub if `use_hub` > the bundled copy."""
    if data_dir:
        return DataSource(SourceKind.OPTION_DIR, data_dir)
    from_env = os.environ.get(DATA_DIR_ENV, "").strip()
    if from_env:
        return DataSource(SourceKind.ENV_DIR, from_env)
    return DataSource(SourceKind.HUB) if use_hub else DataSource(SourceKind.BUNDLED)


def load_tasks(source: DataSource, split: str) -> list[dict[str, Any]]:
    """All tasks of `split` from `source`, as {split, index, question, label, steps}."""
    if source.kind is SourceKind.HUB:
        rows = _load_rows_from_hub(split)
    elif source.kind is SourceKind.BUNDLED:
        rows = _load_bundled_rows(split)
    else:
        source.check()
        rows = _load_rows_from_dir(Path(str(source.path)), split, source)
    return _to_tasks(rows, split, source)


def parse_final_answer(answer: str) -> str:
    """The number after `####` in a GSM8K solution, e.g. '1,200' from '... #### 1,200'."""
    if "####" not in answer:
        raise ValueError(f"GSM8K answer has no '#### N' line: {answer[-60:]!r}")
    return answer.rsplit("####", 1)[1].strip()


def solution_steps(answer: str) -> int:
    """Steps of a GSM8K reference solution: its non-empty lines before `####`."""
    return sum(1 for line in answer.split("####", 1)[0].splitlines() if line.strip())


# --------------------------------------------------------------------------- readers


def _parse_jsonl(f: Iterable[bytes], where: str) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise GSM8KDataMissing(f"{where}:{n}: invalid JSON: {e}") from None
    return rows


def bundled_path(split: str) -> Traversable:
    """The bundled `<split>.jsonl.gz`, a resource of the `envs` package."""
    return resources.files("envs").joinpath(f"{BUNDLED_DIR}/{split}.jsonl.gz")


def _load_bundled_rows(split: str) -> list[dict[str, Any]]:
    try:
        with bundled_path(split).open("rb") as raw, gzip.open(raw, "rb") as f:
            return _parse_jsonl(f, f"envs/{BUNDLED_DIR}/{split}.jsonl.gz")
    except (OSError, EOFError) as e:  # a broken install: the package data is part of it
        raise GSM8KDataMissing(
            f"the bundled GSM8K copy envs/{BUNDLED_DIR}/{split}.jsonl.gz cannot be read ({e}); "
            f"reinstall the package or set {DATA_DIR_ENV}"
        ) from None


def _read_parquet(paths: list[Path]) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        try:
            import pandas as pd
        except ImportError:
            raise GSM8KDataMissing(
                f"reading {paths[0]} needs pyarrow or pandas (pip install pyarrow), or use "
                "train.jsonl/test.jsonl"
            ) from None
        return [row for p in paths for row in pd.read_parquet(p).to_dict("records")]
    return [row for p in paths for row in pq.read_table(p).to_pylist()]


def _split_files(data_dir: Path, split: str) -> tuple[str, list[Path]] | None:
    for base in (data_dir, data_dir / "main"):
        jsonl = base / f"{split}.jsonl"
        if jsonl.is_file():
            return "jsonl", [jsonl]
        parquet = sorted(base.glob(f"{split}*.parquet"))
        if parquet:
            return "parquet", parquet
    return None


def _load_rows_from_dir(data_dir: Path, split: str, source: DataSource) -> list[dict[str, Any]]:
    found = _split_files(data_dir, split)
    if found is None:
        raise GSM8KDataMissing(
            f"GSM8K data directory {source} has no {split}.jsonl or {split}*.parquet"
        )
    kind, paths = found
    if kind == "parquet":
        return _read_parquet(paths)
    with paths[0].open("rb") as f:
        return _parse_jsonl(f, str(paths[0]))


def _load_rows_from_hub(split: str) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise GSM8KDataMissing(_NO_DATASETS) from None
    try:
        ds = datasets.load_dataset(HUB_DATASET, "main", split=split)
    except Exception as e:  # network, auth, offline mode: all mean "not available"
        raise GSM8KDataMissing(
            f"gsm8k use_hub: true: datasets.load_dataset({HUB_DATASET!r}) failed: "
            f"{type(e).__name__}: {' '.join(str(e).split())} "
            "(drop use_hub to read the bundled copy)"
        ) from None
    return [dict(r) for r in ds]


def _to_tasks(rows: list[dict[str, Any]], split: str, source: DataSource) -> list[dict[str, Any]]:
    tasks = []
    for i, row in enumerate(rows):
        try:
            question = str(row["question"]).strip()
            label = parse_final_answer(str(row["answer"]))
        except (KeyError, ValueError) as e:
            raise GSM8KDataMissing(f"{source}: {split} row {i} is not a GSM8K row ({e})") from None
        steps = solution_steps(str(row["answer"]))
        tasks.append(
            {"split": split, "index": i, "question": question, "label": label, "steps": steps}
        )
    return tasks
