"""The launch plan: every check and command of a `bash run.sh` training launch, decided before
anything runs.

`build_plan` is pure apart from probing the machine and the Ray cluster; `format_plan` is what
`--dry-run` prints; `tools.launch.execute` carries the plan out. What a plan holds, in order:

- the cluster: an existing Ray cluster at --ray-address (its nodes, GPUs and vendor read from
  Ray), else this machine (nvidia-smi / amd-smi / rocm-smi) with a Ray head run.sh starts
  (`tools.launch.cluster_plan`);
- the GPU layout fitted to it (`tools.launch.layout`), the mode's driver (`tools.launch.modes`),
  the checkpoint to load (`tools.launch.resume`);
- the env servers (`tools.launch.env_servers`): on this machine, or on the Ray cluster through
  the job's entrypoint (`tools.launch.ray_job`);
- slime's flags (`tools.launch.slime_args`), each checked against the slime checkout (slime
  ignores unknown flags);
- the Ray job: its environment, script and submit command (`tools.launch.job`).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from contract.config import TRAIN_CONFIG_ENV, TrainConfig
from tools.errors import LaunchError, ModeError, ResumeError
from tools.launch import prerequisites as pre
from tools.launch.cli import check_options
from tools.launch.cluster import ClusterView
from tools.launch.cluster_plan import fit_cluster_layout, gpu_vendor, ray_head_cmd, read_cluster
from tools.launch.env_servers import (
    EnvServerPlan,
    Placement,
    episodes_in_flight,
    plan_env_servers,
)
from tools.launch.eval_plan import plan_eval
from tools.launch.external_engines import check_engines, parse_engine_addrs
from tools.launch.gpus import GpuVendor
from tools.launch.job import (
    job_config,
    job_env,
    rocm_env,
    submission_id,
    submit_command,
    train_script,
)
from tools.launch.model_args import resolve_model_args
from tools.launch.model_source import resolve_model
from tools.launch.modes import ModePlan, TrainMode, mode_plan, resolve_colocate
from tools.launch.no_train import (
    CPU_SITE,
    ResumeMarker,
    check_idle_actor_gpu,
    check_no_train_options,
    cpu_head_cpus,
    cpu_python,
    cpu_ray,
    idle_actor_layout,
    no_train_flags,
    plan_data_resume,
)
from tools.launch.paths import absolute_options
from tools.launch.replica_placement import check_replica_placement
from tools.launch.resume import LoadPlan, plan_load
from tools.launch.slime_args import (
    NEXT_FILTER_ENV,
    TrainInputs,
    check_emitted_flags,
    slime_train_args,
    take_overrides,
    user_dynamic_filter,
)
from tools.launch.slime_flags import supported_train_backends
from tools.launch.slime_names import absolute_path_values

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LaunchPlan:
    """Everything `execute` does, in order; `--dry-run` prints it."""

    checks: list[pre.Check]
    notes: list[str]
    env_plan: EnvServerPlan | None
    """None: hosted envs only."""
    ray_start_cmd: list[str] | None
    """`ray start --head --block ...` run.sh runs here; None: a Ray cluster answers at
    ray_address."""
    ray_address: str
    slime_dir: Path
    job_wrapper: list[str]
    """Runs before the driver in the job (tools.launch.ray_job starting replicas on Ray), or []."""
    train_cmd: list[str]
    """slime's driver and its flags."""
    train_script_path: Path
    submit_cmd: list[str]
    submission_id: str
    job_env: dict[str, str]
    """The Ray job's runtime_env env_vars."""
    secret_env: list[str] = field(default_factory=list)
    """Keys in job_env whose values are secrets (masked in the dry run)."""
    config_override: dict | None = None
    """Written to job_env[TRAIN_CONFIG] before the job when --env-server or extra replicas
    change the config's env_server."""
    ray_start_env: dict[str, str] = field(default_factory=dict)
    """Extra environment of the Ray head run.sh starts (ROCm)."""
    model_download: tuple[str, str] | None = None
    """(Hub id, revision) downloaded into the Hugging Face cache before anything starts."""
    resume_marker: ResumeMarker | None = None
    """--no-train resuming its data position: the --load directory written before the job."""

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def env_servers(self) -> list[tuple[str, list[str]]]:
        """(url, command) of each env server run.sh starts on this machine."""
        return self.env_plan.commands if self.env_plan is not None else []

    @property
    def env_server_url(self) -> str | None:
        if self.env_plan is None:
            return None
        return self.env_plan.urls[0] if self.env_plan.urls else "(replica 0 on the Ray cluster)"

    @property
    def train_script(self) -> str:
        """The shell script the Ray job runs: every argument quoted once, so nothing is re-split."""
        return train_script(self.job_wrapper, self.train_cmd, self.slime_dir)


