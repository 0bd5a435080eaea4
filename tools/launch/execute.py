"""Carry out a launch plan: download the model when the plan says so, write the job's config,
start the env servers and the Ray head it needs, submit slime's driver with `ray job submit`,
and stop what it started on exit (Ctrl-C and SIGTERM included; the Ray head it started is
stopped, never `ray stop`). An env server it started that crashes or is killed during the run is
restarted on its URL (tools/launch/services.py: SupervisedService). What it starts also dies
with it when run.sh is killed outright (the parent-death signal). Once the job is over (not
after a Ctrl-C), the trajectories its sink left on disk are delivered before the env servers
stop (tools/launch/leftovers.py). Its exit code is the job's: the driver's own, as Ray recorded
it."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from contract.config import TRAIN_CONFIG_ENV
from tools.errors import ServiceError
from tools.launch.cluster import ray_dashboard_up
from tools.launch.job import job_exit_code
from tools.launch.leftovers import report_leftovers
from tools.launch.model_source import download
from tools.launch.no_train import write_resume_marker
from tools.launch.plan import LaunchPlan
from tools.launch.services import parent_death_signal, stop, supervised_process

RAY_HEAD_TIMEOUT = 180.0


def _stop_job(plan: LaunchPlan) -> None:
    try:
        subprocess.run(
            [plan.submit_cmd[0], "job", "stop", "--address", plan.ray_address, plan.submission_id],
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"run.sh: could not stop Ray job {plan.submission_id}: {e}", file=sys.stderr)


@contextlib.contextmanager
def _ray_head(plan: LaunchPlan) -> Iterator[subprocess.Popen]:
    """`ray start --head --block` in the background until the dashboard answers; stopped on exit
    (only this head: never `ray stop`, which stops every Ray on the machine)."""
    assert plan.ray_start_cmd is not None
    print(f"run.sh: starting Ray head: {shlex.join(plan.ray_start_cmd)}", flush=True)
    proc = subprocess.Popen(
        plan.ray_start_cmd,
        env={**os.environ, **plan.ray_start_env},
        start_new_session=True,
        preexec_fn=parent_death_signal() if sys.platform == "linux" else None,
    )
    try:
        deadline = time.monotonic() + RAY_HEAD_TIMEOUT
        while not ray_dashboard_up(plan.ray_address):
            if proc.poll() is not None:
                raise ServiceError(f"ray start exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                raise ServiceError(f"Ray's dashboard did not answer at {plan.ray_address}")
            time.sleep(0.5)
        yield proc
    finally:
        stop(proc, timeout=60)
        print("run.sh: Ray head stopped", flush=True)


def _deliver_leftovers(plan: LaunchPlan, job_over: list[bool]) -> None:
    """The trajectories the job's sink left in its spool, delivered once the job is over (not
    after a Ctrl-C); one line says how many (tools/launch/leftovers.py)."""
    if job_over:
        report_leftovers(plan.job_env[TRAIN_CONFIG_ENV], "run.sh")


def _download_model(repo_id: str, revision: str) -> None:
    """The plan's Hub model into the Hugging Face cache (huggingface_hub's progress bars)."""
    print(f"run.sh: downloading {repo_id} (revision {revision[:12]}) from the Hub", flush=True)
    try:
        path = download(repo_id, revision)
    except Exception as e:  # the Hub, the network or the disk: one line either way
        raise ServiceError(f"downloading {repo_id}: {' '.join(str(e).split())[:300]}") from None
    print(f"run.sh: {repo_id} is in {path}", flush=True)


def execute(plan: LaunchPlan) -> int:
    """Run the plan; stop the env servers and the Ray head it started, also on Ctrl-C/SIGTERM."""

    def _term(signum, frame):  # SIGTERM takes the same cleanup path as Ctrl-C
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _term)
    try:
        if plan.model_download is not None:
            _download_model(*plan.model_download)
        with contextlib.ExitStack() as stack:
            if plan.config_override is not None:
                p = Path(plan.job_env[TRAIN_CONFIG_ENV])
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(yaml.safe_dump(plan.config_override, sort_keys=False))
            for url, cmd in plan.env_servers:
                print(f"run.sh: starting env server: {shlex.join(cmd)}", flush=True)
                Path(cmd[cmd.index("--db") + 1]).parent.mkdir(parents=True, exist_ok=True)
                stack.enter_context(supervised_process("env server", cmd, url))
                stack.callback(print, f"run.sh: env server {url} stopped", flush=True)
                print(f"run.sh: env server up at {url}", flush=True)
            job_over: list[bool] = []
            # after the Ray head (if it is ours) stops, before the env servers do
            stack.callback(_deliver_leftovers, plan, job_over)
            if plan.ray_start_cmd:
                stack.enter_context(_ray_head(plan))
            if plan.resume_marker is not None:
                write_resume_marker(plan.resume_marker)
            plan.train_script_path.parent.mkdir(parents=True, exist_ok=True)
            plan.train_script_path.write_text(plan.train_script)
            print(f"run.sh: submitting Ray job {plan.submission_id}", flush=True)
            try:
                submitted = subprocess.run(plan.submit_cmd).returncode
                job_over.append(True)
                return job_exit_code(plan.ray_address, plan.submission_id, submitted)
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
