"""verifiers environments for tests/test_adapter_verifiers.py, built on verifiers' own classes (no
network, no model): each loader builds the environment, each `*_ENV` is its ORS class
(envs/adapters/verifiers.py), served by name as `vf_envs:CALC_ENV` with tests/ on PYTHONPATH.

    calc   ToolEnv: add/mul tools, train and eval datasets, reward = the exact answer (weight 1)
           plus a shaped metric (weight 0.25) that pays for a short episode
    guess  MultiTurnEnv: env_response says higher/lower, final_env_response on a hit; two
           weighted reward functions
    vault  StatefulToolEnv: `open_vault(code)`, the vault id injected from state (hidden from
           the model)
    judged a ToolEnv scored by a JudgeRubric (refused: it calls a model)
"""

from __future__ import annotations

import re
from typing import Any

import verifiers as vf
from datasets import Dataset

from envs.adapters.verifiers import verifiers_environment


def add(a: float, b: float) -> float:
    """Add two numbers.

    Args:
        a: the first number
        b: the second number
    """
    return a + b


async def mul(a: float, b: float) -> float:
    """Multiply two numbers.

    Args:
        a: the first number
        b: the second number
    """
    return a * b


def exact(completion: Any, answer: str, parser: Any) -> float:
    got = (parser.parse_answer(completion) or "").strip()
    return 1.0 if got == answer else 0.0


def short(state: Any) -> float:
    return 1.0 / max(1, len(state["trajectory"]))


def load_calc(
    max_turns: int = 8, system_prompt: str = "Use the tools. Answer with the number."
) -> Any:
    train = Dataset.from_list(
        [
            {"question": "What is (2+3)*4?", "answer": "20"},
            {"question": "What is 6*7?", "answer": "42"},
            {"question": "What is 1.5+2.5?", "answer": "4.0"},
        ]
    )
    evals = Dataset.from_list([{"question": "What is 9*9?", "answer": "81"}])
    return vf.ToolEnv(
        dataset=train,
        eval_dataset=evals,
        tools=[add, mul],
        max_turns=max_turns,
        system_prompt=system_prompt,
        rubric=vf.Rubric(funcs=[exact, short], weights=[1.0, 0.25]),
    )


class GuessEnv(vf.MultiTurnEnv):
    async def setup_state(self, state: Any, **kwargs: Any) -> Any:
        state["secret"] = int(state["info"]["secret"])
        state["guesses"] = 0
        return state

    async def env_response(self, messages: Any, state: Any, **kwargs: Any) -> Any:
        text = messages[-1].content or ""
        m = re.search(r"-?\d+", text)
        state["guesses"] += 1
        if m is None:
            return [vf.UserMessage(content="Please answer with a number.")]
        if int(m.group()) == state["secret"]:
            state["final_env_response"] = [vf.UserMessage(content="Correct!")]
            return state["final_env_response"]
        return [vf.UserMessage(content="higher" if int(m.group()) < state["secret"] else "lower")]


def solved(state: Any) -> float:
    return 1.0 if state.get("final_env_response") else 0.0


def fewer_guesses(state: Any) -> float:
    return 1.0 / max(1, state.get("guesses", 1))


def load_guess() -> Any:
    ds = Dataset.from_list(
        [
            {"question": "Guess my number (1-10).", "answer": "7", "info": {"secret": 7}},
            {"question": "Guess my number (1-10).", "answer": "3", "info": {"secret": 3}},
        ]
    )
    rubric = vf.Rubric(funcs=[solved, fewer_guesses], weights=[1.0, 0.5])
    return GuessEnv(dataset=ds, max_turns=5, rubric=rubric)


VAULTS = {"A": "1234", "B": "9999"}


def open_vault(code: str, vault_id: str) -> str:
    """Try a code on the vault.

    Args:
        code: the 4-digit code to try
        vault_id: which vault (the environment fills it in)
    """
    return "OPEN: the prize is 'pear'" if VAULTS.get(vault_id) == code else "wrong code"


class VaultEnv(vf.StatefulToolEnv):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(tools=[], **kwargs)
        self.add_tool(open_vault, args_to_skip=["vault_id"])

    async def setup_state(self, state: Any, **kwargs: Any) -> Any:
        state["vault_id"] = state["info"]["vault"]
        return await super().setup_state(state, **kwargs)

    def update_tool_args(
        self, tool_name: str, tool_args: dict, messages: Any, state: Any, **kw: Any
    ) -> dict:
        if tool_name == "open_vault":
            tool_args["vault_id"] = state["vault_id"]
        return tool_args


def prize(completion: Any, answer: str) -> float:
    return 1.0 if answer in (completion[-1].content or "") else 0.0


def load_vault() -> Any:
    ds = Dataset.from_list(
        [
            {
                "question": "Open the vault (try 1234, 9999); name the prize.",
                "answer": "pear",
                "info": {"vault": "B"},
            }
        ]
    )
    return VaultEnv(dataset=ds, max_turns=5, rubric=vf.Rubric(funcs=[prize]))


def load_judged() -> Any:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="none", base_url="http://127.0.0.1:9/v1")
    ds = Dataset.from_list([{"question": "Say hi.", "answer": "hi"}])
    return vf.ToolEnv(dataset=ds, tools=[add], rubric=vf.JudgeRubric(judge_client=client))


def load_group() -> Any:
    def best_of_group(completions: list[Any]) -> list[float]:
        return [1.0] * len(completions)

    ds = Dataset.from_list([{"question": "Say hi.", "answer": "hi"}])
    return vf.SingleTurnEnv(dataset=ds, rubric=vf.Rubric(funcs=[best_of_group]))


CALC_ENV = verifiers_environment(load_calc, name="VfCalc")
GUESS_ENV = verifiers_environment(load_guess, name="VfGuess")
VAULT_ENV = verifiers_environment(load_vault, name="VfVault")
JUDGED_ENV = verifiers_environment(load_judged, name="VfJudged")
GROUP_ENV = verifiers_environment(load_group, name="VfGroup")
