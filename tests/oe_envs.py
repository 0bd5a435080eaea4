"""OpenEnv environments for tests/test_adapter_openenv.py, on OpenEnv's own base classes (no
Docker, no server): served by name as `oe_envs:GuessEnv` with tests/ on PYTHONPATH.

    GuessEnv  guess a number; the task API (splits train/test, reset(split=, index=)); each miss
              costs 0.05, a hit pays 1 - 0.2 per earlier guess; four guesses at most
    SeedEnv   the same game without a task API: reset(seed=) picks the number
    CalcEnv   an MCPEnvironment with two MCP tools (add, submit); submit ends the episode
"""

from __future__ import annotations

import random
from typing import Any

from fastmcp import FastMCP
from openenv.core.env_server import MCPEnvironment
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import Action, Observation, State
from pydantic import Field

SECRETS = {"train": [3, 7, 9, 2], "test": [5]}


class GuessAction(Action):
    """Guess the secret number (1 to 10)."""

    guess: int = Field(ge=1, le=10, description="Your guess.")


class GuessObservation(Observation):
    feedback: str = ""
    tries_left: int = 0


class GuessState(State):
    secret: int = 0


def score(secret: int, guess: int, step: int) -> tuple[float, bool, str]:
    """(reward, done, feedback) of guess number `step` (1-based)."""
    if guess == secret:
        return 1.0 - 0.2 * (step - 1), True, "correct"
    return -0.05, step >= 4, "higher" if guess < secret else "lower"


class GuessEnv(Environment[GuessAction, GuessObservation, GuessState]):
    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self, tries: int = 4) -> None:
        super().__init__()
        self.tries = tries
        self._state = GuessState()

    def list_splits(self) -> list[str]:
        return list(SECRETS)

    def num_tasks(self, split: str) -> int:
        return len(SECRETS[split])

    def get_task(self, split: str, index: int) -> dict[str, Any]:
        return {"id": f"{split}-{index}", "answer": str(SECRETS[split][index])}

    def reset(
        self,
        seed: int | None = None,
        episode_id: str | None = None,
        split: str = "train",
        index: int = 0,
        **kwargs: Any,
    ) -> GuessObservation:
        self._state = GuessState(episode_id=episode_id, step_count=0, secret=SECRETS[split][index])
        return GuessObservation(feedback="Guess my number, 1 to 10.", tries_left=self.tries)

    def step(
        self, action: GuessAction, timeout_s: float | None = None, **kw: Any
    ) -> GuessObservation:
        self._state.step_count += 1
        reward, done, feedback = score(self._state.secret, action.guess, self._state.step_count)
        left = self.tries - self._state.step_count
        return GuessObservation(feedback=feedback, tries_left=left, done=done, reward=reward)

    @property
    def state(self) -> GuessState:
        return self._state


class SeedEnv(Environment):
    """The guessing game without a task API: the seed picks the number."""

    def __init__(self) -> None:
        super().__init__()
        self._state = GuessState()

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, **kw: Any
    ) -> GuessObservation:
        secret = random.Random(seed).randint(1, 10)
        self._state = GuessState(episode_id=episode_id, step_count=0, secret=secret)
        return GuessObservation(feedback="Guess my number, 1 to 10.", tries_left=4)

    def step(
        self, action: GuessAction, timeout_s: float | None = None, **kw: Any
    ) -> GuessObservation:
        self._state.step_count += 1
        reward, done, feedback = score(self._state.secret, action.guess, self._state.step_count)
        return GuessObservation(
            feedback=feedback, tries_left=4 - self._state.step_count, done=done, reward=reward
        )

    @property
    def state(self) -> GuessState:
        return self._state


class CalcEnv(MCPEnvironment):
    """Add numbers with the `add` tool, then `submit` the sum of the task's numbers."""

    def __init__(self) -> None:
        mcp = FastMCP("calc")
        self.target = 0
        self.done = False

        @mcp.tool
        def add(a: float, b: float) -> float:
            """Add two numbers."""
            return a + b

        @mcp.tool
        def submit(total: float) -> str:
            """Submit the sum. Ends the episode."""
            self.done = True
            self.last_reward = 1.0 if total == self.target else 0.0
            return "right" if self.last_reward else "wrong"

        super().__init__(mcp)
        self._state = State()

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, **kw: Any
    ) -> Observation:
        rng = random.Random(seed)
        self.numbers = [rng.randint(1, 50) for _ in range(3)]
        self.target = sum(self.numbers)
        self._state = State(episode_id=episode_id)
        return Observation(metadata={"numbers": self.numbers})

    def _step_impl(self, action: Action, timeout_s: float | None = None, **kw: Any) -> Observation:
        return Observation(done=False, reward=None, metadata={"error": "use the MCP tools"})

    async def step_async(
        self, action: Action, timeout_s: float | None = None, **kw: Any
    ) -> Observation:
        obs = await super().step_async(action, timeout_s=timeout_s, **kw)
        if self.done:
            obs.done, obs.reward = True, self.last_reward
        return obs

    @property
    def state(self) -> State:
        return self._state
