"""slime rollout-log hooks: per-environment episode metrics, logged to W&B.

run.sh passes `--custom-rollout-log-function-path bridge.metrics.log_rollout` and
`--custom-eval-rollout-log-function-path bridge.metrics.log_eval_rollout`. Both return
False, so slime still logs its own metrics (response lengths, truncation, perf) next to ours.

Read from each sample: `metadata["env"]` and `metadata["reward"]["max_reward"]` (the task,
written by prepare_tasks.py), and the counters bridge/generate.py writes (its METADATA_KEYS):
stop_reason, num_turns, num_tool_calls, tool_errors {kind: n}, drift_count, env_failure,
engine_failure, episode_attempts, engine_aborts, resumed and partial_restarts (partial
rollouts: suspended episodes resumed, or restarted because their session was lost),
bridge_timings {generate, env, total} (seconds), tripwires [names], tripwire_keys {name: key} and
reward_parts {part: value} (`reward_parts/<part>`: the mean over the episodes that report the
part). Samples without them (not
produced by the bridge) still count for reward and solve rate. Eval samples lost to the
infrastructure are taken out before slime's eval/* (drop_eval_infra_failures).

Tripwires (contract/env_report.py): `tripwires/<name>` counts the episodes that tripped a wire,
the env's own verdict plus group wires (episodes of one GRPO group, `group_index`, reporting
the same key); `tripwire_rate` is the share of episodes that tripped any.

An episode is solved when its reward reaches the task's max_reward, or `solve_threshold` when
that is set on slime's args (e.g. `solve_threshold: 0.9` in a `--custom-config-path` YAML).

Keys: `rollout/env/<env>/<metric>` (and `<env>` = `all`), stepped by `rollout/step`;
eval: `eval/<dataset>/env/<env>/<metric>`, stepped by `eval/step`. W&B logging uses the run
slime opened (`--use-wandb`); when there is none, it opens one, offline unless WANDB_API_KEY is set.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from contract.env_report import group_tripwires
from contract.vocab import SERVER_TOOL_ERRORS, ToolErrorKind

log = logging.getLogger(__name__)

ALL = "all"
SOLVE_EPS = 1e-6


def _reward(sample: Any) -> float | None:
    r = getattr(sample, "reward", None)
    if isinstance(r, dict):  # slime's --reward-key style rewards: no scalar to aggregate
        r = r.get("reward")
    if isinstance(r, bool) or not isinstance(r, (int, float)) or math.isnan(r):
        return None
    return float(r)


def _metadata(sample: Any) -> dict[str, Any]:
    md = getattr(sample, "metadata", None)
    return md if isinstance(md, dict) else {}


def env_name(sample: Any) -> str:
    """The environment a sample's task came from (`unknown` when it carries none)."""
    md = _metadata(sample)
    return str(md.get("env") or md.get("source_name") or "unknown")


def _max_reward(md: dict[str, Any]) -> float:
    settings = md.get("reward")
    if isinstance(settings, dict) and isinstance(settings.get("max_reward"), (int, float)):
        return float(settings["max_reward"])
    return 1.0


def _status(sample: Any) -> str:
    s = getattr(sample, "status", None)
    return str(getattr(s, "value", s) or "unknown")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def tripped_wires(samples: list[Any]) -> list[set[str]]:
    """Per sample: the tripwires it tripped, its env's verdict plus group wires within the batch."""
    out = []
    for s in samples:
        wires = _metadata(s).get("tripwires")
        out.append({w for w in wires if isinstance(w, str)} if isinstance(wires, list) else set())
    keyed = []
    for s in samples:
        keys = _metadata(s).get("tripwire_keys")
        keyed.append((getattr(s, "group_index", None), keys if isinstance(keys, dict) else {}))
    for wires, more in zip(out, group_tripwires(keyed), strict=True):
        wires |= more
    return out


def episode_metrics(
    samples: Iterable[Any], solve_threshold: float | None = None
) -> dict[str, dict[str, float]]:
    """Per environment (plus `all`): metric name -> value, for a batch of finished samples."""
    samples = list(samples)
    groups: dict[str, list[tuple[Any, set[str]]]] = defaultdict(list)
    for s, wires in zip(samples, tripped_wires(samples), strict=True):
        groups[env_name(s)].append((s, wires))
        groups[ALL].append((s, wires))
    return {env: _group_metrics(ss, solve_threshold) for env, ss in groups.items() if ss}


def _tripwire_metrics(wires: list[set[str]]) -> dict[str, float]:
    counts: dict[str, int] = defaultdict(int)
    for tripped in wires:
        for w in tripped:
            counts[w] += 1
    out = {f"tripwires/{w}": float(n) for w, n in counts.items()}
    out["tripwire_rate"] = sum(1 for t in wires if t) / len(wires)
    return out


def _part_metrics(samples: list[Any]) -> dict[str, float]:
    """`reward_parts/<part>`: each reward part's mean over the episodes that report it."""
    sums: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        parts = _metadata(s).get("reward_parts")
        if isinstance(parts, dict):
            for name, v in parts.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    sums[str(name)].append(float(v))
    return {f"reward_parts/{name}": statistics.fmean(vs) for name, vs in sums.items()}


