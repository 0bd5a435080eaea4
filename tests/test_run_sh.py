"""run.sh (tools/launch): dry-run commands, flags slime knows, prerequisite errors.

The slime checkout the launcher reads is built per test from the flag lists in
tests/data/slime_flags/ (extracted from slime v0.2.2 / v0.3.1 / main and the Megatron commits
they pin): its arguments.py defines exactly those flags, so the launcher's own check against the
checkout and the test's check against the committed lists agree. tests/test_launch_vendored.py
runs the same plans against slime's real checkouts. Nothing here starts Ray: a dry run runs
nothing, and a real run stops at the missing prerequisites (this machine has no GPU);
tests/test_cluster.py plans against a real multi-node Ray cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, env_server, free_port
from launch_world import (
    AMD_SMI_8,
    VERSIONS,
    DryRun,
    base_args,
    dry_run,
    fake_tools,
    known_flags,
    leaves_trajectories,
    line_for,
    make_slime,
    make_world,
    megatron_flags,
    missing_lines,
    port_open,
    refused,
    run_sh,
    saved_run,
    slime_flags,
)

from tools.errors import LaunchError
from tools.launch import prerequisites as pre
from tools.launch.slime_args import MEGATRON_FLAGS, global_batch_size, user_dynamic_filter
from tools.launch.slime_flags import flag_choices, flags_in_source, supported_train_backends

pytestmark = pytest.mark.long(5)


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path | str]:
    """A model dir, Megatron dir, config (local gsm8k on a port nothing serves) and a task file."""
    return make_world(tmp_path)


# --- flag lists -----------------------------------------------------------------------------------
def test_flag_lists_hold_what_the_launcher_relies_on() -> None:
    for v in VERSIONS:
        s, m = slime_flags(v), megatron_flags(v)
        assert {
            "--custom-generate-function-path",
            "--custom-rollout-log-function-path",
            "--custom-eval-rollout-log-function-path",
            "--tool-key",
            "--metadata-key",
        } <= s
        assert MEGATRON_FLAGS <= m, sorted(MEGATRON_FLAGS - m)
    assert "--gradient-checkpointing" in slime_flags("v0.2.2")  # the FSDP dataclass's fields


def test_flag_extraction_reads_argparse_and_dataclass_sources() -> None:
    src = """
import argparse
from dataclasses import dataclass
def add(parser):
    parser.add_argument("--alpha-beta", type=int)
    parser.add_argument("-x", "--ex", action="store_true")
    parser.add_argument("--offload", action=argparse.BooleanOptionalAction)
    reset_arg(parser, "--global-batch-size", type=int, default=None)
    p2 = argparse.ArgumentParser()
    p2.add_argument("--train-backend", choices=["megatron", "fsdp"])
@dataclass
class FSDPArgs:
    lr_warmup_iters: int = 0
