"""FleetSpec → one WorkerPlan per actor. Pure: no Ray, no I/O.

Replicas are expanded and devices resolved (``auto`` → ``cuda`` when the target has a GPU);
:mod:`rayprof.placement` then picks each actor's node and core set (``auto``: disjoint sets per
node while cores last, then shared) and derives its Ray CPU and GPU requests.
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from .placement import Node, Slot, cpu_request, place, with_placement
from .source import SourceSettings
from . import sweep
from .spec import FleetSpec, WorkerSpec, split_points_of


@dataclass(frozen=True)
class WorkerPlan:
    """Everything one actor needs, as plain data (picklable, no pydantic)."""

    run_id: str
    worker: str
    replica: int
    actor_id: str
    source: SourceSettings
    model: str
    weights: str | None
    num_classes: int | None
    compile: bool
    amp: bool
    lr: float
    mode: str
    batch_size: int
    prep_level: str
    prep_device: str
    prep_size: int
    exec_device: str
    cores: tuple[int, ...]
    cores_spec: str
    num_cpus: float
    num_gpus: float
    max_steps: int
    warmup_steps: int
    seed: int
    flush_interval_s: float = 1.0
    resources: tuple[tuple[str, float], ...] = ()  # custom Ray resources, sorted (name, amount)
    node: str | None = None  # the spec's node: id, IP or hostname
    spread: bool = False
    node_id: str | None = None  # where placement put the actor (None: Ray decides, or local)
    profile_torch: dict | None = None  # TorchProfileSpec as a dict
    profile_nsys: dict | None = None  # NsysSpec as a dict
    role: str = "full"  # full | head | tail (a split pair's actors) | split (both halves in one actor)
    pair_id: str | None = None
    sweep_point: str | None = None
    split_point: str | None = None  # model.split: the module the head half ends with
    head_device: str = "cpu"  # role split: where the head half runs (exec_device: the tail's)
    window: int = 2  # role head: batches in flight to the tail
    peer: str | None = None  # a pair's other actor
    phase: int = 0  # sweep point index: phases run one after another
    pipeline: str = "serial"  # serial | overlap (read and prep the next batch while the model runs)
    field: str = field(default="workers[0]", compare=False)


def make_run_id(name: str, now: datetime | None = None, suffix: str | None = None) -> str:
    """``<name>-YYYYmmdd-HHMMSS-<4 hex>``: sortable by start time, unique, path-safe."""
    now = now or datetime.now(timezone.utc)
    return f"{name}-{now:%Y%m%d-%H%M%S}-{suffix or secrets.token_hex(2)}"


def resolve_auto(device: str, cuda_available: bool) -> str:
    """``auto`` → ``cuda`` where the target has a GPU, else ``cpu``; other values unchanged."""
    return ("cuda" if cuda_available else "cpu") if device == "auto" else device


def local_node(cores_available: list[int] | None, gpus: float) -> Node:
    """This machine as the only node (``rayprof run``, ``validate``, an embedded Ray), or an
    unknown remote node when ``cores_available`` is None (``validate --remote``)."""
    if cores_available is None:
        return Node(None, ip="?", hostname="?", resources=None, cores=None, is_driver=True)
    return Node(None, ip="127.0.0.1", hostname=socket.gethostname(),
                resources={"CPU": float(len(cores_available)), "GPU": float(gpus)},
                cores=tuple(cores_available), is_driver=True)


def plan_fleet(
    spec: FleetSpec,
    run_id: str,
    *,
    cores_available: list[int] | None = None,
    cuda_available: bool = False,
    gpus: float | None = None,
    nodes: list[Node] | None = None,
) -> list[WorkerPlan]:
    """One plan per actor, in spec order (phase, worker, replica), placed on ``nodes``.

    Without ``nodes`` the actors run on one machine whose cores are ``cores_available`` (None:
    not known here, so explicit sets are checked for syntax only and ``auto`` pins nothing) and
    which has ``gpus`` GPUs (default: one when ``cuda_available``). ``auto`` devices resolve to
    CUDA when the target has a GPU. See :mod:`rayprof.placement` for the rules.

    A split worker (``model.split``) becomes a head and a tail actor (or one ``split`` actor with
    ``pair.in_process``). A sweep (:mod:`rayprof.sweep`) makes one phase per point: its plans
    carry the point's label and phase, and each phase is placed on the whole cluster (or the
    first ``nodes`` of it) because phases run one after another."""
    if nodes is None:
        gpus = (1.0 if cuda_available else 0.0) if gpus is None else gpus
        nodes = [local_node(cores_available, gpus)]
    else:
        cuda_available = any(n.gpus > 0 for n in nodes)
    nodes = sorted(nodes, key=lambda n: (not n.is_driver, n.ip, n.node_id or ""))  # the driver's node first
    run_points = sweep.points(spec)
    plans: list[WorkerPlan] = []
    for phase, point in enumerate(run_points):
        sweep.nodes_field_check(point.nodes, len(nodes))
        slots, mine = [], []
        for i, w in enumerate(point.spec.workers):
            for slot, plan in _actors(spec, run_id, i, w, split_points_of(w)[0], cuda_available,
                                      phase if len(run_points) > 1 else None):
                slots.append(slot)
                mine.append(replace(plan, sweep_point=point.label, phase=phase))
        plans += with_placement(mine, place(slots, nodes[:point.nodes] if point.nodes else nodes))
    return plans


def _actors(spec: FleetSpec, run_id: str, i: int, w: WorkerSpec, point: str | None, cuda: bool,
            phase: int | None) -> list[tuple[Slot, WorkerPlan]]:
    """The slots and plans of one worker's replicas at one split point (None: unsplit)."""
    exec_device, prep_device = resolve_auto(w.device, cuda), resolve_auto(w.prep.device, cuda)
    head_device = resolve_auto(w.pair.head_device, cuda)
    f = f"workers[{i}]"
    resources = tuple(sorted(w.resources.items()))

    def slot(cores: str, devices: tuple[str, ...], near: str | None = None, own: bool = True) -> Slot:
        return Slot(field=f, worker=w.name, cores_spec=cores, uses_cuda=any(d.startswith("cuda") for d in devices),
                    gpus=w.gpus, resources=resources if own else (), node=w.node if own else None,
                    spread=w.spread and own, near=near)

    out = []
    for r in range(w.replicas):
        base = _plan(spec, run_id, i, w, r, exec_device, prep_device)
        aid = f"{w.name}-p{phase}-{r}" if phase is not None else base.actor_id
        base = replace(base, actor_id=aid, split_point=point, head_device=head_device, window=w.pair.window)
        if point is None:
            out.append((slot(w.cores, (exec_device, prep_device)), base))
        elif w.pair.in_process:
            out.append((slot(w.cores, (exec_device, prep_device, head_device)), replace(base, role="split")))
        else:
            head, tail = f"{aid}-head", f"{aid}-tail"
            near = {"same-node": "same", "different-nodes": "apart"}.get(w.pair.placement)
            out.append((slot(w.cores, (head_device, prep_device)),
                        replace(base, actor_id=head, role="head", pair_id=aid, peer=tail, exec_device=head_device)))
            out.append((slot(w.pair.tail_cores, (exec_device,), near=near, own=False),
                        replace(base, actor_id=tail, role="tail", pair_id=aid, peer=head, cores_spec=w.pair.tail_cores)))
    return out


