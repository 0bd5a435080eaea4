"""The bridge under slime's REAL control flow, for slime v0.2.2, v0.3.1 and main (624b824).

tests/slime_driver.py runs in a subprocess on the vendored slime sources: slime's data source,
`generate_rollout`, its abort, dynamic filter and partial-rollout buffer, the conversion to train
data, the dp split and GRPO advantages, with the bridge as the generate function, the real env
server and the scripted SGLang stub. Every scenario of a slime version runs in ONE driver process
(slime's import and Ray's start are most of a run's cost), each with fresh slime state; the tests
check its parts. Skips (with the reason) without the vendored sources.
"""

from __future__ import annotations

from typing import Any

import pytest
from sglang_stub import Turn
from slime_loop import (
    FAIL_MARKER,
    DriverScenarios,
    Gateway,
    Model,
    call,
    gsm8k_tasks,
    router,
    run_driver_many,
)
from slime_vendor import VERSIONS, missing_reason

pytestmark = [
    pytest.mark.vendored,
    pytest.mark.long(5),
    pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason())),
    pytest.mark.timeout(900),  # the module's driver runs are set up in its first tests
]


class Scenarios(DriverScenarios):
    """The control flow's scenarios; `gates` holds each scenario's gateway, if it has one."""

    def __init__(self, tok: Any, server_url: str, version: str) -> None:
        super().__init__(tok)
        self.server_url, self.version = server_url, version
        self.gates: dict[str, Gateway] = {}

    def infra_failure(self) -> None:
        """Group 0 has one episode whose env is lost on every try."""
        gate = self.gates["infra_failure"] = self.stack.enter_context(Gateway(self.server_url))
        tasks = gsm8k_tasks(3, gate.url)
        fail = [
            Turn.of_text(self.tok, call("calculator", {"expression": FAIL_MARKER}) + "<|im_end|>")
        ]
        stub = self.engine("infra_failure", Model(self.tok, tasks, [fail]))
        self.specs["infra_failure"] = {
            "tasks": tasks,
            "argv": [
                *("--rollout-batch-size", "2", "--n-samples-per-prompt", "4"),
                *("--over-sampling-batch-size", "2"),
                *("--dynamic-sampling-filter-path", "bridge.filters.drop_infra_failures"),
            ],
            # the lost episode's tries at once (bridge/play.py): it fails on every one
            "env": {"BRIDGE_REPLAY_WINDOW_S": "0"},
            "set": router(stub),
        }

    def partial_rollout(self) -> None:
        """Rollout 1 on weights v1 with a slow group that slime's abort stops; rollout 2 on v2."""
        tasks = gsm8k_tasks(2, self.server_url)
        tasks[1]["metadata"]["max_turns"] = 12
        stub = self.engine("partial_rollout", Model(self.tok, tasks, slow=(1,)), "v1")
        self.specs["partial_rollout"] = {
            "tasks": tasks,
            "argv": [
                *("--rollout-batch-size", "1", "--n-samples-per-prompt", "2"),
                *("--over-sampling-batch-size", "2", "--partial-rollout"),
                *("--mask-offpolicy-in-partial-rollout", "--rollout-max-response-len", "4096"),
            ],
            "set": router(stub),
            "stub_url": stub.url,
            "rollouts": [
                {"weight_version": "v1", "train": False},
                {"weight_version": "v2", "set": {"over_sampling_batch_size": 1}},
            ],
        }

    def replay_fields(self) -> None:
        """--rollout-top-p < 1 (not on v0.2.2) and --use-rollout-routing-replay, with an episode
        that the engine aborts before it samples anything."""
        tasks = gsm8k_tasks(1, self.server_url)
        fail = [Turn([], finish_reason="abort")]
        stub = self.engine("replay_fields", Model(self.tok, tasks, [fail]))
        argv = ["--rollout-batch-size", "1", "--n-samples-per-prompt", "2"]
        if self.version != "v0.2.2":
            argv += ["--rollout-top-p", "0.9"]
        self.specs["replay_fields"] = {
            "tasks": tasks,
            "argv": [*argv, "--use-rollout-routing-replay"],
            "set": {**router(stub), "use_rollout_routing_replay": True},
        }

    def evaluation(self) -> None:
        """slime's generate_and_rm(evaluation=True) with eval budgets and one episode lost to
        the engine."""
        tasks = gsm8k_tasks(1, self.server_url)
        fail = [Turn([], finish_reason="abort")]
        stub = self.engine("evaluation", Model(self.tok, tasks, [fail]))
        self.specs["evaluation"] = {
            "scenario": "eval",
            "tasks": tasks,
            "argv": [
                *("--rollout-batch-size", "1", "--n-samples-per-prompt", "3"),
                *("--rollout-max-context-len", "100000", "--eval-max-context-len", "700"),
                *("--custom-eval-rollout-log-function-path", "bridge.metrics.log_eval_rollout"),
            ],
            "set": router(stub),
            "eval": {"sampling_params": {"max_new_tokens": 400, "min_new_tokens": 300}},
        }


@pytest.fixture(scope="module", params=list(VERSIONS))
def flow(request, qwen3_tokenizer, server_url, tmp_path_factory) -> dict[str, Any]:
    """Every scenario through one slime version: {name: driver output}, with each engine's
    requests under "requests" and each gateway's failed count under "failed"."""
    version = request.param
    s = Scenarios(qwen3_tokenizer, server_url, version)
    with s.stack:
        s.infra_failure()
        s.partial_rollout()
        s.replay_fields()
        s.evaluation()
        tmp = tmp_path_factory.mktemp(f"flow-{version}")
        out: dict[str, Any] = {"runs": run_driver_many(version, s.specs, tmp)}
        out["requests"] = {name: list(stub.requests) for name, stub in s.stubs.items()}
        out["failed"] = {name: gate.failed for name, gate in s.gates.items()}
    out["version"] = version
    return out


