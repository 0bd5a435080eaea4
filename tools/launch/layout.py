"""The GPU layout of a slime job: actor nodes x GPUs, rollout GPUs and engine size, fitted to the
cluster.

slime puts every GPU of a job into one placement group, sorts it by node IP and GPU id, gives
the actor the first `--actor-num-nodes` x `--actor-num-gpus-per-node` GPUs and the rollout
engines the next `--rollout-num-gpus` (colocated: the same GPUs), `--rollout-num-gpus-per-engine`
consecutive GPUs per SGLang engine (slime/ray/placement_group.py). A layout is refused, with one
line naming the fix, when that order would split the actor unevenly over nodes, put a
tensor-parallel group or an engine across a node boundary, or ask for more GPUs than there are.

Defaults: colocated, the actor (and the engines) take every GPU; not colocated, the actor takes
half the nodes (on one node: half its GPUs) and the engines the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from tools.errors import LayoutError


@dataclass(frozen=True)
class LayoutRequest:
    """What the user asked for (None: fit to the cluster)."""

    actor_gpus: int | None
    rollout_gpus: int | None
    colocate: bool
    tp: int = 1
    """Megatron tensor-parallel size: one group stays inside a node."""
    cp: int = 1
    """Megatron context-parallel size."""
    engine_gpus: int = 1
    """GPUs per SGLang engine (--rollout-num-gpus-per-engine)."""
    external_engines: bool = False
    """The engines already run elsewhere (--engine-addrs): no rollout GPUs here."""


@dataclass(frozen=True)
class Layout:
    """The cluster flags slime gets."""

    actor_nodes: int
    actor_gpus_per_node: int
    rollout_gpus: int
    """The engines' GPUs; equal to the actor's when colocated."""
    engine_gpus: int
    gpus_per_node: int
    colocate: bool

    @property
    def actor_gpus(self) -> int:
        return self.actor_nodes * self.actor_gpus_per_node

    @property
    def gpus_used(self) -> int:
        return self.actor_gpus if self.colocate else self.actor_gpus + self.rollout_gpus

    @property
    def engines(self) -> int:
        return max(1, self.rollout_gpus // self.engine_gpus)

    def describe(self) -> str:
        actor = f"actor {self.actor_nodes} node(s) x {self.actor_gpus_per_node} GPUs"
        if self.colocate:
            return (
                f"{actor}, {self.engines} engine(s) of {self.engine_gpus} GPU(s) on the same "
                "GPUs (colocated)"
            )
        return (
            f"{actor}, rollout {self.rollout_gpus} GPUs = {self.engines} engine(s) of "
            f"{self.engine_gpus}"
        )


def _split(total: int, per_node: int, nodes: int, req: LayoutRequest) -> tuple[int, int]:
    """(actor GPUs, rollout GPUs) for a request that may leave either open."""
    if req.external_engines:
        return req.actor_gpus or total, 0
    if req.colocate:
        both = req.actor_gpus or total
        return both, both
    actor, rollout = req.actor_gpus, req.rollout_gpus
    if actor is None and rollout is None:
        actor = per_node // 2 if nodes == 1 else (nodes // 2) * per_node
    if actor is None:
        actor = total - (rollout or 0)
    if rollout is None:
        rollout = total - actor
    return actor, rollout


def fit_layout(gpus_per_node: list[int], req: LayoutRequest) -> Layout:
    """The layout for a cluster whose GPU nodes have `gpus_per_node` GPUs each; LayoutError if none
    fits."""
    if not gpus_per_node:
        raise LayoutError("the cluster has no GPUs")
    if len(set(gpus_per_node)) > 1:
        raise LayoutError(
            "the cluster's nodes have different GPU counts "
            f"({', '.join(map(str, sorted(gpus_per_node)))}); "
            "slime lays engines out by one --num-gpus-per-node: use nodes with equal GPUs"
        )
    per_node, nodes = gpus_per_node[0], len(gpus_per_node)
    total = per_node * nodes
    if req.colocate and req.rollout_gpus is not None:
        raise LayoutError(
            "--rollout-gpus has no effect with --colocate (the engines use the actor's GPUs); "
            "drop it or pass --no-colocate"
        )
    actor, rollout = _split(total, per_node, nodes, req)
    if actor < 1 or (not req.colocate and not req.external_engines and rollout < 1):
        raise LayoutError(
            f"{total} GPU(s) cannot hold both the actor and the rollout engines; "
            "pass fewer --actor-gpus, --colocate, or use a larger cluster"
        )
    used = actor if req.colocate else actor + rollout
    if used > total:
        raise LayoutError(
            f"{used} GPUs needed (actor {actor}"
            + ("" if req.colocate else f" + rollout {rollout}")
            + f"), the cluster has {total} ({nodes} node(s) x {per_node}); "
            "lower --actor-gpus/--rollout-gpus" + ("" if req.colocate else " or use --colocate")
        )
    if actor > per_node and actor % per_node:
        raise LayoutError(
            f"--actor-gpus {actor} spreads unevenly over nodes of {per_node} GPUs; "
            f"use at most {per_node} or a multiple of it"
        )
    actor_nodes = 1 if actor <= per_node else actor // per_node
    actor_per_node = actor // actor_nodes
    group = req.tp * req.cp
    if actor_per_node % req.tp or actor % group:
        raise LayoutError(
            f"--tp {req.tp}"
            + (f" x --cp {req.cp}" if req.cp > 1 else "")
            + f" does not divide the actor's {actor_per_node} GPUs per node ({actor} in all); "
            "pick sizes that divide them"
        )
    if not req.external_engines:
        _check_engines(rollout, 0 if req.colocate else actor, per_node, req.engine_gpus)
    return Layout(actor_nodes, actor_per_node, rollout, req.engine_gpus, per_node, req.colocate)


def _check_engines(rollout: int, offset: int, per_node: int, engine: int) -> None:
    """Engines are consecutive GPUs from `offset` on; each must sit inside a node (or span whole
    nodes)."""
    if rollout % engine:
        raise LayoutError(
            f"{rollout} rollout GPUs do not split into engines of {engine} "
            "(--rollout-tp): pick an engine size that divides them"
        )
    for start in range(offset, offset + rollout, engine):
        end = start + engine - 1
        if engine <= per_node:
            ok = start // per_node == end // per_node
        else:  # a multi-node engine: whole nodes only
            ok = engine % per_node == 0 and start % per_node == 0
        if not ok:
            raise LayoutError(
                f"an SGLang engine of {engine} GPUs would span GPUs {start}-{end} across nodes of "
                f"{per_node}; pick --rollout-tp and --actor-gpus so engines sit inside a node"
            )