"""
    assert flags_in_source(src) == {
        "--alpha-beta",
        "--ex",
        "--offload",
        "--no-offload",
        "--global-batch-size",
        "--train-backend",
    }
    assert "--lr-warmup-iters" in flags_in_source(src, dataclass_fields=True)
    assert flag_choices(src, "--train-backend") == [["megatron", "fsdp"]]


def test_backend_detection(tmp_path: Path) -> None:
    assert supported_train_backends(make_slime(tmp_path / "a", "v0.2.2")) == ["fsdp", "megatron"]
    assert supported_train_backends(make_slime(tmp_path / "b", "v0.3.1")) == ["megatron"]


# --- dry run --------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_dry_run_megatron_defaults(world: dict, version: str) -> None:
    slime = make_slime(world["tmp"] / "slime", version)
    d = dry_run(world, slime)
    # prerequisites this machine has, and the hooks/data/batch flags with the defaults
    for name in (
        "config",
        "task file",
        "slime",
        "train backend",
        "Megatron-LM",
        "model",
        "API keys",
    ):
        assert d.check(name).startswith("ok"), d.check(name)
    assert d.check("GPUs").startswith("MISSING")  # no GPU here; the dry run still prints everything
    assert d.flag("--custom-generate-function-path") == "bridge.generate.generate"
    assert d.flag("--custom-rollout-log-function-path") == "bridge.metrics.log_rollout"
    assert d.flag("--custom-eval-rollout-log-function-path") == "bridge.metrics.log_eval_rollout"
    assert d.flag("--prompt-data") == str(world["tasks"].resolve())
    assert (
        d.flag("--input-key"),
        d.flag("--label-key"),
        d.flag("--metadata-key"),
        d.flag("--tool-key"),
    ) == ("prompt", "label", "metadata", "tools")
    assert "--apply-chat-template" not in d.train_argv  # the bridge renders prompts itself
    assert "--rm-type" not in d.train_argv  # the bridge sets the reward
    assert d.flag("--rollout-batch-size") == "32" and d.flag("--n-samples-per-prompt") == "16"
    assert d.flag("--global-batch-size") == "512"
    assert (
        d.flag("--rollout-max-response-len") == "4096" and d.flag("--max-tokens-per-gpu") == "8192"
    )
    # slime's Qwen3-4B recipe (README: "Learning rate")
    assert float(d.flag("--lr")) == 1e-6 and float(d.flag("--rollout-temperature")) == 1.0
    assert "--colocate" in d.train_argv and "--rollout-num-gpus" not in d.train_argv
    # no GPU here: one node of 8 assumed, the actor and the engines on all of them
    assert (d.flag("--actor-num-nodes"), d.flag("--actor-num-gpus-per-node")) == ("1", "8")
    assert d.flag("--num-gpus-per-node") == "8" and d.check("GPU layout").startswith("ok")
    assert "--use-fault-tolerance" not in d.train_argv and "--eval-interval" not in d.train_argv
    # groups with an infra failure never train (issue 21.3: nothing else checks the wiring)
    assert d.flag("--dynamic-sampling-filter-path") == "bridge.filters.drop_infra_failures"
    assert "BRIDGE_NEXT_DYNAMIC_FILTER" not in d.env
    assert d.flag("--train-backend") == "megatron" and d.flag("--tensor-model-parallel-size") == "1"
    assert d.flag("--num-epoch") == "1"  # no --num-rollout: one epoch of the tasks
    assert (
        d.flag("--hf-checkpoint") == str(world["model"]) == d.flag("--load") == d.flag("--ref-load")
    )
    # the model's args come from slime's scripts/models/<model>.sh, bash-expanded
    assert d.flag("--num-layers") == "36" and d.flag("--rotary-base") == "1000000"
    assert d.flag("--normalization") == "RMSNorm" and "--qk-layernorm" in d.train_argv
    assert d.flag("--wandb-mode") == "offline" and d.flag("--wandb-group") == "launch-test"
    # slime's random group suffix calls wandb.util.generate_id, gone from wandb 0.31
    assert "--disable-wandb-random-suffix" in d.train_argv
    assert d.train_argv[:2] == ["python3", str(slime.resolve() / "train.py")]
    # the Ray job: project on PYTHONPATH (before Megatron), TRAIN_CONFIG, runtime env == printed env
    assert d.env["PYTHONPATH"].split(":") == [str(REPO), str(world["megatron"].resolve())]
    runtime = json.loads(d.submit[d.submit.index("--runtime-env-json") + 1])
    assert runtime == {"env_vars": d.env}
    assert (
        Path(d.submit[0]).name == "ray"
        and d.submit[1:3] == ["job", "submit"]
        and d.submit[-2] == "bash"
        and d.submit[-1].endswith(".sh")
    )
    # what it would start: 32 x 16 = 512 episodes in flight -> two env-server replicas, the first
    # on the config's port keeping the store, and a Ray head on this machine (--block: stoppable)
    servers = [c for c in d.commands if "envs.server" in c]
    assert len(servers) == 2 and "--role env" not in servers[0] and "--role env" in servers[1]
    assert (
        f"--port {world['port']}" in servers[0]
        and f"--config {world['config'].resolve()}" in servers[0]
    )
    # the job's config lists both replicas (written next to the job script)
    assert d.env["TRAIN_CONFIG"] == d.submit[-1][: -len(".sh")] + ".yaml"
    assert f"env_server: http://127.0.0.1:{world['port']}, http://127.0.0.1:" in d.text
    head = d.ray_start()
    assert head and " --head --num-gpus 8 " in head and head.split(" &")[0].endswith("--block")
    assert f"--dashboard-port {world['ray'].rsplit(':', 1)[1]}" in head
    assert not d.wrapper  # env servers on this machine: the job runs slime's driver directly
    # runs nothing: no script written
    assert not Path(d.submit[-1]).exists()


PLANS = [(v, "megatron", m) for v in VERSIONS for m in ("sync", "async", "fully-async")] + [
    ("v0.2.2", "fsdp", "sync")
]


@pytest.mark.parametrize("version,backend,mode", PLANS)
def test_every_emitted_flag_is_one_slime_knows(
    world: dict, version: str, backend: str, mode: str
) -> None:
    slime = make_slime(world["tmp"] / "slime", version)
    extra = ["--seed", "7"]
    colocation = ["--no-colocate"] if mode == "sync" else []  # the async modes never colocate
    d = dry_run(
        world,
        slime,
        "--mode",
        mode,
        "--train-backend",
        backend,
        "--tp",
        "2",
        *colocation,
        "--actor-gpus",
        "4",
        "--rollout-gpus",
        "2",
        "--save",
        str(world["tmp"] / "ckpt"),
        "--save-interval",
        "5",
        "--eval-data",
        str(world["tasks"]),
        "--eval-interval",
        "10",
        "--num-rollout",
        "3",
        "--max-context-len",
        "8192",
        "--fault-tolerance",
        *(["--update-weights-interval", "2"] if mode != "sync" else []),
        "--",
        *extra,
    )
    known = known_flags(version, backend)
    emitted = d.emitted_flags(extra)
    assert emitted - known == set(), f"slime {version} would ignore {sorted(emitted - known)}"
    assert d.train_argv[-2:] == extra  # after `--`: passed unchanged, last
    assert f"# note: all {len(emitted)} emitted flags are defined by this slime/Megatron" in d.text
    assert "--use-fault-tolerance" in d.train_argv and "--colocate" not in d.train_argv
    driver = "train.py" if mode == "sync" else "train_async.py"
    assert d.train_argv[1] == str(slime.resolve() / driver)
    if mode != "sync":
        assert d.flag("--update-weights-interval") == "2"
    if backend == "fsdp":
        assert (
            "--gradient-checkpointing" in d.train_argv
            and "--tensor-model-parallel-size" not in d.train_argv
        )
        assert d.env["PYTHONPATH"] == str(REPO)
    else:
        assert (
            d.flag("--tensor-model-parallel-size") == "2" and "--sequence-parallel" in d.train_argv
        )


def test_dry_run_option_values(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    d = dry_run(
        world,
        slime,
        "--no-colocate",
        "--actor-gpus",
        "4",
        "--rollout-gpus",
        "2",
        "--rollout-tp",
        "2",
        "--n-samples",
        "8",
        "--rollout-batch-size",
        "16",
        "--steps-per-rollout",
        "4",
        "--max-response-len",
        "2048",
        "--max-tokens-per-gpu",
        "4096",
        "--temperature",
        "0.7",
        "--lr",
        "2e-6",
        "--num-rollout",
        "50",
        "--eval-data",
        str(world["tasks"]),
        "--eval-interval",
        "5",
        "--save",
        "/ckpt/out",
        "--save-interval",
        "20",
        "--wandb-project",
        "p",
        "--wandb-group",
        "g",
    )
    assert "--colocate" not in d.train_argv and d.flag("--rollout-num-gpus") == "2"
    assert (
        d.flag("--actor-num-gpus-per-node") == "4"
        and d.flag("--rollout-num-gpus-per-engine") == "2"
    )
    assert d.flag("--global-batch-size") == str(16 * 8 // 4)
    assert d.flag("--rollout-max-response-len") == "2048" == d.flag("--eval-max-response-len")
    assert (
        d.flag("--max-tokens-per-gpu") == "4096" and float(d.flag("--rollout-temperature")) == 0.7
    )
    assert (
        float(d.flag("--lr")) == 2e-6
        and d.flag("--num-rollout") == "50"
        and "--num-epoch" not in d.train_argv
    )
    assert d.values("--eval-prompt-data", 2) == ["tasks", str(world["tasks"].resolve())]
    assert d.flag("--eval-interval") == "5"
    assert d.flag("--save") == "/ckpt/out" and d.flag("--save-interval") == "20"
    assert d.flag("--wandb-project") == "p" and d.flag("--wandb-group") == "g"
    assert " start --head --num-gpus 6 " in (d.ray_start() or "")


def test_env_server_override_and_secrets_are_masked(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    out = run_sh(
        *base_args(world, slime, "--dry-run", "--env-server", "http://127.0.0.1:1"),
        env={"WANDB_API_KEY": "secret-wandb-key"},
    )
    assert out.returncode == 2, out.stderr  # no GPU here: MISSING, so the dry run exits 2
    d = DryRun(out.stdout)
    assert d.env["TRAIN_CONFIG"] == d.submit[-1][: -len(".sh")] + ".yaml"  # the job's own config
    assert "/runs/launch-test/" in d.env["TRAIN_CONFIG"]
    assert not Path(d.env["TRAIN_CONFIG"]).exists()  # a dry run writes nothing
    assert "--port 1 " in d.command("envs.server") + " "
    assert "secret-wandb-key" not in out.stdout and d.env["WANDB_API_KEY"] == "***"
    assert "--wandb-mode" not in d.train_argv and "WANDB_MODE" not in d.env


def test_the_bridges_filter_is_wired_and_a_users_runs_after_it(world: dict) -> None:
    """Issue 21.3: the bridge's infra-failure filter is slime's dynamic filter in every plan; a
    user's own (after `--`, by run.sh's option, or in the environment) goes to the job's
    runtime env for the bridge's filter to call, never replacing it."""
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    ours, theirs = "bridge.filters.drop_infra_failures", "my.filters.keep_hard"
    flag = "--dynamic-sampling-filter-path"
    plans = {
        "after --": dry_run(world, slime, "--", flag, theirs, "--seed", "3"),
        "option": dry_run(world, slime, "--dynamic-filter", theirs),
        "environment": dry_run(world, slime, env={"BRIDGE_NEXT_DYNAMIC_FILTER": theirs}),
    }
    for name, d in plans.items():
        given = [a for a in d.train_argv if a.startswith(flag)]
        assert given == [flag] and d.flag(flag) == ours, name
        runtime = json.loads(d.submit[d.submit.index("--runtime-env-json") + 1])["env_vars"]
        assert runtime.get("BRIDGE_NEXT_DYNAMIC_FILTER") == theirs, name
    assert plans["after --"].flag("--seed") == "3"  # the rest still reaches slime
    line = refused(world, slime, "--dynamic-filter", "a.b", "--", flag, "c.d")
    assert "two dynamic-sampling filters" in line
    assert user_dynamic_filter(None, [f"{flag}={theirs}", "-x"], {}) == (theirs, ["-x"])
    assert user_dynamic_filter(None, [flag, ours], {}) == (None, [])  # ours: nothing to chain