def _plan(spec: FleetSpec, run_id: str, i: int, w: WorkerSpec, r: int, exec_device: str, prep_device: str) -> WorkerPlan:
    """The plan of one actor before placement (cores, CPUs and GPUs are placement's)."""
    return WorkerPlan(
        run_id=run_id,
        worker=w.name,
        replica=r,
        actor_id=f"{w.name}-{r}",
        source=SourceSettings(**w.source.model_dump(), field=f"workers[{i}].source.uri"),
        model=w.model.name,
        weights=w.model.weights,
        num_classes=w.model.num_classes,
        compile=w.model.compile,
        amp=w.model.amp,
        lr=w.model.lr,
        mode=w.mode,
        batch_size=w.batch_size,
        prep_level=w.prep.level,
        prep_device=prep_device,
        prep_size=w.prep.size,
        exec_device=exec_device,
        cores=(),
        cores_spec=w.cores,
        num_cpus=1.0,
        num_gpus=0.0,
        max_steps=w.max_steps,
        warmup_steps=w.warmup_steps,
        seed=w.seed,
        flush_interval_s=spec.flush_interval_s,
        resources=tuple(sorted(w.resources.items())),
        node=w.node,
        spread=w.spread,
        profile_torch=w.profile.torch.model_dump() if w.profile.torch else None,
        profile_nsys=w.profile.nsys.model_dump() if w.profile.nsys else None,
        pipeline=w.pipeline,
        field=f"workers[{i}]",
    )


__all__ = ["WorkerPlan", "cpu_request", "local_node", "make_run_id", "plan_fleet", "resolve_auto"]
