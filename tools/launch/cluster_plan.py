"""Where a training job runs: the Ray cluster at --ray-address or this machine, the GPU layout
fitted to it, the GPUs' vendor, and the Ray head run.sh starts when no cluster answers.

Each step records what it found as a prerequisite check (MISSING with its fix when it is not
there) and still returns something printable, so a dry run shows the whole plan.
"""

from __future__ import annotations

import argparse
from urllib.parse import urlparse

from tools.errors import ClusterError, LaunchError, LayoutError
from tools.launch import prerequisites as pre
from tools.launch.cluster import (
    ClusterView,
    check_ray_address,
    local_view,
    ray_dashboard_up,
    read_ray_cluster,
)
from tools.launch.gpus import GpuVendor, LocalGpus, detect_local_gpus
from tools.launch.layout import Layout, LayoutRequest, fit_layout
from tools.launch.services import is_loopback


def read_cluster(
    opts: argparse.Namespace, probe: bool, gpus: int | None, checks: list[pre.Check]
) -> tuple[str, bool, ClusterView | None]:
    """The Ray dashboard address, whether a cluster answers there, and the machines to plan for."""
    try:
        address = check_ray_address(opts.ray_address)
    except ClusterError as e:
        raise LaunchError(str(e)) from None
    if probe and ray_dashboard_up(address):
        try:
            view = read_ray_cluster(address)
        except ClusterError as e:
            checks.append(
                pre.Check("Ray cluster", False, str(e), f"ray status (on {address}'s head)")
            )
            return address, True, None
        checks.append(pre.Check("Ray cluster", True, f"running at {address}: {view.describe()}"))
        return address, True, view
    if not is_loopback(address):
        checks.append(
            pre.Check(
                "Ray cluster",
                False,
                f"nothing answers at {address}",
                "start it (ray start --head on its head node) or pass the --ray-address of a "
                "running one; without --ray-address run.sh starts Ray on this machine",
            )
        )
    if gpus is not None or not probe:
        local = LocalGpus(GpuVendor.NVIDIA, gpus, "the caller") if gpus else None
    else:
        local = detect_local_gpus()
    return address, False, local_view(local)


def fit_cluster_layout(
    opts: argparse.Namespace,
    view: ClusterView | None,
    colocate: bool,
    checks: list[pre.Check],
    notes: list[str],
    external_engines: bool = False,
) -> Layout:
    """The layout for the cluster; a MISSING check (and a best-effort layout to print) when none
    fits. `external_engines`: the engines run elsewhere (--engine-addrs), the actor takes the
    GPUs."""
    req = LayoutRequest(
        opts.actor_gpus,
        opts.rollout_gpus,
        colocate,
        opts.tp,
        opts.cp,
        opts.rollout_tp or opts.tp,
        external_engines,
    )
    if view is None or not view.gpu_nodes:
        checks.append(pre.check_no_gpus(view.source if view is not None and view.on_ray else None))
        assumed = max(8, (opts.actor_gpus or 0) + (0 if colocate else opts.rollout_gpus or 0))
        notes.append(f"no GPUs found: the plan below assumes one node of {assumed}")
        counts = [assumed]
    else:
        counts = [n.gpus for n in view.gpu_nodes]
        checks.append(pre.Check("GPUs", True, view.describe()))
    try:
        layout = fit_layout(counts, req)
    except LayoutError as e:
        checks.append(pre.Check("GPU layout", False, str(e)))
        actor = opts.actor_gpus or counts[0]
        return Layout(1, actor, opts.rollout_gpus or actor, req.engine_gpus, counts[0], colocate)
    checks.append(pre.Check("GPU layout", True, layout.describe()))
    return layout


def gpu_vendor(
    opts: argparse.Namespace, view: ClusterView | None, checks: list[pre.Check]
) -> GpuVendor:
    if opts.gpu_vendor != "auto":
        return GpuVendor(opts.gpu_vendor)
    try:
        return (view.vendor if view is not None else None) or GpuVendor.NVIDIA
    except ClusterError as e:
        checks.append(pre.Check("GPU vendor", False, str(e), "pass --gpu-vendor to pick one"))
        return GpuVendor.NVIDIA


def ray_head_cmd(
    ray_cmd: str, address: str, view: ClusterView | None, layout: Layout
) -> list[str] | None:
    """`ray start --head --block` for this machine when nothing answers at a loopback address
    (a remote address with nothing behind it is a MISSING check instead)."""
    if not is_loopback(address):
        return None
    gpus = (view.total_gpus if view is not None else 0) or layout.gpus_used
    return [
        ray_cmd,
        "start",
        "--head",
        "--num-gpus",
        str(gpus),
        "--disable-usage-stats",
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(urlparse(address).port or 8265),
        "--block",
    ]
