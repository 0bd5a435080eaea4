"""`TokenModel`: the episode's model step on SGLang's /generate, token-exact. The context is a
token ledger that only ever appends: the sampled ids verbatim (loss mask 1, engine logprobs),
the chat template's tool and user turns as token deltas (mask 0); drift is recorded where the
engine's view of the context differs (bridge/drift.py)."""

from __future__ import annotations

from typing import Any

from bridge import drift
from bridge.chat import ChatRenderer
from bridge.engine import EngineClient, EngineTurn
from bridge.model_step import ModelTurn
from bridge.tokens import TokenLedger
from bridge.toolcalls import parse_turn


class TokenModel:
    """SGLang's /generate, token-exact: the context is a token ledger that only ever appends."""

    def __init__(
        self,
        engine: EngineClient,
        renderer: ChatRenderer,
        routing_key: str,
        routed_experts: bool = False,
    ) -> None:
        self.engine = engine
        self.renderer = renderer
        self.routing_key = routing_key
        self.routed_experts = routed_experts
        self.ledger: TokenLedger | None = None
        self.drift: list[dict[str, Any]] = []
        self._turns = 0
        self._last_text = ""

    def start(self, prompt_text: str, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.ledger = TokenLedger(self.renderer.prompt_ids(prompt_text, tools))
        return self.renderer.prompt_messages(prompt_text)

    @property
    def prompt_length(self) -> int:
        return len(self._ledger.prompt_ids)

    @property
    def context_length(self) -> int:
        return len(self._ledger.ids)

    @property
    def _ledger(self) -> TokenLedger:
        assert self.ledger is not None, "start() first"
        return self.ledger

    async def sample(self, params: dict[str, Any], known_tools: set[str]) -> ModelTurn:
        ledger = self._ledger
        sent_len = len(ledger.ids)
        out = await self.engine.generate(
            ledger.ids, params, self.routing_key, return_routed_experts=self.routed_experts
        )
        if out.aborted:  # the partial turn is dropped: the ledger stays as it was
            return ModelTurn("", "abort", weight_version=out.weight_version)
        ledger.check_context(sent_len, out.meta_info.get("prompt_tokens"))
        if out.ids_mismatch:
            ledger.drift_count += 1
        self._turns += 1  # 1-based, as the episode counts its turns
        self._describe_drift(sent_len, out)
        text = self.renderer.decode(out.output_ids) if out.output_ids else ""
        if out.output_ids:
            ledger.add_sampled(out.output_ids, out.logprobs, text, out.meta_info)
        self._last_text = text
        parsed = parse_turn(text, known_tools, self.renderer.eos_text)
        return ModelTurn(text, out.finish_reason, parsed, out.weight_version)

    def _describe_drift(self, sent_len: int, out: EngineTurn) -> None:
        """Say where this turn's context diverged, when it did (bridge/drift.py)."""
        ledger, decode = self._ledger, self.renderer.tokenizer.decode
        reported = out.meta_info.get("prompt_tokens")
        if isinstance(reported, int) and reported != sent_len:
            event = drift.prompt_mismatch(self._turns, ledger.ids[:sent_len], reported, decode)
            drift.keep(self.drift, event)
        if out.ids_mismatch and out.reported_ids is not None:
            event = drift.output_mismatch(
                self._turns, sent_len, out.output_ids, out.reported_ids, decode
            )
            drift.keep(self.drift, event)

    def append_tool_results(self, contents: list[str], limit: int) -> bool:
        return self._append(*self.renderer.tool_delta(contents, self._last_text), limit)

    def append_user(self, text: str, limit: int) -> bool:
        return self._append(*self.renderer.user_delta(text, self._last_text), limit)

    def _append(self, ids: list[int], text: str, limit: int) -> bool:
        ledger = self._ledger
        if len(ledger.ids) + len(ids) >= limit:
            return False
        ledger.add_appended(ids, text)
        return True
