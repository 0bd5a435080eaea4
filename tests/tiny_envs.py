"""Tiny ORS environments for the prepare_tasks tests (also served by the SDK's stock Server)."""

from __future__ import annotations

from typing import Any

from openreward.environments import (
    Environment,
    ListToolsOutput,
    TextBlock,
    ToolOutput,
    ToolSpec,
    tool,
)
from pydantic import BaseModel


class Answer(BaseModel):
    answer: int


class Tiny(Environment):
    """30 train and 10 test tasks; the answer is in the task spec."""

    @classmethod
    def list_splits(cls) -> list[str]:
        return ["train", "test"]

    @classmethod
    def list_tasks(cls, split: str) -> list[dict[str, Any]]:
        return [
            {"n": i, "split": split, "answer": 2 * i} for i in range(30 if split == "train" else 10)
        ]

    def __init__(self, task_spec: dict[str, Any] = {}, secrets: dict[str, str] = {}) -> None:  # noqa: B006 (the SDK's signature)
        super().__init__(task_spec, secrets)
        self.spec = task_spec

    def get_prompt(self) -> list[TextBlock]:
        return [
            TextBlock(text=f"{self.spec['split']} task {self.spec['n']}: double it."),
            TextBlock(text="Use submit."),
        ]

    @tool
    async def submit(self, params: Answer) -> ToolOutput:
        """Submit the answer."""
        ok = params.answer == self.spec["answer"]
        return ToolOutput(
            blocks=[TextBlock(text="ok" if ok else "no")], reward=float(ok), finished=True
        )


class Indexed(Environment):
    """Index-only (no list_tasks), a per-task tool, a ground truth method and configure(options)."""

    size = 1000

    @classmethod
    def configure(cls, options: dict[str, Any]) -> None:
        unknown = set(options) - {"size"}
        if unknown:
            raise ValueError(f"unknown option {sorted(unknown)[0]!r}")
        cls.size = int(options.get("size", 1000))

    @classmethod
    def list_splits(cls) -> list[str]:
        return ["train"]

    @classmethod
    def list_tasks(cls, split: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    @classmethod
    async def num_tasks(cls, split: str) -> int:
        return cls.size

    @classmethod
    async def get_task(cls, split: str, index: int) -> dict[str, Any]:
        return {"k": index, "solution": {"x": index}}

    @classmethod
    def ground_truth(cls, task_spec: dict[str, Any]) -> int:
        return task_spec["k"] * 10

    def __init__(self, task_spec: dict[str, Any] = {}, secrets: dict[str, str] = {}) -> None:  # noqa: B006 (the SDK's signature)
        super().__init__(task_spec, secrets)
        self.k = task_spec["k"]

    async def get_prompt(self) -> list[TextBlock]:
        return [TextBlock(text=f"indexed {self.k}")]

    def list_task_tools(self) -> ListToolsOutput:
        return ListToolsOutput(
            tools=[ToolSpec(name=f"hint_{self.k}", description="A hint.", input_schema=None)]
        )

    @tool
    async def answer(self, params: Answer) -> ToolOutput:
        """Answer."""
        return ToolOutput(blocks=[TextBlock(text="done")], reward=1.0, finished=True)


class Broken(Tiny):
    def get_prompt(self) -> list[TextBlock]:
        raise RuntimeError("prompt template missing\nsecond line")
