"""`bash run.sh`: check prerequisites, start the env server and a Ray head, submit slime's train.py.

Everything is decided in `build_plan` (pure apart from probing the machine), printed by
`--dry-run`, and carried out by `execute`, which stops what it started on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import yaml

from bridge.config import TRAIN_CONFIG_ENV, TrainConfig, is_hosted
from bridge.launch import prerequisites as pre
from bridge.launch.services import (
    ServiceError,
    answers,
    env_server_command,
    is_loopback,
    managed_process,
)
from bridge.launch.slime_flags import SGLANG_FLAGS, slime_checkout_flags, supported_train_backends

PROJECT_ROOT = Path(__file__).resolve().parents[2]

GENERATE_HOOK = "bridge.generate.generate"
ROLLOUT_LOG_HOOK = "bridge.metrics.log_rollout"
EVAL_LOG_HOOK = "bridge.metrics.log_eval_rollout"

# Megatron flags the launcher emits itself (slime parses its CLI with Megatron's parser).
# tests/test_run_sh.py checks them against the Megatron parser of the commits slime pins.
MEGATRON_FLAGS = frozenset(
    {
        "--tensor-model-parallel-size",
        "--sequence-parallel",
        "--pipeline-model-parallel-size",
        "--context-parallel-size",
        "--recompute-granularity",
        "--recompute-method",
        "--recompute-num-layers",
        "--optimizer",
        "--lr-decay-style",
        "--weight-decay",
        "--adam-beta1",
        "--adam-beta2",
        "--attention-dropout",
        "--hidden-dropout",
        "--accumulate-allreduce-grads-in-fp32",
        "--attention-softmax-in-fp32",
        "--attention-backend",
    }
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where one is set and the help text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.default in (None, False)
            or "default" in text
            or action.default is argparse.SUPPRESS
        ):
            return text
        return super()._get_help_string(action)


class LaunchError(Exception):
    """A launch that cannot go ahead; the message is meant for the user."""


def parse_options(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """run.sh's options, and the arguments after `--` (passed to slime unchanged)."""
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser(
        prog="bash run.sh",
        description="Train a model with slime on the environments in train_config.yaml.",
        epilog="Everything after `--` is passed to slime's train.py unchanged. "
        "Rollout-only mode (no training, no GPU needed): bash run.sh --rollout-only --help",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    a = ap.add_argument
    a(
        "--model",
        default="Qwen/Qwen3-4B",
        help="HF checkpoint (local dir or hub id): tokenizer, SGLang weights",
    )
    a(
        "--config",
        default="train_config.yaml",
        help="train_config.yaml (environments, env server, trajectories)",
    )
    a("--task-data", default="tasks.jsonl", help="training prompts written by prepare_tasks.py")
    a("--eval-data", default=None, help="eval prompts (prepare_tasks.py --eval-output)")
    a(
        "--eval-interval",
        type=int,
        default=None,
        help="evaluate every N rollouts (needs --eval-data)",
    )
    a("--lr", type=float, default=1e-5, help="learning rate")
    a("--n-samples", type=int, default=16, help="samples per prompt (GRPO group size)")
    a("--rollout-batch-size", type=int, default=32, help="prompts per rollout")
    a(
        "--steps-per-rollout",
        type=int,
        default=1,
        help="optimizer steps per rollout; global batch = rollout batch * n-samples / this",
    )
    a(
        "--num-rollout",
        type=int,
        default=None,
        help="rollouts to train for (default: one epoch of the task data)",
    )
    a(
        "--max-response-len",
        type=int,
        default=4096,
        help="token budget of a whole episode's response",
    )
    a(
        "--max-context-len",
        type=int,
        default=None,
        help="context budget (prompt + response) of an episode",
    )
    a(
        "--max-tokens-per-gpu",
        type=int,
        default=8192,
        help="dynamic batch size: tokens per GPU per micro batch",
    )
    a("--temperature", type=float, default=1.0, help="rollout sampling temperature")
    a(
        "--train-backend",
        choices=["megatron", "fsdp"],
        default="megatron",
        help="fsdp exists in slime up to v0.2.2 only",
    )
    a(
        "--actor-gpus",
        type=int,
        default=None,
        help="training GPUs (default: all GPUs nvidia-smi lists)",
    )
    a("--rollout-gpus", type=int, default=None, help="inference GPUs when not colocated")
    a("--tp", type=int, default=1, help="tensor parallel size of the Megatron actor")
    a("--rollout-tp", type=int, default=None, help="GPUs per SGLang engine (default: --tp)")
    a(
        "--colocate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="training and inference share the GPUs",
    )
    a(
        "--mem-fraction",
        type=float,
        default=0.7,
        help="SGLang static memory fraction when colocated",
    )
    a("--load", default=None, help="checkpoint to start from (default: --model)")
    a("--save", default=None, help="where to save checkpoints")
    a("--save-interval", type=int, default=None, help="save every N rollouts (needs --save)")
    a(
        "--wandb-project",
        default="slime-envs",
        help="W&B project (offline when WANDB_API_KEY is unset)",
    )
    a("--wandb-group", default=None, help="W&B group (default: the config's run_name)")
    a("--no-wandb", action="store_true", help="do not log to W&B")
    a(
        "--slime-path",
        default=os.environ.get("SLIME_PATH"),
        help="slime checkout (default: $SLIME_PATH)",
    )
    a(
        "--megatron-path",
        default=os.environ.get("MEGATRON_PATH"),
        help="Megatron-LM checkout (default: $MEGATRON_PATH)",
    )
    a(
        "--model-args",
        default=None,
        help="Megatron model flags: a .sh file defining MODEL_ARGS=(...) or a quoted flag string "
        "(default: slime's scripts/models/<model>.sh)",
    )
    a("--env-server", default=None, help="env server URL (default: env_server in the config)")
    a(
        "--ray-address",
        default="http://127.0.0.1:8265",
        help="Ray dashboard address for job submission",
    )
    a("--python", default="python3", help="python that runs slime's train.py on the Ray cluster")
    a("--db", default="runs/trajectories.db", help="trajectory store of an env server this starts")
    a("--dry-run", action="store_true", help="print the commands and environment; run nothing")
    opts = ap.parse_args(argv)
    return opts, extra


def global_batch_size(rollout_batch_size: int, n_samples: int, steps_per_rollout: int) -> int:
    """Samples per optimizer step: every sample of a rollout is used once per rollout."""
    total = rollout_batch_size * n_samples
    if steps_per_rollout < 1 or total % steps_per_rollout:
        raise LaunchError(
            f"rollout batch {rollout_batch_size} x n-samples {n_samples} = {total} samples "
            f"is not divisible by --steps-per-rollout {steps_per_rollout}"
        )
    return total // steps_per_rollout


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
            f"{script}: could not read MODEL_ARGS: {out.stderr.strip().splitlines()[-1:] or out.returncode}"
        )
    args = [x for x in out.stdout.split("\0") if x]
    if not args:
        raise LaunchError(f"{script}: defines no MODEL_ARGS array")
    return args


