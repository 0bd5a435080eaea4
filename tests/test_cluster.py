"""run.sh against a real Ray cluster: a head with no CPU and no GPU (a common convention) and two
nodes of 8 GPUs (Ray's view; the GPUs are declared, never used), the layout and refusals it
reads from Ray, env servers started on the cluster, and the job's life and exit code.

The cluster is one head and two worker raylets on this machine (tests/ray_cluster.py), started
once for the module and stopped after. When network namespaces are available, its nodes' IP is
this machine's end of a veth link to a second namespace (tests/netns.py): a process in there is
another host, which reaches the cluster's nodes but not this machine's loopback. The end-to-end
test runs the bridge from there, as slime's rollout manager would run on another node.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sqlite3
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from conftest import REPO
from launch_world import (
    VENDORED,
    VENDORED_MEGATRON,
    VERSIONS,
    base_args,
    dry_run,
    known_flags,
    leaves_trajectories,
    line_for,
    make_slime,
    make_world,
    missing_lines,
    port_open,
    real_parse_missing,
    run_sh,
    slime_parse_args,
    unpack_vendored,
)
from netns import Namespace, netns_unavailable, network_namespace
from pidns import in_own_pid_namespace, pid_namespace_unavailable
from ray_cluster import RayCluster, ray_available, ray_cluster

pytestmark = [
    pytest.mark.long(3),
    pytest.mark.skipif(
        not ray_available(), reason="needs ray[default] in this Python (test extra)"
    ),
    pytest.mark.timeout(900),
]

TOKENIZER_DIR = REPO / ".cache" / "qwen3-tokenizer"
NO_AUTH = {"RAY_AUTH_MODE": "disabled"}  # the test cluster runs without Ray's token auth


@pytest.fixture(scope="module")
def namespace() -> Iterator[Namespace | None]:
    if netns_unavailable():
        yield None
        return
    with network_namespace() as ns:
        yield ns


@pytest.fixture(scope="module")
def cluster(namespace: Namespace | None) -> Iterator[RayCluster]:
    """A head with 0 CPUs, then two nodes x 8 GPUs x 12 CPUs, on the namespace link's address
    when there is one."""
    old = os.environ.get("RAY_AUTH_MODE")
    os.environ.update(NO_AUTH)
    head, node = {"gpus": 0, "cpus": 0}, {"gpus": 8, "cpus": 12}
    ip = namespace.host_ip if namespace else None
    try:
        with ray_cluster([head, node, node], node_ip=ip) as c:
            yield c
    finally:
        if old is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old


@pytest.fixture
def world(tmp_path: Path, cluster: RayCluster) -> dict:
    w = make_world(tmp_path)
    w["ray"] = cluster.dashboard
    return w


@pytest.mark.parametrize("version", VERSIONS)
def test_two_nodes_of_eight_from_rays_view(world: dict, version: str) -> None:
    slime = make_slime(world["tmp"] / "slime", version)
    d = dry_run(world, slime, env=NO_AUTH)
    assert d.check("Ray cluster").startswith(f"ok       Ray cluster: running at {world['ray']}")
    assert "2 node(s) x 8 GPUs from Ray at" in d.check("GPUs")
    # colocated sync: the actor spans both nodes, the engines share its 16 GPUs
    assert (d.flag("--actor-num-nodes"), d.flag("--actor-num-gpus-per-node")) == ("2", "8")
    assert d.flag("--num-gpus-per-node") == "8" and "--colocate" in d.train_argv
    assert d.ray_start() is None  # the cluster runs already: nothing to start here
    assert d.emitted_flags() - known_flags(version) == set()
    # env servers go on the cluster: the job's entrypoint starts 2 replicas (512 episodes in
    # flight) as Ray actors and writes their URLs into the job's own TRAIN_CONFIG
    assert d.wrapper[:3] == ["python3", "-m", "tools.launch.ray_job"]
    assert d.wrapper[d.wrapper.index("--replicas") + 1] == "2"
    assert d.wrapper[d.wrapper.index("--job-config") + 1] == d.env["TRAIN_CONFIG"]
    assert d.env["ENV_SERVER_API_KEY"] == "***"  # a per-job key guards the replicas
    assert not [c for c in d.commands if "envs.server" in c]  # nothing starts on this machine
    # the replicas' token view gets the model's tokenizer; they leave slime's 16 GPU bundles a CPU
    assert d.wrapper[d.wrapper.index("--tokenizer") + 1] == str(world["model"].resolve())
    assert d.wrapper[d.wrapper.index("--gpu-bundles") + 1] == "16"
    # the head has no CPU: replica 0 (the store) and replica 1 go on the two GPU nodes
    servers = d.check("env servers")
    assert servers.startswith("ok       env servers: 2 replica(s) x 1 CPU on ")
    assert servers.count(" x1") == 2 and "(head)" not in servers.split("; ")[0]
    assert servers.endswith("(the entrypoint's node has no CPU to spare)")
    assert any("is loopback, which other nodes do not reach" in n for n in d.notes)


@pytest.mark.vendored
@pytest.mark.skipif(real_parse_missing() is not None, reason=str(real_parse_missing()))
def test_two_nodes_parse_with_slimes_real_parse_args(world: dict) -> None:
    """The 2 x 8 plans (sync colocated, async split) as slime main's own parse_args reads them.
    (Skips before its fixture starts the cluster.)"""
    slime = unpack_vendored(VENDORED["main"])
    meg = str(unpack_vendored(VENDORED_MEGATRON))
    plans = {
        name: dry_run(world, slime, "--megatron-path", meg, *args, env=NO_AUTH).train_argv[2:]
        for name, args in {"sync": [], "async": ["--mode", "async"]}.items()
    }
    parsed = slime_parse_args(plans, "main", world)
    assert not {k: v["error"] for k, v in parsed.items() if "error" in v}
    sync, asy = parsed["sync"], parsed["async"]
    assert (sync["actor_num_nodes"], sync["actor_num_gpus_per_node"]) == (2, 8)
    assert sync["colocate"] and sync["rollout_num_gpus"] == 16
    assert (asy["actor_num_nodes"], asy["actor_num_gpus_per_node"]) == (1, 8)
    assert not asy["colocate"] and asy["rollout_num_gpus"] == 8


def test_split_layouts_and_async_on_two_nodes(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "main")
    d = dry_run(world, slime, "--no-colocate", env=NO_AUTH)
    assert (d.flag("--actor-num-nodes"), d.flag("--actor-num-gpus-per-node")) == ("1", "8")
    assert d.flag("--rollout-num-gpus") == "8" and "--colocate" not in d.train_argv
    d = dry_run(world, slime, "--mode", "async", "--rollout-tp", "4", env=NO_AUTH)
    assert d.train_argv[1].endswith("train_async.py") and d.flag("--rollout-num-gpus") == "8"
    assert d.flag("--rollout-num-gpus-per-engine") == "4"
    d = dry_run(world, slime, "--mode", "fully-async", "--actor-gpus", "4", env=NO_AUTH)
    assert d.flag("--actor-num-gpus-per-node") == "4" and d.flag("--rollout-num-gpus") == "12"


def test_impossible_layouts_on_the_cluster(world: dict) -> None:
    slime = make_slime(world["tmp"] / "slime", "v0.3.1")

    def missing(*extra: str, name: str = "GPU layout") -> str:
        return line_for(missing_lines(run_sh(*base_args(world, slime, *extra), env=NO_AUTH)), name)

    assert "--actor-gpus 12 spreads unevenly over nodes of 8" in missing("--actor-gpus", "12")
    assert "24 GPUs needed (actor 16 + rollout 8), the cluster has 16" in missing(
        "--no-colocate", "--actor-gpus", "16", "--rollout-gpus", "8"
    )
    assert "--tp 3 does not divide" in missing("--tp", "3")
    line = missing("--env-servers", "9", name="env servers")
    assert "9 replica(s) x 1 CPU + 16 GPU bundles (1 CPU each) + 2 drivers need 27 CPUs" in line
    assert "the cluster has 24" in line and "lower --env-servers" in line
    # enough CPUs in all, but no node has 5 once slime's bundles take theirs
    line = missing("--env-servers", "1", "--env-server-cpus", "5", name="env servers")
    assert "1 env-server replica(s) x 5 CPU do not fit" in line
    assert "(head) 0" in line and line.count(") 4") == 2
    loopback = run_sh(*base_args(world, slime, "--env-server", "http://127.0.0.1:9"), env=NO_AUTH)
    assert loopback.returncode == 2 and "is a loopback address" in loopback.stderr


def _probe_script(ns: Namespace, w: Path, tasks: Path, episodes: int, dashboard: str) -> str:
    """The job's command in place of slime: where Ray put the replicas and what runs them (on
    this host); the bridge in the other namespace (another host), against a scripted engine
    there, with the job's TRAIN_CONFIG; then each replica's metrics."""
    py = sys.executable
    where = [py, "-c", ACTORS_PROBE, dashboard]
    stub = ns.wrap([py, str(REPO / "tests" / "sglang_stub.py"), "--port", "30555"])
    stub += ["--script", str(w / "turns.json"), "--tokenizer", str(TOKENIZER_DIR)]
    wait = ns.wrap(
        [
            "bash",
            "-c",
            "for i in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/30555) "
            "2>/dev/null && exit 0; sleep 0.5; done; exit 1",
        ]
    )
    rollout = ns.wrap([py, "-m", "tools.rollout_only", "--engine-url", "http://127.0.0.1:30555"])
    rollout += ["--model", str(TOKENIZER_DIR), "--task-data", str(tasks), "--num-tasks"]
    rollout += [str(episodes // 2), "--n-samples", "2", "--json"]
    metrics = ns.wrap([py, "-c", METRICS_PROBE])
    killed = [py, "-c", leaves_trajectories(LEFT_BEHIND)]
    if pid_namespace_unavailable() is None:  # another host's pids: its pid (2) is alive here
        killed = in_own_pid_namespace(killed)
    killed = ns.wrap(killed)
    return (
        "set -e\n"
        f"{shlex.join(where)} > {w / 'actors.json'}\nps -ww -eo args > {w / 'ps.txt'}\n"
        f"{shlex.join(stub)} &\nSTUB=$!\ntrap 'kill $STUB 2>/dev/null' EXIT\n{shlex.join(wait)}\n"
        f'{shlex.join(rollout)} --config "$TRAIN_CONFIG" > {w / "result.json"}\n'
        f'{shlex.join(metrics)} "$TRAIN_CONFIG" > {w / "metrics.json"}\n'
        f"{shlex.join(killed)} || true\n"  # a worker killed with its episodes in its journal
    )


LEFT_BEHIND = 5
"""Episodes a worker of the job leaves in its journal (killed): the job's entrypoint delivers
them to replica 0's store before the replicas stop (tools/launch/leftovers.py). The worker has
its own pid namespace too, as on another node: its pid there (2) is alive on this host, so only
the journal's lock says it died (bridge/owned_files.py)."""


