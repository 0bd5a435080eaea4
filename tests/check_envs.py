"""Small plugin environments for tests/test_check.py and tests/test_registry.py: one that passes
every conformance check, and one per defect the check must name (each differs from `Good` in
that defect alone). Served by name as `check_envs:Good` with tests/ on PYTHONPATH."""

from __future__ import annotations

import random
from typing import Any, ClassVar

from openreward.environments import Environment, TextBlock, ToolOutput, tool
from pydantic import BaseModel, ConfigDict, Field

from envs.options import parse_options, reset_task_cache
from envs.reporting import ReportingEnvironment


class GoodOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_tasks: int = Field(default=20, ge=1, le=1000)


class Guess(BaseModel):
    model_config = ConfigDict(extra="forbid")

    number: int = Field(ge=0, le=100, description="Your guess, 0 to 100.")


class Note(BaseModel):
    text: str = Field(description="A note to keep.")


class Good(ReportingEnvironment):
    """Guess a number: `note` keeps a note (no reward), `guess` ends the episode."""

    options: ClassVar[GoodOptions] = GoodOptions()

    def __init__(self, task_spec: Any = None, secrets: Any = None) -> None:
        super().__init__(task_spec or {}, secrets or {})
        self.notes: list[str] = []

    @classmethod
    def configure(cls, options: dict[str, Any]) -> None:
        cls.options = parse_options(GoodOptions, options, "good")
        reset_task_cache(cls)

    @classmethod
    def list_splits(cls) -> list[str]:
        return ["train"]

    @classmethod
    def list_tasks(cls, split: str) -> list[dict[str, Any]]:
        return [{"index": i, "secret": (i * 37) % 101} for i in range(cls.options.num_tasks)]

    async def get_prompt(self) -> list[TextBlock]:
        return [TextBlock(text=f"Task {self.task_spec['index']}: guess my number (0-100).")]

    def note_text(self, params: Note) -> str:
        self.notes.append(params.text[:100])
        return f"{len(self.notes)} notes kept."

    @tool
    async def note(self, params: Note) -> ToolOutput:
        """Keep a note."""
        return ToolOutput(blocks=[TextBlock(text=self.note_text(params))])

    def score(self, number: int) -> float:
        return 1.0 if number == self.task_spec["secret"] else 0.0

    @tool
    async def guess(self, params: Guess) -> ToolOutput:
        """Guess the number. Ends the episode."""
        reward = self.score(params.number)
        return ToolOutput(blocks=[TextBlock(text=f"reward {reward}")], reward=reward, finished=True)


class AcceptsAnyOption(Good):
    @classmethod
    def configure(cls, options: dict[str, Any]) -> None:
        cls.options = GoodOptions(**{k: v for k, v in options.items() if k == "num_tasks"})


class UnseededTasks(Good):
    async def get_prompt(self) -> list[TextBlock]:
        return [TextBlock(text=f"Guess my number; today's hint is {random.random():.6f}.")]


class BadSchema(Good):
    @classmethod
    def list_tools(cls) -> Any:
        listed = super().list_tools()
        for spec in listed.tools:
            if spec.name == "note":
                spec.input_schema = {"type": "object", "properties": {"text": {"type": "txt"}}}
        return listed


class RewardOutOfRange(Good):
    def score(self, number: int) -> float:
        return 5.0 if number == self.task_spec["secret"] else 0.0 if number % 2 else 1.5


class NeverFinishes(Good):
    @tool
    async def guess(self, params: Guess) -> ToolOutput:
        """Guess the number."""
        return ToolOutput(blocks=[TextBlock(text="try again")], reward=0.0)


class SharedState(Good):
    kept: ClassVar[list[str]] = []  # one list for every session: the defect

    def note_text(self, params: Note) -> str:
        self.kept.append(params.text[:100])
        return f"{len(self.kept)} notes kept."


class SlowOnLongInput(Good):
    def note_text(self, params: Note) -> str:
        total = 0
        for ch in params.text:  # pure-Python work per character: seconds of CPU on 200 kB
            for _ in range(400):
                total += ord(ch)
        return f"checksum {total % 97}"


class RaisesOnBadInput(Good):
    def note_text(self, params: Note) -> str:
        return f"note number {int(params.text)}"  # ValueError on any text that is not a number


class NoProvenance(Environment):
    """`Good` on the SDK's base class: its outputs carry no provenance."""

    def __init__(self, task_spec: Any = None, secrets: Any = None) -> None:
        super().__init__(task_spec or {}, secrets or {})

    @classmethod
    def list_splits(cls) -> list[str]:
        return ["train"]

    @classmethod
    def list_tasks(cls, split: str) -> list[dict[str, Any]]:
        return [{"index": i, "secret": i} for i in range(5)]

    async def get_prompt(self) -> list[TextBlock]:
        return [TextBlock(text="Guess my number (0-100).")]

    @tool
    async def guess(self, params: Guess) -> ToolOutput:
        """Guess the number. Ends the episode."""
        hit = params.number == self.task_spec["secret"]
        return ToolOutput(blocks=[TextBlock(text="done")], reward=float(hit), finished=True)


DEFECTS = {
    "AcceptsAnyOption": "options",
    "UnseededTasks": "tasks",
    "BadSchema": "tool_schemas",
    "RewardOutOfRange": "rewards",
    "NeverFinishes": "finishes",
    "SharedState": "isolation",
    "SlowOnLongInput": "budget",
    "RaisesOnBadInput": "bad_input",
    "NoProvenance": "provenance",
}
"""Each defective class and the one check it must fail."""


def not_an_environment() -> None:
    """A function: naming it as an environment is an error."""
