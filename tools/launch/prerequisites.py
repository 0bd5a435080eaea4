"""What run.sh needs before it can train, each found or named with the command that fixes it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from contract.config import TrainConfig, is_hosted, load_config
from contract.errors import ConfigError

SLIME_CLONE = "git clone https://github.com/THUDM/slime.git"
MEGATRON_CLONE = "git clone https://github.com/NVIDIA/Megatron-LM.git"


@dataclass
class Check:
    """One prerequisite: `ok`, what was found (`detail`), and when missing, how to fix it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        if self.ok:
            return f"ok       {self.name}: {self.detail}"
        return f"MISSING  {self.name}: {self.detail}" + (f" -> fix: {self.fix}" if self.fix else "")


def check_slime(slime_path: str | None) -> Check:
    """A slime checkout: --slime-path, else $SLIME_PATH, with train.py and
    slime/utils/arguments.py."""
    fix = (
        f"{SLIME_CLONE} && bash run.sh --slime-path ./slime ... (or export "
        "SLIME_PATH=/path/to/slime)"
    )
    if not slime_path:
        return Check("slime", False, "no slime checkout given (--slime-path or SLIME_PATH)", fix)
    p = Path(slime_path)
    missing = [f for f in ("train.py", "slime/utils/arguments.py") if not (p / f).is_file()]
    if missing:
        return Check("slime", False, f"{p} is not a slime checkout (no {', '.join(missing)})", fix)
    return Check("slime", True, str(p.resolve()))


def check_no_gpus(ray_cluster: str | None = None) -> Check:
    """The GPUs line when none were found: on a Ray cluster (named "Ray at URL"), or on this
    machine."""
    if ray_cluster:
        return Check(
            "GPUs",
            False,
            f"{ray_cluster} reports no GPUs",
            "add GPU nodes to it (ray start --address HEAD:PORT on each) or pass another "
            "--ray-address",
        )
    return Check(
        "GPUs",
        False,
        "no GPU found: nvidia-smi, amd-smi and rocm-smi list none (no GPU or no driver here)",
        "run on a machine with NVIDIA or AMD GPUs and drivers, or pass --ray-address of a GPU "
        "cluster; without GPUs use `bash run.sh --rollout-only --engine-url URL` "
        "(or --engine local) instead",
    )


def check_megatron(megatron_path: str | None) -> Check:
    """Megatron-LM for the megatron backend: --megatron-path / $MEGATRON_PATH, or importable."""
    fix = (
        f"{MEGATRON_CLONE} && bash run.sh --megatron-path ./Megatron-LM ... (or export "
        "MEGATRON_PATH=...)"
    )
    if megatron_path:
        p = Path(megatron_path)
        if (p / "megatron" / "training").is_dir():
            return Check("Megatron-LM", True, str(p.resolve()))
        return Check("Megatron-LM", False, f"{p} has no megatron/training", fix)
    probe = (
        "import importlib.util as u; s = u.find_spec('megatron'); "
        "print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')"
    )
    try:
        out = subprocess.run(["python3", "-c", probe], capture_output=True, text=True, timeout=60)
        found = out.stdout.strip()
        if out.returncode == 0 and found and (Path(found) / "training").is_dir():
            return Check("Megatron-LM", True, f"importable from {Path(found).parent}")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return Check(
        "Megatron-LM", False, "not given (--megatron-path or MEGATRON_PATH) and not importable", fix
    )


def check_task_file(
    path: str, config_path: str, what: str = "task file", flag: str = "--output"
) -> Check:
    p = Path(path)
    if p.is_file() and p.stat().st_size > 0:
        return Check(what, True, str(p.resolve()))
    state = "is empty" if p.is_file() else "not found"
    return Check(
        what, False, f"{p} {state}", f"python prepare_tasks.py --config {config_path} {flag} {p}"
    )


def check_config(path: str) -> tuple[Check, TrainConfig | None]:
    try:
        cfg = load_config(path)
    except ConfigError as e:
        return Check(
            "config",
            False,
            str(e),
            "fix the file named above (see train_config.yaml for the schema)",
        ), None
    return Check("config", True, f"{path} ({', '.join(cfg.environments)})"), cfg


