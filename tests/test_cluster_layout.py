"""The launcher's cluster pieces on their own: GPU detection, Ray's node records, the layout fit.

The layouts are checked against how slime places a job (slime/ray/placement_group.py: one
placement group sorted by node and GPU, the actor first, the engines after it); the end-to-end
plans against a real multi-node Ray cluster are in tests/test_cluster.py.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tools.errors import ClusterError, LayoutError
from tools.launch.cluster import ClusterView, Node, _node, check_ray_address, ray_auth_headers
from tools.launch.env_servers import ENV_SERVER_SECRETS, ENV_SERVER_VARS, default_replicas
from tools.launch.gpus import GpuVendor, detect_local_gpus, vendor_of_accelerator
from tools.launch.layout import LayoutRequest, fit_layout


def req(**kw) -> LayoutRequest:
    base = dict(actor_gpus=None, rollout_gpus=None, colocate=True)
    return LayoutRequest(**{**base, **kw})


# --- layout ---------------------------------------------------------------------------------------
def test_colocated_takes_every_gpu_of_every_node() -> None:
    lay = fit_layout([8, 8], req())
    assert (lay.actor_nodes, lay.actor_gpus_per_node, lay.gpus_per_node) == (2, 8, 8)
    assert lay.rollout_gpus == 16 and lay.gpus_used == 16 and lay.engines == 16
    lay = fit_layout([8, 8], req(tp=2, engine_gpus=2))
    assert lay.engines == 8 and lay.actor_gpus_per_node == 8
    assert fit_layout([8], req(actor_gpus=4)).actor_gpus == 4


def test_split_defaults_half_the_nodes_or_half_a_node() -> None:
    two = fit_layout([8, 8], req(colocate=False))
    assert (two.actor_nodes, two.actor_gpus_per_node, two.rollout_gpus) == (1, 8, 8)
    three = fit_layout([8, 8, 8], req(colocate=False))
    assert (three.actor_gpus, three.rollout_gpus) == (8, 16)
    one = fit_layout([8], req(colocate=False))
    assert (one.actor_gpus, one.rollout_gpus) == (4, 4)
    only_actor = fit_layout([8, 8], req(colocate=False, actor_gpus=8, engine_gpus=4))
    assert only_actor.rollout_gpus == 8 and only_actor.engines == 2
    only_rollout = fit_layout([8], req(colocate=False, rollout_gpus=2))
    assert only_rollout.actor_gpus == 6


@pytest.mark.parametrize(
    "gpus,request_,words",
    [
        ([8, 8], req(actor_gpus=12), "--actor-gpus 12 spreads unevenly over nodes of 8"),
        (
            [8, 8],
            req(colocate=False, actor_gpus=16, rollout_gpus=8),
            "24 GPUs needed (actor 16 + rollout 8)",
        ),
        ([8, 8], req(colocate=False, actor_gpus=16), "cannot hold both"),
        ([8, 8], req(actor_gpus=32), "32 GPUs needed (actor 32), the cluster has 16"),
        ([8, 8], req(tp=3), "--tp 3 does not divide the actor's 8 GPUs per node"),
        ([8], req(tp=2, cp=3, actor_gpus=4), "--tp 2 x --cp 3 does not divide"),
        (
            [8, 8],
            req(colocate=False, actor_gpus=4, rollout_gpus=8, engine_gpus=8),
            "span GPUs 4-11",
        ),
        ([8], req(colocate=False, actor_gpus=4, rollout_gpus=3, engine_gpus=2), "do not split"),
        ([8, 4], req(), "different GPU counts (4, 8)"),
        ([8], req(rollout_gpus=4), "--rollout-gpus has no effect with --colocate"),
        ([1], req(colocate=False), "cannot hold both the actor and the rollout engines"),
        ([], req(), "no GPUs"),
    ],
)
def test_impossible_layouts_are_refused_in_one_line(gpus, request_, words) -> None:
    with pytest.raises(LayoutError) as e:
        fit_layout(gpus, request_)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_multi_node_engines_span_whole_nodes_only() -> None:
    lay = fit_layout([8, 8, 8], req(colocate=False, actor_gpus=8, engine_gpus=16))
    assert lay.engines == 1 and lay.rollout_gpus == 16
    with pytest.raises(LayoutError, match="across nodes"):
        fit_layout([8, 8], req(colocate=False, actor_gpus=4, rollout_gpus=12, engine_gpus=12))


# --- Ray's node records ---------------------------------------------------------------------------
def record(**kw) -> dict:
    base = {
        "node_ip": "10.0.0.2",
        "state": "ALIVE",
        "is_head_node": False,
        "resources_total": {"CPU": 32.0, "GPU": 8.0, "node:10.0.0.2": 1.0},
        "labels": {},
    }
    return {**base, **kw}


def test_node_records_give_gpus_cpus_and_vendor() -> None:
    n = _node(record())
    assert n == Node("10.0.0.2", 8, 32, GpuVendor.NVIDIA, head=False)
    amd_resource = record(
        resources_total={"CPU": 8.0, "GPU": 8.0, "accelerator_type:AMD-Instinct-MI300X-OAM": 1.0}
    )
    assert _node(amd_resource).vendor is GpuVendor.AMD
    amd_label = record(labels={"ray.io/accelerator-type": "AMD-Instinct-MI355X-OAM"})
    assert _node(amd_label).vendor is GpuVendor.AMD
    assert _node(record(state="DEAD")) is None
    cpu_only = _node(record(resources_total={"CPU": 4.0}))
    assert cpu_only.gpus == 0 and cpu_only.vendor is None


def test_mixed_vendors_are_refused() -> None:
    view = ClusterView(
        (Node("a", 8, 8, GpuVendor.NVIDIA), Node("b", 8, 8, GpuVendor.AMD)), "Ray at x", True
    )
    with pytest.raises(ClusterError, match="mixes GPU vendors"):
        _ = view.vendor
    assert view.describe() == "2 node(s) x 8 GPUs (AMD) from Ray at x"  # never raises
    assert (
        vendor_of_accelerator("H100") is GpuVendor.NVIDIA
        and vendor_of_accelerator(None) is GpuVendor.NVIDIA
    )


def test_ray_address_must_be_the_dashboard_url() -> None:
    assert check_ray_address("http://head:8265/") == "http://head:8265"
    for bad in ("head:6379", "auto", "ray://head:10001"):
        with pytest.raises(ClusterError, match="--ray-address http://HEAD:8265"):
            check_ray_address(bad)


def test_ray_auth_token_sources(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("from-file\n")
    assert ray_auth_headers({"RAY_AUTH_TOKEN": "t1"}) == {"Authorization": "Bearer t1"}
    assert ray_auth_headers({"RAY_AUTH_TOKEN_PATH": str(token)}) == {
        "Authorization": "Bearer from-file"
    }
    assert ray_auth_headers({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "t1"}) == {}


# --- this machine's GPUs --------------------------------------------------------------------------
def tools(monkeypatch: pytest.MonkeyPatch, root: Path, **scripts: str) -> None:
    """Only these tools on PATH (plus the shell's basics)."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    for name, body in scripts.items():
        p = bin_dir / name.replace("_", "-")
        p.write_text("#!/bin/sh\n" + body + "\n")
        p.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


def test_gpu_tools_in_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    text = (
        'if [ "$2" = "--json" ]; then exit 1; fi; printf "GPU: 0\\n  BDF: x\\nGPU: 1\\n  BDF: y\\n"'
    )
    tools(monkeypatch, tmp_path / "a", nvidia_smi="exit 9", amd_smi=text)
    found = detect_local_gpus()
    assert found is not None and (found.vendor, found.count, found.tool) == (
        GpuVendor.AMD,
        2,
        "amd-smi",
    )
    rocm = (
        'printf "GPU[0]\\t: Device ID: 0x74a1\\nGPU[0]\\t: Card SKU: x\\nGPU[1]\\t: Device '
        'ID: 0x74a1\\n"'
    )
    tools(monkeypatch, tmp_path / "b", rocm_smi=rocm)
    found = detect_local_gpus()
    assert found is not None and (found.count, found.tool) == (2, "rocm-smi")
    tools(monkeypatch, tmp_path / "c", nvidia_smi='echo "GPU 0: A100 (UUID: x)"', amd_smi="exit 1")
    found = detect_local_gpus()
    assert found is not None and (found.vendor, found.count) == (GpuVendor.NVIDIA, 1)
    tools(monkeypatch, tmp_path / "d", nvidia_smi="sleep 0; exit 3")
    assert detect_local_gpus() is None


# --- env-server replicas --------------------------------------------------------------------------
def test_default_replicas_and_the_variables_replicas_get() -> None:
    assert [default_replicas(n) for n in (1, 256, 257, 512, 2048)] == [1, 1, 2, 2, 8]
    from envs.gsm8k import DATA_DIR_ENV
    from envs.haiku import JUDGE_KEY_ENV, JUDGE_MODEL_ENV, JUDGE_URL_ENV

    for name in (DATA_DIR_ENV, JUDGE_URL_ENV, JUDGE_MODEL_ENV):
        assert name in ENV_SERVER_VARS
    assert JUDGE_KEY_ENV in ENV_SERVER_SECRETS


# --- the Ray job's entrypoint ---------------------------------------------------------------------
def test_job_config_lists_the_replicas_and_keeps_the_store_on_replica_0(tmp_path: Path) -> None:
    import yaml

    from contract.config import load_config
    from tools.launch.ray_job import parse_options, write_job_config

    cfg = tmp_path / "train_config.yaml"
    cfg.write_text(
        "environments:\n  gsm8k: {}\nenv_server: http://127.0.0.1:8080\nrun_name: r\n"
        "trajectories:\n  url: http://127.0.0.1:9000\n  spool_dir: spool\n"
    )
    out = tmp_path / "job" / "cfg.yaml"
    urls = ["http://10.0.0.2:4001", "http://10.0.0.3:4002"]
    write_job_config(str(cfg), urls, out)
    job = load_config(out)
    assert job.env_server_urls == urls and job.run_name == "r"
    # a loopback store is not one other nodes reach: replica 0 keeps the store instead
    assert job.trajectories.url is None
    assert yaml.safe_load(out.read_text())["trajectories"]["spool_dir"] == str(tmp_path / "spool")
    assert not list(out.parent.glob("*.tmp"))
    opts, cmd = parse_options(
        ["--replicas", "2", "--config", "c", "--db", "d", "--job-config", "j", "--", "echo", "hi"]
    )
    assert opts.replicas == 2 and opts.cpus == 1.0 and cmd == ["echo", "hi"]
    with pytest.raises(SystemExit):
        parse_options(["--replicas", "2", "--config", "c", "--db", "d", "--job-config", "j"])


def _replica_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("environments:\n  whodunit: {}\nrun_name: replica-test\n")
    return cfg


def _wait(predicate, timeout: float = 60.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_replica_restarts_its_server_on_the_same_url_and_stops(tmp_path: Path) -> None:
    import signal

    from tools.launch.ray_job import EnvServerReplica
    from tools.launch.services import answers

    replica = EnvServerReplica(str(_replica_config(tmp_path)), str(tmp_path / "t.db"), 1, 120.0)
    url = replica.start("127.0.0.1")
    try:
        assert answers(url)
        first = replica.pid()
        os.kill(first, signal.SIGKILL)  # the server dies under the job
        assert _wait(lambda: replica.restarts == 1), "not restarted"
        assert replica.pid() != first and answers(url)
    finally:
        replica.stop()
    assert not answers(url)


def test_replica_server_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from conftest import REPO

    from tools.launch.services import answers

    program = (
        "import sys, time\n"
        "from tools.launch.ray_job import EnvServerReplica\n"
        "r = EnvServerReplica(sys.argv[1], sys.argv[2], 1, 120.0)\n"
        "print(r.start('127.0.0.1'), r.pid(), flush=True)\n"
        "time.sleep(600)\n"
    )
    host = subprocess.Popen(
        [sys.executable, "-c", program, str(_replica_config(tmp_path)), str(tmp_path / "t.db")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url, pid = host.stdout.readline().split()
        assert answers(url)
        host.send_signal(signal.SIGKILL)  # like Ray killing the actor's worker outright
        host.wait(timeout=30)
        assert _wait(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 60.0)
        assert not answers(url)
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()


HEALTH_SERVER = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(b'ok')\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)
"""A service answering /health on the port it is given (what SupervisedService watches)."""


def test_a_supervised_service_comes_back_after_a_crash_and_stays_down_when_stopped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """run.sh's env servers (and ray_job's): killed -9 (the OOM killer), restarted on the same
    URL, also when the port is busy for a while (it tries again each second); stopped on purpose
    (SIGTERM, or Ctrl-C reaching the process group), left down."""
    import signal
    import sys

    from conftest import free_port

    from tools.launch.services import SupervisedService, answers

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = SupervisedService(
        "test service", [sys.executable, "-c", HEALTH_SERVER, str(port)], url
    )
    service.start()
    try:
        first = service.pid()
        assert first is not None and answers(url)
        with socket.socket() as squatter:  # the port is taken while it is down
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            os.kill(first, signal.SIGKILL)
            assert _wait(lambda: _bound(squatter, port), 10.0)
            squatter.listen()
            assert _wait(lambda: "trying again" in capsys.readouterr().out, 30.0)
        assert _wait(lambda: service.restarts == 1), "not restarted"
        assert service.pid() != first and answers(url)
        second = service.pid()
        assert second is not None
        os.kill(second, signal.SIGTERM)  # stopped on purpose
        assert _wait(lambda: "was stopped (-15); not restarting it" in capsys.readouterr().out)
        assert service.pid() == second and not answers(url) and service.restarts == 1
    finally:
        service.stop()


def _bound(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False


def _zombie(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# --- where the replicas go (issue 21 item 11) ---------------------------------------------------
def test_replicas_leave_a_cpu_less_head_and_spread_over_the_nodes() -> None:
    from tools.errors import ClusterError
    from tools.launch.replica_placement import NodeRoom, place_replicas

    head = NodeRoom("head", 0, 0, entry=True)  # a head with 0 CPUs: a common convention
    gpu = [NodeRoom(f"gpu{i}", 12, 8, entry=False) for i in range(2)]
    # slime's 16 GPU bundles take 8 CPUs of each GPU node: 4 left on each
    assert place_replicas([head, *gpu], 2, 1.0, 16) == [1, 2]
    assert place_replicas([head, *gpu], 5, 1.0, 16) == [1, 2, 1, 2, 1]
    # replica 0 (the store) stays on the entrypoint's node when it has room
    roomy = NodeRoom("head", 4, 0, entry=True)
    assert place_replicas([roomy, *gpu], 3, 1.0, 16) == [0, 1, 2]
    assert place_replicas([roomy, *gpu], 3, 2.0, 16) == [0, 1, 2]
    with pytest.raises(ClusterError, match=r"9 env-server replica\(s\) x 1 CPU do not fit") as e:
        place_replicas([head, *gpu], 9, 1.0, 16)
    assert "head 0, gpu0 4, gpu1 4" in str(e.value)
    # fewer bundles than GPUs: a node keeps the CPUs slime cannot claim there
    assert place_replicas([head, gpu[0]], 8, 1.0, 4) == [1] * 8


def test_ray_job_takes_the_tokenizer_and_the_bundles() -> None:
    from tools.launch.env_servers import replica_command
    from tools.launch.ray_job import parse_options

    opts, _ = parse_options(
        [
            *["--replicas", "2", "--config", "c", "--db", "d", "--job-config", "j"],
            *["--gpu-bundles", "16", "--tokenizer", "/m/Qwen3-4B", "--", "true"],
        ]
    )
    assert opts.gpu_bundles == 16 and opts.tokenizer == ["/m/Qwen3-4B"]
    cmd = replica_command("c.yaml", "http://10.0.0.2:4001", "d", 1, opts.tokenizer)
    assert cmd[cmd.index("--tokenizer") + 1] == "/m/Qwen3-4B" and cmd[-2:] == ["--role", "env"]


# --- slime's driver dies with the job's entrypoint (issue 21 item 10) ---------------------------
def test_the_driver_dies_when_its_wrapper_is_killed(tmp_path: Path) -> None:
    """`kill -9` of the wrapper (python -m tools.launch.ray_job, the Ray job's entrypoint) must
    take the command it runs (slime's driver) with it: real processes, no Ray needed."""
    import signal
    import subprocess
    import sys

    from conftest import REPO

    pid_file = tmp_path / "driver.pid"
    driver = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    )
    wrapper = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom tools.launch.ray_job import run_child\n"
            "sys.exit(run_child(sys.argv[1:]))\n",
            sys.executable,
            "-c",
            driver,
        ],
        cwd=REPO,
    )
    try:
        assert _wait(lambda: pid_file.is_file() and pid_file.read_text() != "", 60.0)
        pid = pid_file.read_text()
        assert Path(f"/proc/{pid}").exists()
        wrapper.send_signal(signal.SIGKILL)
        wrapper.wait(timeout=30)
        assert _wait(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 30.0), (
            "slime's driver outlived its wrapper"
        )
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()
        if pid_file.is_file() and Path(f"/proc/{pid_file.read_text()}").exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_a_store_on_a_network_filesystem_is_named_in_a_cluster_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cluster the default store (runs/trajectories.db in the project directory) sits on
    the shared filesystem: the plan says so, and what that means (one machine at a time)."""
    import argparse

    from contract.config import parse_config
    from tools.launch import filesystems
    from tools.launch.env_servers import plan_env_servers
    from tools.launch.filesystems import network_filesystem

    shared = tmp_path / "shared"
    spaced = tmp_path / "my share"
    for d in (shared, spaced, shared / "scratch"):
        d.mkdir()
    table = tmp_path / "mountinfo"
    table.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"40 22 0:50 / {shared} rw,relatime shared:30 - nfs4 head:/export rw,vers=4.2\n"
        f"41 22 0:51 / {str(spaced).replace(' ', chr(92) + '040')} rw - lustre mds@tcp:/fs rw\n"
        f"42 40 0:52 / {shared}/scratch rw - tmpfs tmpfs rw\n"
    )
    monkeypatch.setattr(filesystems, "MOUNTINFO", table)
    db = shared / "runs" / "trajectories.db"  # not made yet: its folder's filesystem counts
    assert network_filesystem(db) == "nfs4"
    assert network_filesystem(spaced / "t.db") == "lustre"
    assert network_filesystem(shared / "scratch" / "t.db") is None  # a local mount inside it
    assert network_filesystem(tmp_path / "elsewhere.db") is None

    opts = argparse.Namespace(
        env_server=None, env_servers=2, env_server_cpus=1.0, db=str(db), model="m", config="c"
    )
    cfg = parse_config({"environments": {"gsm8k": {}}, "env_server": "http://127.0.0.1:8080"})
    notes: list[str] = []
    plan = plan_env_servers(opts, cfg, True, False, 64, 0, [], notes)
    assert plan is not None
    [line] = [n for n in notes if "trajectory store" in n]
    assert f"{db} is on nfs4, shared by the nodes" in line and "--db /local/path" in line
    notes.clear()
    opts.db = str(tmp_path / "elsewhere.db")
    plan_env_servers(opts, cfg, True, False, 64, 0, [], notes)
    assert not [n for n in notes if "trajectory store" in n]