@dataclass(frozen=True)
class _Inputs:
    """What the run reads: its config, and the eval files and interval."""

    cfg: TrainConfig | None
    eval_data: list[str]
    eval_interval: int | None


@dataclass(frozen=True)
class _Sources:
    """The code the job runs: slime, Megatron, the mode's driver."""

    slime_path: Path | None
    megatron_path: Path | None
    modes: ModePlan
    backend_ok: bool
    """False: this slime lacks the train backend (its flags are moot)."""


def build_plan(
    opts: argparse.Namespace,
    extra: list[str],
    environ: dict[str, str] | None = None,
    gpus: int | None = None,
    probe: bool = True,
) -> LaunchPlan:
    """Check prerequisites and decide every command. `gpus`/`probe` let tests fix the machine
    state."""
    environ = dict(os.environ if environ is None else environ)
    checks: list[pre.Check] = []
    notes: list[str] = []
    opts, extra = absolute_options(opts), absolute_path_values(extra)
    user_filter, extra = user_dynamic_filter(getattr(opts, "dynamic_filter", None), extra, environ)
    addrs = parse_engine_addrs(opts.engine_addrs) if opts.engine_addrs else []
    mode, colocate = _decide_mode(opts, external=bool(addrs))
    model = resolve_model(opts.model)
    opts.model = model.path  # every consumer gets the local directory
    inputs = _check_inputs(opts, environ, checks, notes)
    src = _check_sources(opts, mode, checks)
    run_name = inputs.cfg.run_name if inputs.cfg is not None else "slime-envs"
    sid = submission_id()
    run_dir = PROJECT_ROOT / "runs" / run_name
    marker = None
    if opts.no_train:  # its --load is decided with the data position (tools.launch.no_train)
        load, marker = plan_data_resume(opts, run_dir / f"{sid}.resume")
        if load.note:
            notes.append(load.note)
    else:
        load = _decide_load(opts, notes)

    ray_address, cluster_up, view = read_cluster(opts, probe, gpus, checks)
    engines = check_engines(addrs, checks, probe)
    cpu_job = bool(opts.no_train and addrs) and not (view is not None and view.real_gpus)
    if opts.no_train and addrs:
        layout = idle_actor_layout()
        check_idle_actor_gpu(view, cpu_job, checks, notes)
    else:
        layout = fit_cluster_layout(opts, view, colocate, checks, notes, bool(addrs))
    vendor = gpu_vendor(opts, view, checks)
    checks += [model.check, *_checkpoint_checks(opts), pre.check_ray()]
    ray_cmd = pre.ray_executable() or "ray"
    model_args = (
        [] if opts.no_train else _model_args(opts, model.name, load, src.slime_path, checks, notes)
    )

    # a one-node cluster on this machine reaches loopback servers as run.sh does
    on_ray = cluster_up and view is not None and not view.one_node_here
    in_flight = episodes_in_flight(opts, mode, layout, extra, len(engines))
    env_plan = plan_env_servers(
        opts, inputs.cfg, on_ray, probe, in_flight, layout.gpus_used, checks, notes
    )
    if env_plan is not None and env_plan.placement is Placement.RAY:
        check_replica_placement(env_plan, layout.gpus_used, view, checks)
    if cpu_job:
        ray_cmd = cpu_ray(ray_cmd)
    ray_start = None if cluster_up else ray_head_cmd(ray_cmd, ray_address, view, layout)
    if ray_start is not None and cpu_job:
        ray_start += ["--num-cpus", str(cpu_head_cpus(layout, len(engines)))]

    train_args = slime_train_args(
        opts,
        TrainInputs(
            layout=layout,
            load=load,
            mode=src.modes,
            vendor=vendor,
            model_args=model_args,
            eval_data=inputs.eval_data,
            eval_interval=inputs.eval_interval,
            wandb_offline=not environ.get("WANDB_API_KEY"),
            wandb_group=opts.wandb_group or run_name,
            engine_addrs=tuple(e.addr for e in engines),
            no_train=tuple(no_train_flags(opts, marker)),
        ),
    )
    if src.backend_ok:  # flags of an unsupported backend are moot
        check_emitted_flags(
            train_args, model_args, opts.train_backend, src.slime_path, checks, notes
        )
    train_args, replaced = take_overrides(train_args, extra, src.modes.flags)
    notes += [f"{r} replaced by yours after `--`" for r in replaced]

    train_config, config_override, job_wrapper = job_config(
        opts, inputs.cfg, env_plan, run_dir / sid
    )
    env, secret_env, ray_start_env = _job_environment(
        opts, inputs.cfg, src, environ, vendor, view, train_config, job_wrapper, notes, cpu_job
    )
    if user_filter is not None:  # the bridge's filter calls it on the groups it keeps
        env[NEXT_FILTER_ENV] = user_filter
        notes.append(
            f"dynamic-sampling filter: the bridge's infra-failure filter, then {user_filter}"
        )
    slime_dir = src.slime_path or Path("${SLIME_PATH}")
    script_path = run_dir / f"{sid}.sh"
    if getattr(opts, "taken_from_slime_args", None):
        notes.append(
            f"taken as run.sh's options (checked): {shlex.join(opts.taken_from_slime_args)}"
        )
    if extra:
        notes.append(f"passed to slime: {shlex.join(extra)}")
    python = cpu_python(opts) if cpu_job and ray_start is not None else opts.python
    return LaunchPlan(
        checks=checks,
        notes=notes,
        env_plan=env_plan,
        ray_start_cmd=ray_start,
        ray_address=ray_address,
        slime_dir=slime_dir,
        job_wrapper=job_wrapper,
        train_cmd=[python, str(slime_dir / src.modes.driver), *train_args, *extra],
        train_script_path=script_path,
        submit_cmd=submit_command(ray_cmd, ray_address, sid, env, script_path),
        submission_id=sid,
        job_env=env,
        secret_env=secret_env,
        config_override=config_override,
        ray_start_env=ray_start_env,
        model_download=model.download,
        resume_marker=marker,
    )


