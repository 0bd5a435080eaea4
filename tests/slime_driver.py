"""Runs slime's REAL rollout chain with the bridge as its generate function (one subprocess per
slime version; tests/test_slime_control_flow.py and bench/abort.py start it).

    python tests/slime_driver.py SPEC.json   ->  one JSON line on stdout

The chain: slime's data source -> `generate_rollout` -> `generate_and_rm_group` ->
`bridge.generate.generate` (-> the engine stand-in and the real env server) -> slime's
dynamic-sampling filter / abort / partial-rollout buffer -> `RolloutManager._post_process_rewards`
-> `_convert_samples_to_train_data` -> `_split_train_data_by_dp` (a real local Ray object store)
-> GRPO `compute_advantages_and_returns`. Stand-ins only for what needs a GPU: Megatron's
parallel state for one rank, and the actor's recomputed logprobs (the rollout logprobs are used).

SPEC: {"scenario": "rollout" | "eval", "argv": [slime flags], "set": {attr: value},
       "tasks": [prepare_tasks rows], "rollouts": [{"weight_version": str, "pause_s": float}],
       "env": {VAR: value}, "stub_url": ..., "eval": {...}}
   or {"scenario": "many", "runs": {name: SPEC}}: each SPEC in turn, in this one process
   (slime's import and Ray's start are most of a run's cost), with fresh slime state each.
A rollout plan's `pause_s` waits that long before the rollout (the time training takes).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import slime_cpu_shims  # noqa: F401  (first: SGLang's imports on the CPU)


def slime_args(spec: dict[str, Any]) -> argparse.Namespace:
    """slime's own defaults for every flag (its parser), the spec's flags, and the few derived
    values slime's validation would set."""
    from slime.utils.arguments import get_slime_extra_args_provider

    parser = argparse.ArgumentParser(allow_abbrev=False)
    get_slime_extra_args_provider()(parser)
    args, _ = parser.parse_known_args(spec["argv"])
    defaults = dict(
        sglang_server_concurrency=64,
        rollout_num_engines=1,
        rollout_num_gpus=1,
        rollout_num_gpus_per_engine=1,
        sglang_dp_size=None,
        sglang_speculative_algorithm=None,
        sglang_enable_deterministic_inference=False,
        use_slime_router=False,
        slime_router_middleware_paths=[],
        router_policy=None,
        num_layers=2,
        moe_router_topk=2,
        moe_layer_freq=None,
        use_routing_replay=False,
        train_backend="megatron",
        kl_coef=0.0,
        use_rollout_logprobs=True,
        normalize_advantages=False,
        use_opd=False,
        custom_advantage_function_path=None,
        ci_test=False,
        micro_batch_size=1,
        global_batch_size=None,
    )
    for k, v in {**defaults, **spec.get("set", {})}.items():
        if k in spec.get("set", {}) or not hasattr(args, k) or getattr(args, k) is None:
            setattr(args, k, v)
    if args.global_batch_size is None:
        args.global_batch_size = args.rollout_batch_size * args.n_samples_per_prompt
    if args.over_sampling_batch_size is None:
        args.over_sampling_batch_size = args.rollout_batch_size
    if getattr(args, "eval_max_context_len", None) is None:
        args.eval_max_context_len = args.rollout_max_context_len
    args.rollout_global_dataset = True
    from slime.utils import http_utils

    if hasattr(http_utils, "init_http_client"):
        http_utils.init_http_client(args)  # as slime's RolloutManager does
    return args


def _manager(args: argparse.Namespace) -> Any:
    """slime's RolloutManager object without its __init__ (which starts SGLang engines)."""
    import slime.ray.rollout as rr

    cls = getattr(rr.RolloutManager, "__ray_actor_class__", None) or rr.RolloutManager
    m = object.__new__(cls)
    m.args = args
    m.custom_reward_post_process_func = None
    m.custom_convert_samples_to_train_data_func = None
    m.train_parallel_config = {
        "dp_size": 1,
        "cp_size": 1,
        "vpp_size": 1,
        "microbatch_group_size_per_vp_stage": 1,
    }
    return m


def _fake_single_rank_parallel_state() -> None:
    """Megatron's parallel state for one rank: the only part of training that needs a GPU setup."""
    from megatron.core import mpu

    for name, value in {
        "is_pipeline_last_stage": True,
        "is_pipeline_first_stage": True,
        "get_context_parallel_world_size": 1,
        "get_context_parallel_rank": 0,
        "get_tensor_model_parallel_world_size": 1,
        "get_tensor_model_parallel_rank": 0,
        "get_data_parallel_world_size": 1,
        "get_data_parallel_rank": 0,
        "get_data_parallel_group": None,
    }.items():
        setattr(mpu, name, lambda *a, _v=value, **k: _v)


