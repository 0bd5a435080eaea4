"""run.sh's plans against slime's real checkouts (v0.2.2, v0.3.1, main) and the Megatron-LM they
pin.

Each plan (one node sync, async, fully-async, AMD, resume) is dry-run with `--slime-path` a real
slime checkout: the launcher reads that checkout's argument definitions and must report every
emitted flag as defined, and the test checks the same against the real sources itself (slime's
parsers; Megatron's parser as committed in tests/data/slime_flags, rebuilt from the vendored
Megatron when it imports here), the model args coming from slime's own
scripts/models/qwen3-4B.sh. Where slime's CPU imports are installed (SGLang, triton, the shims
of the vendored-slime harness in tests/slime_cpu), slime's real `parse_args` parses every plan.
The two-node plan against a real Ray cluster is in tests/test_cluster.py. The sources come from
$SLIME_VENDOR_DIR or ../shared/vendor; without them these tests skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from launch_world import (
    AMD_SMI_8,
    NVIDIA_SMI_8,
    VENDORED,
    VENDORED_MEGATRON,
    cpu_imports_missing,
    dry_run,
    fake_tools,
    make_world,
    megatron_flags,
    real_parse_missing,
    saved_run,
    slime_parse_args,
    unpack_vendored,
    vendor_missing,
)

from tools.launch.slime_flags import SGLANG_FLAGS, read_flag_list, slime_checkout_flags

pytestmark = [
    pytest.mark.long(2),
    pytest.mark.vendored,
    pytest.mark.skipif(vendor_missing() is not None, reason=str(vendor_missing())),
]

PLANS = {
    "one-node-sync": [],
    "async": ["--mode", "async", "--update-weights-interval", "2"],
    "fully-async": ["--mode", "fully-async"],
    "amd": [],
    "resume": ["--save", "{save}"],
}


@pytest.fixture(scope="module")
def megatron() -> Path:
    return unpack_vendored(VENDORED_MEGATRON)


@pytest.fixture
def world(tmp_path: Path) -> dict:
    return make_world(tmp_path)


def real_flags(slime: Path, version: str) -> set[str]:
    """Every flag the real sources define: slime's parsers (read from the checkout) and the
    Megatron parser of the commit it pins (its committed list; see the test below)."""
    return slime_checkout_flags(slime) | megatron_flags(version) | SGLANG_FLAGS


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("version", VENDORED)
def test_every_plan_emits_only_flags_the_real_slime_defines(
    world: dict, megatron: Path, version: str, plan: str
) -> None:
    slime = unpack_vendored(VENDORED[version])
    save = saved_run(world["tmp"] / "ckpt") if plan == "resume" else None
    args = [a.format(save=save) for a in PLANS[plan]]
    tools = {"nvidia_smi": "exit 9", "amd_smi": AMD_SMI_8} if plan == "amd" else {}
    env = fake_tools(world["tmp"], **(tools or {"nvidia_smi": NVIDIA_SMI_8}))
    d = dry_run(world, slime, "--megatron-path", str(megatron), *args, env=env)

    emitted = d.emitted_flags()
    assert f"all {len(emitted)} emitted flags are defined by this slime/Megatron" in d.notes
    assert emitted - real_flags(slime, version) == set()
    assert not [c for c in d.checks if c.startswith("MISSING") and "Megatron weights" not in c]
    # the model's Megatron flags come from slime's own script for Qwen3-4B
    assert d.flag("--num-layers") == "36" and d.flag("--hidden-size") == "2560"
    assert d.check("GPU layout").startswith("ok")
    if plan in ("async", "fully-async"):
        assert d.train_argv[1] == str(slime / "train_async.py") and "--colocate" not in emitted
    if plan == "fully-async":
        module = d.flag("--rollout-function-path")
        path = module.rsplit(".", 1)[0].replace(".", "/") + ".py"
        roots = [slime, *(Path(p) for p in d.env["PYTHONPATH"].split(":"))]
        assert any((r / path).is_file() for r in roots), f"{module} is not in this slime"
    if plan == "amd":
        assert {"--no-offload-train", "--no-offload-rollout"} <= emitted
        assert d.env["RAY_EXPERIMENTAL_NOSET_HIP_VISIBLE_DEVICES"] == "1"
    if plan == "resume":
        assert d.flag("--load") == str(save) and d.flag("--ref-load") == str(world["model"])


# --- the real parsers -----------------------------------------------------------------------------
def test_committed_megatron_list_is_the_real_parser(megatron: Path) -> None:
    """tests/data/slime_flags/megatron-v0.3.1.txt == the parser of the vendored Megatron commit."""
    if reason := cpu_imports_missing("triton"):
        pytest.skip(reason)
    program = (
        "import argparse, sys\n"
        "from megatron.training.arguments import add_megatron_arguments\n"
        "p = add_megatron_arguments(argparse.ArgumentParser(allow_abbrev=False))\n"
        "print('\\n'.join(sorted({o for a in p._actions for o in a.option_strings})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program],
        env={**os.environ, "PYTHONPATH": str(megatron)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    built = {f for f in out.stdout.split() if f.startswith("--")}
    assert built == read_flag_list(REPO / "tests" / "data" / "slime_flags" / "megatron-v0.3.1.txt")


def plan_argv(world: dict, slime: Path, megatron: Path) -> dict[str, list[str]]:
    """The argv run.sh gives slime's driver for each plan (and one with eval and fault
    tolerance)."""
    save = saved_run(world["tmp"] / "ckpt")
    eval_file = world["tasks"].with_name("eval_" + world["tasks"].name)
    eval_file.write_text(world["tasks"].read_text())
    nvidia = fake_tools(world["tmp"] / "nv", nvidia_smi=NVIDIA_SMI_8)
    amd = fake_tools(world["tmp"] / "amd", nvidia_smi="exit 9", amd_smi=AMD_SMI_8)
    plans = {
        "one-node-sync": ([], nvidia),
        "async": (
            ["--mode", "async", "--fault-tolerance", "--update-weights-interval", "2"],
            nvidia,
        ),
        "fully-async": (["--mode", "fully-async"], nvidia),
        "amd": ([], amd),
        "resume": (["--save", str(save)], nvidia),
    }
    out = {}
    for name, (args, env) in plans.items():
        d = dry_run(world, slime, "--megatron-path", str(megatron), *args, env=env)
        out[name] = d.train_argv[2:]
    return out


@pytest.mark.parametrize("version", ["v0.3.1", "main"])
def test_slimes_real_parse_args_accepts_every_plan(
    world: dict, megatron: Path, version: str
) -> None:
    """slime v0.2.2 is left out: it pins another Megatron commit than the vendored one."""
    if reason := real_parse_missing():
        pytest.skip(reason)
    parsed = slime_parse_args(
        plan_argv(world, unpack_vendored(VENDORED[version]), megatron), version, world
    )
    assert not {k: v["error"] for k, v in parsed.items() if "error" in v}
    sync, asy, fa = parsed["one-node-sync"], parsed["async"], parsed["fully-async"]
    assert (sync["actor_num_nodes"], sync["actor_num_gpus_per_node"]) == (1, 8)
    assert sync["colocate"] and sync["offload_train"] and sync["offload_rollout"]
    assert sync["eval_interval"] == 20 and sync["lr"] == 1e-6
    assert sync["custom_generate_function_path"] == "bridge.generate.generate"
    assert not asy["colocate"] and asy["rollout_num_gpus"] == 4 and asy["use_fault_tolerance"]
    assert asy["update_weights_interval"] == 2
    # the bridge's wrapper of slime's fully-async rollout, and an eval function that works there
    assert fa["rollout_function_path"] == "bridge.fully_async.generate_rollout_fully_async"
    assert fa["eval_function_path"] == "bridge.fully_async.eval_rollout"
    assert sync["eval_function_path"] == sync["rollout_function_path"]  # slime's default
    amd = parsed["amd"]
    assert amd["colocate"] and not amd["offload_train"] and not amd["offload_rollout"]
    assert parsed["resume"]["load"] == str(world["tmp"] / "ckpt")
    assert parsed["resume"]["ref_load"] == str(world["model"])
