"""The machines a training job runs on: nodes with their GPUs and CPUs, read from Ray or this
machine.

On an existing Ray cluster the view comes from Ray itself: the state API of the dashboard
that `ray job submit` talks to (`GET /api/v0/nodes`, what `ray list nodes` reads), alive
nodes only, GPUs from each node's `GPU` resource and the vendor from Ray's accelerator type.
When run.sh starts Ray on this machine, the view is this machine (`tools.launch.gpus`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx

from tools.errors import ClusterError
from tools.launch.gpus import GpuVendor, LocalGpus, vendor_of_accelerator

DEFAULT_RAY_ADDRESS = "http://127.0.0.1:8265"
RAY_ADDRESS_ENV = "RAY_ADDRESS"
_ACCELERATOR_RESOURCE = "accelerator_type:"
_ACCELERATOR_LABEL = "ray.io/accelerator-type"


@dataclass(frozen=True)
class Node:
    """One machine of the cluster."""

    ip: str
    gpus: int
    cpus: int
    vendor: GpuVendor | None
    """None on a node without GPUs."""
    head: bool = False
    accelerator: str | None = None
    """Ray's accelerator type of its GPUs; None when its GPUs are only a resource label (a head
    started with --num-gpus on a machine without them)."""


@dataclass(frozen=True)
class ClusterView:
    """The nodes a job can use and where that knowledge came from."""

    nodes: tuple[Node, ...]
    source: str
    """For the prerequisite line: "Ray at URL" or the tool that listed this machine's GPUs."""
    on_ray: bool
    """True: an existing Ray cluster (env servers go on it); False: this machine alone."""

    @property
    def gpu_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.gpus > 0]

    @property
    def one_node_here(self) -> bool:
        """One node, and it is this machine (`ray start --head` here): the job's processes reach
        servers on loopback as run.sh does."""
        return len(self.nodes) == 1 and is_local_address(self.nodes[0].ip)

    @property
    def real_gpus(self) -> bool:
        """Some node has GPUs that are more than a resource label: this machine's (found by its
        tools), or on Ray a node that reports an accelerator type."""
        if not self.on_ray:
            return bool(self.gpu_nodes)
        return any(n.accelerator for n in self.gpu_nodes)

    @property
    def total_gpus(self) -> int:
        return sum(n.gpus for n in self.nodes)

    @property
    def total_cpus(self) -> int:
        return sum(n.cpus for n in self.nodes)

    @property
    def vendor(self) -> GpuVendor | None:
        """The GPUs' vendor; ClusterError when the nodes mix vendors."""
        vendors = {n.vendor for n in self.gpu_nodes}
        if len(vendors) > 1:
            raise ClusterError(
                "the cluster mixes GPU vendors "
                f"({', '.join(sorted(v.value for v in vendors if v))}); "
                "slime runs one vendor per job: use a cluster of one kind"
            )
        return next(iter(vendors), None)

    def describe(self) -> str:
        gpu_nodes = self.gpu_nodes
        counts = sorted({n.gpus for n in gpu_nodes})
        shape = (
            f"{len(gpu_nodes)} node(s) x {counts[0]} GPUs"
            if len(counts) == 1
            else f"{len(gpu_nodes)} nodes with {'/'.join(map(str, counts))} GPUs"
        )
        amd = any(n.vendor is GpuVendor.AMD for n in gpu_nodes)
        return f"{shape}{' (AMD)' if amd else ''} from {self.source}"


def is_local_address(ip: str) -> bool:
    """`ip` is an address of this machine (a socket can bind it)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((ip, 0))
    except (OSError, ValueError):
        return False
    return True


def default_ray_address(environ: dict[str, str] | None = None) -> str:
    """The dashboard address run.sh submits to: $RAY_ADDRESS when it is one, else the local
    default."""
    env = os.environ if environ is None else environ
    value = env.get(RAY_ADDRESS_ENV, "").strip()
    return value or DEFAULT_RAY_ADDRESS


def check_ray_address(address: str) -> str:
    """The dashboard URL, or ClusterError when `address` is not an http(s) URL (e.g. a GCS
    host:port)."""
    u = urlparse(address)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ClusterError(
            f"Ray address {address!r} is not the dashboard's http address that `ray job submit` "
            "uses; pass --ray-address http://HEAD:8265 (or set RAY_ADDRESS to it)"
        )
    return address.rstrip("/")


def ray_auth_headers(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The bearer token Ray's own clients send to a dashboard with token auth: $RAY_AUTH_TOKEN,
    else the file $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token; none when RAY_AUTH_MODE=disabled."""
    env = os.environ if environ is None else environ
    if env.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = env.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(env.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        with contextlib.suppress(OSError):
            token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def ray_dashboard_up(address: str) -> bool:
    """True when a Ray dashboard answers at `address` (also when it asks for a token we lack)."""
    try:
        r = httpx.get(f"{address.rstrip('/')}/api/version", headers=ray_auth_headers(), timeout=2.0)
    except httpx.HTTPError:
        return False
    return r.status_code in (200, 401, 403)


def _node(record: dict) -> Node | None:
    if record.get("state") != "ALIVE":
        return None
    res = record.get("resources_total") or {}
    gpus = int(float(res.get("GPU", 0) or 0))
    accel = (record.get("labels") or {}).get(_ACCELERATOR_LABEL) or next(
        (k[len(_ACCELERATOR_RESOURCE) :] for k in res if k.startswith(_ACCELERATOR_RESOURCE)), None
    )
    return Node(
        ip=str(record.get("node_ip") or "?"),
        gpus=gpus,
        cpus=int(float(res.get("CPU", 0) or 0)),
        vendor=vendor_of_accelerator(accel) if gpus else None,
        head=bool(record.get("is_head_node")),
        accelerator=accel if gpus else None,
    )


def read_ray_cluster(address: str, timeout: float = 15.0) -> ClusterView:
    """The alive nodes of the Ray cluster whose dashboard answers at `address`."""
    url = f"{address.rstrip('/')}/api/v0/nodes"
    try:
        r = httpx.get(
            url,
            params={"limit": 10000, "detail": "true"},
            headers=ray_auth_headers(),
            timeout=timeout,
        )
        if r.status_code in (401, 403):
            raise ClusterError(
                f"the Ray dashboard at {address} requires a token: set RAY_AUTH_TOKEN "
                "(ray get-auth-token prints it on the head)"
            )
        r.raise_for_status()
        records = r.json()["data"]["result"]["result"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
        raise ClusterError(f"cannot read the Ray cluster's nodes from {url}: {e}") from None
    nodes = tuple(n for n in (_node(rec) for rec in records if isinstance(rec, dict)) if n)
    if not nodes:
        raise ClusterError(f"the Ray cluster at {address} reports no alive nodes")
    return ClusterView(nodes, f"Ray at {address}", on_ray=True)


def local_view(gpus: LocalGpus | None) -> ClusterView | None:
    """This machine as a one-node cluster; None when no tool lists a GPU."""
    if gpus is None:
        return None
    node = Node("127.0.0.1", gpus.count, os.cpu_count() or 1, gpus.vendor, head=True)
    return ClusterView((node,), f"{gpus.tool} on this machine", on_ray=False)