def resolve_model_args(opts: argparse.Namespace, slime_path: Path | None) -> tuple[list[str], str]:
    """Megatron model flags and where they came from; ([], reason) when they cannot be found yet."""
    if opts.model_args:
        p = Path(opts.model_args)
        if p.is_file():
            return read_model_args(p), str(p)
        return shlex.split(opts.model_args), "--model-args"
    if slime_path is None:
        return [], "unknown until a slime checkout is found"
    script = model_args_script(slime_path, opts.model)
    if script is None:
        known = sorted(s.stem for s in (slime_path / "scripts" / "models").glob("*.sh"))
        raise LaunchError(
            f"no Megatron model args for {opts.model!r}: slime's scripts/models has no "
            f"{Path(opts.model).name}.sh; pass --model-args FILE_OR_FLAGS "
            f"(known: {', '.join(known[:12])}{' ...' if len(known) > 12 else ''})"
        )
    return read_model_args(script), str(script)


def slime_train_args(
    opts: argparse.Namespace,
    *,
    model_args: list[str],
    actor_gpus: int,
    gpus_per_node: int,
    eval_name: str | None,
    use_wandb_offline: bool,
    wandb_group: str,
) -> list[str]:
    """The flags for slime's train.py (extra args after `--` not included)."""
    load = opts.load or opts.model
    args = [
        "--train-backend",
        opts.train_backend,
        # cluster
        "--actor-num-nodes",
        "1",
        "--actor-num-gpus-per-node",
        str(actor_gpus),
        "--num-gpus-per-node",
        str(gpus_per_node),
        "--rollout-num-gpus-per-engine",
        str(opts.rollout_tp or opts.tp),
    ]
    if opts.colocate:
        args += ["--colocate", "--sglang-mem-fraction-static", str(opts.mem_fraction)]
    else:
        args += ["--rollout-num-gpus", str(opts.rollout_gpus or actor_gpus)]
    # checkpoints
    args += ["--hf-checkpoint", opts.model, "--load", load, "--ref-load", load]
    if opts.save:
        args += ["--save", opts.save]
    if opts.save_interval is not None:
        args += ["--save-interval", str(opts.save_interval)]
    # data: the bridge renders the prompt itself from the task metadata (no --apply-chat-template)
    args += [
        "--prompt-data",
        str(Path(opts.task_data).resolve()),
        "--input-key",
        "prompt",
        "--label-key",
        "label",
        "--metadata-key",
        "metadata",
        "--tool-key",
        "tools",
        "--rollout-shuffle",
    ]
    if opts.num_rollout is not None:
        args += ["--num-rollout", str(opts.num_rollout)]
    else:
        args += ["--num-epoch", "1"]
    # rollout: the bridge is the generate function, it sets the reward itself (no --rm-type)
    args += [
        "--custom-generate-function-path",
        GENERATE_HOOK,
        "--custom-rollout-log-function-path",
        ROLLOUT_LOG_HOOK,
        "--custom-eval-rollout-log-function-path",
        EVAL_LOG_HOOK,
        "--rollout-batch-size",
        str(opts.rollout_batch_size),
        "--n-samples-per-prompt",
        str(opts.n_samples),
        "--global-batch-size",
        str(global_batch_size(opts.rollout_batch_size, opts.n_samples, opts.steps_per_rollout)),
        "--rollout-max-response-len",
        str(opts.max_response_len),
        "--rollout-temperature",
        str(opts.temperature),
    ]
    if opts.max_context_len is not None:
        args += ["--rollout-max-context-len", str(opts.max_context_len)]
    # eval
    if opts.eval_data:
        args += [
            "--eval-prompt-data",
            eval_name or "eval",
            str(Path(opts.eval_data).resolve()),
            "--n-samples-per-eval-prompt",
            "1",
            "--eval-max-response-len",
            str(opts.max_response_len),
        ]
        if opts.eval_interval is not None:
            args += ["--eval-interval", str(opts.eval_interval)]
    # algorithm: GRPO with the clip-higher range, no KL term
    args += ["--advantage-estimator", "grpo", "--eps-clip", "0.2", "--eps-clip-high", "0.28"]
    # optimizer
    args += [
        "--optimizer",
        "adam",
        "--lr",
        repr(opts.lr),
        "--lr-decay-style",
        "constant",
        "--weight-decay",
        "0.1",
        "--adam-beta1",
        "0.9",
        "--adam-beta2",
        "0.98",
    ]
    # batching
    args += ["--use-dynamic-batch-size", "--max-tokens-per-gpu", str(opts.max_tokens_per_gpu)]
    if opts.train_backend == "megatron":
        args += ["--tensor-model-parallel-size", str(opts.tp)]
        if opts.tp > 1:
            args += ["--sequence-parallel"]
        args += [
            "--pipeline-model-parallel-size",
            "1",
            "--context-parallel-size",
            "1",
            "--recompute-granularity",
            "full",
            "--recompute-method",
            "uniform",
            "--recompute-num-layers",
            "1",
            "--attention-dropout",
            "0.0",
            "--hidden-dropout",
            "0.0",
            "--accumulate-allreduce-grads-in-fp32",
            "--attention-softmax-in-fp32",
            "--attention-backend",
            "flash",
        ]
        args += model_args
    else:
        args += ["--gradient-checkpointing"]
    # metrics
    if not opts.no_wandb:
        args += ["--use-wandb", "--wandb-project", opts.wandb_project, "--wandb-group", wandb_group]
        if use_wandb_offline:
            args += ["--wandb-mode", "offline"]
    return args