def test_infra_failure_never_enters_group_normalisation(flow) -> None:
    """Group 0 has one episode whose env is lost on every try: its group is dropped by the
    bridge's filter and refilled, so the solved episodes get advantage 0, not +0.5."""
    assert flow["failed"]["infra_failure"] >= 3  # the lost episode was replayed, lost every time
    (r,) = flow["runs"]["infra_failure"]["rollouts"]
    samples = r["samples"]
    assert len(samples) == 8 and not any(s["infra_failure"] for s in samples)
    train = r["train"]
    assert train["raw_rewards"] == [1.0] * 8
    assert all(a == 0.0 for adv in train["advantages"] for a in adv)
    assert r["metrics"].get("rollout/dynamic_filter/drop_bridge_infra_failure") == 1
    # env waits are slime's non_generation_time, not generation
    assert all(s["non_generation_time"] > 0 for s in samples)


def test_slime_abort_suspends_and_partial_rollout_resumes_where_it_stopped(flow) -> None:
    """Rollout 1 (weights v1): the fast group fills the batch, slime aborts; the slow group's
    episodes stop before their next turn (no new turn after the abort) and go to slime's
    partial-rollout buffer with their env sessions kept. Rollout 2 (weights v2): they resume at
    the turn where they stopped, on the same session, and slime's
    --mask-offpolicy-in-partial-rollout masks exactly the v1 tokens."""
    first, second = flow["runs"]["partial_rollout"]["rollouts"]
    reqs = flow["requests"]["partial_rollout"]
    # rollout 1: the slow episodes were stopped by slime's abort, not by the engine
    suspended = [s for s in first["buffer"] if s["stop_reason"] == "slime_abort"]
    assert len(suspended) == 2 and all(s["status"] == "aborted" for s in suspended)
    assert all(s["reward"] is None for s in suspended)
    abort_at = first["abort_started_at"]
    for s in suspended:
        key = s["episode_key"]
        late = [
            r
            for r in reqs
            if r.routing_key == key and r.received_at > abort_at and r.weight_version == "v1"
        ]
        assert len(late) <= 1, "a new turn started after slime's abort"
    # rollout 2: resumed, same session, and only the v2 tokens train
    by_key = {s["episode_key"]: s for s in second["samples"]}
    for s in suspended:
        done = by_key[s["episode_key"]]
        assert done["status"] == "completed" and done["reward"] == 1.0 and done["resumed"] == 1
        assert done["turn_versions"][: len(s["turn_versions"])] == s["turn_versions"]
        assert "v2" in done["turn_versions"] and "v1" in done["turn_versions"]
        # slime's own weight_versions: one per turn, nothing left from the interrupted attempt
        assert done["weight_versions"] == done["turn_versions"]
        first_v2 = next(
            r for r in reqs if r.routing_key == s["episode_key"] and r.weight_version == "v2"
        )
        assert len(first_v2.input_ids) == s["tokens"]  # continued from the suspended context
        n_old = s["response_length"]
        i = second["samples"].index(done)
        mask = second["train"]["loss_masks"][i]
        assert sum(mask[:n_old]) == 0 and sum(mask[n_old:]) > 0
        assert done["loss_mask"] == mask


def test_every_sample_carries_the_replay_fields_slime_converts(flow) -> None:
    """--rollout-top-p < 1 and --use-rollout-routing-replay, with an episode that fails before it
    samples anything (its placeholder) in the batch, no filter: slime's conversion and dp split
    accept every sample (v0.2.2 has no top-p replay: routing replay only)."""
    top_p = flow["version"] != "v0.2.2"
    (r,) = flow["runs"]["replay_fields"]["rollouts"]
    failed = [s for s in r["samples"] if s["infra_failure"]]
    ok = [s for s in r["samples"] if not s["infra_failure"]]
    assert len(failed) == 1 and len(ok) == 1 and ok[0]["reward"] == 1.0
    reqs = flow["requests"]["replay_fields"]
    assert reqs and all(req.body.get("return_routed_experts") is True for req in reqs)
    train = r["train"]
    assert train["has_routed_experts"]
    for s in r["samples"]:
        assert s["routed_experts_shape"] == [s["tokens"] - 1, 2, 2]
        if top_p:
            assert s["top_p_offsets"] == s["response_length"] + 1
    assert train["has_top_p"] == top_p


def test_evaluation_uses_eval_budgets_and_drops_infra_failures_from_eval_metrics(flow) -> None:
    """slime's generate_and_rm(evaluation=True): every turn fits eval_max_context_len, a
    per-dataset min_new_tokens is clamped to the turn's max_new_tokens, and an eval episode lost
    to the engine is not averaged into slime's eval/<dataset> reward."""
    reqs = flow["requests"]["evaluation"]
    assert reqs
    for req in reqs:
        mx = req.sampling_params["max_new_tokens"]
        assert len(req.input_ids) + mx <= 700 and mx <= 400
        assert req.sampling_params["min_new_tokens"] <= mx
    assert any(req.sampling_params["max_new_tokens"] < 400 for req in reqs)
    out = flow["runs"]["evaluation"]
    assert sum(bool(s["infra_failure"]) for s in out["samples"]) == 1
    assert out["logged"]["eval/evalset"] == 1.0  # the two solved episodes; the lost one is not a 0
