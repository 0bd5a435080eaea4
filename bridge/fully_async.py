"""slime's fully-async mode with the bridge: infra failures kept out of GRPO groups, engine aborts
handed back to slime's worker, and an evaluation that works beside the worker.

    --rollout-function-path bridge.fully_async.generate_rollout_fully_async
        def generate_rollout_fully_async(args, rollout_id, data_source, evaluation=False)
    --eval-function-path bridge.fully_async.eval_rollout
        def eval_rollout(args, rollout_id, data_source=None, evaluation=True)

run.sh wires both in `--mode fully-async`. The rollout function is slime's own
(`slime.rollout.fully_async_rollout`, v0.2.2's `examples/fully_async`), called unchanged; the
wrapper only stops the job when a lasting outage reaches its output (below).

What slime's fully-async worker expects, and what the bridge does with it. The worker is a
thread running its own event loop that calls `generate_and_rm_group` itself: slime's dynamic
filter (`bridge.filters`) never runs there, and the worker never sets `GenerateState.aborted`.
Its one group-level rule: a group holding an ABORTED sample goes back into the data buffer (its
finished samples kept) instead of to training, and its unfinished samples are generated again
("each in-flight generation short-circuits ... and surfaces ABORTED", its module docstring).
So, in this mode only (`bridge.slime_state.fully_async`):

- An episode lost to the environment, the network or the engine (after the bridge's own
  `EPISODE_ATTEMPTS` tries) is handed back ABORTED, without reward: the worker requeues its
  group and only that episode is played again; the group trains once every episode of it
  finished (the failed attempt is still recorded in the trajectory store). A sample lost
  `MAX_REQUEUES` times in a row raises `GroupDropped`: the worker drops the group (it logs the
  exception), as the dynamic filter drops it in the other modes. After `MAX_CONSECUTIVE_LOSSES`
  episodes in a row lost (an outage), samples stay FAILED: they reach this wrapper, which stops
  the job with `InfraOutageError` before anything of that rollout trains.
- An engine abort of a turn slime did not ask for (a weight update pauses the engines with
  SGLang's default abort mode) ends the episode as `engine_abort` (status ABORTED) instead of
  re-sending the turn: the worker requeues the group and the episode resumes where it stopped, on
  the new weights, with its session kept (`bridge.partial`). Each turn records the weight
  version that sampled it (`metadata["weight_versions"]`); with `--partial-rollout
  --mask-offpolicy-in-partial-rollout` the tokens sampled before the resume are masked out of
  the loss, as slime masks its own resumed samples. This is slime's partial-rollout semantics,
  which its fully-async worker applies to its own samples whether or not `--partial-rollout` is
  set (a requeued sample keeps its tokens).

Evaluation: slime's fully-async function refuses it, and slime's own eval cannot run beside the
worker on slime's event loop: `generate_and_rm` takes `GenerateState`'s semaphore, one
`asyncio.Semaphore` that the worker keeps saturated on its own loop ("bound to a different
event loop"). `eval_rollout` runs slime's own `eval_rollout` coroutine unchanged on the worker's
loop, where the semaphore lives (eval samples queue with the worker's generations).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from bridge.errors import GroupDropped, InfraOutageError
from bridge.filters import infra_failure
from bridge.slime_state import FULLY_ASYNC_FUNCTION

log = logging.getLogger(__name__)

WRAPPER = f"bridge.fully_async.{FULLY_ASYNC_FUNCTION}"
"""This module's rollout function, as `--rollout-function-path` names it."""
EVAL_FUNCTION = "bridge.fully_async.eval_rollout"
SLIME_MODULES = ("slime.rollout.fully_async_rollout", "fully_async_rollout")
"""Where slime's fully-async rollout lives: v0.3+, then v0.2.2's example on PYTHONPATH."""
MAX_REQUEUES = 3
"""Times in a row a sample's episode may be lost and requeued before its group is dropped."""
MAX_CONSECUTIVE_LOSSES = 64
"""Episodes in a row lost to the infrastructure before the job is stopped (a lasting outage)."""
REQUEUES_KEY = "infra_requeues"
"""Sample metadata: times this sample was handed back after an infra failure, in a row."""

_worker_loop: list[asyncio.AbstractEventLoop] = []
_losses = [0]
_last_failure: list[str] = [""]


