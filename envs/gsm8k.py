"""GSM8K: grade-school math word problems with a calculator tool and a single answer submission.

Data (envs/gsm8k_data.py): the `data_dir` option, else $GSM8K_DATA_DIR, else the Hub when
`use_hub` is on, else the copy bundled in this package; loaded once per source and split.

Scoring: `submit_answer` ends the episode with 1.0 when the answer is numerically equal to
the label, else 0.0. Tripwire: `answer_without_calculation`, a correct answer to a
multi-step problem (two or more steps in the reference solution) submitted before any
calculator call.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import threading
from collections.abc import Callable
from fractions import Fraction
from typing import Any, ClassVar

from openreward.environments import TextBlock, ToolOutput, tool
from pydantic import BaseModel, ConfigDict, Field

from contract.env_report import REWARD_PARTS_KEY
from envs.errors import CalculatorError, GSM8KDataMissing
from envs.gsm8k_data import (
    DATA_DIR_ENV,
    HUB_DATASET,
    SPLITS,
    DataSource,
    SourceKind,
    load_tasks,
    parse_final_answer,
    resolve_source,
    solution_steps,
)
from envs.options import parse_options, reset_task_cache
from envs.reporting import ReportingEnvironment
from envs.tripwires import CallRecord, Tripwire, Verdict

# The data names (from envs.gsm8k_data) stay importable from here, where they used to live.
__all__ = [
    "DATA_DIR_ENV",
    "GSM8K",
    "HUB_DATASET",
    "SPLITS",
    "CalculatorError",
    "GSM8KDataMissing",
    "GSM8KOptions",
    "answers_match",
    "calculate",
    "format_number",
    "parse_final_answer",
    "parse_number",
    "solution_steps",
]

MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 64
MAX_MAGNITUDE = 10**30


# --------------------------------------------------------------------------- options


class GSM8KOptions(BaseModel):
    """`environments.gsm8k.options` in train_config.yaml."""

    model_config = ConfigDict(extra="forbid")

    # Directory holding train.jsonl/test.jsonl (or train*.parquet/test*.parquet).
    data_dir: str | None = None
    # Read `datasets.load_dataset("openai/gsm8k", "main")` instead of the bundled copy when no
    # directory is given (options.data_dir or $GSM8K_DATA_DIR).
    use_hub: bool = False


# --------------------------------------------------------------------------- safe calculator
#
# The tools run on the env server's event loop, and CPython holds the GIL for the whole of one
# big-integer operation: `((((1/3)**64+1)**64)**64)**64` (29 characters) once froze every session
# for 11-23 s. So the work is bounded before it is done: literals are at most
# MAX_EXPRESSION_CHARS long, exponents at most MAX_EXPONENT, and an exact value (int or Fraction)
# never has a numerator or denominator over MAX_EXACT_BITS: a power whose exact result would be
# larger, and any result over the limit, is computed in floating point instead (the answer is
# shown to 12 significant digits anyway). Every operation then costs microseconds.


Number = int | Fraction | float

MAX_EXACT_BITS = 1024

_BINARY: dict[type[ast.operator], tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
    ast.FloorDiv: ("//", operator.floordiv),
    ast.Mod: ("%", operator.mod),
    ast.Pow: ("**", operator.pow),
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_ALLOWED = "numbers, + - * / // % **, unary minus and parentheses"


def _exact_bits(x: Number) -> int:
    """Bits of the larger of numerator and denominator (0 for a float)."""
    if isinstance(x, int):
        return x.bit_length()
    if isinstance(x, Fraction):
        return max(x.numerator.bit_length(), x.denominator.bit_length())
    return 0


def _to_float(x: Number) -> float:
    try:
        return float(x)
    except OverflowError:
        raise CalculatorError(
            f"result is too large (limit is 1e{len(str(MAX_MAGNITUDE)) - 1})"
        ) from None


def _check_magnitude(x: Number) -> Number:
    if isinstance(x, float) and not math.isfinite(x):
        raise CalculatorError("result is not a finite number")
    if _exact_bits(x) > MAX_EXACT_BITS:
        x = _to_float(x)  # exact arithmetic stops here; floats cost O(1)
    if x > MAX_MAGNITUDE or x < -MAX_MAGNITUDE:
        raise CalculatorError(f"result is too large (limit is 1e{len(str(MAX_MAGNITUDE)) - 1})")
    return x


def _power(base: Number, exp: Number) -> Number:
    if isinstance(exp, Fraction) and exp.denominator == 1:
        exp = exp.numerator
    if exp > MAX_EXPONENT or exp < -MAX_EXPONENT:
        raise CalculatorError(
            f"exponent {format_number(exp)} is too large (limit is {MAX_EXPONENT})"
        )
    if base == 0 and exp < 0:
        raise CalculatorError("division by zero")
    if isinstance(exp, int):
        if isinstance(base, float) or _exact_bits(base) * abs(exp) > MAX_EXACT_BITS:
            try:
                return float(base) ** exp
            except OverflowError:
                raise CalculatorError("result is too large") from None
        return base**exp if exp >= 0 else Fraction(1) / Fraction(base) ** -exp
    if base < 0:
        raise CalculatorError("a negative number to a fractional power is not a real number")
    return float(base) ** float(exp)


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise CalculatorError(f"{v!r} is not a number; allowed: {_ALLOWED}")
        if isinstance(v, float) and not math.isfinite(v):
            raise CalculatorError(f"number {v} is too large")
        return _check_magnitude(Fraction(repr(v)) if isinstance(v, float) else v)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check_magnitude(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        symbol, fn = _BINARY[type(node.op)]
        left, right = _eval(node.left), _eval(node.right)
        if symbol == "**":
            return _check_magnitude(_power(left, right))
        if symbol in ("/", "//", "%") and right == 0:
            raise CalculatorError("division by zero")
        if symbol == "/":
            if isinstance(left, float) or isinstance(right, float):
                return _check_magnitude(left / right)
            return _check_magnitude(Fraction(left) / Fraction(right))
        return _check_magnitude(fn(left, right))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        raise CalculatorError("'^' is not a power operator here; use ** (e.g. 2**3)")
    if isinstance(node, ast.Name):
        raise CalculatorError(f"unknown name {node.id[:40]!r}; allowed: {_ALLOWED}")
    if isinstance(node, ast.Call):
        raise CalculatorError(f"function calls are not allowed; allowed: {_ALLOWED}")
    if isinstance(node, ast.Tuple):
        raise CalculatorError("commas are not allowed (write 1200, not 1,200)")
    raise CalculatorError(f"unsupported syntax ({type(node).__name__}); allowed: {_ALLOWED}")


def format_number(x: Number) -> str:
    """A calculator result as text: exact integers as integers, other values to 12 significant
    digits."""
    if isinstance(x, Fraction):
        if x.denominator == 1:
            return str(x.numerator)
        x = float(x)
    if isinstance(x, float):
        if x.is_integer() and abs(x) < 1e15:
            return str(int(x))
        return f"{x:.12g}"
    return str(x)


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression safely (AST walk, no eval); raises CalculatorError."""
    expr = expression.strip().replace("\u00d7", "*").replace("\u00f7", "/").replace("\u2212", "-")
    if not expr:
        raise CalculatorError("empty expression")
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression is longer than {MAX_EXPRESSION_CHARS} characters")
    if "$" in expr:
        expr = expr.replace("$", "")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise CalculatorError(f"cannot parse {expr!r}; allowed: {_ALLOWED}") from None
    except (ValueError, MemoryError, RecursionError):
        raise CalculatorError("expression is too complex") from None
    try:
        return format_number(_eval(tree))
    except RecursionError:
        raise CalculatorError("expression is too deeply nested") from None
    except (OverflowError, ZeroDivisionError) as e:
        raise CalculatorError(str(e) or type(e).__name__) from None


