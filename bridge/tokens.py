"""Token, loss-mask and logprob accounting for one episode.

The ledger only ever appends: the prompt, then for each turn the ids the engine sampled
(mask 1, the engine's logprobs) and the ids the harness appended (mask 0, logprob 0.0).
`bridge/sample.py` writes it into slime's `Sample`. When a partial rollout resumes, everything
sampled so far is marked off-policy (`offpolicy_len`): slime's
`--mask-offpolicy-in-partial-rollout` masks exactly those tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.errors import LedgerError


@dataclass
class Segment:
    """A contiguous run of response tokens from one source."""

    ids: list[int]
    trainable: bool
    logprobs: list[float] | None  # only for trainable segments
    text: str
    meta_info: dict[str, Any] | None = None


@dataclass
class TokenLedger:
    """Prompt ids plus an append-only list of response segments."""

    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)  # prompt + response, what the engine sees next
    segments: list[Segment] = field(default_factory=list)
    drift_count: int = 0
    offpolicy_len: int = 0
    """Response tokens (from the start) sampled by an earlier policy: trained with mask 0."""

    def __post_init__(self) -> None:
        if not self.ids:
            self.ids = list(self.prompt_ids)

    @property
    def response_length(self) -> int:
        return len(self.ids) - len(self.prompt_ids)

    def add_sampled(
        self,
        ids: list[int],
        logprobs: list[float],
        text: str,
        meta_info: dict[str, Any] | None = None,
    ) -> None:
        """Append ids the model sampled: trained (mask 1) with the engine's logprobs."""
        if len(logprobs) != len(ids):
            raise LedgerError(f"engine returned {len(ids)} output ids but {len(logprobs)} logprobs")
        self._append(Segment(list(ids), True, [float(x) for x in logprobs], text, meta_info))

    def add_appended(self, ids: list[int], text: str) -> None:
        """Append ids the harness or environment added: not trained (mask 0, logprob 0.0)."""
        if ids:
            self._append(Segment(list(ids), False, None, text))

    def _append(self, seg: Segment) -> None:
        before = len(self.ids)
        self.ids.extend(seg.ids)
        self.segments.append(seg)
        # The context sent next must be exactly the previous context plus these ids.
        if len(self.ids) != before + len(seg.ids) or (seg.ids and self.ids[-1] != seg.ids[-1]):
            self.drift_count += 1

    def check_context(self, sent_len: int, reported_prompt_tokens: int | None) -> None:
        """Count a drift when the engine reports a prompt length other than the context we sent."""
        if reported_prompt_tokens is not None and reported_prompt_tokens != sent_len:
            self.drift_count += 1

    def loss_mask(self) -> list[int]:
        out: list[int] = []
        for s in self.segments:
            out.extend([1 if s.trainable else 0] * len(s.ids))
        return out

    def logprobs(self) -> list[float]:
        out: list[float] = []
        for s in self.segments:
            out.extend(s.logprobs if s.trainable and s.logprobs is not None else [0.0] * len(s.ids))
        return out

    def response_text(self) -> str:
        return "".join(s.text for s in self.segments)

    def mark_offpolicy(self) -> None:
        """Everything in the response so far was sampled by an earlier policy."""
        self.offpolicy_len = self.response_length

    def sampled_only_end(self) -> TokenLedger:
        """This ledger without its trailing appended segments: a sample ends with the model's last
        sampled token (what follows it trains nothing and conditions nothing)."""
        keep = len(self.segments)
        while keep and not self.segments[keep - 1].trainable:
            keep -= 1
        if keep == len(self.segments) or keep == 0:
            return self
        segments = self.segments[:keep]
        n = sum(len(s.ids) for s in segments)
        return TokenLedger(
            list(self.prompt_ids),
            self.ids[: len(self.prompt_ids) + n],
            segments,
            self.drift_count,
            min(self.offpolicy_len, n),
        )
