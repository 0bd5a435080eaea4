"""Token, loss-mask and logprob accounting for one episode, and writing it into slime's `Sample`.

The ledger only ever appends: the prompt, then for each turn the ids the engine sampled
(mask 1, the engine's logprobs) and the ids the harness appended (mask 0, logprob 0.0).
At the end `fill_sample` writes the result into slime's `Sample`, through
`append_response_tokens` when that slime has it (v0.3.1+), else field by field under the
same rules (older slime).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class LedgerError(ValueError):
    """Tokens that cannot be accounted for (e.g. logprobs that do not match the sampled ids)."""


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


class _Status(Enum):
    PENDING = "pending"
    COMPLETED = "completed"
    TRUNCATED = "truncated"
    ABORTED = "aborted"
    FAILED = "failed"


@dataclass
class FallbackSample:
    """The fields of slime's `Sample` this bridge reads and writes; used only when slime is absent."""

    Status = _Status

    group_index: int | None = None
    index: int | None = None
    prompt: Any = ""
    tokens: list[int] = field(default_factory=list)
    response: str = ""
    response_length: int = 0
    label: Any = None
    reward: Any = None
    loss_mask: list[int] | None = None
    weight_versions: list[str] = field(default_factory=list)
    rollout_log_probs: list[float] | None = None
    remove_sample: bool = False
    status: _Status = _Status.PENDING
    metadata: dict = field(default_factory=dict)
    session_id: str | None = None


def sample_class() -> type:
    """slime's `Sample` when slime is importable, else `FallbackSample`."""
    try:
        from slime.utils.types import Sample  # type: ignore[import-not-found]
    except Exception:
        return FallbackSample
    return Sample


def status_value(sample: Any, name: str) -> Any:
    """The member `name` (COMPLETED, TRUNCATED, ...) of this sample's own Status enum."""
    return getattr(type(sample).Status, name)


def reset_response(sample: Any) -> None:
    """Forget any previous response (e.g. a sample coming back after an abort): episodes restart."""
    sample.response = ""
    sample.response_length = 0
    sample.loss_mask = None
    sample.rollout_log_probs = None
    if hasattr(sample, "rollout_top_p_token_ids"):
        sample.rollout_top_p_token_ids = None
        sample.rollout_top_p_token_offsets = None


def fill_sample(sample: Any, ledger: TokenLedger, args: Any = None) -> None:
    """Write the ledger into `sample` (tokens, response, response_length, loss_mask, rollout_log_probs)."""
    reset_response(sample)
    sample.tokens = list(ledger.prompt_ids)
    append = getattr(sample, "append_response_tokens", None)
    if append is not None:
        for seg in ledger.segments:
            if seg.trainable:
                append(
                    args,
                    tokens=seg.ids,
                    log_probs=seg.logprobs,
                    trainable=True,
                    meta_info=seg.meta_info,
                    text=seg.text,
                )
            else:
                append(args, tokens=seg.ids, trainable=False, text=seg.text)
        if sample.loss_mask is None:
            sample.loss_mask = []
        if sample.rollout_log_probs is None:
            sample.rollout_log_probs = []
    else:
        sample.tokens = list(ledger.ids)
        sample.response_length = ledger.response_length
        sample.response = ledger.response_text()
        sample.loss_mask = ledger.loss_mask()
        sample.rollout_log_probs = ledger.logprobs()
        for seg in ledger.segments:
            if seg.meta_info:
                _apply_engine_meta(sample, seg.meta_info)
    if (
        len(sample.loss_mask) != sample.response_length
        or len(sample.rollout_log_probs) != sample.response_length
    ):
        raise LedgerError(
            f"sample misaligned: response_length {sample.response_length}, "
            f"loss_mask {len(sample.loss_mask)}, logprobs {len(sample.rollout_log_probs)}"
        )


def _apply_engine_meta(sample: Any, meta_info: dict[str, Any]) -> None:
    """Older slime: the bookkeeping `update_from_meta_info` does, minus the status (set by the episode)."""
    cache = getattr(sample, "prefix_cache_info", None)
    if cache is not None:
        cache.add(meta_info=meta_info)
    version = meta_info.get("weight_version")
    if version is not None and isinstance(getattr(sample, "weight_versions", None), list):
        sample.weight_versions.append(version)


def zero_loss(sample: Any) -> None:
    """Keep the tokens but train on none of them (failures, removed samples)."""
    sample.loss_mask = [0] * sample.response_length
