"""Which node runs each actor, which cores it pins there, and what it asks Ray for. Pure.

rayprof places actors itself rather than leaving it to Ray's scheduler, so that everything a
profile depends on is decided before anything starts, recorded in the manifest, and checked:

- a worker's ``node`` (Ray node id or a unique prefix of it, IP or hostname), its custom
  ``resources`` (``camera: 1``: only nodes that advertise ``camera`` qualify) and its GPUs narrow
  the candidate nodes; an impossible request fails here, naming the cluster's nodes and resources,
  instead of waiting forever in Ray's queue;
- actors are packed onto the first candidate (the driver's node first) that still has a free core
  and room for their resources; ``spread: true`` sends the replicas of a worker to different
  nodes while there are nodes;
- then, node by node, ``cores: auto`` gives the actors on that node disjoint core sets (shared
  only when the node runs out), explicit sets are checked against that node's cores, and the Ray
  CPU request is derived from the cores pinned; the GPUs of a node are split evenly among the CUDA
  actors placed on it unless a worker sets ``gpus``.

``fleet`` turns ``WorkerPlan.node_id`` into a hard ``NodeAffinitySchedulingStrategy`` and passes
``resources``, so Ray accounts for exactly what was planned.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace

from . import affinity
from .errors import UserError

#: Ray's own resources: not for ``resources:`` (use ``cores`` and ``gpus``).
RESERVED = ("CPU", "GPU", "memory", "object_store_memory")
_EPS = 1e-9


@dataclass(frozen=True)
class Node:
    """One Ray node as placement sees it. ``cores``: the cores Ray's worker processes may use
    there (None when unknown: explicit core sets are then checked for syntax only and ``auto``
    pins nothing). ``resources``: Ray's totals for the node (CPU, GPU, custom)."""

    node_id: str | None
    ip: str = "127.0.0.1"
    hostname: str = "localhost"
    resources: dict | None = field(default=None, compare=False)  # None: not known (planning offline)
    cores: tuple[int, ...] | None = None
    is_driver: bool = False

    def amount(self, resource: str) -> float:
        """How much of ``resource`` the node has in all (unknown resources: unlimited)."""
        if self.resources is None:
            return math.inf
        if resource == "CPU" and "CPU" not in self.resources:
            return float(len(self.cores)) if self.cores else math.inf
        return float(self.resources.get(resource, 0))

    @property
    def cpus(self) -> float:
        return self.amount("CPU")

    @property
    def gpus(self) -> float:
        return self.amount("GPU")

    @property
    def usable_cores(self) -> list[int] | None:
        """The cores actors may pin here: no more than the CPUs the node advertises to Ray."""
        if self.cores is None:
            return None
        limit = int(self.cpus + _EPS) if math.isfinite(self.cpus) else len(self.cores)
        return list(self.cores)[: max(1, limit)]

    def describe(self) -> str:
        custom = {k: v for k, v in (self.resources or {}).items() if k not in RESERVED and not _internal(k)}
        extra = "".join(f", {k}={v:g}" for k, v in sorted(custom.items()))
        return f"{self.label()} ({self.cpus:g} CPUs, {self.gpus:g} GPUs{extra})"

    def label(self) -> str:
        return f"{self.ip} [{(self.node_id or 'local')[:8]}]"


def _internal(resource: str) -> bool:
    return resource.startswith(("node:", "accelerator_type:", "bundle_group")) or "_group_" in resource


@dataclass(frozen=True)
class Slot:
    """One actor before placement: what it needs from a node."""

    field: str  # workers[i]
    worker: str
    cores_spec: str
    uses_cuda: bool
    gpus: float | None  # explicit per-actor GPUs, None = even split of the node's
    resources: tuple[tuple[str, float], ...]
    node: str | None
    spread: bool
    near: str | None = None  # a split tail: "same" node as the slot before it (its head), or "apart"

    @property
    def auto_cores(self) -> bool:
        return self.cores_spec.strip().lower() == "auto"


def match_node(wanted: str, nodes: list[Node], field_name: str) -> Node:
    """The node a spec's ``node`` names: a Ray node id (or a unique prefix of 6+ characters),
    an IP or a hostname. Unknown or ambiguous names fail listing the nodes."""
    w = wanted.strip()
    hits = [n for n in nodes if n.node_id and (n.node_id == w or (len(w) >= 6 and n.node_id.startswith(w)))]
    hits = hits or [n for n in nodes if w in (n.ip, n.hostname)]
    listing = ", ".join(n.describe() for n in nodes)
    if not hits:
        raise UserError(field_name, wanted, "is not a node of this cluster",
                        f"use a node id, IP or hostname of one of: {listing}")
    if len(hits) > 1:
        ids = ", ".join((n.node_id or "?")[:12] for n in hits)
        raise UserError(field_name, wanted, f"matches {len(hits)} nodes ({ids})",
                        "name the node by its Ray node id (`ray list nodes` shows them)")
    return hits[0]


