"""`bash run.sh --no-train` and `--engine-addrs` as planned (dry runs against slime checkouts built
from the flag lists; tests/test_loop.py runs them for real): engines that already run, checked
before anything starts; slime's driver without training; what a machine without a GPU needs from
outside slime (the CPU shims on the job's PYTHONPATH, a head that declares the idle actor's GPU,
this Python for Ray's workers); slime's dumps; the data position resumed after a restart."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from launch_world import (
    NVIDIA_SMI_8,
    base_args,
    dry_run,
    fake_tools,
    line_for,
    make_slime,
    make_world,
    missing_lines,
    port_open,
    refused,
    run_sh,
)
from sglang_stub import SGLangStub, Turn

from tools.launch.no_train import CPU_SITE, ResumeMarker, write_resume_marker

NO_GPU = {"nvidia_smi": "exit 9", "amd_smi": "exit 9", "rocm_smi": "exit 9"}


@pytest.fixture
def world(tmp_path: Path) -> dict:
    return make_world(tmp_path)


@pytest.fixture(scope="module")
def engine() -> Iterator[SGLangStub]:
    """An engine that answers /server_info (SGLang's own arguments are not needed here)."""
    with SGLangStub(script=[Turn([1])], server_args=dict) as stub:
        yield stub


def _cpu(world: dict) -> dict[str, str]:
    return fake_tools(world["tmp"] / "cpu", **NO_GPU)


def test_no_train_on_a_machine_without_gpus_runs_slimes_loop_on_the_cpu(
    world: dict, engine: SGLangStub
) -> None:
    slime = make_slime(world["tmp"] / "slime", "main")
    addr = engine.url.removeprefix("http://")
    d = dry_run(world, slime, "--no-train", "--engine-addrs", addr, env=_cpu(world))
    assert d.check(f"engine {addr}").startswith(f"ok       engine {addr}: SGLang serving")
    assert "none needed" in d.check("GPUs") and "CPU import shims" in d.check("GPUs")
    # slime's driver, rollouts only, on the engines that run: no rollout GPUs, one idle actor
    assert "--debug-rollout-only" in d.train_argv
    assert d.values("--rollout-external-engine-addrs", 1) == [addr]
    assert (d.flag("--actor-num-nodes"), d.flag("--actor-num-gpus-per-node")) == ("1", "1")
    assert "--rollout-num-gpus" not in d.train_argv and "--colocate" not in d.train_argv
    # what a machine without a GPU needs from outside slime
    assert d.env["PYTHONPATH"].split(":")[0] == str(CPU_SITE)
    assert (CPU_SITE / "sitecustomize.py").is_file()
    head = d.ray_start()
    assert head is not None and "--num-gpus 1" in head and "--num-cpus" in head
    ray_beside = str(Path(sys.executable).parent / "ray")
    assert head.split()[0] == ray_beside and d.submit[0] == ray_beside
    assert d.train_argv[0] == sys.executable  # Ray's workers and the driver: this Python
    assert d.emitted_flags() <= set(d.train_argv)


def test_engines_are_checked_before_anything_starts(world: dict, engine: SGLangStub) -> None:
    slime = make_slime(world["tmp"] / "slime", "main")
    dead = f"127.0.0.1:{world['port']}"  # nothing listens there
    good = engine.url.removeprefix("http://")
    out = run_sh(
        *base_args(world, slime, "--no-train", "--engine-addrs", f"{good},{dead}"), env=_cpu(world)
    )
    line = line_for(missing_lines(out), f"engine {dead}")
    assert "no SGLang engine answers /server_info" in line
    assert "tools.engines.local_engine" in line and "sglang.launch_server" in line
    assert not any(good in ln for ln in missing_lines(out))
    assert not port_open(int(world["ray"].rsplit(":", 1)[1]))  # no Ray head was started


@pytest.mark.parametrize("value", ["localhost", "127.0.0.1:x", "http://h:1/v1", ",", "h:0:1"])
def test_an_engine_address_that_is_not_host_port_is_one_line(world: dict, value: str) -> None:
    slime = make_slime(world["tmp"] / "slime", "main")
    line = refused(world, slime, "--no-train", "--engine-addrs", value)
    assert "--engine-addrs" in line and ("HOST:PORT" in line or "names no engine" in line)


def test_dump_rollouts_passes_slimes_per_rollout_dumps(world: dict, engine: SGLangStub) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    dumps = world["tmp"] / "dumps"
    addr = engine.url.removeprefix("http://")
    d = dry_run(
        world,
        slime,
        "--no-train",
        "--engine-addrs",
        addr,
        "--dump-rollouts",
        str(dumps),
        env=_cpu(world),
    )
    assert d.flag("--save-debug-rollout-data") == str(dumps.resolve() / "rollout_{rollout_id}.pt")


def test_no_train_resumes_the_data_position_after_the_last_save(
    world: dict, engine: SGLangStub
) -> None:
    """slime saves the data position under --save but, without training, never resumes from it
    by itself: run.sh points --load at a marker directory and passes the next rollout id."""
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    save = world["tmp"] / "save"
    (save / "rollout").mkdir(parents=True)
    for i in (0, 1, 3):
        (save / "rollout" / f"global_dataset_state_dict_{i}.pt").write_bytes(b"")
    addr = engine.url.removeprefix("http://")
    args = ["--no-train", "--engine-addrs", addr, "--save", str(save), "--num-rollout", "10"]
    d = dry_run(world, slime, *args, env=_cpu(world))
    assert d.flag("--start-rollout-id") == "4"
    marker = Path(d.flag("--load"))
    assert marker.name.endswith(".resume") and not marker.exists()  # written when it runs
    assert d.flag("--ref-load") == str(world["model"])
    assert any("resuming the data position after rollout 3" in n for n in d.notes)
    assert f"link {marker}/rollout -> {(save / 'rollout').resolve()}" in d.text
    assert (d.flag("--save"), d.flag("--save-interval")) == (str(save), "20")
    fresh = dry_run(world, slime, *args, "--no-resume", env=_cpu(world))
    assert "--start-rollout-id" not in fresh.train_argv
    assert fresh.flag("--load") == str(world["model"])
    line = refused(world, slime, *args[:-1], "4")
    assert "already holds rollout 3 of --num-rollout 4" in line
    line = refused(world, slime, "--no-train", "--engine-addrs", addr, "--resume")
    assert "--resume" in line and "holds no saved data position" in line


def test_the_resume_marker_is_what_slimes_parse_args_and_data_source_read(tmp_path: Path) -> None:
    states = tmp_path / "save" / "rollout"
    states.mkdir(parents=True)
    (states / "global_dataset_state_dict_1.pt").write_bytes(b"state")
    marker = ResumeMarker(tmp_path / "run.resume", 1, states)
    for _ in range(2):  # a restart writes it again
        write_resume_marker(marker)
    assert (marker.path / "latest_checkpointed_iteration.txt").read_text() == "1\n"
    assert (marker.path / "rollout" / "global_dataset_state_dict_1.pt").read_bytes() == b"state"


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--colocate"], "--no-train trains nothing"),
        (["--mode", "async", "--update-weights-interval", "2"], "never updates weights"),
    ],
)
def test_no_train_refuses_what_it_cannot_use(world: dict, extra: list[str], words: str) -> None:
    slime = make_slime(world["tmp"] / "slime", "main")
    assert words in refused(world, slime, "--no-train", *extra)