def emitted_flags(args: list[str]) -> list[str]:
    return [a for a in args if a.startswith("--")]


def unknown_flags(args: list[str], known: set[str]) -> list[str]:
    """Flags in `args` that are not in `known` (slime would ignore them silently)."""
    return sorted({f for f in emitted_flags(args) if f not in known})


@dataclass
class LaunchPlan:
    """Everything `execute` does, in order; `--dry-run` prints it."""

    checks: list[pre.Check]
    notes: list[str]
    env_server_url: str | None  # where the bridge finds local envs; None: hosted envs only
    env_servers: list[tuple[str, list[str]]]  # (url, command) of each env server to start
    ray_start_cmd: list[str] | None  # None: a Ray cluster answers at ray_address
    ray_address: str
    train_script: str  # the shell script the Ray job runs
    train_script_path: Path
    submit_cmd: list[str]
    submission_id: str
    job_env: dict[str, str]  # the Ray job's runtime_env env_vars
    secret_env: list[str] = field(default_factory=list)  # keys in job_env whose values are secrets
    config_override: dict | None = (
        None  # written to job_env[TRAIN_CONFIG] when --env-server overrides
    )

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def _ray_up(address: str) -> bool:
    return answers(address, "/api/version")


def _plan_env_servers(
    opts: argparse.Namespace,
    cfg: TrainConfig | None,
    probe: bool,
    checks: list[pre.Check],
    notes: list[str],
) -> tuple[str | None, list[tuple[str, list[str]]], dict | None]:
    """The env server URL the bridge uses, the servers to start, and a config override for --env-server."""
    if cfg is None or all(is_hosted(n) for n in cfg.environments):
        return None, [], None
    pinned = pre.task_env_servers(opts.task_data)  # the bridge prefers the URLs the task rows carry
    if opts.env_server:
        urls = [opts.env_server.rstrip("/")]
        if pinned and pinned != urls:
            checks.append(
                pre.Check(
                    "env server",
                    False,
                    f"the rows of {opts.task_data} pin env_server {', '.join(pinned)}, which the "
                    f"bridge uses, so --env-server {urls[0]} would have no effect",
                    f"set env_server: {urls[0]} in {opts.config} and rerun python prepare_tasks.py --config {opts.config}",
                )
            )
    else:
        urls = pinned or cfg.env_server_urls
    override = (
        _config_with_env_server(cfg, urls[0])
        if opts.env_server and urls[0] not in cfg.env_server_urls
        else None
    )
    servers: list[tuple[str, list[str]]] = []
    for url in urls:
        if probe and answers(url):
            notes.append(f"env server already answers at {url}")
        elif is_loopback(url):
            cmd = env_server_command(opts.config, url, str(Path(opts.db).resolve()))
            if servers:  # one trajectory store: further servers only serve environments
                cmd += ["--role", "env"]
            servers.append((url, cmd))
        else:
            checks.append(
                pre.Check(
                    "env server",
                    False,
                    f"{url} does not answer /health",
                    f"start it there: python -m envs.server --config {opts.config} "
                    f"--host 0.0.0.0 --port {urlparse(url).port or 80}",
                )
            )
    return urls[0], servers, override


