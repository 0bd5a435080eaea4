"""Launcher test helpers: slime checkouts built from the flag lists, a world to launch in, dry-run
parsing.

The slime checkout `make_slime` builds defines exactly the flags of tests/data/slime_flags/
(extracted from slime v0.2.2 / v0.3.1 / main and the Megatron commits they pin), with the
drivers and the fully-async rollout where that version has them, so the launcher's own flag
check and the tests' check against the committed lists agree.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from conftest import REPO, free_port
from slime_vendor import MEGATRON, VENDOR_ENV, unpack, vendor_dir
from slime_vendor import VERSIONS as SLIME_TARBALLS

from tools.launch.slime_flags import SGLANG_FLAGS, read_flag_list

DATA = REPO / "tests" / "data" / "slime_flags"
VERSIONS = ("v0.2.2", "v0.3.1", "main")
# The Megatron-LM commit each slime pins (main's build_conda.sh pins v0.3.1's commit).
MEGATRON_OF = {"v0.2.2": "v0.2.2", "v0.3.1": "v0.3.1", "main": "v0.3.1"}


def slime_flags(version: str) -> set[str]:
    return read_flag_list(DATA / f"slime-{version}.txt")


def megatron_flags(version: str) -> set[str]:
    return read_flag_list(DATA / f"megatron-{MEGATRON_OF[version]}.txt")


def known_flags(version: str, backend: str = "megatron") -> set[str]:
    known = slime_flags(version) | SGLANG_FLAGS
    return known | megatron_flags(version) if backend == "megatron" else known


def make_slime(root: Path, version: str, drop: tuple[str, ...] = ()) -> Path:
    """A slime checkout whose parsers define the flags slime `version` defines (minus `drop`),
    with the drivers and the fully-async rollout where that version has them."""
    flags = sorted(slime_flags(version) - set(drop) - {"--train-backend"})
    backends = ["megatron", "fsdp"] if version == "v0.2.2" else ["megatron"]
    src = ["def add_arguments(parser):"] + [f"    parser.add_argument({f!r})" for f in flags]
    src.append(
        f"    parser.add_argument('--train-backend', type=str, choices={backends!r}, "
        "default='megatron')"
    )
    (root / "slime" / "utils").mkdir(parents=True)
    (root / "slime" / "utils" / "arguments.py").write_text("\n".join(src) + "\n")
    (root / "train.py").write_text("")
    (root / "train_async.py").write_text("")
    (root / "examples" / "fully_async").mkdir(parents=True)
    (root / "examples" / "fully_async" / "fully_async_rollout.py").write_text("")
    if version != "v0.2.2":  # v0.3 loads Hugging Face weights into Megatron itself
        (root / "slime" / "backends" / "megatron_utils" / "hf_to_megatron").mkdir(parents=True)
        (root / "slime" / "rollout").mkdir(parents=True)
        (root / "slime" / "rollout" / "fully_async_rollout.py").write_text("")
    (root / "scripts" / "models").mkdir(parents=True)
    (root / "scripts" / "models" / "qwen3-4B.sh").write_text(
        'MODEL_ARGS=(\n   --num-layers 36\n   --hidden-size 2560\n   --normalization "RMSNorm"\n'
        '   --rotary-base "${MODEL_ARGS_ROTARY_BASE:-1000000}"\n   --qk-layernorm\n)\n'
    )
    return root


def make_world(tmp_path: Path) -> dict[str, Path | str]:
    """A model dir, Megatron dir, config (local gsm8k on a port nothing serves), a task file and a
    Ray address nothing answers at (so run.sh plans its own head, whatever else runs here)."""
    model = tmp_path / "models" / "Qwen3-4B"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    megatron = tmp_path / "Megatron-LM"
    (megatron / "megatron" / "training").mkdir(parents=True)
    port = free_port()
    config = tmp_path / "train_config.yaml"
    config.write_text(
        f"environments:\n  gsm8k:\n    max_turns: 4\nenv_server: http://127.0.0.1:{port}\n"
        "run_name: launch-test\n"
    )
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        json.dumps(
            {
                "prompt": [{"role": "user", "content": "q"}],
                "label": "1",
                "metadata": {"env": "gsm8k", "split": "train", "index": 0},
                "tools": [],
            }
        )
        + "\n"
    )
    return {
        "tmp": tmp_path,
        "model": model,
        "megatron": megatron,
        "config": config,
        "tasks": tasks,
        "port": str(port),
        "ray": f"http://127.0.0.1:{free_port()}",
    }


def run_sh(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    base = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "SLIME_PATH",
            "MEGATRON_PATH",
            "WANDB_API_KEY",
            "OPENREWARD_API_KEY",
            "TRAIN_CONFIG",
            "RAY_ADDRESS",
            "ENV_SERVER_API_KEY",
            "HIP_VISIBLE_DEVICES",
        )
    }
    return subprocess.run(
        ["bash", str(REPO / "run.sh"), *args],
        cwd=cwd or REPO,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def base_args(world: dict, slime: Path, *extra: str) -> list[str]:
    return [
        # a port nothing answers on: run.sh plans its own head, whatever else runs here
        "--ray-address",
        world["ray"],
        "--model",
        str(world["model"]),
        "--config",
        str(world["config"]),
        "--task-data",
        str(world["tasks"]),
        "--slime-path",
        str(slime),
        "--megatron-path",
        str(world["megatron"]),
        *extra,
    ]


class DryRun:
    """The parts of a `--dry-run` printout."""

    def __init__(self, text: str) -> None:
        self.text = text
        lines = text.splitlines()
        self.checks = [ln for ln in lines if ln.startswith(("ok ", "MISSING "))]
        self.env = {}
        for ln in lines:
            if ln.startswith("export "):
                k, _, v = ln[len("export ") :].partition("=")
                self.env[k] = shlex.split(v)[0] if v else ""
        start = next(
            i for i, ln in enumerate(lines) if ln.startswith("# write ") and ln.endswith(".sh:")
        )
        script = []
        for ln in lines[start + 1 :]:
            if not ln.startswith("    "):
                break
            script.append(ln[4:])
        body = "\n".join(script)
        self.script = body
        argv = shlex.split(body.split("\nexec ", 1)[1].replace("\\\n", " "))
        # on a Ray cluster the job's entrypoint is tools.launch.ray_job ... -- <driver>
        self.wrapper: list[str] = []
        if "tools.launch.ray_job" in argv[:3]:
            i = argv.index("--")
            self.wrapper, argv = argv[:i], argv[i + 1 :]
        self.train_argv = argv
        self.submit = shlex.split(next(ln for ln in lines if " job submit " in ln))
        self.notes = [ln[len("# note: ") :] for ln in lines if ln.startswith("# note: ")]
        self.commands = [
            ln for ln in lines if not ln.startswith(("#", "    ", "ok ", "MISSING ", "export "))
        ]

    def flag(self, name: str) -> str:
        i = self.train_argv.index(name)
        return self.train_argv[i + 1]

    def values(self, name: str, n: int) -> list[str]:
        i = self.train_argv.index(name)
        return self.train_argv[i + 1 : i + 1 + n]

    def emitted_flags(self, extra: list[str] = ()) -> set[str]:
        argv = self.train_argv[2 : len(self.train_argv) - len(extra)]
        return {a for a in argv if a.startswith("--")}

    def check(self, name: str) -> str:
        return next(c for c in self.checks if c.split(None, 1)[1].startswith(name + ":"))

    def command(self, word: str) -> str:
        """The first command line that mentions `word`."""
        return next(c for c in self.commands if word in c)

    def ray_start(self) -> str | None:
        return next((c for c in self.commands if " start --head " in c), None)


def dry_run(world: dict, slime: Path, *extra: str, env: dict[str, str] | None = None) -> DryRun:
    """The printout of a dry run, which exits 2 exactly when a prerequisite is MISSING."""
    out = run_sh(*base_args(world, slime, "--dry-run", *extra), env=env)
    assert out.stdout.strip(), out.stderr  # refused before planning
    d = DryRun(out.stdout)
    missing = [c for c in d.checks if c.startswith("MISSING")]
    assert out.returncode == (2 if missing else 0), (out.returncode, missing, out.stderr)
    return d


def refused(world: dict, slime: Path, *extra: str) -> str:
    """The one line a refused launch prints (exit 2, nothing on stdout)."""
    out = run_sh(*base_args(world, slime, *extra))
    assert out.returncode == 2 and not out.stdout.strip(), (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("run.sh: "), lines
    return lines[0]


def missing_lines(out: subprocess.CompletedProcess) -> list[str]:
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert not out.stdout.strip(), "nothing may run when prerequisites are missing"
    return [ln for ln in out.stderr.splitlines() if "MISSING" in ln]


def line_for(lines: list[str], name: str) -> str:
    hits = [ln for ln in lines if f"MISSING  {name}:" in ln]
    assert hits, f"no MISSING line for {name} in {lines}"
    return hits[0]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


# --- the machine and the checkpoints a plan sees --------------------------------------------------
def fake_tools(root: Path, **scripts: str) -> dict[str, str]:
    """A PATH whose first directory holds the given shell scripts (tool name -> body)."""
    bin_dir = root / "fake-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in scripts.items():
        p = bin_dir / name.replace("_", "-")
        p.write_text("#!/bin/sh\n" + body + "\n")
        p.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


AMD_SMI_8 = (
    'if [ "$1 $2" = "list --json" ]; then echo \'['
    + ", ".join(f'{{"gpu": {i}, "bdf": "0000:0{i}:00.0"}}' for i in range(8))
    + "]'; else exit 2; fi"
)


def saved_run(root: Path, iteration: str = "7") -> Path:
    """A --save directory as slime leaves it: the tracker and the iteration it names."""
    root.mkdir(parents=True)
    (root / "latest_checkpointed_iteration.txt").write_text(iteration + "\n")
    step = "release" if iteration == "release" else f"iter_{int(iteration):07d}"
    (root / step).mkdir()
    (root / step / "common.pt").write_text("")
    return root


NVIDIA_SMI_8 = "\n".join(f'echo "GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i})"' for i in range(8))


# --- slime's real checkouts (../shared/vendor) ------------------------------------------------
# slime's vendored sources: tests/slime_vendor.py finds and unpacks them (one copy of that logic)
VENDORED = {
    "v0.2.2": SLIME_TARBALLS["v0.2.2"],
    "v0.3.1": SLIME_TARBALLS["v0.3.1"],
    "main": SLIME_TARBALLS["main-624b824"],
}
VENDORED_MEGATRON = MEGATRON  # the commit slime v0.3.1 and main pin
unpack_vendored = unpack


def vendor_missing() -> str | None:
    """Why slime's real checkouts are not here (a fresh clone elsewhere), or None."""
    absent = [
        n for n in (*VENDORED.values(), VENDORED_MEGATRON) if not (vendor_dir() / n).is_file()
    ]
    if absent:
        return (
            f"slime's sources not found in {vendor_dir()} (set {VENDOR_ENV}): {', '.join(absent)}"
        )
    return None


