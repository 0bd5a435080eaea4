"""Where the env-server replicas go on a Ray cluster: node by node, decided before they start.

The job's entrypoint (`tools.launch.ray_job`) starts the replicas before slime's driver builds
its placement group, so they must leave what that group needs: slime asks for one bundle of
{GPU: 1, CPU: 1} per GPU it uses, packed onto the GPU nodes, plus a CPU each for its rollout
manager and its lock, anywhere. A node's room for replicas is its CPUs less one per GPU slime
may claim there. Then:

- replica 0 keeps the trajectory store, so it goes on the entrypoint's node (where `--db` is
  meant to be) when that node has room, else on the node with the most room (a head with
  0 CPUs, a common convention, has none);
- each other replica goes on the node with the fewest replicas so far (then the most room), so
  they spread over the nodes that have room, the same way on every run.

The plan checks the placement against Ray's view of the cluster (`check_replica_placement`,
a MISSING line naming each node's room when it does not fit); `ray_job` places each replica
with a hard node affinity from the same function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tools.errors import ClusterError
from tools.launch import prerequisites as pre
from tools.launch.cluster import ClusterView
from tools.launch.env_servers import EnvServerPlan

# CPUs slime's driver reserves outside its placement group: the rollout manager and its lock.
SLIME_ACTOR_CPUS = 2


@dataclass(frozen=True)
class NodeRoom:
    """One node as the replicas see it."""

    name: str
    """For messages: its address, and which node it is."""
    cpus: float
    gpus: int
    entry: bool
    """The job's entrypoint (and replica 0's store) runs here."""

    def room(self, gpu_bundles: int) -> float:
        """CPUs left for replicas once slime's bundles (one CPU per GPU) may take theirs."""
        return max(0.0, self.cpus - min(self.gpus, gpu_bundles))


def place_replicas(
    nodes: Sequence[NodeRoom], replicas: int, cpus: float, gpu_bundles: int
) -> list[int]:
    """The node (an index into `nodes`) of each replica, replica 0 first; ClusterError, naming
    each node's room, when one does not fit."""
    initial = [n.room(gpu_bundles) for n in nodes]
    room = list(initial)
    count = [0] * len(nodes)
    placed: list[int] = []
    for i in range(replicas):
        fits = [k for k in range(len(nodes)) if room[k] >= cpus]
        if not fits:
            free = ", ".join(f"{n.name} {r:g}" for n, r in zip(nodes, initial, strict=True))
            raise ClusterError(
                f"{replicas} env-server replica(s) x {cpus:g} CPU do not fit: CPUs free per node "
                f"once slime's {gpu_bundles} GPU bundle(s) take one each: {free}"
            )
        entry = [k for k in fits if nodes[k].entry]
        if i == 0 and entry:
            k = entry[0]
        else:
            k = min(fits, key=lambda j: (count[j], -room[j], j))
        room[k] -= cpus
        count[k] += 1
        placed.append(k)
    return placed


def rooms_of_view(view: ClusterView) -> list[NodeRoom]:
    """The nodes of Ray's view, the head as the entrypoint's node (Ray runs job entrypoints on
    the head)."""
    return [
        NodeRoom(f"{n.ip} ({'head' if n.head else f'node {i}'})", n.cpus, n.gpus, n.head)
        for i, n in enumerate(view.nodes)
    ]


def check_replica_placement(
    plan: EnvServerPlan, gpus_used: int, view: ClusterView | None, checks: list[pre.Check]
) -> None:
    """The replicas fit the cluster, node by node, beside slime's bundles and actors."""
    if view is None or not view.on_ray:
        return
    fix = "lower --env-servers or --env-server-cpus, or add CPUs to the cluster"
    need = plan.replicas * plan.cpus + gpus_used + SLIME_ACTOR_CPUS
    if view.total_cpus < need:
        detail = (
            f"{plan.replicas} replica(s) x {plan.cpus:g} CPU + {gpus_used} GPU bundles "
            f"(1 CPU each) + {SLIME_ACTOR_CPUS} drivers need {need:g} CPUs, the cluster has "
            f"{view.total_cpus}"
        )
        checks.append(pre.Check("env servers", False, detail, fix))
        return
    nodes = rooms_of_view(view)
    try:
        placed = place_replicas(nodes, plan.replicas, plan.cpus, gpus_used)
    except ClusterError as e:
        checks.append(pre.Check("env servers", False, str(e), fix))
        return
    where = ", ".join(
        f"{nodes[k].name} x{placed.count(k)}" for k in sorted(set(placed), key=placed.index)
    )
    store = nodes[placed[0]]
    detail = (
        f"{plan.replicas} replica(s) x {plan.cpus:g} CPU on {where}; replica 0 keeps the store "
        f"{plan.db} on {store.name}"
        + ("" if store.entry else " (the entrypoint's node has no CPU to spare)")
    )
    checks.append(pre.Check("env servers", True, detail))
