"""slime's rollout control state, read without importing slime.

slime's `abort()` (over-sampling, dynamic filtering, partial rollout: it has enough groups)
sets `GenerateState(args).aborted`, asks the engines to abort what is in flight, and waits
for every pending generate call. A multi-turn episode must notice between turns, or slime
waits for whole episodes. `GenerateState` is a singleton slime builds itself; this module
only looks it up (building it would load a tokenizer), and only in a process where slime's
rollout module is already loaded: without slime nothing ever aborts.
"""

from __future__ import annotations

import sys
from typing import Any

_ROLLOUT_MODULE = "slime.rollout.sglang_rollout"


def _generate_state() -> Any | None:
    module = sys.modules.get(_ROLLOUT_MODULE)
    cls = getattr(module, "GenerateState", None) if module is not None else None
    if cls is None:
        return None
    instances = getattr(cls, "_instances", None)
    return instances.get(cls) if isinstance(instances, dict) else None


def slime_aborted() -> bool:
    """True while slime's rollout is aborting (its `GenerateState.aborted`)."""
    state = _generate_state()
    return bool(getattr(state, "aborted", False)) if state is not None else False


FULLY_ASYNC_FUNCTION = "generate_rollout_fully_async"
"""The name of slime's fully-async rollout function (v0.3+ `slime.rollout.fully_async_rollout`,
v0.2.2's `examples/fully_async`) and of the bridge's wrapper around it (`bridge.fully_async`)."""


def fully_async(args: Any) -> bool:
    """slime runs its fully-async rollout worker (`--rollout-function-path ...fully_async...`)."""
    path = getattr(args, "rollout_function_path", None)
    return isinstance(path, str) and path.rpartition(".")[2] == FULLY_ASYNC_FUNCTION


def partial_rollout(args: Any) -> bool:
    """slime keeps aborted samples and hands them back later (`--partial-rollout`)."""
    return bool(getattr(args, "partial_rollout", False))


def mask_offpolicy(args: Any) -> bool:
    """Tokens sampled before a partial rollout resumed are masked
    (`--mask-offpolicy-in-partial-rollout`)."""
    return partial_rollout(args) and bool(getattr(args, "mask_offpolicy_in_partial_rollout", False))