def _group_metrics(
    with_wires: list[tuple[Any, set[str]]], solve_threshold: float | None
) -> dict[str, float]:
    samples = [s for s, _ in with_wires]
    n = len(samples)
    out: dict[str, float] = {"episodes": float(n)}
    rewards, solved = [], 0
    turns, calls, drift, env_t, gen_t, env_per_call = [], [], [], [], [], []
    env_fail = engine_fail = removed = retries = engine_aborts = resumes = restarts = 0
    stop: dict[str, int] = defaultdict(int)
    status: dict[str, int] = defaultdict(int)
    errors: dict[str, int] = defaultdict(int)
    bridged = 0
    for s in samples:
        md = _metadata(s)
        r = _reward(s)
        if r is not None:
            rewards.append(r)
            bar = solve_threshold if solve_threshold is not None else _max_reward(md)
            solved += r >= bar - SOLVE_EPS
        removed += bool(getattr(s, "remove_sample", False))
        status[_status(s)] += 1
        if "stop_reason" not in md:
            continue
        bridged += 1
        stop[str(md["stop_reason"])] += 1
        turns.append(float(md.get("num_turns") or 0))
        calls.append(float(md.get("num_tool_calls") or 0))
        drift.append(float(md.get("drift_count") or 0))
        env_fail += int(md.get("env_failure") or 0)
        retries += max(int(md.get("episode_attempts") or 1) - 1, 0)
        engine_aborts += int(md.get("engine_aborts") or 0)
        resumes += int(md.get("resumed") or 0)
        restarts += int(md.get("partial_restarts") or 0)
        engine_fail += int(md.get("engine_failure") or 0)
        for kind, count in (md.get("tool_errors") or {}).items():
            errors[str(kind)] += int(count)
        timings = md.get("bridge_timings") or {}
        if "env" in timings:
            env_t.append(float(timings["env"]))
            if md.get("num_tool_calls"):
                env_per_call.append(float(timings["env"]) / float(md["num_tool_calls"]))
        if "generate" in timings:
            gen_t.append(float(timings["generate"]))
    out |= _tripwire_metrics([w for _, w in with_wires])
    out |= _part_metrics(samples)
    if rewards:
        out["reward_mean"] = statistics.fmean(rewards)
        out["reward_std"] = statistics.pstdev(rewards) if len(rewards) > 1 else 0.0
        out["reward_min"] = min(rewards)
        out["reward_max"] = max(rewards)
        out["solve_rate"] = solved / len(rewards)
    out["removed_ratio"] = removed / n
    for k, v in status.items():
        out[f"status/{k}"] = v / n
    if bridged:
        out["turns_mean"] = statistics.fmean(turns)
        out["turns_max"] = max(turns)
        out["tool_calls_mean"] = statistics.fmean(calls)
        out["tool_calls_total"] = sum(calls)
        out["parse_errors"] = float(errors.get(ToolErrorKind.PARSE_ERROR.value, 0))
        # the model's tool errors; calls the env server stopped at its budget are its own count
        out["tool_errors_total"] = float(
            sum(n for kind, n in errors.items() if kind not in SERVER_TOOL_ERRORS)
        )
        out["server_stopped_calls"] = float(errors.get(ToolErrorKind.BUDGET_EXCEEDED.value, 0))
        for kind, count in errors.items():
            out[f"tool_errors/{kind}"] = float(count)
        out["env_errors"] = float(env_fail)
        out["engine_errors"] = float(engine_fail)
        out["episode_retries"] = float(retries)  # episodes replayed after an infra failure
        out["engine_aborts"] = float(engine_aborts)  # engine-side aborts, turns re-sent
        out["partial_resumes"] = float(resumes)  # suspended episodes resumed (--partial-rollout)
        out["partial_restarts"] = float(restarts)  # ... restarted: their env session was lost
        out["token_drift"] = sum(drift)
        for reason, count in stop.items():
            out[f"stop/{reason}"] = count / bridged
        if env_t:
            out["env_time_mean"] = statistics.fmean(env_t)
            out["env_time_p90"] = _percentile(env_t, 0.9)
        if env_per_call:
            out["env_latency_per_call_mean"] = statistics.fmean(env_per_call)
            out["env_latency_per_call_p50"] = _percentile(env_per_call, 0.5)
        if gen_t:
            out["generate_time_mean"] = statistics.fmean(gen_t)
    return out


def flatten(per_env: dict[str, dict[str, float]], prefix: str) -> dict[str, float]:
    """`{env: {metric: v}}` as W&B keys `<prefix>/env/<env>/<metric>`."""
    return {
        f"{prefix}/env/{env}/{k}": v for env, metrics in per_env.items() for k, v in metrics.items()
    }


def _threshold(args: Any) -> float | None:
    value = getattr(args, "solve_threshold", None)
    return float(value) if value is not None else None