def _check_emitted_flags(
    train_args: list[str],
    model_args: list[str],
    backend: str,
    slime_path: Path | None,
    checks: list[pre.Check],
    notes: list[str],
) -> None:
    """Every flag we emit must be one this slime (or Megatron) defines: slime ignores unknown flags silently."""
    if slime_path is None:
        notes.append("emitted flags not checked: no slime checkout")
        return
    known = slime_checkout_flags(slime_path) | SGLANG_FLAGS
    if backend == "megatron":
        known |= MEGATRON_FLAGS | set(emitted_flags(model_args))
    bad = unknown_flags(train_args, known)
    if bad:
        checks.append(
            pre.Check(
                "slime flags",
                False,
                f"this slime does not define {', '.join(bad)}; it would ignore them",
                "use a slime version this launcher supports (v0.2.2 .. v0.3.1)",
            )
        )
    else:
        notes.append(
            f"all {len(set(emitted_flags(train_args)))} emitted flags are defined by this slime/Megatron"
        )


def _job_env(
    pythonpath: list[str],
    train_config: Path,
    cfg: TrainConfig | None,
    environ: dict[str, str],
    use_wandb: bool,
) -> tuple[dict[str, str], list[str]]:
    """The Ray job's env_vars (project on PYTHONPATH, TRAIN_CONFIG, keys) and which of them are secrets."""
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
    secrets = []
    for name in (["WANDB_API_KEY"] if wandb_key else []) + (
        pre.required_api_keys(cfg) if cfg else []
    ):
        if environ.get(name):
            env[name] = environ[name]
            secrets.append(name)
    return env, secrets