# --- slime's real parse_args (needs slime's CPU imports and the harness's shims) ----------------
SLIME_CPU_SHIMS = REPO / "tests" / "slime_cpu"  # the vendored-slime harness's CPU shims (issue 9)
SLIME_CPU_MODULES = ("triton", "sglang", "sglang_router", "PIL")
# Qwen3-4B's published config.json: slime checks the Megatron model args against it
QWEN3_4B = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000,
    "tie_word_embeddings": True,
    "vocab_size": 151936,
    "hidden_act": "silu",
    "attention_bias": False,
    "torch_dtype": "bfloat16",
}


def cpu_imports_missing(*modules: str) -> str | None:
    import importlib.util

    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"not installed here: {', '.join(absent)} (slime's CPU imports)" if absent else None


def real_parse_missing() -> str | None:
    """Why slime's real parse_args cannot run here, or None."""
    if reason := vendor_missing() or cpu_imports_missing(*SLIME_CPU_MODULES):
        return reason
    if not (SLIME_CPU_SHIMS / "slime_cpu_shims.py").is_file():
        return f"needs the vendored-slime harness's CPU shims ({SLIME_CPU_SHIMS}, issue 9)"
    return None


def slime_parse_args(plans: dict[str, list[str]], version: str, world: dict) -> dict[str, dict]:
    """slime `version`'s real parse_args on each plan's driver argv (tests/slime_parse_args.py);
    the world's model gets Qwen3-4B's config, which slime checks the model args against."""
    (world["model"] / "config.json").write_text(json.dumps(QWEN3_4B))
    path = world["tmp"] / "plans.json"
    path.write_text(json.dumps(plans))
    pythonpath = [
        SLIME_CPU_SHIMS,
        unpack_vendored(VENDORED[version]),
        unpack_vendored(VENDORED_MEGATRON),
        REPO,
    ]
    out = subprocess.run(
        [sys.executable, str(REPO / "tests" / "slime_parse_args.py"), str(path)],
        env={**os.environ, "PYTHONPATH": ":".join(map(str, pythonpath)), "WANDB_MODE": "offline"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, (out.stdout[-2000:], out.stderr[-3000:])
    return json.loads(line[len("RESULT ") :])


_LEAVES_TRAJECTORIES = """
import asyncio, os, signal, sys, time
sys.path[:0] = [{repo!r}, {tests!r}]
from test_trajectory_sink import make_trajectory
from bridge.trajectory_sink import make_sink
from contract.config import load_config
cfg = load_config(os.environ["TRAIN_CONFIG"])
async def main():
    sink = make_sink(cfg)
    for i in range({n}):
        sink.submit(make_trajectory(i, run=cfg.run_name))
    time.sleep({dies_after_s})
    os.kill(os.getpid(), signal.SIGKILL)  # in its journal, not sent: a rollout worker killed
asyncio.run(main())
"""


def leaves_trajectories(n: int = 12, dies_after_s: float = 0.0) -> str:
    """Python source of a rollout worker killed with its job: it submits `n` episodes to the
    sink of $TRAIN_CONFIG (journaled before submit() returns), then dies by SIGKILL after
    `dies_after_s`, none of them sent (tools/launch/leftovers.py delivers them)."""
    return _LEAVES_TRAJECTORIES.format(
        repo=str(REPO), tests=str(REPO / "tests"), n=n, dies_after_s=dies_after_s
    )