def note_worker_loop() -> None:
    """Remember the running loop as the worker's (the bridge calls it for every training episode
    in fully-async mode; the worker runs them all on its own loop)."""
    loop = asyncio.get_running_loop()
    if not _worker_loop or _worker_loop[0] is not loop:
        _worker_loop[:] = [loop]


def worker_loop() -> asyncio.AbstractEventLoop | None:
    """The worker's loop, while it runs."""
    loop = _worker_loop[0] if _worker_loop else None
    return loop if loop is not None and loop.is_running() and not loop.is_closed() else None


def episode_kept() -> None:
    """An episode that was not lost: the outage count starts over."""
    _losses[0] = 0


def hand_back_infra_failure(args: Any, sample: Any) -> None:
    """Keep a sample the bridge lost to the infrastructure out of its GRPO group (fully-async).

    Turns it into an ABORTED sample without reward (slime's worker requeues its group), or raises
    GroupDropped after `MAX_REQUEUES` losses in a row; during an outage leaves it FAILED for the
    wrapper to stop the job (or raises InfraOutageError without the wrapper)."""
    md = sample.metadata
    _losses[0] += 1
    _last_failure[0] = str(md.get("failure_message") or md.get("stop_reason") or "")
    if _losses[0] >= MAX_CONSECUTIVE_LOSSES:
        if getattr(args, "rollout_function_path", None) == WRAPPER:
            return  # stays FAILED: the wrapper sees it and stops the job
        raise InfraOutageError(_outage_message())
    requeues = int(md.get(REQUEUES_KEY) or 0) + 1
    if requeues > MAX_REQUEUES:
        raise GroupDropped(
            f"episode {md.get('episode_key')} lost {requeues} times in a row "
            f"(last: {_last_failure[0][:300]}); its group is dropped"
        )
    md[REQUEUES_KEY] = requeues
    sample.reward = None
    sample.status = type(sample).Status.ABORTED


def clear_requeues(sample: Any) -> None:
    """A sample whose episode finished: its losses in a row start over."""
    md = sample.metadata
    if isinstance(md, dict):
        md.pop(REQUEUES_KEY, None)


def _outage_message() -> str:
    return (
        f"{MAX_CONSECUTIVE_LOSSES} episodes in a row were lost to the environment, network or "
        f"engine; last failure: {_last_failure[0][:300]}"
    )


def _slime_rollout() -> Callable[..., Any]:
    """slime's fully-async rollout function, from the first module of SLIME_MODULES found."""
    for name in SLIME_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name and not name.startswith(f"{e.name}."):
                raise  # the module exists but something it imports does not
            continue
        fn: Callable[..., Any] = getattr(module, FULLY_ASYNC_FUNCTION)
        return fn
    raise ImportError(
        f"slime's fully-async rollout not found ({' or '.join(SLIME_MODULES)}): use slime v0.3+, "
        "or put v0.2.2's examples/fully_async on PYTHONPATH"
    )


def _samples(groups: Iterable[Any]) -> Iterable[Any]:
    for g in groups:
        if isinstance(g, list):
            yield from _samples(g)
        else:
            yield g


def generate_rollout_fully_async(
    args: Any, rollout_id: int, data_source: Any, evaluation: bool = False
) -> Any:
    """slime's fully-async rollout (`--rollout-function-path`), stopped on a lasting outage;
    evaluation goes to `eval_rollout`."""
    if evaluation:
        return eval_rollout(args, rollout_id, data_source)
    out = _slime_rollout()(args, rollout_id, data_source)
    groups = getattr(out, "samples", out)
    if any(infra_failure(s) for s in _samples(groups)):
        raise InfraOutageError(_outage_message())
    return out


def eval_rollout(
    args: Any, rollout_id: int, data_source: Any = None, evaluation: bool = True
) -> Any:
    """slime's own evaluation (`--eval-function-path`), run on the fully-async worker's loop."""
    from slime.rollout import sglang_rollout

    loop = worker_loop()
    if loop is None:  # no fully-async rollout ran in this process: nothing shares the semaphore
        log.info("fully-async eval before any rollout: slime's eval on slime's own loop")
        return sglang_rollout.generate_rollout(args, rollout_id, data_source, evaluation=True)
    result = asyncio.run_coroutine_threadsafe(
        sglang_rollout.eval_rollout(args, rollout_id), loop
    ).result()
    output, _aborted = result
    return output
