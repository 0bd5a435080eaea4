"""Scripted models for the eval tests: GSM8K solvers with a known success rate, for both stubs.

A model answers a task correctly when a hash of (its salt, the question, how many episodes of
that question it has started) falls below its rate: each episode is a Bernoulli(rate) draw, yet
the draws of a run are fixed whatever order the episodes arrive in, so the tests are
deterministic. Failures vary with the model: a wrong number, malformed tool-call arguments, or
a reply without any tool call.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from openai_stub import ChatRequest, Reply
from sglang_stub import StubRequest, Turn

SHARED_GSM8K = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "gsm8k"


def gsm8k_labels(data_dir: Path) -> dict[str, str]:
    """Question -> final numeric answer, from GSM8K's test.jsonl."""
    out = {}
    for line in (data_dir / "test.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[row["question"]] = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    return out


def draw(salt: str, question: str, n: int) -> float:
    """A fixed uniform draw in [0, 1) per (model, question, episode number)."""
    h = hashlib.sha256(f"{salt}\0{question}\0{n}".encode()).hexdigest()
    return int(h[:12], 16) / 16**12


class ScriptedSolver:
    """Decides each episode's outcome on its first turn; keeps the decision for later turns."""

    def __init__(self, labels: dict[str, str], rate: float, salt: str) -> None:
        self.labels = labels
        self.rate = rate
        self.salt = salt
        self.started: Counter[str] = Counter()
        self.outcomes: list[bool] = []
        self._lock = threading.Lock()
        self._by_text: dict[str, str] = {}

    def question(self, text: str) -> str | None:
        """The GSM8K question in `text`, None for other prompts (the eval's preflight probe)."""
        q = self._by_text.get(text)
        if q is None:
            q = next((q for q in self.labels if q in text), None)
            if q is not None:
                self._by_text[text] = q
        return q

    def first_turn(self, text: str) -> tuple[str, bool]:
        """(question, correct?) for a new episode of this prompt."""
        q = self.question(text)
        if q is None:
            raise KeyError("no GSM8K test question in the prompt")
        with self._lock:
            n = self.started[q]
            self.started[q] += 1
            ok = draw(self.salt, q, n) < self.rate
            self.outcomes.append(ok)
        return q, ok

    def wrong(self, q: str) -> str:
        return str(int(float(self.labels[q])) + 1)


def chat_responder(solver: ScriptedSolver) -> Any:
    """An OpenAI-stub responder: correct -> submit_answer(label); else a wrong number, malformed
    arguments (then a wrong number), or plain text without a tool call, in turn."""
    kinds = ["wrong", "malformed", "no_call"]

    def respond(req: ChatRequest) -> Reply:
        q = solver.question(req.first_user)
        if q is None:
            return Reply.text("OK")
        if req.turn > 0:  # after malformed arguments: give a wrong answer
            return Reply.call("submit_answer", answer=solver.wrong(q))
        q, ok = solver.first_turn(req.first_user)
        if ok:
            return Reply.call("submit_answer", content="Let me submit.", answer=solver.labels[q])
        kind = kinds[solver.started[q] % len(kinds)]
        if kind == "malformed":
            return Reply.raw_call("submit_answer", '{"answer": ' + solver.wrong(q))
        if kind == "no_call":
            return Reply.text(f"The answer is {solver.wrong(q)}.")
        return Reply.call("submit_answer", answer=solver.wrong(q))

    return respond


def tool_call_text(name: str, **arguments: Any) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def generate_responder(solver: ScriptedSolver, tokenizer: Any) -> Any:
    """An SGLang-stub responder: one turn per episode, submit_answer right or wrong."""

    def respond(req: StubRequest) -> Turn:
        text = tokenizer.decode(req.input_ids)
        q, ok = solver.first_turn(text)
        answer = solver.labels[q] if ok else solver.wrong(q)
        return Turn.of_text(
            tokenizer, tool_call_text("submit_answer", answer=answer) + "<|im_end|>"
        )

    return respond


class Detective:
    """A scripted WhoDunIt detective: each part of its accusation (who, what, where, why) is right
    with its own rate, drawn per (model, case, episode number) as ScriptedSolver draws. It
    recognises a case by its prompt: one of the first `cases` of the test split (default
    difficulty; configure `test_size` to match)."""

    def __init__(self, rates: dict[str, float], salt: str, cases: int) -> None:
        self.rates = rates
        self.salt = salt
        self.cases = cases
        self.started: Counter[str] = Counter()
        self.answers: list[dict[str, bool]] = []
        self._lock = threading.Lock()
        self._prompts: dict[str, dict[str, str]] | None = None
        self._others: dict[str, dict[str, list[str]]] = {}

    def _load(self) -> dict[str, dict[str, str]]:
        if self._prompts is None:
            from envs.whodunit import WhoDunIt

            prompts = {}
            for i in range(self.cases):
                case = WhoDunIt.case_for("test", i)
                prompts[case.prompt()] = case.answer()
                self._others[case.prompt()] = {
                    "who": [n for n, _ in case.suspects],
                    "what": list(case.weapons),
                    "where": list(case.locations),
                    "why": list(case.motives),
                }
            self._prompts = prompts
        return self._prompts

    def case(self, text: str) -> str | None:
        """The prompt of the case `text` contains, None for other text."""
        return next((p for p in self._load() if p in text), None)

    def accuse(self, text: str) -> dict[str, str]:
        """The accusation of a new episode of the case in `text`."""
        prompt = self.case(text)
        if prompt is None:
            raise KeyError("no WhoDunIt case in the prompt")
        truth = self._load()[prompt]
        with self._lock:
            n = self.started[prompt]
            self.started[prompt] += 1
        out, right = {}, {}
        for part, value in truth.items():
            right[part] = draw(f"{self.salt}:{part}", prompt, n) < self.rates.get(part, 0.0)
            wrong = next(x for x in self._others[prompt][part] if x != value)
            out[part] = value if right[part] else wrong
        with self._lock:
            self.answers.append(right)
        return out


def detective_chat(detective: Detective, fallback: Any = None) -> Any:
    """An OpenAI-stub responder: a WhoDunIt case gets one accusation (after reading the clues);
    anything else goes to `fallback` (e.g. a GSM8K responder), else "OK"."""

    def respond(req: ChatRequest) -> Reply:
        if detective.case(req.first_user) is None:
            return fallback(req) if fallback is not None else Reply.text("OK")
        if req.turn == 0:
            return Reply.call("list_clues")
        return Reply.call("submit_answer", **detective.accuse(req.first_user))

    return respond


def detective_generate(detective: Detective, tokenizer: Any, fallback: Any = None) -> Any:
    """An SGLang-stub responder: a WhoDunIt case gets one accusation in its first turn."""

    def respond(req: StubRequest) -> Turn:
        text = tokenizer.decode(req.input_ids)
        if detective.case(text) is None:
            return fallback(req)
        call = tool_call_text("submit_answer", **detective.accuse(text))
        return Turn.of_text(tokenizer, call + "<|im_end|>")

    return respond