def _decide_mode(opts: argparse.Namespace, external: bool = False) -> tuple[TrainMode, bool]:
    """The mode and whether it colocates; LaunchError for option values or combinations slime
    cannot run. `external`: the engines already run (--engine-addrs)."""
    mode = TrainMode(opts.mode)
    check_no_train_options(opts)
    if external and opts.colocate:
        raise LaunchError(
            "--engine-addrs: the engines run elsewhere, so the actor cannot --colocate with them"
        )
    if opts.no_train:  # on GPUs slime gives the engines the colocated layout's GPUs (all)
        colocate = not external
    elif external:
        colocate = False
    else:
        try:
            colocate = resolve_colocate(mode, opts.colocate)
        except ModeError as e:
            raise LaunchError(str(e)) from None
    check_options(opts, mode)
    return mode, colocate


def _decide_load(opts: argparse.Namespace, notes: list[str]) -> LoadPlan:
    """The checkpoint to load and the reference weights (resuming from --save when it holds
    one)."""
    try:
        load = plan_load(opts.model, opts.load, opts.save, opts.resume, opts.ref_load)
    except ResumeError as e:
        raise LaunchError(str(e)) from None
    if load.note:
        notes.append(load.note)
    return load


def _checkpoint_checks(opts: argparse.Namespace) -> list[pre.Check]:
    """--load and --ref-load, when given, must be directories."""
    given = [("--load", opts.load), ("--ref-load", opts.ref_load)]
    return [pre.check_checkpoint(flag, path) for flag, path in given if path]


def _check_inputs(
    opts: argparse.Namespace, environ: dict[str, str], checks: list[pre.Check], notes: list[str]
) -> _Inputs:
    """The config, the task file, the eval file and the hosted envs' API keys."""
    cfg_check, cfg = pre.check_config(opts.config)
    checks.append(cfg_check)
    checks.append(pre.check_task_file(opts.task_data, opts.config))
    eval_data, eval_interval = plan_eval(opts, checks, notes)
    if cfg is not None:
        checks.append(pre.check_api_keys(cfg, environ))
    return _Inputs(cfg, eval_data, eval_interval)


def _check_sources(opts: argparse.Namespace, mode: TrainMode, checks: list[pre.Check]) -> _Sources:
    """The slime checkout and its train backend, Megatron-LM, and the mode's driver."""
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
    try:
        modes = mode_plan(mode, slime_path, opts.update_weights_interval)
    except ModeError as e:
        checks.append(pre.Check("training mode", False, str(e)))
        modes = ModePlan("train_async.py")
    return _Sources(slime_path, megatron_path, modes, backend_ok)


