"""The WhoDunIt environment: six information tools and one accusation (`submit_answer`) that ends
the case. Tripwire: `solved_without_evidence`, a fully correct accusation although the clues and
statements the model read leave more than one answer open (e.g. it read neither)."""

from __future__ import annotations

from typing import Any, ClassVar

from openreward.environments import TextBlock, ToolOutput, tool
from pydantic import BaseModel, Field, ValidationError

from contract.env_report import REWARD_PARTS_KEY
from envs.options import options_error, parse_options, reset_task_cache
from envs.reporting import ReportingEnvironment
from envs.tripwires import CallRecord, Tripwire, Verdict
from envs.whodunit.case import Case, case_seed, generate_case
from envs.whodunit.options import SPLITS, Difficulty, WhoDunItOptions
from envs.whodunit.scoring import score_answer


class NoInput(BaseModel):
    pass


class AnswerInput(BaseModel):
    who: str = Field(description="The killer's name, as list_suspects shows it.")
    what: str = Field(description="The weapon, as list_weapons shows it.")
    where: str = Field(description="The location, as list_locations shows it.")
    why: str | None = Field(
        default=None, description="The motive, as list_motives shows it (when one is asked)."
    )


def _text(text: str) -> ToolOutput:
    return ToolOutput(blocks=[TextBlock(text=text)], reward=None, finished=False)


SOLVED_WITHOUT_EVIDENCE = "solved_without_evidence"


class WhoDunIt(ReportingEnvironment):
    """Solve a generated murder mystery from clues and suspect statements; one submission."""

    TRIPWIRES = (
        Tripwire(
            SOLVED_WITHOUT_EVIDENCE,
            "a fully correct accusation although the clues and statements read before it "
            "leave more than one answer open",
        ),
    )

    REWARD_PARTS = ("who", "what", "where", "why")
    """Each part of the accusation: 1 when right (why only when a motive is asked)."""

    _options: ClassVar[WhoDunItOptions] = WhoDunItOptions()
    _difficulty: ClassVar[dict[str, Any]] = Difficulty().model_dump()

    @classmethod
    def configure(cls, options: dict[str, Any]) -> None:
        """Validate and apply `environments.whodunit.options`; raises ValueError naming a bad
        key."""
        cls._options = parse_options(WhoDunItOptions, options, "whodunit")
        cls._difficulty = cls._options.difficulty().model_dump()
        reset_task_cache(cls)

    @classmethod
    def split_size(cls, split: str) -> int:
        if split not in SPLITS:
            raise ValueError(f"whodunit has no split {split!r}; splits are {', '.join(SPLITS)}")
        return cls._options.train_size if split == "train" else cls._options.test_size

    @classmethod
    def task_spec(cls, split: str, index: int) -> dict[str, Any]:
        """The task spec of (split, index): its seed and difficulty, enough to regenerate the
        case."""
        size = cls.split_size(split)
        if not 0 <= index < size:
            raise IndexError(f"whodunit {split} has {size} tasks; index {index} is out of range")
        return {
            "split": split,
            "index": index,
            "seed": case_seed(split, index, cls._options.seed),
            "difficulty": dict(cls._difficulty),
        }

    @classmethod
    def case_for(cls, split: str, index: int) -> Case:
        """The case of (split, index) under the current options."""
        spec = cls.task_spec(split, index)
        return generate_case(spec["seed"], Difficulty(**spec["difficulty"]))

    @classmethod
    def list_splits(cls) -> list[str]:
        return list(SPLITS)

    @classmethod
    def list_tasks(cls, split: str) -> list[dict[str, Any]]:
        return [cls.task_spec(split, i) for i in range(cls.split_size(split))]

    @classmethod
    async def num_tasks(cls, split: str) -> int:
        return cls.split_size(split)

    @classmethod
    async def get_task(cls, split: str, index: int) -> dict[str, Any]:
        return cls.task_spec(split, index)

    @classmethod
    def case_from_spec(cls, task_spec: dict[str, Any]) -> Case:
        """The case a task spec describes: its seed (or split+index) and difficulty (else the
        current options)."""
        seed = task_spec.get("seed")
        if seed is None and "split" in task_spec and "index" in task_spec:
            seed = case_seed(str(task_spec["split"]), int(task_spec["index"]), cls._options.seed)
        if not isinstance(seed, int):
            raise ValueError("a whodunit task_spec needs 'seed' (int) or 'split' and 'index'")
        try:
            difficulty = Difficulty(**task_spec.get("difficulty", cls._difficulty))
        except ValidationError as e:
            raise options_error("whodunit task_spec difficulty", e) from None
        return generate_case(seed, difficulty)

    @classmethod
    def ground_truth(cls, task_spec: dict[str, Any]) -> dict[str, str]:
        """The solution of a task (slime's `label`): {who, what, where[, why]}."""
        return cls.case_from_spec(task_spec).answer()

    def __init__(self, task_spec: dict[str, Any] = {}, secrets: dict[str, str] = {}) -> None:  # noqa: B006 (the SDK's signature)
        super().__init__(task_spec, secrets)
        self.case = self.case_from_spec(task_spec)

    async def get_prompt(self) -> list[TextBlock]:
        return [TextBlock(text=self.case.prompt())]

    @tool
    async def list_suspects(self, params: NoInput) -> ToolOutput:
        """List the suspects."""
        return _text(self.case.tool_texts["list_suspects"])

    @tool
    async def list_weapons(self, params: NoInput) -> ToolOutput:
        """List the possible weapons."""
        return _text(self.case.tool_texts["list_weapons"])

    @tool
    async def list_locations(self, params: NoInput) -> ToolOutput:
        """List the possible locations of the murder."""
        return _text(self.case.tool_texts["list_locations"])

    @tool
    async def list_motives(self, params: NoInput) -> ToolOutput:
        """List the possible motives (if this case asks for one)."""
        return _text(self.case.tool_texts["list_motives"])

    @tool
    async def list_clues(self, params: NoInput) -> ToolOutput:
        """List the clues found by the investigation. Every clue is true."""
        return _text(self.case.tool_texts["list_clues"])

    @tool
    async def list_statements(self, params: NoInput) -> ToolOutput:
        """List what each suspect told the police. The rules in the case say who tells the truth."""
        return _text(self.case.tool_texts["list_statements"])

    @tool
    async def submit_answer(self, params: AnswerInput) -> ToolOutput:
        """Submit who did it, with what, where (and why when a motive is asked). Ends the case."""
        answer = self.case.answer()
        reward, parts = score_answer(answer, params.model_dump())
        verdict = ", ".join(f"{k}: {'correct' if ok else 'wrong'}" for k, ok in parts.items())
        text = f"Case closed. {verdict}. Score {reward:.2f}."
        return ToolOutput(
            blocks=[TextBlock(text=text)],
            reward=reward,
            finished=True,
            metadata={
                "parts": parts,
                "solution": answer,
                REWARD_PARTS_KEY: {k: float(ok) for k, ok in parts.items()},
            },
        )

    def check_tripwires(self, calls: list[CallRecord]) -> Verdict:
        """Trips when a fully correct accusation was not determined by what the model read."""
        last = calls[-1]
        if last.name != "submit_answer" or last.reward != 1.0:
            return Verdict()
        read = {c.name for c in calls[:-1]}
        open_answers = self.case.solutions(
            clues="list_clues" in read, statements="list_statements" in read
        )
        return Verdict(tripped=[SOLVED_WITHOUT_EVIDENCE] if len(open_answers) > 1 else [])