def _sample_view(s: Any) -> dict[str, Any]:
    md = s.metadata if isinstance(s.metadata, dict) else {}
    top_p = getattr(s, "rollout_top_p_token_offsets", None)
    experts = getattr(s, "rollout_routed_experts", None)
    return {
        "index": s.index,
        "group_index": s.group_index,
        "status": s.status.value,
        "reward": s.reward,
        "remove_sample": bool(s.remove_sample),
        "response_length": s.response_length,
        "tokens": len(s.tokens),
        "loss_mask": list(s.loss_mask or []),
        "weight_versions": list(s.weight_versions),
        "turn_versions": md.get("weight_versions"),
        "stop_reason": md.get("stop_reason"),
        "infra_failure": md.get("infra_failure"),
        "episode_key": md.get("episode_key"),
        "resumed": md.get("resumed"),
        "engine_aborts": md.get("engine_aborts"),
        "attempts": md.get("episode_attempts"),
        "non_generation_time": getattr(s, "non_generation_time", None),
        "top_p_offsets": len(top_p) if top_p is not None else None,
        "routed_experts_shape": list(getattr(experts, "shape", ()))
        if experts is not None
        else None,
    }


def _flatten(data: Any) -> list[Any]:
    while data and isinstance(data[0], list):
        data = list(itertools.chain.from_iterable(data))
    return data


def _train(args: argparse.Namespace, samples: list[Any]) -> dict[str, Any]:
    """slime's conversion, dp split and GRPO advantages for one rollout's samples."""
    import ray
    import torch

    m = _manager(args)
    raw, normalized = m._post_process_rewards(samples)
    train_data = m._convert_samples_to_train_data(samples)
    import inspect

    split = m._split_train_data_by_dp
    takes_dp = "dp_size" in inspect.signature(split).parameters  # v0.2.2
    refs = split(train_data, 1) if takes_dp else split(train_data)
    box = refs[0]
    rollout_data = ray.get(getattr(box, "inner", box))
    from slime.backends.megatron_utils.loss import compute_advantages_and_returns

    _fake_single_rank_parallel_state()
    # the actor's recomputed logprobs need the model on a GPU: the rollout's stand in
    rollout_data["log_probs"] = [
        torch.as_tensor(x, dtype=torch.float32) for x in rollout_data["rollout_log_probs"]
    ]
    rollout_data["rollout_log_probs"] = rollout_data["log_probs"]
    rollout_data["loss_masks"] = [torch.as_tensor(x) for x in rollout_data["loss_masks"]]
    compute_advantages_and_returns(args, rollout_data)
    part = rollout_data.get("partition") or list(range(len(samples)))
    return {
        "raw_rewards": list(raw),
        "rewards": [float(x) for x in normalized],
        "loss_masks": [list(map(int, x)) for x in train_data["loss_masks"]],
        "has_top_p": "rollout_top_p_token_ids" in train_data,
        "has_routed_experts": "rollout_routed_experts" in train_data,
        "partition": list(part),
        "advantages": [[float(v) for v in a.tolist()] for a in rollout_data["advantages"]],
        "rank_keys": sorted(k for k in rollout_data if isinstance(k, str)),
    }


def _set_weight_version(stub_url: str, version: str) -> None:
    req = urllib.request.Request(
        f"{stub_url}/stub_weight_version", data=json.dumps({"weight_version": version}).encode()
    )
    urllib.request.urlopen(req, timeout=10).read()


def run_rollouts(spec: dict[str, Any]) -> dict[str, Any]:
    import slime.rollout.sglang_rollout as sr
    from slime.rollout.data_source import RolloutDataSourceWithBuffer

    args = slime_args(spec)
    data_source = RolloutDataSourceWithBuffer(args)
    timeline: dict[str, float] = {}
    real_abort = getattr(sr.abort, "__wrapped__", sr.abort)  # one wrapper, however many runs

    async def timed_abort(*a: Any, **k: Any) -> Any:  # measures, does not change slime's abort
        timeline.setdefault("abort_start", time.monotonic())
        out = await real_abort(*a, **k)
        timeline.setdefault("abort_end", time.monotonic())
        return out

    timed_abort.__wrapped__ = real_abort
    sr.abort = timed_abort
    drawn = _count_groups_drawn(data_source)
    calls = _count_generate_calls()
    rollouts = []
    for rollout_id, plan in enumerate(spec.get("rollouts", [{}])):
        for k, v in plan.get("set", {}).items():
            setattr(args, k, v)
        if plan.get("weight_version"):
            _set_weight_version(spec["stub_url"], plan["weight_version"])
        if plan.get("pause_s"):
            time.sleep(plan["pause_s"])  # the time training would take between rollouts
        timeline.clear()
        drawn[0] = calls[0] = 0
        t0 = time.monotonic()
        out = sr.generate_rollout(args, rollout_id, data_source, evaluation=False)
        t_end = time.monotonic()
        samples = _flatten(getattr(out, "samples", out))
        result: dict[str, Any] = {
            "samples": [_sample_view(s) for s in samples],
            "metrics": dict(getattr(out, "metrics", None) or {}),
            "seconds": t_end - t0,
            "abort_to_return": t_end - timeline["abort_start"] if timeline else None,
            "abort_started_at": timeline.get("abort_start"),
            "buffer": [_sample_view(s) for s in _flatten(list(data_source.buffer))],
            "groups_drawn": drawn[0],
            "generate_calls": calls[0],
            "bridge_metrics": _bridge_metrics(samples),
        }
        if plan.get("train", True):
            result["train"] = _train(args, samples)
        rollouts.append(result)
    from slime.utils.async_utils import run

    from bridge.generate import close_clients

    run(close_clients())
    return {"rollouts": rollouts}


