"""Complete episodes of gsm8k / whodunit / haiku played through the stock `openreward` client.

Every player takes the base URL of any ORS server (the SDK's own Server, or ours:
`python -m envs.server`), so the same episodes run against both. Expected answers are
computed in-process from the same env classes with default options, so the server under
test must run them with default options too (GSM8K: the bundled copy).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from conftest import free_port, run_process
from openreward import AsyncOpenReward

PERFECT_HAIKU = "An old silent pond\nA frog jumps into the pond\nSplash! Silence again."
# A perfect 5-7-5 poem on the topic of each haiku task the tests play (off-topic poems earn half).
ON_TOPIC_HAIKU = {
    "moonlight on a pond": PERFECT_HAIKU,
    "the first warm day of "
    "spring": "Spring sun on my face\nthe last snow melts in the yard\nbuds open slowly",
    "the glow of a "
    "campfire": "Embers softly glow\nsparks drift up into the dark\nwe hum by the fire",
    "first frost on the "
    "garden": "White frost on the leaves\nthe garden sleeps in silver\nbreath hangs in the air",
}


@dataclass
class Episode:
    """What a played episode produced: the prompt, tool names, and each call's (name, text, reward,
    finished)."""

    prompt: str = ""
    tools: list[str] = field(default_factory=list)
    calls: list[tuple[str, str, float | None, bool]] = field(default_factory=list)

    @property
    def final_reward(self) -> float | None:
        return self.calls[-1][2] if self.calls else None

    @property
    def finished(self) -> bool:
        return bool(self.calls) and self.calls[-1][3]


@contextlib.asynccontextmanager
async def ors_session(base_url: str, env_name: str, split: str, index: int) -> AsyncIterator[Any]:
    """An open session of the stock client on `base_url`; the client is closed afterwards."""
    client = AsyncOpenReward(api_key="test", base_url=base_url)
    try:
        env = client.environments.get(env_name, base_url=base_url)
        async with env.session(split=split, index=index) as session:
            yield session
    finally:
        await client.environments.aclose()


async def play(
    base_url: str, env_name: str, split: str, index: int, calls: list[tuple[str, dict[str, Any]]]
) -> Episode:
    """Open a session, read prompt and tools, make `calls` in order, and record every output."""
    ep = Episode()
    async with ors_session(base_url, env_name, split, index) as s:
        ep.prompt = "\n".join(b.text for b in await s.get_prompt() if b.type == "text")
        ep.tools = sorted(t.name for t in await s.list_tools())
        for name, args in calls:
            out = await s.call_tool(name, args)
            text = "\n".join(b.text for b in out.blocks if b.type == "text")
            ep.calls.append((name, text, out.reward, out.finished))
    return ep


async def play_gsm8k(
    base_url: str, split: str = "test", index: int = 0, correct: bool = True
) -> Episode:
    """Use the calculator twice (one bad expression), then submit the right (or a wrong) answer."""
    from envs.gsm8k import GSM8K

    label = (await GSM8K.get_task(split, index))["label"]
    answer = label if correct else str(int(float(label.replace(",", ""))) + 1)
    return await play(
        base_url,
        "gsm8k",
        split,
        index,
        [
            ("calculator", {"expression": "(16 - 3 - 4) * 2"}),
            ("calculator", {"expression": "__import__('os')"}),
            ("submit_answer", {"answer": f"${answer}"}),
        ],
    )


async def play_whodunit(
    base_url: str, split: str = "test", index: int = 0, correct_parts: int = 4
) -> Episode:
    """Read every information tool, then submit an answer with `correct_parts` right components."""
    from envs.whodunit import WhoDunIt

    case = WhoDunIt.case_for(split, index)
    answer = case.answer()
    wrong = {"who": "Nobody", "what": "spoon", "where": "moon", "why": "boredom"}
    submitted = {
        k: (v.upper() if i < correct_parts else wrong[k]) for i, (k, v) in enumerate(answer.items())
    }
    info = [
        "list_suspects",
        "list_weapons",
        "list_locations",
        "list_motives",
        "list_clues",
        "list_statements",
    ]
    return await play(
        base_url,
        "whodunit",
        split,
        index,
        [(name, {}) for name in info] + [("submit_answer", submitted)],
    )


async def play_haiku(
    base_url: str, split: str = "test", index: int = 0, poems: tuple[str, ...] | None = None
) -> Episode:
    """Submit `poems` in order (default: a bad draft, then a perfect, on-topic 5-7-5 revision)."""
    if poems is None:
        from envs.haiku import Haiku

        topic = (await Haiku.get_task(split, index))["topic"]
        poems = ("too short\nstill short", ON_TOPIC_HAIKU[topic])
    return await play(
        base_url, "haiku", split, index, [("submit_haiku", {"poem": p}) for p in poems]
    )


SDK_SERVER_CODE = """
import sys, uvicorn
from openreward.environments import Server
from envs.registry import load_env_class
app = Server([load_env_class(n) for n in sys.argv[2].split(",")]).app
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


@contextlib.contextmanager
def sdk_server(
    envs: str = "gsm8k,whodunit,haiku", env: dict[str, str] | None = None
) -> Iterator[str]:
    """The SDK's own `openreward.environments.Server` with our envs, under uvicorn on
    127.0.0.1:<free port>."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with run_process(
        [sys.executable, "-c", SDK_SERVER_CODE, str(port), envs], f"{base}/health", env=env
    ):
        yield base
