"""What the cluster is made of: one ``placement.Node`` per alive Ray node, with the facts that
only the node itself knows (its cores, CPU model, GPUs, libraries), asked of it by a zero-CPU
task pinned there. Those facts go into the manifest's ``nodes`` and drive placement."""

from __future__ import annotations

import ray
from ray.exceptions import GetTimeoutError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..affinity import ANY_CORE, available_cores, parse_cores
from ..placement import Node
from ..sysinfo import host_info

INVENTORY_TIMEOUT_S = 60.0


def node_facts() -> dict:
    """Runs on a node: its system info and the cores Ray's worker processes may use there."""
    return {"node_id": ray.get_runtime_context().get_node_id(), **host_info()}


def pinned(node_id: str, soft: bool = False) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=soft)


def run_on_nodes(fn, node_ids: list[str], timeout_s: float = INVENTORY_TIMEOUT_S, *args) -> dict[str, dict]:
    """``fn(*args)`` once on each node (zero CPUs, hard affinity); a node that fails or does not
    answer in time gets ``{"error": ...}`` instead of stopping the others."""
    remote = ray.remote(fn)
    refs = {nid: remote.options(num_cpus=0, scheduling_strategy=pinned(nid)).remote(*args) for nid in node_ids}
    out: dict[str, dict] = {}
    for nid, ref in refs.items():
        try:
            out[nid] = ray.get(ref, timeout=timeout_s)
        except GetTimeoutError:
            ray.cancel(ref, force=True)
            out[nid] = {"error": f"no answer within {timeout_s:g} s"}
        except RayError as e:
            out[nid] = {"error": " ".join(str(e).split())[:300]}
    return out


def inventory(embedded: bool) -> tuple[list[Node], dict[str, dict]]:
    """The alive nodes and their facts. In an embedded Ray the only node is this process's
    machine: its facts are read here, without a task."""
    here = ray.get_runtime_context().get_node_id()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if embedded:
        facts = {here: {"node_id": here, **host_info()}}
    else:
        facts = run_on_nodes(node_facts, [n["NodeID"] for n in alive])
    nodes = []
    for n in alive:
        nid = n["NodeID"]
        info = facts.get(nid, {})
        cores = None
        if info.get("cores"):
            cores = tuple(parse_cores(info["cores"], available_cores() if embedded else ANY_CORE))
        nodes.append(Node(nid, ip=n.get("NodeManagerAddress", "?"), hostname=n.get("NodeManagerHostname", "?"),
                          resources=dict(n.get("Resources", {})), cores=cores, is_driver=nid == here))
        info.update(ip=n.get("NodeManagerAddress"), resources=dict(n.get("Resources", {})))
    return nodes, facts


def node_labels(nodes: list[Node]) -> dict[str, str]:
    """A short display name per node id: its IP, plus the id's start where IPs repeat (several
    Ray nodes on one host, as in a simulated cluster)."""
    ips = [n.ip for n in nodes]
    return {n.node_id: (n.ip if ips.count(n.ip) == 1 else n.label()) for n in nodes if n.node_id}