def test_global_batch_size() -> None:
    assert global_batch_size(32, 16, 1) == 512 and global_batch_size(32, 16, 4) == 128
    with pytest.raises(LaunchError, match="not divisible"):
        global_batch_size(3, 5, 2)


def test_help_and_bad_options() -> None:
    out = run_sh("--help")
    assert out.returncode == 0
    for opt in (
        "--model",
        "--lr",
        "--n-samples",
        "--rollout-batch-size",
        "--max-response-len",
        "--max-tokens-per-gpu",
        "--temperature",
        "--num-rollout",
        "--train-backend",
        "--actor-gpus",
        "--rollout-gpus",
        "--tp",
        "--colocate",
        "--load",
        "--save",
        "--save-interval",
        "--task-data",
        "--eval-data",
        "--eval-interval",
        "--config",
        "--wandb-project",
        "--wandb-group",
        "--slime-path",
        "--megatron-path",
        "--model-args",
        "--env-server",
        "--dry-run",
        "--rollout-only",
        "--mode",
        "--update-weights-interval",
        "--fault-tolerance",
        "--resume",
        "--no-resume",
        "--no-eval",
        "--cp",
        "--gpu-vendor",
        "--env-servers",
        "--env-server-cpus",
        "--ray-address",
    ):
        assert opt in out.stdout, opt
    bad = run_sh("--rollout-batch-size", "3", "--n-samples", "5", "--steps-per-rollout", "2")
    assert bad.returncode == 2 and "not divisible by --steps-per-rollout 2" in bad.stderr
    typo = run_sh("--rollout-batchsize", "3")
    assert typo.returncode == 2 and "unrecognized arguments: --rollout-batchsize" in typo.stderr


