"""The model's side of an episode, whatever the kind of model: one assistant turn (`ModelTurn`)
and the `ModelStep` protocol the episode loop drives. Implementations: `bridge.token_model`
(SGLang's /generate, token-exact: what slime trains) and the eval's chat model
(`tools/eval/chat_model.py`, an OpenAI-compatible endpoint)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from bridge.tokens import TokenLedger
from bridge.toolcalls import ParsedTurn


@dataclass
class ModelTurn:
    """One assistant turn as the loop sees it, whatever the kind of model."""

    text: str
    """What the model wrote (the decoded sampled tokens, or the message content)."""
    finish_reason: str
    """stop | length | abort"""
    parsed: ParsedTurn | None = None
    """Reasoning, visible content and tool calls in order; None when the turn was aborted."""
    weight_version: str | None = None
    """The policy weight version that sampled the turn, when the engine reports it."""


class ModelStep(Protocol):
    """The model's side of one episode: the only part that differs between kinds of model.

    Lengths are in tokens as far as the model kind knows them (0 until known).
    """

    ledger: TokenLedger | None
    """The episode's token ledger (token models), else None."""
    drift: list[dict[str, Any]]
    """Where the token context diverged (bridge/drift.py; token models), else empty."""

    def start(self, prompt_text: str, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Build the first context; returns the first chat messages (system, user)."""
        ...

    @property
    def prompt_length(self) -> int: ...

    @property
    def context_length(self) -> int:
        """Tokens in the context the next turn continues."""
        ...

    async def sample(self, params: dict[str, Any], known_tools: set[str]) -> ModelTurn:
        """The next assistant turn; `params` are SGLang sampling params with this turn's
        `max_new_tokens`. An aborted turn (finish_reason `abort`) leaves the context as it was,
        so it can be re-sent. Raises EngineError (or LedgerError) when the model fails."""
        ...

    def append_tool_results(self, contents: list[str], limit: int) -> bool:
        """Append the last turn's tool results (one per call, in order); False (and nothing
        appended) when they would reach `limit` tokens."""
        ...

    def append_user(self, text: str, limit: int) -> bool:
        """Like `append_tool_results`, for a user message (the nudge)."""
        ...