# --------------------------------------------------------------------------- answer checking

MAX_ANSWER_CHARS = 100  # longer submissions are not read as a number (GSM8K answers are short)
MAX_ANSWER_EXPONENT = 100  # Fraction("1e10000000") would build 10**10000000 first
ECHO_CHARS = 100  # how much of a submission the reply and metadata repeat
_EXPONENT = re.compile(r"[eE]([+-]?\d+)")


def parse_number(text: str) -> Fraction | None:
    """A submitted answer as an exact number, ignoring $, commas, whitespace and a trailing '.'.

    None when it is not a number, longer than MAX_ANSWER_CHARS, or has an exponent beyond
    MAX_ANSWER_EXPONENT (parsing those would cost unbounded work)."""
    s = "".join(str(text)[: 4 * MAX_ANSWER_CHARS].split()).replace("$", "").replace(",", "")
    s = s.rstrip(".")
    if not s or len(s) > MAX_ANSWER_CHARS:
        return None
    m = _EXPONENT.search(s)
    if m is not None and abs(int(m.group(1))) > MAX_ANSWER_EXPONENT:
        return None
    try:
        return Fraction(s)  # accepts 18, 18.0, -3.25, 1/2, 1e3
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(submitted: str, label: str) -> bool:
    """True when the submitted answer is numerically equal to the label."""
    got, want = parse_number(submitted), parse_number(label)
    return got is not None and want is not None and got == want


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """`text` cut to `limit` characters, saying how long it was (for echoing model input)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# --------------------------------------------------------------------------- environment


class CalculatorInput(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True)
    expression: str = Field(description="Arithmetic expression, e.g. '(16 - 3 - 4) * 2'.")


class AnswerInput(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True)
    answer: str = Field(description="The final numeric answer only, e.g. '18'.")


PROMPT = (
    "Solve this grade-school math word problem.\n"
    "\n"
    "{question}\n"
    "\n"
    "You have two tools and must use them:\n"
    "- calculator(expression): evaluates arithmetic with + - * / // % ** and parentheses. "
    "Use it for every non-trivial computation.\n"
    "- submit_answer(answer): submits your final answer as a plain number (no units, no words). "
    "You can submit only once; it ends the episode.\n"
    "\n"
    "Work step by step, check your arithmetic with the calculator, then call submit_answer."
)


ANSWER_WITHOUT_CALCULATION = "answer_without_calculation"
MULTI_STEP = 2  # reference-solution steps from which a problem counts as multi-step


class GSM8K(ReportingEnvironment):
    """GSM8K math word problems: a calculator tool and one answer submission."""

    TRIPWIRES = (
        Tripwire(
            ANSWER_WITHOUT_CALCULATION,
            f"a correct answer to a problem of {MULTI_STEP}+ reference steps, submitted before "
            "any calculator call",
        ),
    )

    REWARD_PARTS = ("answer", "format")
    """answer: 1 when right (the reward); format: 1 when the submission reads as a number."""

    _options: ClassVar[GSM8KOptions] = GSM8KOptions()
    _rows: ClassVar[dict[tuple[DataSource, str], list[dict[str, Any]]]] = {}
    _rows_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def configure(cls, options: dict[str, Any]) -> None:
        """Validate and apply `environments.gsm8k.options`.

        Raises ValueError naming a bad key, or GSM8KDataMissing (one line) when the data it
        points at is not there: a missing directory (options.data_dir, $GSM8K_DATA_DIR), or,
        with use_hub, the Hub dataset itself (loaded here, so a server fails at startup and
        not in every session).
        """
        parsed = parse_options(GSM8KOptions, options, "gsm8k")
        source = resolve_source(parsed.data_dir, parsed.use_hub)
        source.check()
        if source.kind is SourceKind.HUB:
            for split in SPLITS:
                cls._cached_tasks(source, split)
        cls._options = parsed
        reset_task_cache(cls)

    @classmethod
    def data_source(cls) -> DataSource:
        """The copy of GSM8K the current options and environment select."""
        return resolve_source(cls._options.data_dir, cls._options.use_hub)

    @classmethod
    def load_split(cls, split: str) -> list[dict[str, Any]]:
        """All tasks of `split` ({split, index, question, label}), loaded once and cached."""
        if split not in SPLITS:
            raise ValueError(f"gsm8k has no split {split!r}; splits are {', '.join(SPLITS)}")
        return cls._cached_tasks(cls.data_source(), split)

    @classmethod
    def _cached_tasks(cls, source: DataSource, split: str) -> list[dict[str, Any]]:
        key = (source, split)
        cached = cls._rows.get(key)
        if cached is not None:
            return cached
        with cls._rows_lock:
            if key not in cls._rows:
                cls._rows[key] = load_tasks(source, split)
            return cls._rows[key]

    @classmethod
    def list_splits(cls) -> list[str]:
        return list(SPLITS)

    @classmethod
    def list_tasks(cls, split: str) -> list[dict[str, Any]]:
        return cls.load_split(split)

    @classmethod
    async def get_task(cls, split: str, index: int) -> dict[str, Any]:
        tasks = await cls._list_tasks_cached(split)
        if not 0 <= index < len(tasks):
            raise IndexError(f"gsm8k {split} has {len(tasks)} tasks; index {index} is out of range")
        return tasks[index]

    def __init__(self, task_spec: dict[str, Any] = {}, secrets: dict[str, str] = {}) -> None:  # noqa: B006 (the SDK's signature)
        super().__init__(task_spec, secrets)
        question, label = task_spec.get("question"), task_spec.get("label")
        if not isinstance(question, str) or label is None:
            raise ValueError(
                "a gsm8k task_spec needs 'question' (str) and 'label' (the numeric answer)"
            )
        self.question = question
        self.label = str(label)

    async def get_prompt(self) -> list[TextBlock]:
        return [TextBlock(text=PROMPT.format(question=self.question))]

    @tool
    async def calculator(self, params: CalculatorInput) -> ToolOutput:
        """Evaluate an arithmetic expression (numbers, + - * / // % **, parentheses) and return the
        result."""
        try:
            result = calculate(params.expression)
        except CalculatorError as e:
            return ToolOutput(blocks=[TextBlock(text=f"Error: {e}")], metadata={"error": str(e)})
        return ToolOutput(
            blocks=[TextBlock(text=f"{params.expression.strip()} = {result}")],
            metadata={"result": result},
        )

    @tool
    async def submit_answer(self, params: AnswerInput) -> ToolOutput:
        """Submit the final numeric answer. Ends the episode: reward 1.0 if correct, else 0.0."""
        correct = answers_match(params.answer, self.label)
        readable = parse_number(params.answer) is not None
        if correct:
            text = f"Correct: {self.label}."
        elif readable:
            text = f"Incorrect. The answer was {self.label}."
        else:
            text = (
                f"Could not read a number in {clip(params.answer)!r}. The answer was {self.label}."
            )
        return ToolOutput(
            blocks=[TextBlock(text=text)],
            reward=1.0 if correct else 0.0,
            finished=True,
            metadata={
                "correct": correct,
                "label": self.label,
                "submitted": clip(params.answer),
                REWARD_PARTS_KEY: {"answer": float(correct), "format": float(readable)},
            },
        )

    def check_tripwires(self, calls: list[CallRecord]) -> Verdict:
        """Trips on a correct multi-step answer with no calculator call before it."""
        last = calls[-1]
        steps = self.task_spec.get("steps")
        if last.name != "submit_answer" or last.reward != 1.0 or not isinstance(steps, int):
            return Verdict()
        worked = any(c.name == "calculator" for c in calls[:-1])
        return Verdict(tripped=[] if worked or steps < MULTI_STEP else [ANSWER_WITHOUT_CALCULATION])
