"""The Ray job run.sh submits: its id, environment (runtime_env env_vars), TRAIN_CONFIG, the
script it runs (the entrypoint wrapper, if any, then slime's driver) and the `ray job submit`
command.

The job's environment is all the job sees: the project (and Megatron) on PYTHONPATH, the
config, the hosted envs' keys (masked in the dry run), and, when the job starts the env servers
on the cluster itself (`tools.launch.ray_job`), what those servers read.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
import uuid
from pathlib import Path

import httpx

from contract.config import TRAIN_CONFIG_ENV, TrainConfig
from tools.launch import prerequisites as pre
from tools.launch.cluster import ClusterView, ray_auth_headers
from tools.launch.env_servers import (
    ENV_SERVER_SECRETS,
    ENV_SERVER_VARS,
    EnvServerPlan,
    Placement,
)
from tools.launch.gpus import ROCM_JOB_ENV


def submission_id() -> str:
    """A new job's id: `slime-envs-<date>-<time>-<6 hex>`."""
    return f"slime-envs-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def job_env(
    pythonpath: list[str],
    train_config: Path,
    cfg: TrainConfig | None,
    environ: dict[str, str],
    use_wandb: bool,
    env_servers_in_job: bool = False,
) -> tuple[dict[str, str], list[str]]:
    """The Ray job's env_vars (project on PYTHONPATH, TRAIN_CONFIG, keys) and which of them are
    secrets; with `env_servers_in_job`, also what the env servers read (they see only this)."""
    env = {
        "PYTHONPATH": ":".join(pythonpath),
        TRAIN_CONFIG_ENV: str(train_config),
        "OPENREWARD_DISABLE_UPDATE_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
        "CUDA_DEVICE_MAX_CONNECTIONS": "1",
    }
    wandb_key = environ.get("WANDB_API_KEY")
    if use_wandb and not wandb_key:
        env["WANDB_MODE"] = "offline"
    if env_servers_in_job:
        env.update({k: environ[k] for k in ENV_SERVER_VARS if environ.get(k)})
    secrets_ = []
    for name in (
        (["WANDB_API_KEY"] if wandb_key else [])
        + (pre.required_api_keys(cfg) if cfg else [])
        + ["ENV_SERVER_API_KEY"]
        + (list(ENV_SERVER_SECRETS) if env_servers_in_job else [])
    ):
        if environ.get(name):
            env[name] = environ[name]
            secrets_.append(name)
    return env, secrets_


def rocm_env(
    view: ClusterView | None, environ: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """(job env, env of a Ray head run.sh starts) on AMD GPUs, as slime's run-qwen3-4B-amd.sh sets
    them."""
    job = dict(ROCM_JOB_ENV)
    if environ.get("HIP_VISIBLE_DEVICES"):
        job["HIP_VISIBLE_DEVICES"] = environ["HIP_VISIBLE_DEVICES"]
    head = dict(job)
    if "HIP_VISIBLE_DEVICES" not in head and view is not None and view.gpu_nodes:
        head["HIP_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(view.gpu_nodes[0].gpus))
    return job, head


def job_config(
    opts: argparse.Namespace, cfg: TrainConfig | None, plan: EnvServerPlan | None, job: Path
) -> tuple[Path, dict | None, list[str]]:
    """The job's TRAIN_CONFIG, the config run.sh writes there first (None: the user's file as it
    is), and the entrypoint that precedes slime's driver ([] or tools.launch.ray_job, which
    writes TRAIN_CONFIG on the cluster once the replicas have URLs)."""
    config = Path(opts.config).resolve()
    if plan is not None and plan.placement is Placement.RAY:
        wrapper = [opts.python, "-m", "tools.launch.ray_job", "--replicas", str(plan.replicas)]
        wrapper += ["--cpus", f"{plan.cpus:g}", "--gpu-bundles", str(plan.gpu_bundles)]
        wrapper += ["--config", str(config), "--db", plan.db]
        wrapper += [arg for t in plan.tokenizers for arg in ("--tokenizer", t)]
        wrapper += ["--job-config", str(job.with_suffix(".yaml")), "--"]
        return job.with_suffix(".yaml"), None, wrapper
    if plan is not None and cfg is not None and plan.urls != cfg.env_server_urls:
        return job.with_suffix(".yaml"), _config_with_env_server(cfg, plan.urls), []
    return config, None, []


def _config_with_env_server(cfg: TrainConfig, urls: list[str]) -> dict:
    data = cfg.model_dump(mode="json")
    data["env_server"] = urls[0] if len(urls) == 1 else urls
    return data


def job_exit_code(ray_address: str, sid: str, submit_code: int) -> int:
    """The exit code of the job's entrypoint (slime's driver, or the wrapper that passes its code
    on), as Ray recorded it: `ray job submit` itself exits 1 for any failure. A driver killed by
    signal N gives 128 + N, as a shell reports it; `submit_code` when Ray cannot say."""
    try:
        r = httpx.get(
            f"{ray_address.rstrip('/')}/api/jobs/{sid}", headers=ray_auth_headers(), timeout=10.0
        )
        r.raise_for_status()
        info = r.json()
    except (httpx.HTTPError, ValueError):
        return submit_code
    code = info.get("driver_exit_code") if isinstance(info, dict) else None
    if isinstance(code, int):
        return 128 - code if code < 0 else code
    return 0 if info.get("status") == "SUCCEEDED" else submit_code or 1


def submit_command(
    ray_cmd: str, ray_address: str, sid: str, env: dict[str, str], script: Path
) -> list[str]:
    """`ray job submit` of `bash script` with `env` as the job's runtime_env env_vars."""
    return [
        ray_cmd,
        "job",
        "submit",
        "--address",
        ray_address,
        "--submission-id",
        sid,
        "--runtime-env-json",
        json.dumps({"env_vars": env}),
        "--",
        "bash",
        str(script),
    ]


def train_script(job_wrapper: list[str], train_cmd: list[str], slime_dir: Path) -> str:
    """The shell script the Ray job runs: every argument quoted once, so nothing is re-split."""
    cmd = [*job_wrapper, *train_cmd]
    return (
        "#!/usr/bin/env bash\n# Written by run.sh; the Ray job runs it.\nset -e\n"
        f"cd {shlex.quote(str(slime_dir))}\nexec " + " \\\n  ".join(_pairs(cmd)) + "\n"
    )


def _pairs(cmd: list[str]) -> list[str]:
    """Shell-quoted command, one `--flag value...` per line for reading."""
    lines: list[str] = []
    for tok in cmd:
        q = shlex.quote(tok)
        if tok.startswith("--") or not lines:
            lines.append(q)
        else:
            lines[-1] += " " + q
    return lines