# --- prerequisite errors (a real run stops before doing anything) -------------------------------
def test_machine_prerequisites_named_with_fixes(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    lines = missing_lines(run_sh(*base_args(world, slime)))
    # this machine has no GPU (and maybe no ray); everything else in `world` is present
    gpus = line_for(lines, "GPUs")
    assert all(t in gpus for t in ("nvidia-smi", "amd-smi", "rocm-smi", "--rollout-only"))
    if pre.ray_executable() is None:
        assert "pip install 'ray[default]" in line_for(lines, "ray")
    assert len(lines) == 1 + (pre.ray_executable() is None), lines
    assert not (
        REPO / "runs" / "launch-test"
    ).exists()  # stopped before writing or starting anything


def test_missing_slime_megatron_tasks_checkpoint(world: dict, tmp_path: Path) -> None:
    lines = missing_lines(
        run_sh(
            "--ray-address",
            world["ray"],
            "--model",
            "Org/Not-Local-7B",
            "--config",
            str(world["config"]),
            "--task-data",
            str(tmp_path / "none.jsonl"),
        )
    )
    assert "git clone https://github.com/THUDM/slime.git" in line_for(lines, "slime")
    assert "SLIME_PATH" in line_for(lines, "slime")
    assert "git clone https://github.com/NVIDIA/Megatron-LM.git" in line_for(lines, "Megatron-LM")
    assert (
        f"python prepare_tasks.py --config {world['config']} --output {tmp_path / 'none.jsonl'}"
        in line_for(lines, "task file")
    )
    # a Hub id not in the cache, the Hub kept out (HF_HUB_OFFLINE, as in every test): a local
    # copy is the fix (current huggingface_hub ships `hf`, not huggingface-cli)
    line = line_for(lines, "model")
    assert "not in the local Hugging Face cache" in line and "HF_HUB_OFFLINE" in line
    assert "hf download Org/Not-Local-7B --local-dir ./Not-Local-7B" in line
    # a directory that is not a slime checkout; SLIME_PATH is honoured
    out = run_sh(*base_args(world, tmp_path)[:-4], env={"SLIME_PATH": str(tmp_path)})
    assert "is not a slime checkout (no train.py" in line_for(missing_lines(out), "slime")


def test_fsdp_refused_on_slime_without_it(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    lines = missing_lines(run_sh(*base_args(world, slime, "--train-backend", "fsdp")))
    line = line_for(lines, "train backend")
    assert (
        "does not support --train-backend fsdp" in line and "v0.2.2" in line and "megatron" in line
    )


def test_flag_unknown_to_this_slime_is_refused(world: dict) -> None:
    slime = make_slime(
        world["tmp"] / "slime",
        "v0.3.1",
        drop=("--tool-key", "--custom-eval-rollout-log-function-path"),
    )
    line = line_for(missing_lines(run_sh(*base_args(world, slime))), "slime flags")
    assert "--custom-eval-rollout-log-function-path, --tool-key" in line and "ignore" in line


def test_unknown_model_needs_model_args(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    other = world["tmp"] / "models" / "MyModel-3B"
    other.mkdir()
    args = base_args(world, slime)
    args[args.index("--model") + 1] = str(other)
    line = line_for(missing_lines(run_sh(*args)), "model args")
    assert "MyModel-3B.sh" in line and "--model-args" in line and "qwen3-4B" in line
    # --model-args as a flag string or as a script file
    d = DryRun(run_sh(*args, "--dry-run", "--model-args", "--num-layers 2 --hidden-size 64").stdout)
    assert d.flag("--num-layers") == "2" and d.check("Megatron-LM").startswith("ok")
    script = world["tmp"] / "my.sh"
    script.write_text("MODEL_ARGS=(--num-layers 3)\n")
    d = DryRun(run_sh(*args, "--dry-run", "--model-args", str(script)).stdout)
    assert d.flag("--num-layers") == "3"


def test_hosted_env_api_keys_and_bad_config(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    hosted = world["tmp"] / "hosted.yaml"
    hosted.write_text(
        "environments:\n  GeneralReasoning/Whodunnit:\n    secrets: {openai_api_key: null}\n"
    )
    args = base_args(world, slime)
    args[args.index("--config") + 1] = str(hosted)
    line = line_for(missing_lines(run_sh(*args)), "API keys")
    assert "OPENREWARD_API_KEY, OPENAI_API_KEY not set" in line
    assert "export OPENREWARD_API_KEY=... && export OPENAI_API_KEY=..." in line
    ok = run_sh(*args, "--dry-run", env={"OPENREWARD_API_KEY": "k1", "OPENAI_API_KEY": "k2"})
    d = DryRun(ok.stdout)
    assert (
        d.check("API keys").startswith("ok")
        and d.env["OPENAI_API_KEY"] == "***"
        and "k2" not in ok.stdout
    )
    assert not any("envs.server" in c for c in d.commands)  # hosted only: no local env server
    bad = world["tmp"] / "bad.yaml"
    bad.write_text("environments:\n  gsm8k:\n    max_turn: 3\n")
    args[args.index("--config") + 1] = str(bad)
    assert "unknown key 'environments.gsm8k.max_turn'" in line_for(
        missing_lines(run_sh(*args)), "config"
    )


def test_option_combinations_refused_early(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    out = run_sh(*base_args(world, slime, "--eval-interval", "5"))
    assert out.returncode == 2 and "--eval-interval needs --eval-data" in out.stderr
    out = run_sh(*base_args(world, slime, "--save-interval", "5"))
    assert out.returncode == 2 and "--save-interval needs --save" in out.stderr


# --- execution (without Ray: the submit step is replaced by a probe of the running env server) ----
def test_execute_starts_env_server_health_checked_and_stops_it(world: dict) -> None:
    import shutil
    import sys

    from tools.launch.cli import parse_options
    from tools.launch.execute import execute
    from tools.launch.plan import build_plan

    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    run_name = f"launch-exec-{world['port']}"
    world["config"].write_text(world["config"].read_text().replace("launch-test", run_name))
    override_port = free_port()
    opts, extra = parse_options(
        base_args(
            world,
            slime,
            "--env-server",
            f"http://127.0.0.1:{override_port}",
            "--env-servers",
            "2",
            "--db",
            str(world["tmp"] / "store.db"),
        )
    )
    plan = build_plan(opts, extra)
    urls = [u for u, _ in plan.env_servers]
    assert len(urls) == 2 and urls[0] == f"http://127.0.0.1:{override_port}"
    assert plan.config_override is not None
    probe = world["tmp"] / "probe.json"
    plan.ray_start_cmd = (
        None  # no Ray on this machine; the job is a probe run while the servers are up
    )
    plan.submit_cmd = [
        sys.executable,
        "-c",
        (
            "import json, os, sys, httpx, yaml; "
            f"cfg = yaml.safe_load(open({plan.job_env['TRAIN_CONFIG']!r})); "
            "h = [httpx.get(u + '/health').status_code for u in cfg['env_server']]; "
            f"json.dump({{'health': h, 'env_server': cfg['env_server']}}, open({str(probe)!r}, "
            "'w'))"
        ),
    ]
    try:
        assert execute(plan) == 0
        seen = json.loads(probe.read_text())
        assert seen == {"health": [200, 200], "env_server": urls}
        assert plan.train_script_path.read_text() == plan.train_script
        for u in urls:  # every replica run.sh started is stopped on exit
            assert not port_open(int(u.rsplit(":", 1)[1])), u
        assert (world["tmp"] / "store.db").exists()
    finally:
        shutil.rmtree(REPO / "runs" / run_name, ignore_errors=True)


def test_the_trajectories_a_job_leaves_are_delivered_before_its_env_server_stops(
    world: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fully-async rollout worker is killed with the job, its last episodes in its sink's
    journal: run.sh delivers them to the store its env server keeps before stopping it, so
    the store holds the whole run when run.sh returns (tools/launch/leftovers.py)."""
    import shutil
    import sqlite3
    import sys

    from tools.launch.cli import parse_options
    from tools.launch.execute import execute
    from tools.launch.plan import build_plan

    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    run_name = f"launch-leftovers-{world['port']}"
    world["config"].write_text(world["config"].read_text().replace("launch-test", run_name))
    db = world["tmp"] / "store.db"
    opts, extra = parse_options(
        base_args(world, slime, "--env-server", f"http://127.0.0.1:{free_port()}", "--db", str(db))
    )
    plan = build_plan(opts, extra)
    plan.ray_start_cmd = None  # no Ray here: the job is the worker, run while the server is up
    script = leaves_trajectories()
    plan.submit_cmd = ["env", *(f"{k}={v}" for k, v in plan.job_env.items())]
    plan.submit_cmd += [f"PYTHONPATH={REPO}", sys.executable, "-c", script]
    try:
        assert execute(plan) != 0  # the worker was killed
        out = capsys.readouterr().out
        assert "run.sh: delivered 12 trajectories the job left in" in out, out
        assert "(12 recovered from the journals of its processes)" in out, out
        with sqlite3.connect(db) as conn:
            (stored,) = conn.execute(
                "SELECT count(*) FROM rollouts JOIN runs ON runs.id = rollouts.run_id "
                "WHERE runs.name = ?",
                (run_name,),
            ).fetchone()
        assert stored == 12
        from tools.launch.leftovers import deliver_leftovers

        assert deliver_leftovers(plan.job_env["TRAIN_CONFIG"]) is None  # none left for the next
    finally:
        shutil.rmtree(REPO / "runs" / run_name, ignore_errors=True)


def test_leftovers_wait_for_the_next_run_when_their_server_is_down(world: dict) -> None:
    """Replicas started inside the job stop with it: run.sh does not spend a minute retrying a
    server that is gone; the journal stays for the next run that reaches one."""
    import sys
    import time

    from tools.launch.leftovers import deliver_leftovers

    script = leaves_trajectories()
    env = {**os.environ, "TRAIN_CONFIG": str(world["config"]), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, timeout=120)
    assert done.returncode == -9
    t = time.monotonic()
    said = deliver_leftovers(world["config"])
    assert said is not None and "is down, the next run sends them" in said, said
    assert time.monotonic() - t < 15
    spool = world["tmp"] / "runs" / "spool"
    assert [p.name.rsplit(".", 2)[1] for p in spool.glob("*.jsonl")] == ["journal"]


def test_leftovers_of_a_worker_still_being_killed_are_waited_for(world: dict) -> None:
    """On a Ray cluster run.sh did not start, the job's actors are killed after its driver
    exits, not at once: a journal a live process holds is not taken; run.sh waits for it."""
    import sys
    import threading
    import time

    from tools.launch.leftovers import deliver_leftovers

    slow_death = leaves_trajectories(dies_after_s=2.0)
    db = world["tmp"] / "store.db"
    with env_server("--role", "trajectories", "--db", str(db)) as url:
        config = world["tmp"] / "served.yaml"
        config.write_text(
            world["config"].read_text().replace(f"127.0.0.1:{world['port']}", url[7:])
        )
        env = {**os.environ, "TRAIN_CONFIG": str(config), "PYTHONPATH": str(REPO)}
        worker = subprocess.Popen([sys.executable, "-c", slow_death], env=env)
        spool = world["tmp"] / "runs" / "spool"
        deadline = time.monotonic() + 60
        while not list(spool.glob("*.journal.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.poll() is None  # its journal is there, it is alive
        reaper = threading.Thread(target=worker.wait)  # as Ray's raylet reaps its workers
        reaper.start()
        said = deliver_leftovers(config)
        reaper.join(timeout=30)
        assert worker.returncode == -9
        assert said is not None and said.startswith("delivered 12 trajectories"), said
        assert "(12 recovered" in said and "still alive" not in said, said


def test_several_env_servers_one_trajectory_store(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    p1, p2 = free_port(), free_port()
    world["config"].write_text(
        f"environments:\n  gsm8k: {{}}\nenv_server: [http://127.0.0.1:{p1}, "
        f"http://127.0.0.1:{p2}]\nrun_name: launch-test\n"
    )
    d = dry_run(world, slime)
    servers = [c for c in d.commands if "envs.server" in c]
    assert len(servers) == 2 and f"--port {p1}" in servers[0] and f"--port {p2}" in servers[1]
    assert "--role" not in servers[0] and servers[1].split("&")[0].rstrip().endswith("--role env")


def test_old_slime_megatron_needs_converted_weights(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.2.2")
    line = line_for(missing_lines(run_sh(*base_args(world, slime))), "Megatron weights")
    assert "tools/convert_hf_to_torch_dist.py" in line and "scripts/models/qwen3-4B.sh" in line
    assert f"--save {world['model'].resolve()}_torch_dist" in line
    ckpt = world["tmp"] / "torch_dist"
    ckpt.mkdir()
    (ckpt / "latest_checkpointed_iteration.txt").write_text("release")
    d = dry_run(world, slime, "--load", str(ckpt))
    assert d.check("Megatron weights").startswith("ok") and d.flag("--load") == str(ckpt)
    assert d.flag("--hf-checkpoint") == str(world["model"])
    fsdp = dry_run(world, slime, "--train-backend", "fsdp")
    assert "Megatron weights" not in fsdp.text


def test_sigterm_stops_what_it_started(world: dict) -> None:
    import signal
    import sys
    import time

    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    run_name = f"launch-sigterm-{world['port']}"
    world["config"].write_text(world["config"].read_text().replace("launch-test", run_name))
    program = (
        "import sys\n"
        "from tools.launch.cli import parse_options\n"
        "from tools.launch.execute import execute\n"
        "from tools.launch.plan import build_plan\n"
        "opts, extra = parse_options(sys.argv[1:])\n"
        "plan = build_plan(opts, extra)\n"
        "plan.ray_start_cmd = None\n"
        "plan.submit_cmd = [sys.executable, '-c', 'import time; time.sleep(300)']\n"
        "sys.exit(execute(plan))\n"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            program,
            *base_args(world, slime, "--db", str(world["tmp"] / "s.db"), "--env-servers", "1"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 120
        seen = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            if "submitting Ray job" in line:
                break
        assert "submitting Ray job" in seen[-1], seen
        assert port_open(int(world["port"]))  # the env server is up while the job runs
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130, proc.stderr.read()
        assert not port_open(int(world["port"])), "SIGTERM must stop the env server run.sh started"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        import shutil

        shutil.rmtree(REPO / "runs" / run_name, ignore_errors=True)


def test_the_jobs_env_servers_win_over_the_task_rows(world: dict) -> None:
    """Rows pin the URLs of prepare time; the job's config (TRAIN_CONFIG) decides where the bridge
    connects, so run.sh starts servers there and --env-server needs no re-prepare."""
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    pinned = free_port()
    rows = [json.loads(line) for line in world["tasks"].read_text().splitlines()]
    for r in rows:
        r["metadata"]["env_server"] = [f"http://127.0.0.1:{pinned}"]
    world["tasks"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = dry_run(world, slime, "--env-servers", "1")
    cmd = d.command("envs.server").split(" &")[0]
    assert cmd.endswith(f"--port {world['port']} --db {REPO / 'runs' / 'trajectories.db'}")
    assert d.env["TRAIN_CONFIG"] == str(world["config"].resolve())  # the config as it is
    other = free_port()
    d = dry_run(world, slime, "--env-servers", "1", "--env-server", f"http://127.0.0.1:{other}")
    assert f"--port {other} " in d.command("envs.server")
    assert f"env_server: http://127.0.0.1:{other})" in d.text  # the job's config names it


# --- modes ----------------------------------------------------------------------------------------
def test_async_mode_splits_the_gpus_and_refuses_colocate(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "main")
    d = dry_run(world, slime, "--mode", "async", "--update-weights-interval", "2")
    assert d.train_argv[1] == str(slime.resolve() / "train_async.py")
    assert "--colocate" not in d.train_argv and "--rollout-function-path" not in d.train_argv
    # one node of 8 (assumed here): the actor takes half, the engines the rest
    assert d.flag("--actor-num-gpus-per-node") == "4" and d.flag("--rollout-num-gpus") == "4"
    assert d.flag("--update-weights-interval") == "2"
    line = refused(world, slime, "--mode", "async", "--colocate")
    assert "--mode async" in line and "cannot --colocate" in line and "drop --colocate" in line
    line = refused(world, slime, "--update-weights-interval", "2")  # sync
    assert "only applies to --mode async/fully-async" in line


@pytest.mark.parametrize("version", VERSIONS)
def test_fully_async_uses_slimes_rollout_worker(world: dict, version: str) -> None:
    slime = make_slime(world["tmp"] / "slime", version)
    d = dry_run(world, slime, "--mode", "fully-async")
    assert d.train_argv[1] == str(slime.resolve() / "train_async.py")
    # the bridge's wrapper around slime's worker (bridge/fully_async.py finds it in the job)
    assert d.flag("--rollout-function-path") == "bridge.fully_async.generate_rollout_fully_async"
    if version == "v0.2.2":  # only as an example there, which the job gets on its PYTHONPATH
        assert d.env["PYTHONPATH"].split(":")[-1] == str(slime.resolve() / "examples/fully_async")
    assert "--eval-function-path" not in d.train_argv  # no eval data in this world
    # the worker keeps --sglang-server-concurrency (512) per engine in flight: 4 engines here,
    # so 2048 episodes -> 8 env-server replicas
    assert len([c for c in d.commands if "envs.server" in c]) == 8
    assert d.emitted_flags() - known_flags(version) == set()


@pytest.mark.parametrize("mode", ["sync", "async", "fully-async"])
def test_fully_async_evaluates_with_the_bridges_eval_function(world: dict, mode: str) -> None:
    """slime's fully-async rollout refuses evaluation and slime's own eval cannot share the
    worker's loop (issue 21.8): with eval data, fully-async names the bridge's eval function; the
    other modes keep slime's default (the rollout function)."""
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    eval_file = world["tasks"].with_name("eval_" + world["tasks"].name)
    eval_file.write_text(world["tasks"].read_text())
    d = dry_run(world, slime, "--mode", mode, "--eval-interval", "1")
    assert d.flag("--eval-interval") == "1"
    if mode == "fully-async":
        assert d.flag("--eval-function-path") == "bridge.fully_async.eval_rollout"
    else:
        assert "--eval-function-path" not in d.train_argv


def test_fully_async_refused_on_a_slime_without_it(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    (slime / "slime" / "rollout" / "fully_async_rollout.py").unlink()
    (slime / "examples" / "fully_async" / "fully_async_rollout.py").unlink()
    line = line_for(
        missing_lines(run_sh(*base_args(world, slime, "--mode", "fully-async"))), "training mode"
    )
    assert "no fully-async rollout" in line and "--mode async" in line


# --- AMD ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_amd_gpus_get_rocm_env_and_flags(world: dict, version: str) -> None:
    slime = make_slime(world["tmp"] / "slime", version)
    # a failing nvidia-smi shadows any real one; amd-smi lists 8 GPUs
    env = fake_tools(world["tmp"], nvidia_smi="exit 9", amd_smi=AMD_SMI_8)
    d = dry_run(world, slime, env=env)
    assert d.check("GPUs") == "ok       GPUs: 1 node(s) x 8 GPUs (AMD) from amd-smi on this machine"
    assert d.env["RAY_EXPERIMENTAL_NOSET_HIP_VISIBLE_DEVICES"] == "1"
    # colocated on ROCm: no offloading (slime's AMD script), no fused grad accumulation (no apex)
    for flag in ("--no-offload-train", "--no-offload-rollout", "--no-gradient-accumulation-fusion"):
        assert flag in d.train_argv, flag
    head = d.ray_start() or ""
    assert "RAY_EXPERIMENTAL_NOSET_HIP_VISIBLE_DEVICES=1" in head
    assert "HIP_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 " in head and " --num-gpus 8 " in head
    assert d.emitted_flags() - known_flags(version) == set()
    split = dry_run(world, slime, "--no-colocate", env=env)
    assert "--no-offload-train" not in split.train_argv
    assert "--no-gradient-accumulation-fusion" in split.train_argv


def test_rocm_smi_and_nvidia_smi_are_counted(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "main")
    rocm = "\n".join(f'echo "GPU[{i}]\t\t: Device ID: 0x74a1"' for i in range(4))
    d = dry_run(world, slime, env=fake_tools(world["tmp"], nvidia_smi="exit 9", rocm_smi=rocm))
    assert "4 GPUs (AMD) from rocm-smi" in d.check("GPUs") and "--no-offload-train" in d.train_argv
    nvidia = "\n".join(f'echo "GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i})"' for i in range(2))
    d = dry_run(world, slime, env=fake_tools(world["tmp"] / "slime", nvidia_smi=nvidia))
    assert d.check("GPUs") == "ok       GPUs: 1 node(s) x 2 GPUs from nvidia-smi on this machine"
    assert d.flag("--actor-num-gpus-per-node") == "2" and "--no-offload-train" not in d.train_argv
    assert "RAY_EXPERIMENTAL_NOSET_HIP_VISIBLE_DEVICES" not in d.env


# --- resume ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_resume_loads_the_checkpoint_in_save(world: dict, version: str) -> None:
    slime = make_slime(world["tmp"] / "slime", version)
    save = saved_run(world["tmp"] / "ckpt")
    d = dry_run(world, slime, "--save", str(save))
    assert d.flag("--load") == str(save) and d.flag("--save") == str(save)
    assert d.flag("--save-interval") == "20"  # Megatron asserts one whenever --save is given
    assert d.flag("--ref-load") == str(world["model"]) == d.flag("--hf-checkpoint")
    assert any(n.startswith(f"resuming from {save} (iteration 7)") for n in d.notes)
    if version == "v0.2.2":  # a Megatron checkpoint: no conversion needed
        assert d.check("Megatron weights").startswith("ok")
    assert d.emitted_flags() - known_flags(version) == set()
    assert dry_run(world, slime, "--save", str(save), "--resume").flag("--load") == str(save)
    fresh = dry_run(world, slime, "--save", str(save), "--no-resume")
    assert fresh.flag("--load") == str(world["model"])
    assert any(
        "--no-resume: starting from" in n and "replace iteration 7" in n for n in fresh.notes
    )


def test_resume_refusals(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    empty = world["tmp"] / "empty"
    empty.mkdir()
    line = refused(world, slime, "--save", str(empty), "--resume")
    assert "--resume:" in line and "holds no checkpoint" in line
    save = saved_run(world["tmp"] / "ckpt", "12")
    assert "drop --load" in refused(
        world, slime, "--save", str(save), "--resume", "--load", str(save)
    )
    (save / "iter_0000012" / "common.pt").unlink()
    (save / "iter_0000012").rmdir()
    line = refused(world, slime, "--save", str(save))
    assert "names iteration 12" in line and "is missing" in line and "--no-resume" in line
    # an explicit --load beside a checkpoint: --load wins, the plan says why
    other = saved_run(world["tmp"] / "other", "release")
    d = dry_run(world, slime, "--save", str(other), "--load", str(world["model"]))
    assert d.flag("--load") == str(world["model"])
    assert any("pass --resume instead of --load" in n for n in d.notes)


def test_fsdp_resume_on_v022(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.2.2")
    save = saved_run(world["tmp"] / "ckpt", "3")
    d = dry_run(world, slime, "--train-backend", "fsdp", "--save", str(save))
    assert (
        d.flag("--load") == str(save) and d.emitted_flags() - known_flags("v0.2.2", "fsdp") == set()
    )


# --- checks before anything runs ------------------------------------------------------------------
def test_values_slime_would_refuse_or_cannot_train(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "main")
    assert "must be > 0" in refused(world, slime, "--temperature", "0")
    line = refused(world, slime, "--max-context-len", "16384")
    assert "--max-context-len 16384 exceeds --max-tokens-per-gpu 8192" in line
    assert "--max-tokens-per-gpu 16384 or --cp 2" in line
    line = refused(world, slime, "--max-response-len", "10000")
    assert "--max-response-len 10000 exceeds" in line
    d = dry_run(world, slime, "--max-context-len", "16384", "--cp", "2")
    assert (
        d.flag("--context-parallel-size") == "2" and d.flag("--rollout-max-context-len") == "16384"
    )
    d = dry_run(world, slime, "--max-context-len", "16384", "--max-tokens-per-gpu", "16384")
    assert d.flag("--context-parallel-size") == "1"
    old = make_slime(world["tmp"] / "old", "v0.2.2")
    assert "--cp (context parallelism) needs --train-backend megatron" in refused(
        world, old, "--train-backend", "fsdp", "--cp", "2"
    )


# --- eval -----------------------------------------------------------------------------------------
def test_eval_on_by_default_when_prepared(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    d = dry_run(world, slime)
    assert "--eval-prompt-data" not in d.train_argv  # no eval file beside the tasks: no eval
    assert "--eval-interval needs --eval-data FILE, or " in refused(
        world, slime, "--eval-interval", "5"
    )
    prepared = world["tasks"].with_name("eval_" + world["tasks"].name)
    prepared.write_text(world["tasks"].read_text())
    d = dry_run(world, slime)
    assert d.values("--eval-prompt-data", 2) == [prepared.stem, str(prepared.resolve())]
    assert d.flag("--eval-interval") == "20"
    assert any(n.startswith(f"eval: {prepared} every 20 rollouts") for n in d.notes)
    assert "--eval-prompt-data" not in dry_run(world, slime, "--no-eval").train_argv
    d = dry_run(world, slime, "--eval-interval", "5")
    assert d.flag("--eval-interval") == "5"
    # --eval-data alone is no longer silently useless: it gets the default interval
    d = dry_run(world, slime, "--eval-data", str(world["tasks"]))
    assert d.flag("--eval-interval") == "20" and d.values("--eval-prompt-data", 1) == ["tasks"]
    assert "contradicts" in refused(world, slime, "--no-eval", "--eval-data", str(prepared))


# --- env-server replicas on this machine ----------------------------------------------------------
def test_env_server_replicas_follow_the_concurrency(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    d = dry_run(world, slime, "--rollout-batch-size", "8", "--n-samples", "8")  # 64 in flight
    assert len([c for c in d.commands if "envs.server" in c]) == 1
    assert d.env["TRAIN_CONFIG"] == str(world["config"].resolve())
    d = dry_run(world, slime, "--env-servers", "3")
    servers = [c.split(" &")[0] for c in d.commands if "envs.server" in c]
    assert len(servers) == 3 and f"--port {world['port']} " in servers[0] + " "
    assert not servers[0].endswith("--role env") and all(
        c.endswith("--role env") for c in servers[1:]
    )
    assert len({c.split("--port ")[1].split()[0] for c in servers}) == 3
    assert all(f"--db {REPO / 'runs' / 'trajectories.db'}" in c for c in servers)  # one store


def test_running_env_server_is_used_and_topped_up(world: dict, tmp_path: Path) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    with env_server("--envs", "gsm8k", "--db", str(tmp_path / "t.db")) as url:
        world["config"].write_text(
            f"environments:\n  gsm8k: {{}}\nenv_server: {url}\nrun_name: launch-test\n"
        )
        d = dry_run(world, slime, "--env-servers", "2")
    servers = [c.split(" &")[0] for c in d.commands if "envs.server" in c]
    assert f"env server already answers at {url}" in d.notes
    assert len(servers) == 1 and servers[0].endswith(
        "--role env"
    )  # the running one keeps the store
    assert f"env_server: {url}, http://127.0.0.1:" in d.text


# --- paths: what run.sh hands on is absolute (issue 21 item 9) ------------------------------------
def test_relative_paths_mean_what_they_meant_where_run_sh_was_started(world: dict) -> None:
    """The job runs in slime's checkout and the env servers in the project root: a relative
    --model would name nothing there, a relative --save another directory than the one resumed."""
    tmp: Path = world["tmp"]
    slime = make_slime(tmp / "slime", "v0.3.1")
    saved_run(tmp / "ckpt", "20")
    base = tmp / "models" / "Base"
    base.mkdir()
    out = run_sh(
        *["--ray-address", world["ray"], "--model", "models/Qwen3-4B"],
        *["--config", "train_config.yaml", "--task-data", "tasks.jsonl", "--save", "ckpt"],
        *["--slime-path", "slime", "--megatron-path", "./Megatron-LM", "--db", "runs/t.db"],
        *["--ref-load", "models/Base", "--env-servers", "1", "--dry-run"],
        *["--", "--save-debug-rollout-data", "dump/r_{rollout_id}.pt", "--seed", "3"],
        cwd=tmp,
    )
    assert out.returncode == 2 and out.stdout, out.stderr  # MISSING: no GPU here
    d = DryRun(out.stdout)
    model, ckpt = str(world["model"].resolve()), str((tmp / "ckpt").resolve())
    assert d.flag("--hf-checkpoint") == model and d.flag("--ref-load") == str(base.resolve())
    assert d.flag("--load") == ckpt == d.flag("--save")  # resumes the run it names
    assert any(n.startswith(f"resuming from {ckpt} (iteration 20)") for n in d.notes)
    assert d.flag("--prompt-data") == str(world["tasks"].resolve())
    assert d.flag("--save-debug-rollout-data") == str(tmp.resolve() / "dump/r_{rollout_id}.pt")
    assert d.flag("--seed") == "3"
    assert d.train_argv[1] == str(slime.resolve() / "train.py")
    assert d.env["PYTHONPATH"].split(":")[1] == str(world["megatron"].resolve())
    server = d.command("envs.server")
    assert f"--tokenizer {model} " in server and f"--db {tmp.resolve() / 'runs/t.db'}" in server
    assert f"--config {world['config'].resolve()} " in server
    assert d.env["TRAIN_CONFIG"] == str(world["config"].resolve())


def test_paths_that_do_not_exist_are_refused_with_a_fix(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    args = base_args(world, slime)
    # the README's own example, before the model is downloaded: the fix makes that directory
    args[args.index("--model") + 1] = "./Qwen3-4B"
    line = line_for(missing_lines(run_sh(*args, cwd=world["tmp"])), "model")
    here = world["tmp"].resolve() / "Qwen3-4B"
    assert f"no such directory ({here})" in line
    assert f"-> fix: hf download Qwen/Qwen3-4B --local-dir {here} " in line
    args[args.index("--model") + 1] = "./Unheard-Of-1B"  # no family, not cached: find its id
    line = line_for(missing_lines(run_sh(*args, cwd=world["tmp"])), "model")
    assert "-> fix: hf models ls --search Unheard-Of-1B" in line
    lines = missing_lines(run_sh(*base_args(world, slime, "--load", "nope", "--ref-load", "no2")))
    assert [ln for ln in lines if "checkpoint:" in ln] == [
        f"run.sh: MISSING  checkpoint: --load {REPO / 'nope'} is not a directory -> fix: pass "
        "an existing checkpoint directory to --load, or drop --load",
        f"run.sh: MISSING  checkpoint: --ref-load {REPO / 'no2'} is not a directory -> fix: pass "
        "an existing checkpoint directory to --ref-load, or drop --ref-load",
    ]
    line = refused(world, slime, "--model-args", "scripts/nope.sh")
    assert "--model-args scripts/nope.sh: no such file" in line
    (world["tmp"] / "ckpt").write_text("")
    assert "is a file" in refused(world, slime, "--save", str(world["tmp"] / "ckpt"))


# --- a Hub id resolves: cache, else download, else a fix (issue 20 item 5) ------------------------
def _hf_cache(root: Path, repo: str, revision: str = "0" * 40) -> Path:
    """A Hugging Face cache holding `repo` as huggingface_hub lays it out; its snapshot dir."""
    repo_dir = root / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


def test_a_hub_id_comes_from_the_local_cache_offline(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    hf_home = world["tmp"] / "hf"
    snapshot = _hf_cache(hf_home, "Qwen/Qwen3-4B")
    args = base_args(world, slime, "--dry-run")
    args[args.index("--model") + 1] = "Qwen/Qwen3-4B"
    out = run_sh(*args, env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    d = DryRun(out.stdout)
    assert d.check("model") == (
        f"ok       model: Qwen/Qwen3-4B from the local Hugging Face cache: {snapshot}"
    )
    assert d.flag("--hf-checkpoint") == str(snapshot) == d.flag("--load") == d.flag("--ref-load")
    assert f"--tokenizer {snapshot} " in d.command("envs.server")
    assert d.flag("--num-layers") == "36"  # slime's scripts/models/qwen3-4B.sh, by the id's name
    assert "hf download" not in out.stdout  # nothing to download


def test_a_hub_id_the_hub_cannot_give_is_one_line_with_a_fix(world: dict) -> None:
    """Not cached and the Hub unreachable (here: nothing listens at HF_ENDPOINT), or kept out by
    HF_HUB_OFFLINE: one MISSING line saying so and how to pass a local directory."""
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    args = base_args(world, slime)
    args[args.index("--model") + 1] = "Qwen/Qwen3-4B"
    empty = {"HF_HOME": str(world["tmp"] / "hf")}
    closed = f"http://127.0.0.1:{free_port()}"
    out = run_sh(*args, env={**empty, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": closed})
    line = line_for(missing_lines(out), "model")
    assert f"--model Qwen/Qwen3-4B: the Hub at {closed} is unreachable from here" in line
    assert "-> fix: bash run.sh --model /path/to/Qwen3-4B ..." in line
    assert "hf download Qwen/Qwen3-4B --local-dir ./Qwen3-4B" in line
    line = line_for(missing_lines(run_sh(*args, env={**empty, "HF_HUB_OFFLINE": "1"})), "model")
    assert "HF_HUB_OFFLINE is set" in line and "unset HF_HUB_OFFLINE" in line


def test_dry_run_exits_2_when_a_prerequisite_is_missing(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    out = run_sh(*base_args(world, slime, "--dry-run"))  # no GPU on this machine
    assert out.returncode == 2 and "MISSING  GPUs:" in out.stdout
    assert (
        out.stderr.strip().splitlines()[-1] == "run.sh: dry run: 1 prerequisite(s) MISSING (above)"
    )
    assert "exit 2 when a prerequisite is MISSING" in " ".join(run_sh("--help").stdout.split())


# --- option values and slime's names of run.sh's options (issue 21 items 12, 13) ------------------
@pytest.mark.parametrize(
    "option,value,says",
    [
        ("--temperature", "nan", "--temperature nan: must be > 0"),
        ("--temperature", "inf", "--temperature inf: must be > 0"),
        ("--rollout-temperature", "-1", "--temperature -1: must be > 0"),
        ("--lr", "nan", "--lr nan: must be in (0, 1]"),
        ("--lr", "0", "--lr 0: must be in (0, 1]"),
        ("--mem-fraction", "1.5", "--mem-fraction 1.5: must be in (0, 1]"),
        ("--mem-fraction", "nan", "--mem-fraction nan: must be in (0, 1]"),
        ("--env-server-cpus", "inf", "--env-server-cpus inf: must be > 0"),
        ("--n-samples", "0", "--n-samples 0: must be >= 1"),
        ("--rollout-batch-size", "-2", "--rollout-batch-size -2: must be >= 1"),
        ("--max-response-len", "0", "--max-response-len 0: must be >= 1"),
        ("--num-rollout", "0", "--num-rollout 0: must be >= 1"),
    ],
)
def test_non_finite_and_out_of_range_values_are_refused(
    world: dict, option: str, value: str, says: str
) -> None:
    from tools.launch.cli import check_options, parse_options
    from tools.launch.modes import TrainMode

    opts, _ = parse_options([option, value])
    with pytest.raises(LaunchError) as refusal:
        check_options(opts, TrainMode(opts.mode))
    assert says in str(refusal.value)
    if option == "--temperature" and value == "nan":  # and through run.sh: one line, exit 2
        slime = make_slime(world["tmp"] / "slime", "v0.3.1")
        assert refused(world, slime, option, value) == f"run.sh: {refusal.value}"


def test_slimes_names_of_run_sh_options_are_those_options(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    d = dry_run(
        world,
        slime,
        *["--rollout-temperature", "0.5", "--n-samples-per-prompt", "8", "--no-colocate"],
        *["--tensor-model-parallel-size", "2", "--actor-gpus", "4"],
        "--",
        *["--rollout-max-response-len", "2048", "--rollout-num-gpus", "2", "--eps-clip", "0.1"],
        *["--use-fault-tolerance", "--seed", "5"],
    )
    argv = d.train_argv
    for flag, value in [
        ("--rollout-temperature", "0.5"),
        ("--n-samples-per-prompt", "8"),
        ("--tensor-model-parallel-size", "2"),
        ("--rollout-max-response-len", "2048"),
        ("--rollout-num-gpus", "2"),
        ("--eps-clip", "0.1"),  # not a run.sh option: yours replaces run.sh's 0.2
    ]:
        assert argv.count(flag) == 1 and d.flag(flag) == value, flag
    assert argv.count("--use-fault-tolerance") == 1 and d.flag("--seed") == "5"
    assert d.flag("--global-batch-size") == str(32 * 8)  # checked and used as --n-samples
    assert "--sequence-parallel" in argv  # as --tp 2 emits it
    assert any(n.startswith("taken as run.sh's options (checked): --rollout") for n in d.notes)
    assert "--eps-clip 0.2 replaced by yours after `--`" in d.notes
    # slime's --hf-checkpoint after `--` is --model: resolved and checked like it
    args = base_args(world, slime, "--dry-run")
    at = args.index("--model")
    model = args.pop(at + 1)
    args.pop(at)
    d = DryRun(run_sh(*args, "--", "--hf-checkpoint", model).stdout)
    assert d.flag("--hf-checkpoint") == str(world["model"].resolve()) == d.flag("--load")
    assert d.train_argv.count("--hf-checkpoint") == 1 and d.check("model").startswith("ok")


def test_slime_flags_after_dashdash_cannot_contradict_run_sh(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    line = refused(world, slime, "--mode", "async", "--", "--colocate")
    assert "--mode async" in line and "cannot --colocate" in line
    assert "--temperature nan: must be > 0" in refused(
        world, slime, "--", "--rollout-temperature", "nan"
    )
    line = refused(world, slime, "--temperature", "0.7", "--", "--rollout-temperature", "0.9")
    assert line == (
        "run.sh: --temperature 0.7 and --rollout-temperature 0.9 after `--` set the same option "
        "(--temperature): give it once"
    )
    line = refused(world, slime, "--tp", "2", "--tensor-model-parallel-size", "4")
    assert "set the same option (--tp)" in line
    line = refused(world, slime, "--", "--actor-num-gpus-per-node", "4")
    assert "--actor-num-gpus-per-node after `--`: run.sh fits the layout" in line
    assert "use --steps-per-rollout" in refused(world, slime, "--", "--global-batch-size", "64")
    assert "the bridge is run.sh's generate function" in refused(
        world, slime, "--", "--custom-generate-function-path", "my.generate"
    )
    assert "run.sh's --mode sets it" in refused(
        world, slime, "--mode", "fully-async", "--", "--rollout-function-path", "my.rollout"
    )


def test_the_readme_maps_every_run_sh_option_to_slimes_flag() -> None:
    from tools.launch.slime_names import SAME_NAMES, SLIME_NAMES

    text = (REPO / "README.md").read_text()
    table = text.split("#### run.sh's options and slime's flags", 1)[1].split("\n\n", 2)[1]
    rows = {}
    for row in table.splitlines()[2:]:
        cells = [c.strip().strip("`") for c in row.strip("|").split("|")]
        rows[cells[0]] = cells[1]
    for option, flag in SLIME_NAMES.items():
        assert rows.get(option) == flag, option
    for option in SAME_NAMES:
        assert rows.get(option) == option, option


# --- what run.sh starts dies with it (issue 21 item 10's sibling on this machine) ---------------
def test_kill_9_of_run_sh_takes_its_env_servers_along(world: dict) -> None:
    import signal
    import sys

    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    program = (
        "import sys\n"
        "from tools.launch.cli import parse_options\n"
        "from tools.launch.execute import execute\n"
        "from tools.launch.plan import build_plan\n"
        "opts, extra = parse_options(sys.argv[1:])\n"
        "plan = build_plan(opts, extra)\n"
        "plan.ray_start_cmd = None\n"
        "plan.submit_cmd = [sys.executable, '-c', 'import time; time.sleep(300)']\n"
        "sys.exit(execute(plan))\n"
    )
    args = base_args(world, slime, "--db", str(world["tmp"] / "s.db"), "--env-servers", "1")
    proc = subprocess.Popen(
        [sys.executable, "-c", program, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        for _ in range(400):
            line = proc.stdout.readline()
            if not line or "submitting Ray job" in line:
                break
        assert "submitting Ray job" in line and port_open(int(world["port"]))
        proc.send_signal(signal.SIGKILL)  # no cleanup runs in run.sh itself
        proc.wait(timeout=30)
        assert _wait_for(lambda: not port_open(int(world["port"])), 60.0), "env server left"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        import shutil

        shutil.rmtree(REPO / "runs" / "launch-test", ignore_errors=True)


def _wait_for(predicate, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False