def rollout_step(args: Any, rollout_id: int) -> int:
    """The x-axis slime uses for rollout metrics (its compute_rollout_step)."""
    if getattr(args, "wandb_always_use_train_step", False) and getattr(
        args, "global_batch_size", None
    ):
        step: int = (
            rollout_id
            * args.rollout_batch_size
            * args.n_samples_per_prompt
            // args.global_batch_size
        )
        return step
    return rollout_id


def _wandb_run(args: Any) -> Any:
    """slime's W&B run in this process, or one we open (offline without WANDB_API_KEY); None if
    disabled."""
    if not getattr(args, "use_wandb", False):
        return None
    import wandb

    if wandb.run is not None:
        return wandb.run
    offline = not os.environ.get("WANDB_API_KEY") or getattr(args, "wandb_mode", None) == "offline"
    run = wandb.init(
        project=getattr(args, "wandb_project", None) or "slime-envs",
        group=getattr(args, "wandb_group", None),
        dir=getattr(args, "wandb_dir", None),
        mode="offline" if offline else None,
        settings=wandb.Settings(mode="offline") if offline else None,
    )
    for step_key, pattern in (("rollout/step", "rollout/*"), ("eval/step", "eval/*")):
        run.define_metric(step_key)
        run.define_metric(pattern, step_metric=step_key)
    return run


def _emit(args: Any, metrics: dict[str, float]) -> None:
    try:
        run = _wandb_run(args)
        if run is not None:
            run.log(metrics)
    except Exception as e:  # metrics must never break a rollout
        log.error("bridge.metrics: W&B logging failed: %s: %s", type(e).__name__, e)


def _summary(per_env: dict[str, dict[str, float]]) -> str:
    parts = []
    for env, m in sorted(per_env.items()):
        if "reward_mean" in m:
            parts.append(
                f"{env}: n={int(m['episodes'])} reward={m['reward_mean']:.3f} "
                f"solved={m['solve_rate']:.2f}"
            )
    return "; ".join(parts)


def log_rollout(
    rollout_id: int,
    args: Any,
    samples: list[Any],
    rollout_extra_metrics: dict[str, Any] | None,
    rollout_time: float,
) -> bool:
    """slime's custom rollout-log hook. Returns False: slime's default rollout metrics are logged
    too."""
    per_env = episode_metrics(samples, _threshold(args))
    metrics = flatten(per_env, "rollout")
    metrics["rollout/step"] = rollout_step(args, rollout_id)
    _emit(args, metrics)
    log.info("rollout %s (%.1fs): %s", rollout_id, rollout_time or 0.0, _summary(per_env))
    return False


def drop_eval_infra_failures(args: Any, data: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Remove eval samples lost to the env/network/engine from `data`, in place, so slime's own
    eval/* metrics (computed after this hook) never count them as reward 0. With
    `--log-passrate` whole prompt groups go (pass@k needs full groups); a dataset left empty is
    removed. Returns the count dropped per dataset."""
    dropped: dict[str, int] = {}
    group = int(getattr(args, "n_samples_per_eval_prompt", 1) or 1)
    whole_groups = bool(getattr(args, "log_passrate", False)) and group > 1
    for name in list(data or {}):
        d = data[name]
        samples = d.get("samples") if isinstance(d, dict) else None
        if not samples or len(samples) != len(d.get("rewards") or []):
            continue
        bad = [i for i, s in enumerate(samples) if _metadata(s).get("infra_failure")]
        if not bad:
            continue
        if whole_groups:
            bad_groups = {i // group for i in bad}
            bad = [i for i in range(len(samples)) if i // group in bad_groups]
        keep = [i for i in range(len(samples)) if i not in set(bad)]
        dropped[name] = len(bad)
        if not keep:
            del data[name]
            continue
        for key in ("rewards", "truncated", "samples"):
            if isinstance(d.get(key), list) and len(d[key]) == len(samples):
                d[key] = [d[key][i] for i in keep]
    return dropped


def log_eval_rollout(
    rollout_id: int,
    args: Any,
    data: dict[str, dict[str, Any]],
    extra_metrics: dict[str, Any] | None,
) -> bool:
    """slime's custom eval-log hook; `data` maps dataset name -> {"rewards", "truncated",
    "samples"}.

    Infra-failed episodes are first taken out of `data` (see drop_eval_infra_failures) and
    counted as `eval/<dataset>/env/all/infra_failures`."""
    dropped = drop_eval_infra_failures(args, data)
    metrics: dict[str, float] = {
        f"eval/{name}/env/{ALL}/infra_failures": float(n) for name, n in dropped.items()
    }
    for name, d in (data or {}).items():
        samples = d.get("samples") if isinstance(d, dict) else None
        if samples:
            metrics |= flatten(episode_metrics(samples, _threshold(args)), f"eval/{name}")
        elif isinstance(d, dict) and d.get("rewards"):
            rewards = [float(r) for r in d["rewards"] if isinstance(r, (int, float))]
            if rewards:
                metrics[f"eval/{name}/env/{ALL}/reward_mean"] = statistics.fmean(rewards)
    metrics["eval/step"] = rollout_step(args, rollout_id)
    _emit(args, metrics)
    log.info("eval %s: %d metrics", rollout_id, len(metrics) - 1)
    return False
