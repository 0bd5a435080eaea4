"""The engine of the whole-loop tests (tests/test_loop.py): the scripted player of the three
environments (tools.engines.scripted) served by the tests' SGLang stub, with faults on command.

    python tests/sglang_stub.py --port P --tokenizer DIR --responder tests/loop_engine.py:RESPONDER

`POST /stub/control` sets the faults (and clears the stub's recording) before each run:

    {"reset": true, "fail": [a, b], "abort_every": k, "delay": s}

- fail: requests number a..b-1 (counted from the reset) answer HTTP 500 (an engine that is
  unavailable for a while);
- abort_every: every k-th new context that already holds a tool result is answered with
  finish_reason abort, no tokens, the first time it is seen, and the engine's weight version
  moves on (as a weight update pausing the engine does);
- delay: seconds each answer takes (abortable: slime's over-sampling abort finds turns in flight).

`GET /stub/exchanges` gives every request with the reply it got (what the engine sent).
"""

from __future__ import annotations

from typing import Any

from sglang_stub import EngineFault, StubRequest, Turn

from tools.engines.scripted import TOOL_RESPONSE, ScriptedPlayer, scripted_logprob


class LoopEngine:
    """A responder object for SGLangStub: the scripted player plus the fault plan."""

    def __init__(self) -> None:
        self.stub: Any = None
        self.player = ScriptedPlayer()
        self.fail = (0, 0)
        self.abort_every = 0
        self.delay = 0.0
        self.count = 0
        self.seen: set[int] = set()
        self.aborts = 0
        self.failed = 0

    def bind(self, stub: Any) -> None:
        self.stub = stub

    def control(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("reset"):
            self.count = self.aborts = self.failed = 0
            self.seen.clear()
            self.stub.requests.clear()
        if "fail" in body:
            a, b = body["fail"]
            self.fail = (int(a), int(b))
        self.abort_every = int(body.get("abort_every", self.abort_every))
        self.delay = float(body.get("delay", self.delay))
        return {
            "count": self.count,
            "aborts": self.aborts,
            "failed": self.failed,
            "weight_version": self.stub.weight_version,
        }

    def __call__(self, req: StubRequest) -> Turn:
        self.count += 1
        if self.fail[0] <= self.count < self.fail[1]:
            self.failed += 1
            raise EngineFault(500, "injected: the engine is unavailable")
        tok = self.stub.tokenizer
        context = tok.decode(req.input_ids, skip_special_tokens=False)
        key = hash(tuple(req.input_ids))
        new = key not in self.seen
        self.seen.add(key)
        if self.abort_every and new and TOOL_RESPONSE in context:
            if len(self.seen) % self.abort_every == 0:
                self.aborts += 1
                self.stub.weight_version = f"w{self.aborts}"
                return Turn([], finish_reason="abort")
        ids = tok.encode(self.player.turn(context), add_special_tokens=False)
        logprobs = [scripted_logprob(i) for i in range(len(ids))]
        return Turn(list(ids), logprobs=logprobs, delay=self.delay)


RESPONDER = LoopEngine()