def test_engine_addrs_for_training_give_the_actor_every_gpu(
    world: dict, engine: SGLangStub
) -> None:
    slime = make_slime(world["tmp"] / "slime", "main")
    addr = engine.url.removeprefix("http://")
    gpus = fake_tools(world["tmp"] / "nv", nvidia_smi=NVIDIA_SMI_8)
    d = dry_run(world, slime, "--engine-addrs", addr, env=gpus)
    assert (d.flag("--actor-num-nodes"), d.flag("--actor-num-gpus-per-node")) == ("1", "8")
    assert d.values("--rollout-external-engine-addrs", 1) == [addr]
    assert "--rollout-num-gpus" not in d.train_argv and "--colocate" not in d.train_argv
    assert "--debug-rollout-only" not in d.train_argv
    assert str(CPU_SITE) not in d.env["PYTHONPATH"]  # real GPUs: no CPU shims
    line = refused(world, slime, "--engine-addrs", addr, "--colocate")
    assert "engines run elsewhere" in line


def test_no_train_on_gpus_gives_slimes_engines_every_gpu(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")
    gpus = fake_tools(world["tmp"] / "nv", nvidia_smi=NVIDIA_SMI_8)
    for mode in ("sync", "fully-async"):
        d = dry_run(world, slime, "--no-train", "--mode", mode, env=gpus)
        # slime's --debug-rollout-only turns the colocated layout into engines on every GPU
        assert "--debug-rollout-only" in d.train_argv and "--colocate" in d.train_argv
        assert d.flag("--actor-num-gpus-per-node") == "8"
        assert str(CPU_SITE) not in d.env["PYTHONPATH"]
