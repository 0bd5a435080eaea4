"""An environment that spends the server's CPU on purpose, and a server that hosts it with the
trajectory service: for the tests of budgets, fairness and memory (tests/test_server_budget.py).

`BudgetProbe` has a legitimate heavy tool (`work`: a given number of CPU milliseconds in one
step, optionally with a full garbage collection of a heap kept large on purpose), tools that
never return (`spin`, and `submit` with the answer "spin", after changing the env's state), a
task list that counts how often it is built, and a task loader that never returns for the split
"spin".
"""

from __future__ import annotations

import contextlib
import gc
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from conftest import REPO, free_port, run_process
from openreward.environments import Environment, TextBlock, ToolOutput, tool
from pydantic import BaseModel

N_TASKS = 10_000
# Live objects a full collection has to walk: ~0.1-0.3 s per collection on these machines.
BALLAST = 2_000_000


class WorkIn(BaseModel):
    ms: float
    collect: bool = False


class AnswerIn(BaseModel):
    answer: str


class NoIn(BaseModel):
    pass


def _burn(seconds: float) -> None:
    t0 = time.thread_time()
    while time.thread_time() - t0 < seconds:
        sum(range(200))


class BudgetProbe(Environment):
    """Tools and task lists that cost the server CPU."""

    listed = 0  # how often list_tasks built its 10,000 specs

    def __init__(self, task_spec: dict[str, Any] = {}, secrets: dict[str, str] = {}) -> None:  # noqa: B006 (the SDK's signature)
        super().__init__(task_spec, secrets)
        self.submissions = 0
        self.history: list[str] = []

    @classmethod
    def list_splits(cls) -> list[str]:
        return ["train", "spin"]

    @classmethod
    def list_tasks(cls, split: str) -> list[dict[str, Any]]:
        BudgetProbe.listed += 1
        return [{"i": i, "text": f"task {i} " * 8} for i in range(N_TASKS)]

    @classmethod
    async def get_task(cls, split: str, index: int) -> dict[str, Any]:
        if split == "spin":
            while True:
                sum(range(1000))
        return {"i": index}

    async def get_prompt(self) -> list[TextBlock]:
        return [TextBlock(text="spend the server's CPU")]

    @tool
    async def work(self, params: WorkIn) -> ToolOutput:
        """Compute `ms` milliseconds of CPU in one step (a full collection midway if asked)."""
        _burn(params.ms / 2000)
        if params.collect:
            gc.collect()
        _burn(params.ms / 2000)
        return ToolOutput(blocks=[TextBlock(text="worked")])

    @tool
    async def spin(self, params: NoIn) -> ToolOutput:
        """Compute for ever, swallowing ordinary exceptions."""
        while True:
            try:
                sum(range(1000))
            except Exception:
                pass

    @tool
    async def submit(self, params: AnswerIn) -> ToolOutput:
        """Spend a submission; the answer "spin" then computes for ever, any other ends the
        episode."""
        self.submissions += 1
        self.history.append(params.answer)
        if params.answer == "spin":
            _burn(3600)
        return ToolOutput(blocks=[TextBlock(text="accepted")], reward=1.0, finished=True)

    @tool
    async def state(self, params: NoIn) -> ToolOutput:
        """The env's state: submissions, history, whether the episode finished, lists built."""
        text = json.dumps(
            {
                "submissions": self.submissions,
                "history": self.history,
                "finished": self._episode_finished,
                "listed": BudgetProbe.listed,
            }
        )
        return ToolOutput(blocks=[TextBlock(text=text)])


PROBE_SERVER = """
import json, logging, sys
sys.path.insert(0, sys.argv[3])
import uvicorn
from envs.server.app import ServerSettings, create_app
from envs.trajectories.api import TrajectoryService
import budget_probe
settings = json.loads(sys.argv[2])
db = settings.pop("db", None)
# settings this version of the server does not know are left out (the tests run against older
# versions too, to show what they catch)
settings = {k: v for k, v in settings.items() if k in ServerSettings.__dataclass_fields__}
logging.basicConfig(level="WARNING", stream=sys.stdout)
ballast = [(i,) for i in range(budget_probe.BALLAST)]  # a heap a full collection has to walk
services = [TrajectoryService(db)] if db else []
app = create_app({"probe": budget_probe.BudgetProbe}, ServerSettings(**settings), services)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


@contextlib.contextmanager
def budget_probe_server(**settings: Any) -> Iterator[tuple[str, Any]]:
    """The probe behind create_app (with the trajectory service when `db` is given); yields its
    URL and process."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        sys.executable,
        "-c",
        PROBE_SERVER,
        str(port),
        json.dumps(settings),
        str(REPO / "tests"),
    ]
    with run_process(args, f"{url}/health", timeout=120) as proc:
        yield url, proc