# Run on this host during the job: the node of each live env-server replica actor (Ray's state API).
ACTORS_PROBE = """
import json, sys, httpx
r = httpx.get(sys.argv[1] + "/api/v0/actors", params={"detail": "1", "limit": "10000"}, timeout=30)
print(json.dumps([a["node_id"] for a in r.json()["data"]["result"]["result"]
                  if a["class_name"] == "EnvServerReplica" and a["state"] == "ALIVE"]))
"""

# Run inside the namespace: per replica of the job's config, sessions created (its /metrics, with
# the job's key), and whether /metrics without the key is refused.
METRICS_PROBE = """
import json, os, sys, httpx, yaml
urls = yaml.safe_load(open(sys.argv[1]))["env_server"]
key = {"X-API-Key": os.environ["ENV_SERVER_API_KEY"]}
out = []
for u in urls:
    text = httpx.get(u + "/metrics", headers=key, timeout=10).text
    made = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith("ors_sessions_created_total"))
    out.append({"url": u, "sessions": made,
                "unkeyed": httpx.get(u + "/metrics", timeout=10).status_code})
print(json.dumps(out))
"""


def test_env_servers_on_ray_serve_another_host_and_stop_with_the_job(
    world: dict, cluster: RayCluster, namespace: Namespace | None
) -> None:
    if namespace is None:
        pytest.skip(f"no second network namespace: {netns_unavailable()}")
    if not (TOKENIZER_DIR / "tokenizer.json").is_file():
        pytest.skip("needs the Qwen3 tokenizer (bash setup.sh --test)")
    from tools.launch.cli import parse_options
    from tools.launch.execute import execute
    from tools.launch.plan import build_plan

    w: Path = world["tmp"]
    run_name = f"cluster-e2e-{uuid.uuid4().hex[:8]}"
    world["config"].write_text(
        "environments:\n  whodunit:\n    max_turns: 2\n"
        f"env_server: http://127.0.0.1:8080\nrun_name: {run_name}\n"
        f"trajectories:\n  spool_dir: {w / 'spool'}\n"
    )
    episodes = 16
    rows = [
        {
            "prompt": [{"role": "user", "content": "?"}],
            "label": None,
            "tools": [],
            "metadata": {"env": "whodunit", "split": "train", "index": i},
        }
        for i in range(episodes // 2)
    ]
    world["tasks"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    answer = '{"name": "submit_answer", "arguments": {"who": "x", "what": "y", "where": "z"}}'
    turn = {"text": f"<tool_call>\n{answer}\n</tool_call><|im_end|>"}
    (w / "turns.json").write_text(json.dumps([turn] * episodes))
    slime = make_slime(w / "slime", "main")
    db = w / "store.db"
    opts, extra = parse_options(
        base_args(world, slime, "--python", sys.executable, "--env-servers", "2", "--db", str(db))
    )
    plan = build_plan(opts, extra)
    assert plan.ok, [c.line() for c in plan.checks if not c.ok]
    assert plan.ray_start_cmd is None and plan.job_wrapper
    probe = _probe_script(namespace, w, world["tasks"], episodes, cluster.dashboard)
    plan.train_cmd = ["bash", "-c", probe]
    try:
        assert execute(plan) == 0
        job_config = yaml.safe_load(Path(plan.job_env["TRAIN_CONFIG"]).read_text())
        result = json.loads((w / "result.json").read_text().strip().splitlines()[-1])
        metrics = json.loads((w / "metrics.json").read_text())
        replica_nodes = json.loads((w / "actors.json").read_text())
        processes = (w / "ps.txt").read_text().splitlines()
    finally:
        shutil.rmtree(REPO / "runs" / run_name, ignore_errors=True)
    # one replica on each GPU node, none on the head (it has no CPU), the same on every run
    head = next(n["node_id"] for n in cluster.alive_nodes() if n["is_head_node"])
    assert len(replica_nodes) == 2 and len(set(replica_nodes)) == 2 and head not in replica_nodes
    # the replicas listen on the node's address (the namespace's link), never on loopback
    urls = job_config["env_server"]
    assert len(urls) == 2 and {urlparse(u).hostname for u in urls} == {namespace.host_ip}
    # each replica's server may load the model's tokenizer in its token view
    binds = [f"--host {urlparse(u).hostname} --port {urlparse(u).port} " for u in urls]
    servers = [p for p in processes if "envs.server" in p and any(b in p + " " for b in binds)]
    assert len(servers) == 2, processes
    assert all(f"--tokenizer {world['model'].resolve()} " in p for p in servers), servers
    # every episode ran against them from the other host, without an env error ...
    summary = next(e for e in result["envs"] if e["env"] == "whodunit")
    assert summary["episodes"] == episodes and summary["env_errors"] == 0
    assert summary["stop_reasons"] == {"env_finished": episodes}
    # ... spread over both replicas (sessions pinned per server), each guarded by the job's key
    assert [m["url"] for m in metrics] == urls and sum(m["sessions"] for m in metrics) == episodes
    assert all(m["sessions"] > 0 for m in metrics) and {m["unkeyed"] for m in metrics} == {401}
    # ... and every trajectory reached the one store replica 0 keeps, those a killed worker left
    # in its journal too
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        stored = con.execute(
            "SELECT COUNT(*) FROM rollouts r JOIN runs ON runs.id = r.run_id WHERE runs.name = ?",
            (run_name,),
        ).fetchone()[0]
    finally:
        con.close()
    assert stored == episodes + LEFT_BEHIND
    # the job is over: the replicas are gone
    for u in urls:
        p = urlparse(u)
        assert not port_open(p.port, p.hostname), f"{u} still serves after the job"


def test_run_sh_exits_with_the_drivers_code(world: dict) -> None:
    """`ray job submit` exits 1 for any failed job; run.sh returns what slime's driver returned,
    as Ray recorded it."""
    from tools.launch.cli import parse_options
    from tools.launch.execute import execute
    from tools.launch.plan import build_plan

    run_name = f"cluster-exit-{uuid.uuid4().hex[:8]}"
    # hosted environments only: no env server, the job runs the driver directly
    world["config"].write_text(f"environments:\n  Org/Env: {{}}\nrun_name: {run_name}\n")
    slime = make_slime(world["tmp"] / "slime", "main")
    opts, extra = parse_options(base_args(world, slime))
    plan = build_plan(opts, extra, environ={**os.environ, "OPENREWARD_API_KEY": "k"})
    assert plan.ok and not plan.job_wrapper, [c.line() for c in plan.checks if not c.ok]
    plan.train_cmd = ["bash", "-c", "exit 7"]
    try:
        assert execute(plan) == 7
    finally:
        shutil.rmtree(REPO / "runs" / run_name, ignore_errors=True)


def test_the_driver_dies_with_the_jobs_entrypoint(world: dict) -> None:
    """`kill -9` of the job's entrypoint (tools.launch.ray_job, which started the env-server
    replicas): the replicas are reaped, and slime's driver dies too instead of running on
    (holding its GPUs); run.sh reports the signal as a shell does (128 + 9)."""
    import signal
    import threading
    import time

    from tools.launch.cli import parse_options
    from tools.launch.execute import execute
    from tools.launch.plan import build_plan

    w: Path = world["tmp"]
    run_name = f"cluster-orphan-{uuid.uuid4().hex[:8]}"
    world["config"].write_text(
        f"environments:\n  gsm8k: {{}}\nenv_server: http://127.0.0.1:8080\nrun_name: {run_name}\n"
    )
    slime = make_slime(w / "slime", "main")
    opts, extra = parse_options(
        base_args(
            world, slime, "--python", sys.executable, "--env-servers", "1", "--db", str(w / "s.db")
        )
    )
    plan = build_plan(opts, extra)
    assert plan.ok and plan.job_wrapper, [c.line() for c in plan.checks if not c.ok]
    pids = w / "pids"  # the driver's pid and its parent's (the wrapper)
    plan.train_cmd = [
        "bash",
        "-c",
        f"echo $$ $PPID > {pids}.tmp && mv {pids}.tmp {pids}; sleep 600",
    ]
    found: dict[str, int] = {}

    def kill_the_wrapper() -> None:
        deadline = time.monotonic() + 300
        while not pids.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        if pids.is_file():
            found["driver"], found["wrapper"] = map(int, pids.read_text().split())
            os.kill(found["wrapper"], signal.SIGKILL)

    killer = threading.Thread(target=kill_the_wrapper, daemon=True)
    killer.start()
    try:
        code = execute(plan)
        killer.join(timeout=10)
        config = yaml.safe_load(Path(plan.job_env["TRAIN_CONFIG"]).read_text())
    finally:
        if found.get("driver") and Path(f"/proc/{found['driver']}").exists():
            os.kill(found["driver"], signal.SIGKILL)
        shutil.rmtree(REPO / "runs" / run_name, ignore_errors=True)
    assert found, "the driver never started"
    assert code == 128 + signal.SIGKILL
    deadline = time.monotonic() + 60
    while Path(f"/proc/{found['driver']}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{found['driver']}").exists(), "slime's driver outlived its wrapper"
    url = urlparse(config["env_server"][0])
    while port_open(url.port, url.hostname) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not port_open(url.port, url.hostname), "the replica outlived the job"