def _model_args(
    opts: argparse.Namespace,
    model_name: str,
    load: LoadPlan,
    slime_path: Path | None,
    checks: list[pre.Check],
    notes: list[str],
) -> list[str]:
    """Megatron's model flags (none for FSDP), and whether this slime can load the weights."""
    if opts.train_backend != "megatron":
        return []
    model_args: list[str] = []
    try:
        model_args, source = resolve_model_args(opts.model_args, model_name, slime_path)
        notes.append(f"Megatron model args: {source}")
    except LaunchError as e:
        checks.append(pre.Check("model args", False, str(e), "pass --model-args"))
        source = None
    if slime_path is not None and Path(load.load).is_dir():
        script = source if source and source.endswith(".sh") else None
        checks.append(pre.check_megatron_weights(load.load, slime_path, script))
    return model_args


def _job_environment(
    opts: argparse.Namespace,
    cfg: TrainConfig | None,
    src: _Sources,
    environ: dict[str, str],
    vendor: GpuVendor,
    view: ClusterView | None,
    train_config: Path,
    job_wrapper: list[str],
    notes: list[str],
    cpu_job: bool = False,
) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """The job's env_vars, which of them are secrets, and the environment of a Ray head run.sh
    starts (ROCm's on AMD GPUs). `cpu_job`: no GPU anywhere, the CPU shims go first on the job's
    PYTHONPATH."""
    if job_wrapper:  # replicas on a cluster network: guarded by a key of this job's
        environ.setdefault("ENV_SERVER_API_KEY", secrets.token_urlsafe(24))
    pythonpath = [str(PROJECT_ROOT)] + ([str(src.megatron_path)] if src.megatron_path else [])
    if cpu_job:
        pythonpath.insert(0, str(CPU_SITE))
    env, secret_env = job_env(
        pythonpath + src.modes.pythonpath,
        train_config,
        cfg,
        environ,
        use_wandb=not opts.no_wandb,
        env_servers_in_job=bool(job_wrapper),
    )
    ray_start_env: dict[str, str] = {}
    if vendor is GpuVendor.AMD:
        rocm_job, ray_start_env = rocm_env(view, environ)
        env.update(rocm_job)
        notes.append("AMD GPUs: ROCm environment and flags as slime's scripts/run-qwen3-4B-amd.sh")
    return env, secret_env, ray_start_env


def _masked(plan: LaunchPlan, env: dict[str, str]) -> dict[str, str]:
    return {k: ("***" if k in plan.secret_env else v) for k, v in env.items()}


def format_plan(plan: LaunchPlan) -> str:
    """The dry-run text: prerequisites, environment, and every command in order."""
    out = ["# prerequisites"] + [c.line() for c in plan.checks]
    out += [f"# note: {n}" for n in plan.notes]
    out.append("# Ray job environment (runtime_env env_vars)")
    out += [f"export {k}={shlex.quote(v)}" for k, v in _masked(plan, plan.job_env).items()]
    out.append("# commands")
    if plan.model_download is not None:
        repo, revision = plan.model_download
        out.append(
            f"hf download {repo} --revision {revision}   # into the Hugging Face cache, first"
        )
    if plan.config_override is not None:
        urls = plan.env_plan.urls if plan.env_plan is not None else []
        out.append(
            f"# write {plan.job_env[TRAIN_CONFIG_ENV]} (the config with env_server: "
            f"{', '.join(urls)})"
        )
    for url, cmd in plan.env_servers:
        out.append(shlex.join(cmd) + " &   # stopped on exit")
        out.append(f"# wait for {url}/health")
    if plan.env_plan is not None and plan.env_plan.placement is Placement.RAY:
        out.append(
            f"# on the Ray cluster, the job's entrypoint starts {plan.env_plan.replicas} "
            "env-server "
            f"replica(s) as Ray actors ({plan.env_plan.cpus:g} CPU each; replica 0 keeps the store "
            f"{plan.env_plan.db}), writes their URLs to {plan.job_env[TRAIN_CONFIG_ENV]}, and "
            "stops them when the job ends"
        )
    if plan.ray_start_cmd:
        env = "".join(f"{k}={shlex.quote(v)} " for k, v in plan.ray_start_env.items())
        out.append(env + shlex.join(plan.ray_start_cmd) + " &   # stopped on exit")
    if plan.resume_marker is not None:
        m = plan.resume_marker
        out.append(
            f"# write {m.path}/latest_checkpointed_iteration.txt ({m.last_rollout}) and link "
            f"{m.path}/rollout -> {m.states} (the data position --load resumes)"
        )
    out.append(f"# write {plan.train_script_path}:")
    out += ["    " + line for line in plan.train_script.splitlines()]
    masked_submit = list(plan.submit_cmd)
    i = masked_submit.index("--runtime-env-json") + 1
    masked_submit[i] = json.dumps({"env_vars": _masked(plan, plan.job_env)})
    out.append(shlex.join(masked_submit))
    return "\n".join(out)