def _count_groups_drawn(data_source: Any) -> list[int]:
    """Counts the groups slime's rollout draws from its data source (buffer or dataset)."""
    count = [0]
    get_samples = data_source.get_samples

    def counting(n: int) -> Any:
        groups = get_samples(n)
        count[0] += len(groups)
        return groups

    data_source.get_samples = counting
    return count


def _count_generate_calls() -> list[int]:
    """Counts the calls slime makes to the bridge's generate hook (it loads it by name, and may
    keep what it loaded: one wrapper, one counter, for every run of the process)."""
    import functools

    import bridge.generate

    existing = getattr(bridge.generate.generate, "count", None)
    if existing is not None:
        return existing
    count = [0]
    hook = bridge.generate.generate

    @functools.wraps(hook)
    async def counting(*a: Any, **k: Any) -> Any:
        count[0] += 1
        return await hook(*a, **k)

    counting.count = count  # type: ignore[attr-defined]
    bridge.generate.generate = counting
    return count


def _bridge_metrics(samples: list[Any]) -> dict[str, float]:
    """What bridge.metrics.log_rollout logs to W&B for these samples."""
    from bridge.metrics import episode_metrics, flatten

    return flatten(episode_metrics(samples), "rollout")


def run_many(spec: dict[str, Any]) -> dict[str, Any]:
    """Each rollout spec of `runs` in turn, with slime's per-rollout singletons reset between."""
    import slime.rollout.sglang_rollout as sr

    import bridge.filters

    out = {}
    for name, run_spec in spec["runs"].items():
        saved = dict(os.environ)
        os.environ.update(run_spec.get("env", {}))
        sr.GenerateState._instances.pop(sr.GenerateState, None)
        bridge.filters._consecutive[0] = 0
        try:
            out[name] = SCENARIOS[run_spec.get("scenario", "rollout")](run_spec)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    return {"runs": out}


def run_eval(spec: dict[str, Any]) -> dict[str, Any]:
    """slime's generate_and_rm with evaluation=True, then slime's eval logging after our hook."""
    import slime.rollout.sglang_rollout as sr
    from slime.rollout.data_source import RolloutDataSourceWithBuffer
    from slime.utils.async_utils import run

    args = slime_args(spec)
    groups = RolloutDataSourceWithBuffer(args).get_samples(1)
    samples = _flatten(groups)
    params = dict(spec["eval"]["sampling_params"])
    for i, s in enumerate(samples):
        s.index = i

    async def all_samples() -> list[Any]:
        return list(
            await asyncio.gather(
                *(sr.generate_and_rm(args, s, dict(params), evaluation=True) for s in samples)
            )
        )

    done = run(all_samples())
    data = {
        "evalset": {
            "rewards": [s.reward for s in done],
            "truncated": [s.status.value == "truncated" for s in done],
            "samples": done,
        }
    }
    try:
        from slime.ray.rollout import _log_eval_rollout_data as log_eval
    except ImportError:
        from slime.observability.rollout_metrics import log_eval_rollout_data as log_eval
    logged = log_eval(0, args, data, None)
    from bridge.generate import close_clients

    run(close_clients())
    return {"samples": [_sample_view(s) for s in done], "logged": logged}


SCENARIOS = {"eval": run_eval, "rollout": run_rollouts}
"""What one SPEC runs, by its "scenario"."""


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    os.environ.update(spec.get("env", {}))
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        out = {**SCENARIOS, "many": run_many}[spec["scenario"]](spec)
    finally:
        ray.shutdown()
    print(json.dumps(out, default=str))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
