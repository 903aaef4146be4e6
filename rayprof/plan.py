"""FleetSpec → one WorkerPlan per actor. Pure: no Ray, no I/O.

Replicas are expanded, devices resolved (``auto`` → ``cuda`` when the target has a GPU),
core sets parsed or allocated (``auto`` gives actors disjoint sets while cores last, then shares
them round-robin), and each actor's CPU request for Ray derived from the cores it pins.
"""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

from . import affinity
from .source import SourceSettings
from .spec import FleetSpec, WorkerSpec


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
    role: str = "full"
    pair_id: str | None = None
    sweep_point: str | None = None
    field: str = field(default="workers[0]", compare=False)


def make_run_id(name: str, now: datetime | None = None, suffix: str | None = None) -> str:
    """``<name>-YYYYmmdd-HHMMSS-<4 hex>``: sortable by start time, unique, path-safe."""
    now = now or datetime.now(timezone.utc)
    return f"{name}-{now:%Y%m%d-%H%M%S}-{suffix or secrets.token_hex(2)}"


#: Core ids accepted when the target machine is not known (a remote cluster): syntax only.
_ANY_CORE = list(range(4096))


def resolve_auto(device: str, cuda_available: bool) -> str:
    """``auto`` → ``cuda`` where the target has a GPU, else ``cpu``; other values unchanged."""
    return ("cuda" if cuda_available else "cpu") if device == "auto" else device


def plan_fleet(
    spec: FleetSpec,
    run_id: str,
    *,
    cores_available: list[int] | None,
    cuda_available: bool,
    gpus: float = 0.0,
) -> list[WorkerPlan]:
    """One plan per actor, in spec order (worker, then replica).

    ``cores_available``: the cores of the machine the actors run on, or None when that is not
    known here (a remote cluster): explicit sets are then checked for syntax only and ``auto``
    pins nothing (one CPU each). ``gpus``: how many GPUs the actors share; the actors that use
    CUDA split them evenly (fractional GPUs, so several actors share one)."""
    slots: list[tuple[int, WorkerSpec, int]] = [
        (i, w, r) for i, w in enumerate(spec.workers) for r in range(w.replicas)
    ]
    explicit: dict[int, list[int]] = {}
    auto_slots: list[int] = []
    for k, (i, w, _r) in enumerate(slots):
        cs = w.cores.strip().lower()
        if cs == "auto":
            auto_slots.append(k)
        else:
            explicit[k] = affinity.parse_cores(w.cores, cores_available or _ANY_CORE, field=f"workers[{i}].cores")
    cores_of = dict(explicit)
    if cores_available:
        claimed = {c for cores in explicit.values() for c in cores}
        free = [c for c in cores_available if c not in claimed] or list(cores_available)
        for k, cores in zip(auto_slots, affinity.allocate(len(auto_slots), free)):
            cores_of[k] = cores
    else:
        cores_of.update({k: [] for k in auto_slots})
    sharing = Counter(c for cores in cores_of.values() for c in cores)
    devices = [(resolve_auto(w.device, cuda_available), resolve_auto(w.prep.device, cuda_available))
               for _i, w, _r in slots]
    n_cuda = sum(1 for (_i, w, _r), d in zip(slots, devices) if w.gpus is None and any(x.startswith("cuda") for x in d))
    claimed_gpus = sum(w.gpus for (_i, w, _r), d in zip(slots, devices) if w.gpus is not None and any(x.startswith("cuda") for x in d))
    spare = max(0.0, gpus - claimed_gpus)
    gpu_share = round(min(1.0, spare / n_cuda), 4) if n_cuda and spare else 0.0

    plans = []
    for k, (i, w, r) in enumerate(slots):
        cores = tuple(sorted(cores_of[k]))
        plans.append(
            WorkerPlan(
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
                prep_device=devices[k][1],
                prep_size=w.prep.size,
                exec_device=devices[k][0],
                cores=cores,
                cores_spec=w.cores,
                num_cpus=cpu_request(cores, sharing) if cores else 1.0,
                num_gpus=(gpu_share if w.gpus is None else w.gpus) if any(x.startswith("cuda") for x in devices[k]) else 0.0,
                max_steps=w.max_steps,
                warmup_steps=w.warmup_steps,
                seed=w.seed,
                flush_interval_s=spec.flush_interval_s,
                resources=tuple(sorted(w.resources.items())),
                node=w.node,
                spread=w.spread,
                profile_torch=w.profile.torch.model_dump() if w.profile.torch else None,
                profile_nsys=w.profile.nsys.model_dump() if w.profile.nsys else None,
                field=f"workers[{i}]",
            )
        )
    return plans


def cpu_request(cores: tuple[int, ...], sharing: Counter) -> float:
    """Ray CPUs for an actor: its share of each pinned core (a core pinned by k actors counts
    1/k to each), so the fleet never asks for more CPUs than the cores it pins. Ray accepts
    fractions below 1 and whole numbers above."""
    share = sum(1.0 / sharing[c] for c in cores)
    return float(int(share)) if share >= 1 else round(share, 4)
