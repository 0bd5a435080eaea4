"""The conformance check's view of one env server: plain ORS over HTTP, one request at a time.

Tool calls ask for a JSON answer (no SSE), so every outcome is visible as it is: a result, a
refusal with its reason, or a crash (HTTP 500, `env_error`). The server's `/metrics` says which
calls it stopped at their time budget.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from contract.task import blocks_to_text
from envs.errors import ServerGone

__all__ = ["CallOutcome", "CheckClient", "Session"]

BUDGET_STATUS = "budget_exceeded"


@dataclass
class CallOutcome:
    """One tool call as the check sees it."""

    tool: str
    arguments: dict[str, Any]
    status: int
    """HTTP status: 200 result, 4xx refused (the model would see the error), 500 crash."""
    seconds: float
    text: str = ""
    reward: Any = None
    finished: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    reason: str = ""
    over_budget: bool = False
    """The server stopped the call at its time budget, or it took 10x the budget."""

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def crashed(self) -> bool:
        """A 5xx that is not the server stopping the call at its budget (503 budget_exceeded: the
        budget check's finding, not a raise out of the tool)."""
        return self.status >= 500 and not (self.status == 503 and self.reason == BUDGET_STATUS)

    def observed(self) -> tuple[Any, ...]:
        """What the model and the trainer see of this call (metadata aside)."""
        reward = self.reward
        if isinstance(reward, float) and math.isnan(reward):
            reward = "nan"
        return (self.status, self.text, reward, self.finished, self.reason)


class CheckClient:
    """Requests to one env server for one environment."""

    def __init__(self, base_url: str, env: str, api_key: str | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.env = env
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0), headers=headers)

    def close(self) -> None:
        self.http.close()

    def request(
        self, method: str, path: str, body: Any = None, sid: str | None = None
    ) -> httpx.Response:
        headers = {"Accept": "application/json"}
        if sid is not None:
            headers["X-Session-ID"] = sid
        try:
            return self.http.request(method, f"{self.base}{path}", json=body, headers=headers)
        except httpx.HTTPError as e:
            raise ServerGone(f"{method} {path}: {type(e).__name__}: {e}") from None

    def json(self, method: str, path: str, body: Any = None, sid: str | None = None) -> Any:
        """The JSON answer of a request that must succeed; RuntimeError with its detail if not."""
        r = self.request(method, path, body, sid)
        if r.status_code != 200:
            raise RuntimeError(f"{method} {path}: HTTP {r.status_code}: {_detail(r)}")
        return r.json()

    # -- the environment's class-level answers

    def splits(self) -> list[str]:
        return [
            s["name"] if isinstance(s, dict) else str(s)
            for s in self.json("GET", f"/{self.env}/splits")
        ]

    def tools(self) -> list[dict[str, Any]]:
        return list(self.json("GET", f"/{self.env}/tools").get("tools") or [])

    def num_tasks(self, split: str) -> int:
        return int(self.json("POST", f"/{self.env}/num_tasks", {"split": split})["num_tasks"])

    def task(self, split: str, index: int) -> httpx.Response:
        return self.request("POST", f"/{self.env}/task", {"split": split, "index": index})

    def budget_stops(self) -> int:
        """Tool calls of this env the server stopped at their time budget, so far."""
        text = self.request("GET", "/metrics").text
        pattern = re.compile(
            r'^ors_tool_calls_total\{env="([^"]*)",tool="[^"]*",status="'
            + BUDGET_STATUS
            + r'"\} (\d+)$',
            re.M,
        )
        return sum(int(n) for env, n in pattern.findall(text) if env == self.env.lower())

    # -- sessions

    def open(self, split: str, index: int) -> Session:
        sid = str(uuid.uuid4())
        r = self.request(
            "POST", "/create", {"env_name": self.env, "split": split, "index": index}, sid
        )
        if r.status_code != 200:
            raise RuntimeError(f"cannot open a session on {split}[{index}]: {_detail(r)}")
        return Session(self, sid, split, index)


class Session:
    """One open session; `close()` deletes it."""

    def __init__(self, client: CheckClient, sid: str, split: str, index: int) -> None:
        self.client, self.sid, self.split, self.index = client, sid, split, index
        self.finished = False

    @property
    def task(self) -> str:
        return f"{self.split}[{self.index}]"

    def prompt(self) -> str:
        c = self.client
        r = c.request("GET", f"/{c.env}/prompt", sid=self.sid)
        if r.status_code != 200:
            raise RuntimeError(f"prompt of {self.task}: {_detail(r)}")
        data = r.json()
        return blocks_to_text(data.get("blocks", []) if isinstance(data, dict) else data)

    def tools(self) -> list[dict[str, Any]]:
        c = self.client
        r = c.request("GET", f"/{c.env}/task_tools", sid=self.sid)
        if r.status_code == 404:
            return c.tools()
        if r.status_code != 200:
            raise RuntimeError(f"tools of {self.task}: {_detail(r)}")
        return list(r.json().get("tools") or [])

    def call(self, tool: str, arguments: dict[str, Any]) -> CallOutcome:
        c = self.client
        t0 = time.perf_counter()
        r = c.request("POST", f"/{c.env}/call", {"name": tool, "input": arguments}, self.sid)
        out = CallOutcome(tool, arguments, r.status_code, time.perf_counter() - t0)
        try:
            body = r.json()
        except ValueError:
            out.error = r.text[:300]
            return out
        if r.status_code == 200 and isinstance(body, dict) and body.get("ok", True):
            res = body.get("output") or {}
            out.text = blocks_to_text(res.get("blocks") or [])
            out.reward = res.get("reward")
            out.finished = bool(res.get("finished"))
            out.metadata = res.get("metadata") or {}
            self.finished = self.finished or out.finished
        elif isinstance(body, dict):
            out.error = str(body.get("error") or body.get("detail") or "")[:300]
            out.reason = str(body.get("reason") or "")
        return out

    def close(self) -> None:
        try:
            self.client.request("POST", "/delete", {}, self.sid)
        except ServerGone:
            pass


def _detail(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("error") or body)[:200]
    return str(body)[:200]
