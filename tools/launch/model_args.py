"""The Megatron model flags of a run: `--model-args` (a file or a flag string), else slime's own
`scripts/models/<model>.sh`, whose MODEL_ARGS array is read by sourcing it in bash."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from tools.errors import LaunchError


def model_args_script(slime_path: Path, model: str) -> Path | None:
    """slime's scripts/models/<name>.sh for a model id or path (matched case-insensitively)."""
    name = Path(model.rstrip("/")).name.lower()
    models = slime_path / "scripts" / "models"
    if not models.is_dir():
        return None
    for script in sorted(models.glob("*.sh")):
        if script.stem.lower() == name:
            return script
    return None


def read_model_args(script: Path) -> list[str]:
    """The MODEL_ARGS array a slime model script defines, read by sourcing it in bash."""
    cmd = 'source "$1" >/dev/null && printf "%s\\0" "${MODEL_ARGS[@]}"'
    out = subprocess.run(
        ["bash", "-c", cmd, "bash", str(script)], capture_output=True, text=True, timeout=30
    )
    if out.returncode != 0:
        raise LaunchError(
            f"{script}: could not read MODEL_ARGS: "
            f"{out.stderr.strip().splitlines()[-1:] or out.returncode}"
        )
    args = [x for x in out.stdout.split("\0") if x]
    if not args:
        raise LaunchError(f"{script}: defines no MODEL_ARGS array")
    return args


def resolve_model_args(
    model_args: str | None, model_name: str, slime_path: Path | None
) -> tuple[list[str], str]:
    """Megatron model flags (--model-args, else slime's script for `model_name`) and where they
    came from; ([], reason) when they cannot be found yet."""
    if model_args:
        p = Path(model_args)
        if p.is_file():
            return read_model_args(p), str(p)
        return shlex.split(model_args), "--model-args"
    if slime_path is None:
        return [], "unknown until a slime checkout is found"
    script = model_args_script(slime_path, model_name)
    if script is None:
        known = sorted(s.stem for s in (slime_path / "scripts" / "models").glob("*.sh"))
        raise LaunchError(
            f"no Megatron model args for {model_name!r}: slime's scripts/models has no "
            f"{model_name}.sh; pass --model-args FILE_OR_FLAGS "
            f"(known: {', '.join(known[:12])}{' ...' if len(known) > 12 else ''})"
        )
    return read_model_args(script), str(script)
