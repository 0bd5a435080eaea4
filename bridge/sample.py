"""slime's `Sample`, across versions: writing an episode's token ledger into it.

slime v0.3.1+ has `Sample.append_response_tokens`, which keeps every per-token field aligned
(loss mask, rollout logprobs, top-p replay spans, routed experts, weight versions, prefix-cache
and speculative-decoding counters); older slime (v0.2.2) has none of it, and this module fills
the same fields under the same rules. slime itself is never imported at module level: without
it `FallbackSample` stands in (tests, `run.sh --rollout-only`).

What slime's conversion to train data reads, and so what every returned sample must carry:
  * `tokens`, `response_length`, `loss_mask`, `rollout_log_probs` (aligned, never padded);
  * with `--rollout-top-p` < 1: `rollout_top_p_token_ids` and `rollout_top_p_token_offsets`
    (offsets of length response_length + 1), also on a sample that sampled nothing;
  * with `--use-rollout-routing-replay`: `rollout_routed_experts` of shape
    (len(tokens) - 1, num_layers, moe_router_topk) on every sample of the batch.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from bridge.errors import LedgerError
from bridge.slime_types import SlimeArgs, SlimeSample
from bridge.tokens import TokenLedger


class _Status(Enum):
    PENDING = "pending"
    COMPLETED = "completed"
    TRUNCATED = "truncated"
    ABORTED = "aborted"
    FAILED = "failed"


@dataclass
class FallbackSample:
    """slime's `Sample` when slime is absent: exactly the fields of
    `bridge.slime_types.SlimeSample`."""

    Status: ClassVar[type[Enum]] = _Status

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
    status: Any = _Status.PENDING
    metadata: Any = field(default_factory=dict)
    session_id: str | None = None
    non_generation_time: float = 0.0


def sample_class() -> type:
    """slime's `Sample` when slime is importable, else `FallbackSample`."""
    try:
        from slime.utils.types import Sample
    except Exception:
        return FallbackSample
    cls: type = Sample
    return cls


def status_value(sample: SlimeSample, name: str) -> Any:
    """The member `name` (COMPLETED, TRUNCATED, ...) of this sample's own Status enum."""
    return getattr(type(sample).Status, name)


# Fields derived from a response; all of them are rebuilt from the ledger on every write, so
# nothing survives from an earlier attempt (a restarted or resumed episode, a retried one).
_NONE_FIELDS = (
    "loss_mask",
    "rollout_log_probs",
    "rollout_top_p_token_ids",
    "rollout_top_p_token_offsets",
    "rollout_routed_experts",
)


def reset_response(sample: SlimeSample) -> None:
    """Forget every response-derived field: weight versions and cache/spec counters included."""
    sample.response = ""
    sample.response_length = 0
    for name in _NONE_FIELDS:
        if hasattr(sample, name):
            setattr(sample, name, None)
    if isinstance(getattr(sample, "weight_versions", None), list):
        sample.weight_versions = []
    for name in ("prefix_cache_info", "spec_info"):
        info = getattr(sample, name, None)
        if info is not None:
            setattr(sample, name, type(info)())


def fill_sample(sample: SlimeSample, ledger: TokenLedger, args: SlimeArgs | None = None) -> None:
    """Write the ledger into `sample`: tokens, response, loss mask, logprobs and the replay fields.

    Sampled segments the ledger marks off-policy (sampled by an earlier policy, before a partial
    rollout resumed) keep their logprobs and replay data but get loss mask 0.
    """
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
        _routed_experts_from_last_turn(sample, ledger, args)
    if ledger.offpolicy_len:
        mask = list(sample.loss_mask)
        mask[: ledger.offpolicy_len] = [0] * ledger.offpolicy_len
        sample.loss_mask = mask
    if (
        len(sample.loss_mask) != sample.response_length
        or len(sample.rollout_log_probs) != sample.response_length
    ):
        raise LedgerError(
            f"sample misaligned: response_length {sample.response_length}, "
            f"loss_mask {len(sample.loss_mask)}, logprobs {len(sample.rollout_log_probs)}"
        )
    complete_replay_fields(sample, args)


def _apply_engine_meta(sample: SlimeSample, meta_info: dict[str, Any]) -> None:
    """Older slime: the bookkeeping `update_from_meta_info` does, minus the status (set by the
    episode)."""
    cache = getattr(sample, "prefix_cache_info", None)
    if cache is not None:
        cache.add(meta_info=meta_info)
    version = meta_info.get("weight_version")
    if version is not None and isinstance(getattr(sample, "weight_versions", None), list):
        sample.weight_versions.append(version)


def _routed_experts_from_last_turn(
    sample: SlimeSample, ledger: TokenLedger, args: SlimeArgs | None
) -> None:
    """Older slime: the last turn's routed experts cover the whole context (as its generate
    does)."""
    if not getattr(args, "use_rollout_routing_replay", False):
        return
    last = next((s for s in reversed(ledger.segments) if s.trainable and s.meta_info), None)
    raw = (last.meta_info or {}).get("routed_experts") if last is not None else None
    if raw is None:
        return
    import numpy as np

    data = base64.b64decode(raw) if isinstance(raw, str) else bytes(raw)
    rows = len(sample.tokens) - 1
    layers, topk = _expert_shape(args)
    experts = np.frombuffer(data, dtype=np.int32).reshape(rows, layers, topk)
    replay: Any = sample  # a field only some slime versions have: not part of SlimeSample
    replay.rollout_routed_experts = experts


def _expert_shape(args: SlimeArgs | None) -> tuple[int, int]:
    """(num_layers, moe_router_topk): Megatron's args, there whenever routing replay is on."""
    megatron: Any = args
    return int(megatron.num_layers), int(megatron.moe_router_topk)


def complete_replay_fields(sample: SlimeSample, args: SlimeArgs | None) -> None:
    """Give a sample the replay fields slime's conversion asserts on when no turn supplied them.

    Only untrained tokens can lack them (a placeholder response, a failure before the first
    turn): top-p replay gets empty spans, routed-experts replay a fixed routing
    (experts 0..k-1 per token and layer), so slime's checks pass and no loss is computed.
    """
    n = sample.response_length
    # the replay fields exist only in some slime versions: set by name, not through SlimeSample
    replay: Any = sample
    if getattr(args, "rollout_top_p", 1.0) != 1.0 and hasattr(sample, "rollout_top_p_token_ids"):
        if replay.rollout_top_p_token_offsets is None:
            if any(sample.loss_mask or ()):
                raise LedgerError("trained tokens without top-p replay data from the engine")
            replay.rollout_top_p_token_ids = []
            replay.rollout_top_p_token_offsets = [0] * (n + 1)
    if getattr(args, "use_rollout_routing_replay", False):
        if getattr(sample, "rollout_routed_experts", None) is None:
            if any(sample.loss_mask or ()):
                raise LedgerError("trained tokens without routed experts from the engine")
            import numpy as np

            layers, topk = _expert_shape(args)
            rows = max(len(sample.tokens) - 1, 0)
            replay.rollout_routed_experts = np.broadcast_to(
                np.arange(topk, dtype=np.int32), (rows, layers, topk)
            ).copy()


def zero_loss(sample: SlimeSample) -> None:
    """Keep the tokens but train on none of them (failures, removed samples)."""
    sample.loss_mask = [0] * sample.response_length