def _env_var_name(secret: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", secret).upper()


def required_api_keys(cfg: TrainConfig) -> list[str]:
    """Environment variables the hosted envs of `cfg` need: OPENREWARD_API_KEY and null-valued
    secrets."""
    names: list[str] = []
    for env_name, env in cfg.environments.items():
        if is_hosted(env_name) and "OPENREWARD_API_KEY" not in names:
            names.append("OPENREWARD_API_KEY")
        for secret, value in env.secrets.items():
            var = _env_var_name(secret)
            if value is None and var not in names:
                names.append(var)
    if (
        cfg.trajectories.enabled
        and cfg.trajectories.target == "openreward"
        and "OPENREWARD_API_KEY" not in names
    ):
        names.append("OPENREWARD_API_KEY")
    return names


def check_api_keys(cfg: TrainConfig, environ: dict[str, str] | None = None) -> Check:
    env: Mapping[str, str] = os.environ if environ is None else environ
    needed = required_api_keys(cfg)
    missing = [n for n in needed if not env.get(n)]
    if missing:
        return Check(
            "API keys",
            False,
            f"{', '.join(missing)} not set (needed by hosted environments in the config)",
            " && ".join(f"export {n}=..." for n in missing),
        )
    return Check(
        "API keys", True, ", ".join(needed) if needed else "none needed (local environments only)"
    )


def ray_executable() -> str | None:
    """The `ray` command: on PATH, else beside this Python (a venv that was not activated)."""
    exe = shutil.which("ray")
    if exe is None:
        beside = Path(sys.executable).parent / "ray"
        exe = str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None
    return exe


def check_ray() -> Check:
    exe = ray_executable()
    if exe is None:
        return Check(
            "ray",
            False,
            "the `ray` command is not on PATH",
            "pip install 'ray[default]>=2.30,<3' (or pip install -e '.[ray]')",
        )
    return Check("ray", True, exe)


def check_train_backend(backend: str, supported: list[str], slime_path: str) -> Check:
    if backend in supported:
        return Check(
            "train backend", True, f"{backend} (this slime supports: {', '.join(supported)})"
        )
    hint = (
        "slime removed --train-backend fsdp in v0.2.3; use --train-backend megatron, "
        "or check out slime v0.2.2 (git -C SLIME checkout v0.2.2)"
        if backend == "fsdp"
        else f"use one of: {', '.join(supported)}"
    )
    return Check(
        "train backend",
        False,
        f"the slime at {slime_path} does not support --train-backend {backend} "
        f"(it supports: {', '.join(supported)})",
        hint,
    )


def check_checkpoint(flag: str, path: str) -> Check:
    """A checkpoint directory an option names (--load, --ref-load): slime reads it from disk."""
    if Path(path).is_dir():
        return Check("checkpoint", True, f"{flag} {path}")
    return Check(
        "checkpoint",
        False,
        f"{flag} {path} is not a directory",
        f"pass an existing checkpoint directory to {flag}, or drop {flag}",
    )


def check_megatron_weights(load: str, slime_path: Path, model_script: str | None) -> Check:
    """Megatron reads HF weights directly only in slime versions with hf_to_megatron (v0.3+)."""
    p = Path(load)
    if (p / "latest_checkpointed_iteration.txt").is_file():
        return Check("Megatron weights", True, f"{p} is a Megatron checkpoint")
    if (slime_path / "slime/backends/megatron_utils/hf_to_megatron").is_dir():
        return Check(
            "Megatron weights", True, f"{p} is loaded as a Hugging Face checkpoint by this slime"
        )
    out = f"{p.resolve()}_torch_dist"
    args = f"source {model_script} && " if model_script else ""
    return Check(
        "Megatron weights",
        False,
        f"this slime cannot load the Hugging Face checkpoint {p} into Megatron",
        f"cd {slime_path} && {args}PYTHONPATH=$MEGATRON_PATH python "
        "tools/convert_hf_to_torch_dist.py "
        f"${{MODEL_ARGS[@]}} --hf-checkpoint {p.resolve()} --save {out} && bash run.sh --load "
        f"{out} ...",
    )