def _unplaceable(slot: Slot, nodes: list[Node], why: str, fix: str) -> UserError:
    listing = ", ".join(n.describe() for n in nodes)
    return UserError(slot.field, slot.worker, f"{why}; the cluster has {listing}", fix)


class _Ledger:
    """What has been given out on each node so far (for packing and for hard limits)."""

    def __init__(self, nodes: list[Node]):
        self.nodes = nodes
        self.used: dict[int, Counter] = defaultdict(Counter)
        self.actors: dict[int, int] = defaultdict(int)
        self.cores: dict[int, int] = defaultdict(int)

    def hard_fits(self, k: int, slot: Slot) -> bool:
        """Custom resources and explicit GPUs are hard limits: Ray would never start the actor."""
        need = list(slot.resources) + ([("GPU", slot.gpus)] if slot.uses_cuda and slot.gpus is not None else [])
        return all(self.used[k][name] + amount <= self.nodes[k].amount(name) + _EPS for name, amount in need)

    def has_free_cores(self, k: int, n_cores: int) -> bool:
        return self.cores[k] + n_cores <= self.nodes[k].cpus + _EPS

    def take(self, k: int, slot: Slot, n_cores: int) -> None:
        for name, amount in slot.resources:
            self.used[k][name] += amount
        if slot.uses_cuda and slot.gpus is not None:
            self.used[k]["GPU"] += slot.gpus
        self.actors[k] += 1
        self.cores[k] += n_cores


def _candidates(slot: Slot, nodes: list[Node]) -> list[int]:
    """Nodes that could ever run the slot (static checks; errors say why none can)."""
    ks = list(range(len(nodes)))
    if slot.node:
        target = match_node(slot.node, nodes, f"{slot.field}.node")
        ks = [k for k in ks if nodes[k] == target]
    for name, amount in slot.resources:
        have = [k for k in ks if nodes[k].amount(name) + _EPS >= amount]
        if not have:
            raise _unplaceable(slot, [nodes[k] for k in ks], f"needs resource {name}={amount:g}, which no node offers",
                               f"start the node that has it with `ray start --resources '{{\"{name}\": 1}}'`, "
                               f"or remove {slot.field}.resources.{name}")
        ks = have
    if slot.uses_cuda:
        have = [k for k in ks if nodes[k].gpus > _EPS and (slot.gpus is None or nodes[k].gpus + _EPS >= slot.gpus)]
        if not have:
            raise _unplaceable(slot, [nodes[k] for k in ks], "asks for a GPU but no candidate node has one",
                               "run on the CPU (device: cpu, prep.device: cpu) or add GPU nodes")
        ks = have
    return ks


def assign_nodes(slots: list[Slot], nodes: list[Node]) -> list[int]:
    """A node index per slot: pack in node order (the first node that still has a free core),
    ``spread`` replicas of a worker over the nodes hosting the fewest of them; custom resources
    and explicit GPUs are hard limits (an actor that can never start is an error, not a wait).
    When every candidate is out of free cores, the least loaded one is shared."""
    ledger = _Ledger(nodes)
    out: list[int] = []
    hosting: dict[str, Counter] = defaultdict(Counter)
    for slot in slots:
        ks = _near(slot, _candidates(slot, nodes), out[-1] if out else None, nodes)
        n_cores = 1 if slot.auto_cores else _count_cores(slot.cores_spec, nodes, ks)
        hard = [k for k in ks if ledger.hard_fits(k, slot)]
        if not hard:
            raise _unplaceable(slot, [nodes[k] for k in ks],
                               "does not fit: the resources or GPUs it needs are taken by the actors before it",
                               "use fewer replicas, smaller requests, or add nodes")

        def load(k: int) -> float:
            return ledger.actors[k] / max(nodes[k].cpus, 1)

        if slot.spread:  # a node without a replica of this worker first, even if its cores are taken
            k = min(hard, key=lambda k: (hosting[slot.worker][k], not ledger.has_free_cores(k, n_cores), load(k), k))
        else:
            room = [k for k in hard if ledger.has_free_cores(k, n_cores)]
            k = room[0] if room else min(hard, key=lambda k: (load(k), k))
        ledger.take(k, slot, n_cores)
        hosting[slot.worker][k] += 1
        out.append(k)
    return out


def _near(slot: Slot, ks: list[int], head: int | None, nodes: list[Node]) -> list[int]:
    """A split tail's candidates narrowed by ``pair.placement``: its head's node, or the others."""
    if slot.near is None or head is None:
        return ks
    field = f"{slot.field}.pair.placement"
    if slot.near == "same":
        if head not in ks:
            why = "a GPU" if slot.uses_cuda else "what the tail needs"
            raise UserError(field, "same-node", f"the head's node {nodes[head].describe()} lacks {why}",
                            "use placement: any, or put the head where the tail can run (node: ...)")
        return [head]
    apart = [k for k in ks if k != head]
    if not apart:
        raise UserError(field, "different-nodes", f"no node but the head's ({nodes[head].describe()}) can run the tail",
                        "add a node that can, or use placement: any")
    return apart


