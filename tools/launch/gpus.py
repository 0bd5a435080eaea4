"""The GPUs of this machine: vendor and count, from nvidia-smi, amd-smi or rocm-smi.

The launcher asks this only when it starts Ray itself on this machine; on an existing Ray
cluster the GPUs come from Ray's own view (`tools.launch.cluster`). Each tool is run with a
timeout and its failure counts as "not found", so a broken driver reads like a missing one.

What AMD GPUs change in a launch (from slime's scripts/run-qwen3-4B-amd.sh and its AMD guide)
lives here too: the ROCm environment variables and the slime/Megatron flags.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from enum import Enum


class GpuVendor(str, Enum):
    """Who made the GPUs: decides the ROCm environment and flags."""

    NVIDIA = "nvidia"
    AMD = "amd"


@dataclass(frozen=True)
class LocalGpus:
    """The GPUs one tool listed on this machine."""

    vendor: GpuVendor
    count: int
    tool: str
    """The command that listed them (shown in the prerequisite line)."""


# ROCm: Ray must not narrow HIP_VISIBLE_DEVICES per worker (slime's AMD script: "Must set to 1").
ROCM_JOB_ENV = {"RAY_EXPERIMENTAL_NOSET_HIP_VISIBLE_DEVICES": "1"}
# Colocated on ROCm, slime's AMD script keeps both sides resident instead of offloading them.
AMD_COLOCATE_FLAGS = ("--no-offload-train", "--no-offload-rollout")
# Megatron on ROCm: gradient-accumulation fusion needs apex (slime's AMD script disables it).
AMD_MEGATRON_FLAGS = ("--no-gradient-accumulation-fusion",)


def _run(argv: list[str]) -> str | None:
    """stdout of a tool that exited 0, else None (missing, failing or hanging)."""
    exe = shutil.which(argv[0])
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _nvidia() -> int | None:
    out = _run(["nvidia-smi", "-L"])
    if out is None:
        return None
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def _amd_smi() -> int | None:
    """`amd-smi list --json` (a list of {"gpu": i, ...}); older text output: "GPU: i" lines."""
    out = _run(["amd-smi", "list", "--json"])
    if out is not None:
        try:
            data = json.loads(out)
        except ValueError:
            data = None
        if isinstance(data, list):
            return sum(1 for d in data if isinstance(d, dict) and "gpu" in d)
    out = _run(["amd-smi", "list"])
    if out is None:
        return None
    return sum(1 for line in out.splitlines() if re.match(r"GPU:\s*\d+", line.strip()))


def _rocm_smi() -> int | None:
    """`rocm-smi --showid`: lines like "GPU[3]  : Device ID: 0x74a1"."""
    out = _run(["rocm-smi", "--showid"])
    if out is None:
        return None
    return len(set(re.findall(r"^GPU\[(\d+)\]", out, flags=re.MULTILINE)))


def detect_local_gpus() -> LocalGpus | None:
    """This machine's GPUs: the first tool that lists at least one (NVIDIA, then AMD)."""
    for vendor, tool, count in (
        (GpuVendor.NVIDIA, "nvidia-smi", _nvidia),
        (GpuVendor.AMD, "amd-smi", _amd_smi),
        (GpuVendor.AMD, "rocm-smi", _rocm_smi),
    ):
        n = count()
        if n:
            return LocalGpus(vendor, n, tool)
    return None


def vendor_of_accelerator(accelerator_type: str | None) -> GpuVendor:
    """Ray's accelerator type of a node ("AMD-Instinct-MI300X-OAM", "H100", ...) as a vendor."""
    if accelerator_type and accelerator_type.upper().startswith("AMD"):
        return GpuVendor.AMD
    return GpuVendor.NVIDIA
