"""slime's hook boundary, typed without importing slime: the parts of its `Sample` and `args`
that the bridge reads and writes.

slime's own classes (`slime.utils.types.Sample`, the argparse namespace of `slime.utils.arguments`)
match these protocols structurally, as does `bridge.sample.FallbackSample`, which stands in when
slime is absent. Fields that only some slime versions have (`append_response_tokens`, the replay
fields `rollout_top_p_token_*` and `rollout_routed_experts`, `prefix_cache_info`, `spec_info`)
are read with `getattr`/`hasattr` and are not part of the protocol.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, ClassVar, Protocol

__all__ = ["SlimeArgs", "SlimeSample"]


class SlimeSample(Protocol):
    """The fields of slime's `Sample` the bridge reads and writes."""

    Status: ClassVar[type[Enum]]
    """slime's status enum (PENDING, COMPLETED, TRUNCATED, ABORTED, FAILED)."""

    group_index: int | None
    index: int | None
    prompt: Any
    """The prompt as the data source gives it (a string or chat messages)."""
    tokens: list[int]
    """Prompt and response token ids."""
    response: str
    response_length: int
    label: Any
    reward: Any
    """The scalar reward the bridge sets (None for an aborted sample)."""
    loss_mask: list[int] | None
    weight_versions: list[str]
    rollout_log_probs: list[float] | None
    remove_sample: bool
    status: Any
    """A member of this sample's own `Status` (slime versions have different enum classes)."""
    metadata: Any
    """The task's metadata: a dict (old data stores a JSON string; `task_metadata` parses it)."""
    session_id: str | None
    non_generation_time: float


class SlimeArgs(Protocol):
    """The fields of slime's `args` the generate hook needs.

    Optional ones, read with `getattr` because slime versions differ: rollout_max_context_len,
    rollout_max_response_len, eval_max_context_len, eval_max_response_len, partial_rollout,
    mask_offpolicy_in_partial_rollout, use_rollout_routing_replay (with num_layers and
    moe_router_topk), rollout_top_p.
    """

    hf_checkpoint: str
    """The tokenizer and chat template's path (slime's `--hf-checkpoint`)."""
    sglang_router_ip: str
    sglang_router_port: int
