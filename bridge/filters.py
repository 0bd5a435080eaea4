"""slime's dynamic-sampling filter for the bridge: groups with an infra failure never train.

    --dynamic-sampling-filter-path bridge.filters.drop_infra_failures
        def drop_infra_failures(args, samples, **kwargs) -> DynamicFilterOutput | bool

run.sh wires it by default. slime calls it once per finished GRPO group (v0.2.2 .. main:
`call_dynamic_filter(fn, args, group)`); a dropped group is replaced by a new one from the
data source, so the batch stays full and no failed episode enters group normalisation (slime's
`remove_sample` alone only zeroes the loss: the sample would still count in its group's mean
and std). An infra failure is an episode the bridge lost to the environment, the network or
the engine after its retries (`metadata["infra_failure"]`); a model failure keeps its reward.

To combine with another filter (e.g. slime's `check_reward_nonzero_std`), name it in
`$BRIDGE_NEXT_DYNAMIC_FILTER` (a dotted path): it runs on the groups this one keeps.

A persistent outage would make slime refill forever: after `MAX_CONSECUTIVE_DROPS` groups in a
row dropped for infra failures, the filter raises and the rollout stops with the last failure.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterable
from typing import Any

from bridge.errors import InfraOutageError

log = logging.getLogger(__name__)

NEXT_FILTER_ENV = "BRIDGE_NEXT_DYNAMIC_FILTER"
DROP_REASON = "bridge_infra_failure"
MAX_CONSECUTIVE_DROPS = 64
"""Groups in a row dropped for infra failures before the rollout is stopped (a lasting outage)."""


_consecutive = [0]


def _flat(samples: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for s in samples:
        out.extend(_flat(s) if isinstance(s, list) else [s])
    return out


def infra_failure(sample: Any) -> bool:
    """Whether the bridge lost this sample's episode to the infrastructure."""
    md = getattr(sample, "metadata", None)
    return isinstance(md, dict) and bool(md.get("infra_failure"))


def _output(keep: bool, reason: str | None) -> Any:
    """slime's DynamicFilterOutput where it exists (the drop is then counted by reason)."""
    try:
        from slime.rollout.filter_hub.base_types import (
            DynamicFilterOutput,
        )
    except Exception:
        return keep
    return DynamicFilterOutput(keep=keep, reason=reason)


def _next_filter() -> Any | None:
    path = os.environ.get(NEXT_FILTER_ENV, "").strip()
    if not path:
        return None
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def drop_infra_failures(args: Any, samples: list[Any], **kwargs: Any) -> Any:
    """Drop a group in which any episode was lost to the infrastructure (slime's filter hook)."""
    failed = [s for s in _flat(samples) if infra_failure(s)]
    if failed:
        _consecutive[0] += 1
        if _consecutive[0] >= MAX_CONSECUTIVE_DROPS:
            _consecutive[0] = 0
            message = (failed[0].metadata or {}).get("failure_message")
            raise InfraOutageError(
                f"{MAX_CONSECUTIVE_DROPS} groups in a row lost episodes to the environment, "
                f"network or engine; last failure: {message}"
            )
        log.info("dropping a group: %d episode(s) lost to the infrastructure", len(failed))
        return _output(False, DROP_REASON)
    _consecutive[0] = 0
    nxt = _next_filter()
    if nxt is not None:
        return nxt(args, samples, **kwargs)
    return _output(True, None)