def _count_cores(cores_spec: str, nodes: list[Node], ks: list[int]) -> int:
    if cores_spec.strip().lower() == "all":
        known = [len(nodes[k].usable_cores or ()) for k in ks]
        return min([c for c in known if c] or [1])
    try:
        return len(affinity.parse_cores(cores_spec, affinity.ANY_CORE))
    except UserError:
        return 1  # reported properly when the node's cores are checked


def allocate_on_node(slots: list[Slot], node: Node) -> list[tuple[int, ...]]:
    """Core sets for the slots placed on one node, in their order: explicit sets checked against
    the node's cores, ``auto`` sets disjoint from every other set while the node's cores last."""
    usable = node.usable_cores
    where = "this machine" if node.node_id is None else f"node {node.label()}"
    explicit: dict[int, list[int]] = {}
    auto: list[int] = []
    for j, s in enumerate(slots):
        if s.auto_cores or (usable is None and s.cores_spec.strip().lower() == "all"):
            auto.append(j)  # on a node whose cores are unknown, `all` pins nothing either
        else:
            explicit[j] = affinity.parse_cores(s.cores_spec, usable if usable is not None else affinity.ANY_CORE,
                                               field=f"{s.field}.cores", where=where)
    out: dict[int, list[int]] = dict(explicit)
    if usable:
        claimed = {c for cores in explicit.values() for c in cores}
        free = [c for c in usable if c not in claimed] or list(usable)
        out.update(zip(auto, affinity.allocate(len(auto), free)))
    else:
        out.update({j: [] for j in auto})
    return [tuple(sorted(out[j])) for j in range(len(slots))]


def cpu_request(cores: tuple[int, ...], sharing: Counter) -> float:
    """Ray CPUs for an actor: its share of each pinned core (a core pinned by k actors counts
    1/k to each), so a node is never asked for more CPUs than the cores its actors pin. Ray
    accepts fractions below 1 and whole numbers above."""
    share = sum(1.0 / sharing[c] for c in cores)
    return float(int(share + _EPS)) if share >= 1 - _EPS else math.floor(share * 1e4) / 1e4  # down: sums stay within


@dataclass(frozen=True)
class Placement:
    """The outcome for one slot."""

    node: Node
    cores: tuple[int, ...]
    num_cpus: float
    num_gpus: float


def place(slots: list[Slot], nodes: list[Node]) -> list[Placement]:
    """Node, cores, CPUs and GPUs for every slot; raises UserError for what can never run."""
    if not nodes:
        raise UserError("address", "cluster", "has no alive node", "start the cluster's nodes, then submit again")
    order = sorted(range(len(nodes)), key=lambda k: (not nodes[k].is_driver, nodes[k].ip, nodes[k].node_id or ""))
    ordered = [nodes[k] for k in order]
    where = assign_nodes(slots, ordered)
    out: list[Placement | None] = [None] * len(slots)
    for k, node in enumerate(ordered):
        mine = [j for j, w in enumerate(where) if w == k]
        if not mine:
            continue
        core_sets = allocate_on_node([slots[j] for j in mine], node)
        sharing = Counter(c for cores in core_sets for c in cores)
        cuda = [j for j in mine if slots[j].uses_cuda]
        claimed = sum(slots[j].gpus for j in cuda if slots[j].gpus is not None)
        even = [j for j in cuda if slots[j].gpus is None]
        share = round(min(1.0, max(0.0, node.gpus - claimed) / len(even)), 4) if even and node.gpus > claimed else 0.0
        for j, cores in zip(mine, core_sets):
            s = slots[j]
            gpus = (share if s.gpus is None else s.gpus) if s.uses_cuda else 0.0
            out[j] = Placement(node, cores, cpu_request(cores, sharing) if cores else 1.0, gpus)
        check_node(node, [slots[j] for j in mine], [out[j] for j in mine])
    return [p for p in out if p is not None]


def check_node(node: Node, slots: list[Slot], placements: list[Placement]) -> None:
    """The actors on ``node`` ask for no more than it has (else Ray would wait forever)."""
    cpus = sum(p.num_cpus for p in placements)
    gpus = sum(p.num_gpus for p in placements)
    if cpus > node.cpus + _EPS:
        raise UserError(slots[0].field, f"{cpus:g} CPUs", f"are more than node {node.describe()} has",
                        "use fewer replicas, smaller core sets, or cores: auto")
    if gpus > node.gpus + _EPS:
        raise UserError(slots[0].field, f"{gpus:g} GPUs", f"are more than node {node.describe()} has",
                        "use fewer replicas or smaller `gpus` fractions, or add GPU nodes")


def with_placement(plans: list, placements: list[Placement]) -> list:
    """Copy each WorkerPlan with its placement applied."""
    return [replace(p, node_id=pl.node.node_id, cores=pl.cores, num_cpus=pl.num_cpus, num_gpus=pl.num_gpus)
            for p, pl in zip(plans, placements)]
