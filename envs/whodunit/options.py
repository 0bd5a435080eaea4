"""WhoDunIt's options: the difficulty knobs of a case and the split sizes of train_config.yaml."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

SPLITS = ("train", "test")
# Seeds of split s are SEED_OFFSET[s] + index: the ranges never overlap.
SEED_OFFSET = {"train": 0, "test": 1 << 31}
MAX_SPLIT_SIZE = 1 << 30


class Difficulty(BaseModel):
    """The knobs that shape one case; stored in each task spec so a spec regenerates the same
    case."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    suspects: int = Field(default=5, ge=3, le=8)
    weapons: int = Field(default=5, ge=3, le=8)
    locations: int = Field(default=5, ge=3, le=8)
    motive: bool = True  # ask for the motive too (scores 1/4 per component instead of 1/3)
    motives: int = Field(default=4, ge=2, le=6)
    min_clues: int = Field(
        default=6, ge=0, le=40
    )  # pad the minimal clue set with true, redundant clues
    statements_per_suspect: int = Field(default=1, ge=1, le=3)
    lying_statements: int = Field(
        default=1, ge=0, le=3
    )  # lies the killer tells among their statements

    @model_validator(mode="after")
    def _lies_fit(self) -> Difficulty:
        if self.lying_statements > self.statements_per_suspect:
            raise ValueError("lying_statements cannot exceed statements_per_suspect")
        return self


DEFAULT_DIFFICULTY = Difficulty()


class WhoDunItOptions(Difficulty):
    """`environments.whodunit.options` in train_config.yaml: difficulty plus split sizes."""

    train_size: int = Field(default=10_000, ge=1, le=MAX_SPLIT_SIZE)
    test_size: int = Field(default=500, ge=1, le=MAX_SPLIT_SIZE)
    seed: int = Field(
        default=0, ge=0, le=1 << 20
    )  # shifts both splits to a different family of cases

    def difficulty(self) -> Difficulty:
        return Difficulty(**{k: getattr(self, k) for k in Difficulty.model_fields})