def _train_script(slime_dir: Path, train_cmd: list[str]) -> str:
    """The shell script the Ray job runs: every argument quoted once, so nothing is re-split on the way."""
    return (
        "#!/usr/bin/env bash\n# Written by run.sh; the Ray job runs it.\nset -e\n"
        f"cd {shlex.quote(str(slime_dir))}\nexec " + " \\\n  ".join(_pairs(train_cmd)) + "\n"
    )


def build_plan(
    opts: argparse.Namespace,
    extra: list[str],
    environ: dict[str, str] | None = None,
    gpus: int | None = None,
    probe: bool = True,
) -> LaunchPlan:
    """Check prerequisites and decide every command. `gpus`/`probe` let tests fix the machine state."""
    environ = dict(os.environ if environ is None else environ)
    checks: list[pre.Check] = []
    notes: list[str] = []

    cfg_check, cfg = pre.check_config(opts.config)
    checks.append(cfg_check)
    checks.append(pre.check_task_file(opts.task_data, opts.config))
    if opts.eval_data:
        checks.append(
            pre.check_task_file(opts.eval_data, opts.config, "eval task file", "--eval-output")
        )
    elif opts.eval_interval is not None:
        raise LaunchError(
            "--eval-interval needs --eval-data (python prepare_tasks.py --eval-output ...)"
        )
    if opts.save_interval is not None and not opts.save:
        raise LaunchError("--save-interval needs --save DIR")
    if cfg is not None:
        checks.append(pre.check_api_keys(cfg, environ))

    slime = pre.check_slime(opts.slime_path)
    checks.append(slime)
    slime_path = Path(opts.slime_path).resolve() if slime.ok else None
    backend_ok = True
    if slime_path is not None:
        backend = pre.check_train_backend(
            opts.train_backend, supported_train_backends(slime_path), str(slime_path)
        )
        checks.append(backend)
        backend_ok = backend.ok
    megatron_path: Path | None = None
    if opts.train_backend == "megatron":
        meg = pre.check_megatron(opts.megatron_path)
        checks.append(meg)
        if meg.ok and opts.megatron_path:
            megatron_path = Path(opts.megatron_path).resolve()

    found_gpus = pre.count_gpus() if gpus is None and probe else gpus
    actor_gpus = opts.actor_gpus or found_gpus or 8
    needed = actor_gpus + (0 if opts.colocate else (opts.rollout_gpus or actor_gpus))
    checks.append(pre.check_gpus(needed, found_gpus))
    checks.append(
        pre.check_checkpoint(opts.load or opts.model, opts.model, from_load=bool(opts.load))
    )
    checks.append(pre.check_ray())

    model_args: list[str] = []
    if opts.train_backend == "megatron":
        try:
            model_args, source = resolve_model_args(opts, slime_path)
            notes.append(f"Megatron model args: {source}")
        except LaunchError as e:
            checks.append(pre.Check("model args", False, str(e), "pass --model-args"))
            source = None
        if slime_path is not None and Path(opts.load or opts.model).is_dir():
            script = source if source and source.endswith(".sh") else None
            checks.append(pre.check_megatron_weights(opts.load or opts.model, slime_path, script))

    env_url, env_servers, config_override = _plan_env_servers(opts, cfg, probe, checks, notes)

    ray_start: list[str] | None = None
    if not (probe and _ray_up(opts.ray_address)):
        port = urlparse(opts.ray_address).port or 8265
        ray_start = [
            "ray",
            "start",
            "--head",
            "--num-gpus",
            str(found_gpus or needed),
            "--disable-usage-stats",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(port),
        ]

    wandb_key = environ.get("WANDB_API_KEY")
    run_name = cfg.run_name if cfg is not None else "slime-envs"
    eval_name = Path(opts.eval_data).stem if opts.eval_data else None
    train_args = slime_train_args(
        opts,
        model_args=model_args,
        actor_gpus=actor_gpus,
        gpus_per_node=found_gpus or actor_gpus,
        eval_name=eval_name,
        use_wandb_offline=not wandb_key,
        wandb_group=opts.wandb_group or run_name,
    )
    if backend_ok:  # flags of an unsupported backend are moot
        _check_emitted_flags(train_args, model_args, opts.train_backend, slime_path, checks, notes)

    run_dir = PROJECT_ROOT / "runs" / run_name
    train_config = run_dir / "train_config.yaml" if config_override else Path(opts.config).resolve()
    pythonpath = [str(PROJECT_ROOT)] + ([str(megatron_path)] if megatron_path else [])
    job_env, secret_env = _job_env(
        pythonpath, train_config, cfg, environ, use_wandb=not opts.no_wandb
    )

    slime_dir = slime_path or Path("${SLIME_PATH}")
    train_cmd = [opts.python, str(slime_dir / "train.py"), *train_args, *extra]
    train_script = _train_script(slime_dir, train_cmd)
    sid = f"slime-envs-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    script_path = run_dir / f"{sid}.sh"
    submit = [
        "ray",
        "job",
        "submit",
        "--address",
        opts.ray_address,
        "--submission-id",
        sid,
        "--runtime-env-json",
        json.dumps({"env_vars": job_env}),
        "--",
        "bash",
        str(script_path),
    ]
    if extra:
        notes.append(f"passed to slime unchanged: {shlex.join(extra)}")
    return LaunchPlan(
        checks=checks,
        notes=notes,
        env_server_url=env_url,
        env_servers=env_servers,
        ray_start_cmd=ray_start,
        ray_address=opts.ray_address,
        train_script=train_script,
        train_script_path=script_path,
        submit_cmd=submit,
        submission_id=sid,
        job_env=job_env,
        secret_env=secret_env,
        config_override=config_override,
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


def _config_with_env_server(cfg: TrainConfig, url: str) -> dict:
    data = cfg.model_dump(mode="json")
    data["env_server"] = url
    return data


def _masked(plan: LaunchPlan, env: dict[str, str]) -> dict[str, str]:
    return {k: ("***" if k in plan.secret_env else v) for k, v in env.items()}


def format_plan(plan: LaunchPlan) -> str:
    """The dry-run text: prerequisites, environment, and every command in order."""
    out = ["# prerequisites"] + [c.line() for c in plan.checks]
    out += [f"# note: {n}" for n in plan.notes]
    out.append("# Ray job environment (runtime_env env_vars)")
    out += [f"export {k}={shlex.quote(v)}" for k, v in _masked(plan, plan.job_env).items()]
    out.append("# commands")
    if plan.config_override is not None:
        out.append(
            f"# write {plan.job_env[TRAIN_CONFIG_ENV]} (the config with env_server: {plan.env_server_url})"
        )
    for url, cmd in plan.env_servers:
        out.append(shlex.join(cmd) + " &   # stopped on exit")
        out.append(f"# wait for {url}/health")
    if plan.ray_start_cmd:
        out.append(shlex.join(plan.ray_start_cmd) + "   # `ray stop` on exit")
    out.append(f"# write {plan.train_script_path}:")
    out += ["    " + line for line in plan.train_script.splitlines()]
    masked_submit = list(plan.submit_cmd)
    i = masked_submit.index("--runtime-env-json") + 1
    masked_submit[i] = json.dumps({"env_vars": _masked(plan, plan.job_env)})
    out.append(shlex.join(masked_submit))
    return "\n".join(out)


def _stop_job(plan: LaunchPlan) -> None:
    try:
        subprocess.run(
            ["ray", "job", "stop", "--address", plan.ray_address, plan.submission_id], timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"run.sh: could not stop Ray job {plan.submission_id}: {e}", file=sys.stderr)


def execute(plan: LaunchPlan) -> int:
    """Run the plan; stop the env server and the Ray head it started, also on Ctrl-C/SIGTERM."""

    def _term(signum, frame):  # SIGTERM takes the same cleanup path as Ctrl-C
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _term)
    try:
        with contextlib.ExitStack() as stack:
            if plan.config_override is not None:
                p = Path(plan.job_env[TRAIN_CONFIG_ENV])
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(yaml.safe_dump(plan.config_override, sort_keys=False))
            for url, cmd in plan.env_servers:
                print(f"run.sh: starting env server: {shlex.join(cmd)}", flush=True)
                Path(cmd[cmd.index("--db") + 1]).parent.mkdir(parents=True, exist_ok=True)
                stack.enter_context(managed_process("env server", cmd, url))
                stack.callback(print, f"run.sh: env server {url} stopped", flush=True)
                print(f"run.sh: env server up at {url}", flush=True)
            if plan.ray_start_cmd:
                print(f"run.sh: starting Ray head: {shlex.join(plan.ray_start_cmd)}", flush=True)
                subprocess.run(plan.ray_start_cmd, check=True)
                stack.callback(subprocess.run, ["ray", "stop"], check=False)
            plan.train_script_path.parent.mkdir(parents=True, exist_ok=True)
            plan.train_script_path.write_text(plan.train_script)
            print(f"run.sh: submitting Ray job {plan.submission_id}", flush=True)
            try:
                return subprocess.run(plan.submit_cmd).returncode
            except KeyboardInterrupt:
                if not plan.ray_start_cmd:  # a cluster we did not start keeps running: stop our job
                    _stop_job(plan)
                raise
    except KeyboardInterrupt:
        print("run.sh: interrupted; stopped what it started", file=sys.stderr)
        return 130
    except subprocess.CalledProcessError as e:
        print(f"run.sh: {shlex.join(e.cmd)} failed with exit code {e.returncode}", file=sys.stderr)
        return 1
    except ServiceError as e:
        print(f"run.sh: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    opts, extra = parse_options(sys.argv[1:] if argv is None else argv)
    try:
        plan = build_plan(opts, extra)
    except LaunchError as e:
        print(f"run.sh: {e}", file=sys.stderr)
        return 2
    if opts.dry_run:
        print(format_plan(plan))
        return 0
    if not plan.ok:
        for c in plan.checks:
            if not c.ok:
                print(f"run.sh: {c.line()}", file=sys.stderr)
        return 2
    return execute(plan)
