"""Where the bridge meets slime's REAL rollout loop (v0.2.2, v0.3.1, main at 624b824), with a fault
between them: a user's own dynamic filter (issue 21.3), slime's abort during a slow tool call
(21.4), an engine router outage (21.5), an env outage (21.6), partial-rollout episodes that wait
longer than the env server's session TTL (21.7).

Every scenario of a slime version runs in ONE driver process (tests/slime_driver.py, `many`):
slime's import and Ray's start are most of a run's cost. The real env server, the stock engine
stand-in (tests/sglang_stub.py) and a `Gateway` between them and the bridge that injects the
fault. Skips (with the reason) without the vendored sources.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import env_server
from launch_world import VENDORED, dry_run, make_world, unpack_vendored
from sglang_stub import Turn
from slime_loop import (
    FAIL_MARKER,
    DriverScenarios,
    Gateway,
    Model,
    Outage,
    call,
    gsm8k_tasks,
    router,
)
from slime_loop import run_driver_many as run_many
from slime_vendor import VERSIONS, missing_reason

pytestmark = [
    pytest.mark.long(4),
    pytest.mark.vendored,
    pytest.mark.timeout(900),  # the module's one driver run is set up in the first test
    pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason())),
]
SEAMS_VERSIONS_ENV = "SLIME_SEAMS_VERSIONS"
"""Comma-separated slime versions to run the seams through ("all": every vendored one). The
default is v0.3.1 alone: one version costs ~4 min on CI's 2 cores, most of it slime's loop."""


def seams_versions() -> list[str]:
    raw = os.environ.get(SEAMS_VERSIONS_ENV, "v0.3.1").strip()
    return list(VERSIONS) if raw == "all" else [v for v in raw.split(",") if v in VERSIONS]


USER_FILTER = "slime.rollout.filter_hub.dynamic_sampling_filters.check_reward_nonzero_std"
SLOW_TOOL_S = 6.0
"""The slow tool call of issue 21.4 (slime's abort waited for it whole)."""
OUTAGE_S = 3.0
"""Engine and env outages: longer than the old replays lasted, far shorter than the retries."""
SESSION_TTL_S = 2.0
"""The short-TTL env server's idle-session TTL; the partial-rollout pause is twice that."""


def rollout_argv(batch: int, n: int, over: int, *more: str) -> list[str]:
    return [
        *("--rollout-batch-size", str(batch), "--n-samples-per-prompt", str(n)),
        *("--over-sampling-batch-size", str(over), *more),
    ]


def on(url: str, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for t in tasks:
        t["metadata"]["env_server"] = [url]
    return tasks


def planned_filter(version: str, tmp: Path) -> tuple[list[str], dict[str, str]]:
    """run.sh's real plan (dry run against this slime's checkout) for a user who passes slime's
    check_reward_nonzero_std after `--`: every dynamic-filter flag it gives slime, in order, and
    the job environment the filter reads."""
    slime = unpack_vendored(VENDORED["main" if version.startswith("main") else version])
    d = dry_run(make_world(tmp), slime, "--", "--dynamic-sampling-filter-path", USER_FILTER)
    argv = d.train_argv
    flags: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--dynamic-sampling-filter-path":
            flags += [arg, argv[i + 1]]
    env = {k: v for k, v in d.env.items() if k == "BRIDGE_NEXT_DYNAMIC_FILTER"}
    return flags, env


class Scenarios(DriverScenarios):
    """The seams' scenarios; `seen` holds what each scenario's run.sh plan or gateway saw."""

    def __init__(self, tok: Any, server_url: str, ttl_url: str, version: str, tmp: Path) -> None:
        super().__init__(tok)
        self.server_url, self.ttl_url = server_url, ttl_url
        self.version, self.tmp = version, tmp
        self.seen: dict[str, Any] = {}

    def user_filter(self) -> None:
        """21.3: group 0 loses an episode to the env, group 1 solves both (zero std), group 2
        is mixed; run.sh's plan gets a user's check_reward_nonzero_std after `--`."""
        gate = self.stack.enter_context(Gateway(self.server_url))
        tasks = on(gate.url, gsm8k_tasks(3, gate.url))
        fail = [
            Turn.of_text(self.tok, call("calculator", {"expression": FAIL_MARKER}) + "<|im_end|>")
        ]
        stub = self.engine("user_filter", Model(self.tok, tasks, [fail], wrong=(2,)))
        flags, env = planned_filter(self.version, self.tmp / "plan")
        self.seen["user_filter"] = {"flags": flags, "env": env}
        self.specs["user_filter"] = {
            "tasks": tasks,
            "argv": [*rollout_argv(1, 2, 1), *flags],
            "env": env,
            "set": router(stub),
        }

    def slow_tool(self, partial: bool) -> None:
        """21.4: group 0 solves at once and fills the batch; group 1's episodes are inside a
        6 s tool call when slime aborts."""
        name = "slow_tool_partial" if partial else "slow_tool"
        gate = self.stack.enter_context(Gateway(self.server_url, slow_s=SLOW_TOOL_S))
        tasks = on(gate.url, gsm8k_tasks(2, gate.url))
        stub = self.engine(name, Model(self.tok, tasks, slow_tool=(1,)))
        more = ["--partial-rollout"] if partial else []
        rollouts: list[dict[str, Any]] = [{"train": False}]
        if partial:
            rollouts.append({"set": {"over_sampling_batch_size": 1}})
        self.seen[name] = gate
        self.specs[name] = {
            "tasks": tasks,
            "argv": rollout_argv(1, 2, 2, *more),
            "set": router(stub),
            "rollouts": rollouts,
        }

    def engine_outage(self) -> None:
        """21.5: the router answers 500, then 503 no_available_workers, for 3 s mid-episode."""
        tasks = gsm8k_tasks(2, self.server_url)
        stub = self.engine("engine_outage", Model(self.tok, tasks))
        gate = self.stack.enter_context(
            Gateway(stub.url, outage=Outage("/generate", OUTAGE_S, after=2))
        )
        self.seen["engine_outage"] = gate
        self.specs["engine_outage"] = {
            "tasks": tasks,
            "argv": rollout_argv(2, 2, 2, "--dynamic-sampling-filter-path", FILTER),
            "set": router(gate),
        }

    def env_outage(self) -> None:
        """21.6: every tool call is refused (500, then 503) for 3 s mid-episode."""
        gate = self.stack.enter_context(
            Gateway(self.server_url, outage=Outage("/call", OUTAGE_S, after=2))
        )
        tasks = on(gate.url, gsm8k_tasks(2, gate.url))
        stub = self.engine("env_outage", Model(self.tok, tasks))
        self.seen["env_outage"] = gate
        self.specs["env_outage"] = {
            "tasks": tasks,
            "argv": rollout_argv(2, 2, 2, "--dynamic-sampling-filter-path", FILTER),
            "set": router(stub),
        }

    def suspended_past_ttl(self, keepalive_s: float) -> None:
        """21.7: slime's abort suspends the slow group (--partial-rollout); training takes twice
        the env server's session TTL before the next rollout hands the episodes back."""
        name = f"ttl_keepalive_{keepalive_s:g}"
        tasks = on(self.ttl_url, gsm8k_tasks(2, self.ttl_url))
        tasks[1]["metadata"]["max_turns"] = 12
        model = Model(self.tok, tasks, slow=(1,), delay=0.5)
        stub = self.engine(name, model, weight_version="v1")
        self.specs[name] = {
            "tasks": tasks,
            "argv": rollout_argv(
                1, 2, 2, "--partial-rollout", "--rollout-max-response-len", "4096"
            ),
            "env": {"BRIDGE_KEEPALIVE_S": str(keepalive_s)},
            "set": router(stub),
            "stub_url": stub.url,
            "rollouts": [
                {"weight_version": "v1", "train": False},
                {
                    "weight_version": "v2",
                    "pause_s": 2 * SESSION_TTL_S,
                    "set": {"over_sampling_batch_size": 1},
                },
            ],
        }


FILTER = "bridge.filters.drop_infra_failures"


def observed(gate: Gateway) -> dict[str, Any]:
    return {
        "slow_calls": list(gate.slow_calls),
        "refused": gate.outage.refused if gate.outage is not None else 0,
    }


@pytest.fixture(scope="module")
def ttl_url() -> Iterator[str]:
    """An env server that closes sessions idle for SESSION_TTL_S."""
    with env_server("--envs", "gsm8k", "--session-ttl", str(SESSION_TTL_S)) as url:
        yield url


@pytest.fixture(scope="module", params=seams_versions())
def seams(request, qwen3_tokenizer, server_url, ttl_url, tmp_path_factory) -> dict[str, Any]:
    """Every scenario through one slime version: {name: driver output}, plus what the gateways
    saw under "seen"."""
    version = request.param
    tmp = tmp_path_factory.mktemp(f"seams-{version}")
    s = Scenarios(qwen3_tokenizer, server_url, ttl_url, version, tmp)
    with s.stack:
        s.user_filter()
        s.slow_tool(partial=True)
        s.slow_tool(partial=False)
        s.engine_outage()
        s.env_outage()
        s.suspended_past_ttl(keepalive_s=0.5)
        s.suspended_past_ttl(keepalive_s=60.0)
        out = run_many(version, s.specs, tmp)
        seen = {k: v if isinstance(v, dict) else observed(v) for k, v in s.seen.items()}
    return {**out, "seen": seen}


def test_a_users_dynamic_filter_runs_after_the_bridges_through_runsh_and_slime(seams) -> None:
    """21.3: run.sh's real plan with a user's check_reward_nonzero_std after `--`, loaded by
    slime's own filter loading: the group with an infra-failed 0 (its std is not 0) is dropped by
    the bridge's filter first, the all-solved group by the user's, the mixed one trains. Fails if
    run.sh stops wiring the bridge's filter or lets the user's replace it."""
    plan = seams["seen"]["user_filter"]
    assert plan["flags"] == ["--dynamic-sampling-filter-path", FILTER]
    assert plan["env"] == {"BRIDGE_NEXT_DYNAMIC_FILTER": USER_FILTER}
    (r,) = seams["user_filter"]["rollouts"]
    assert r["metrics"].get("rollout/dynamic_filter/drop_bridge_infra_failure") == 1
    assert r["metrics"].get("rollout/dynamic_filter/drop_zero_std_1.0") == 1
    assert not any(s["infra_failure"] for s in r["samples"])
    assert sorted(r["train"]["raw_rewards"]) == [0.0, 1.0]


def test_slimes_abort_does_not_wait_for_a_tool_call_and_the_call_is_kept(seams) -> None:
    """21.4: slime aborts while group 1's episodes sit in a 6 s tool call: its abort returns at
    once, not when the call ends. With --partial-rollout the call goes on with its session and
    the episode resumes from its result (the tool ran once); without, the call is cancelled."""
    for name in ("slow_tool_partial", "slow_tool"):
        first = seams[name]["rollouts"][0]
        slow = seams["seen"][name]["slow_calls"]
        assert len(slow) == 2, name  # group 1's two episodes, one slow call each
        abort_end = first["abort_started_at"] + first["abort_to_return"]
        assert abort_end < min(c["started"] for c in slow) + SLOW_TOOL_S / 2, (name, first)
        suspended = [s for s in first["buffer"] if s["stop_reason"] == "slime_abort"]
        assert len(suspended) == (2 if name == "slow_tool_partial" else 0), name
    second = seams["slow_tool_partial"]["rollouts"][1]
    by_key = {s["episode_key"]: s for s in second["samples"]}
    for s in seams["slow_tool_partial"]["rollouts"][0]["buffer"]:
        done = by_key[s["episode_key"]]
        assert done["status"] == "completed" and done["reward"] == 1.0 and done["resumed"] == 1


def test_an_engine_outage_is_retried_not_replayed(seams) -> None:
    """21.5: 3 s of HTTP 500 / 503 no_available_workers from slime's router mid-episode: each
    request is retried with backoff, no episode is replayed from turn 0, no group dropped."""
    (r,) = seams["engine_outage"]["rollouts"]
    assert seams["seen"]["engine_outage"]["refused"] > 0  # the outage hit episodes in flight
    assert not any(k.startswith("rollout/dynamic_filter/") for k in r["metrics"])
    assert all(s["attempts"] == 1 and s["reward"] == 1.0 for s in r["samples"])
    assert r["groups_drawn"] == 2 and r["generate_calls"] == 4


def test_an_env_outage_replays_the_episode_inside_its_group(seams) -> None:
    """21.6: 3 s of refused tool calls mid-episode: the lost episodes are replayed inside their
    group with backoff, so no group is dropped and slime draws no refill batch."""
    (r,) = seams["env_outage"]["rollouts"]
    assert seams["seen"]["env_outage"]["refused"] > 0
    assert not any(k.startswith("rollout/dynamic_filter/") for k in r["metrics"])
    assert all(s["reward"] == 1.0 and not s["infra_failure"] for s in r["samples"])
    assert any(s["attempts"] > 1 for s in r["samples"])
    assert r["groups_drawn"] == 2 and r["generate_calls"] == 4


def test_suspended_episodes_outlive_the_session_ttl_and_restarts_are_counted(seams) -> None:
    """21.7: between rollouts (train, eval, save) the suspended episodes' env sessions are kept
    alive past the server's TTL, and resume; when they cannot be (a keepalive slower than the
    TTL), the restart is counted in the rollout metrics the bridge logs to W&B."""
    kept, lost = seams["ttl_keepalive_0.5"]["rollouts"], seams["ttl_keepalive_60"]["rollouts"]
    for rollouts, resumed in ((kept, 1), (lost, 0)):
        suspended = [s for s in rollouts[0]["buffer"] if s["stop_reason"] == "slime_abort"]
        assert len(suspended) == 2
        by_key = {s["episode_key"]: s for s in rollouts[1]["samples"]}
        for s in suspended:
            done = by_key[s["episode_key"]]
            assert done["status"] == "completed" and done["reward"] == 1.0
            assert done["resumed"] == resumed
    metrics = kept[1]["bridge_metrics"], lost[1]["bridge_metrics"]
    assert metrics[0]["rollout/env/gsm8k/partial_restarts"] == 0
    assert metrics[1]["rollout/env/gsm8k/partial_restarts"] == 2
    assert metrics[0]["rollout/env/gsm8k/partial_resumes"] == 2
