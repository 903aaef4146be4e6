"""Connect, plan, place, run, collect: the body of ``rayprof submit``.

connect (``--address`` / spec ``address`` / ``RAY_ADDRESS`` / an embedded local Ray) → a sink
actor on the driver's node → one ``StreamWorker`` actor per plan → live progress → results,
failures and the manifest → an exit code.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import ray
from ray.exceptions import RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .. import driver
from ..errors import UserError
from ..plan import WorkerPlan, make_run_id, plan_fleet
from ..source import mask_text
from ..spec import FleetSpec
from ..sysinfo import host_info
from ..worker import StreamWorker
from ._sink import SinkEmitter, SinkService

STOP_GRACE_S = 30.0
POLL_S = 0.5


def ray_context() -> dict:
    """Row identity from inside an actor: Ray's node id and address."""
    ctx = ray.get_runtime_context()
    import socket

    return {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname()}


def node_info() -> dict:
    return {"node_id": ray.get_runtime_context().get_node_id(), **host_info()}


def _connect(address: str | None) -> bool:
    """Connect to a cluster, or start an embedded one. Returns True when embedded."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():  # a caller (a notebook, a test) already connected: use that
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    if address:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError("address", address, f"cannot connect to a Ray cluster there ({str(e).splitlines()[0]})",
                            "start one with `ray start --head`, fix the address, or leave it unset for an embedded local Ray") from None
        return False
    ray.init(num_cpus=os.cpu_count(), **kwargs)
    return True


def _actor_options(plan: WorkerPlan, run_id: str) -> dict:
    return dict(num_cpus=plan.num_cpus, num_gpus=plan.num_gpus, max_concurrency=3,
                name=f"rayprof:{run_id}:{plan.actor_id}", max_restarts=0)


def _for_ray(plan: WorkerPlan) -> WorkerPlan:
    """Ray gives each GPU actor its own ``CUDA_VISIBLE_DEVICES``: ``cuda:N`` becomes ``cuda``."""
    fix = {k: "cuda" for k in ("exec_device", "prep_device") if str(getattr(plan, k)).startswith("cuda:")}
    return replace(plan, **fix) if fix else plan


def _error_text(e: BaseException) -> str:
    if isinstance(e, RayActorError):
        cause = getattr(e, "error_msg", None) or str(e)
        return "actor died: " + " ".join(cause.split())[:300]
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def check_feasible(plans: list[WorkerPlan], resources: dict) -> None:
    """Fail in seconds, naming the cluster's resources, instead of Ray's silent wait forever."""
    have_cpu, have_gpu = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    want_cpu = sum(p.num_cpus for p in plans)
    want_gpu = sum(p.num_gpus for p in plans)
    cluster = f"the cluster has {have_cpu:g} CPUs and {have_gpu:g} GPUs"
    cuda = [p for p in plans if "cuda" in (str(p.exec_device) + str(p.prep_device))]
    if cuda and have_gpu == 0:
        raise UserError(f"{cuda[0].field}.device", cuda[0].exec_device, f"asks for a GPU but {cluster}",
                        "run on the CPU (device: cpu, prep.device: cpu) or add GPU nodes")
    if want_gpu > have_gpu + 1e-9:
        raise UserError("workers", f"{want_gpu:g} GPUs", f"are more than {cluster}", "use fewer replicas or GPU workers")
    if want_cpu > have_cpu + 1e-9:
        raise UserError("workers", f"{want_cpu:g} CPUs", f"are more than {cluster}",
                        "use fewer replicas, smaller core sets, or cores: auto")


def _single_local_node() -> bool:
    """True when the connected cluster is this machine alone (a `ray.init()` in a notebook)."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return len(alive) == 1 and alive[0].get("NodeID") == ray.get_runtime_context().get_node_id()


def submit(spec: FleetSpec, address: str | None = None) -> int:
    """Run the fleet; returns the exit code (0 ok, 1 an actor failed or the run stopped)."""
    address = address or spec.address
    embedded = not (address or os.environ.get("RAY_ADDRESS") or ray.is_initialized())
    if embedded:  # bad input fails before a local Ray is started
        driver.preflight(spec, local=True)
    run_id = make_run_id(spec.run)
    root = str(Path(spec.output).resolve())
    t_submit = time.monotonic()
    started = _connect(address)
    try:
        local = embedded or _single_local_node()
        if not embedded:
            driver.preflight(spec, local=local)
        if local:
            plans = driver.local_plans(spec, run_id)
        else:  # the nodes' cores are not known here: explicit sets are checked on the node
            gpus = float(ray.cluster_resources().get("GPU", 0))
            plans = plan_fleet(spec, run_id, cores_available=None, cuda_available=gpus > 0, gpus=gpus)
        check_feasible(plans, ray.cluster_resources())
        manifest = driver.Manifest(root, run_id, spec, plans, mode="ray-embedded" if started else "ray")
        where = "embedded" if started else mask_text(address or os.environ.get("RAY_ADDRESS") or "connected")
        manifest.data["ray"] = {"address": where, "cluster_resources": ray.cluster_resources()}
        return _run(plans, run_id, root, manifest, t_submit)
    finally:
        if started:
            ray.shutdown()


def _run(plans, run_id, root, manifest, t_submit) -> int:
    con = driver.console()
    here = ray.get_runtime_context().get_node_id()
    sink = ray.remote(SinkService).options(
        num_cpus=0, name=f"rayprof:{run_id}:sink",
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
    ).remote(root, run_id)
    Remote = ray.remote(StreamWorker)
    actors = {p.actor_id: Remote.options(**_actor_options(p, run_id)).remote(
        _for_ray(p), SinkEmitter(sink, p.worker, p.actor_id), context=ray_context) for p in plans}
    res = ray.cluster_resources()
    con.print(f"rayprof submit {run_id}: {len(plans)} actor(s) on Ray ({res.get('CPU', 0):g} CPUs, "
              f"{res.get('GPU', 0):g} GPUs) → {Path(root) / ('run=' + run_id)}")
    pending = {actors[aid].run.remote(): aid for aid in actors}
    results: dict[str, dict] = {}
    view = driver.ProgressView(plans)
    first_step_s = None
    stop_deadline = None

    def finish_actor(aid: str, result: dict) -> None:
        results[aid] = result
        manifest.actor(aid, **driver._actor_fields(result))
        manifest.write()
        view.latest.setdefault(aid, {"actor_id": aid}).update(
            {k: result[k] for k in ("status", "steps", "frames") if k in result})

    def stop_all():
        nonlocal stop_deadline
        if stop_deadline is None:
            stop_deadline = time.monotonic() + STOP_GRACE_S
            for aid, a in actors.items():
                if aid not in results:
                    a.stop.remote()

    try:
        with driver.stop_on_signals(stop_all):
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S)
                for ref in ready:
                    aid = pending.pop(ref)
                    try:
                        finish_actor(aid, ray.get(ref).to_dict())
                    except RayError as e:
                        finish_actor(aid, {"status": "failed", "ended_by": "error", "error": _error_text(e)})
                # progress: whatever answers within the poll; a busy or pending actor keeps its last
                refs = [actors[aid].progress.remote() for aid in pending.values()]
                done, _ = ray.wait(refs, num_returns=len(refs), timeout=POLL_S) if refs else ([], [])
                progress = []
                for ref in done:
                    try:
                        progress.append(ray.get(ref))
                    except RayError:
                        pass
                if first_step_s is None and any(pr.get("steps", 0) > 0 for pr in progress):
                    first_step_s = time.monotonic() - t_submit
                view.update(progress)
                if stop_deadline is not None and time.monotonic() > stop_deadline:
                    raise KeyboardInterrupt  # the grace period is over
    except KeyboardInterrupt:  # a second Ctrl-C, or actors that ignored stop(): end them now
        for ref, aid in list(pending.items()):
            ray.kill(actors[aid])
            finish_actor(aid, {"status": "stopped", "ended_by": "stop", "error": "killed: did not stop in time"})
        pending.clear()
        stop_deadline = stop_deadline or time.monotonic()
    view.close()
    try:
        sink_stats = ray.get(sink.stats.remote(), timeout=30)
    except RayError as e:
        sink_stats = {"error": _error_text(e)}
    manifest.data["nodes"] = _node_infos(results)
    status, code = driver.run_status(results.values())
    if stop_deadline is not None and status == "completed":
        status, code = "stopped", driver.EXIT_FAILED
    manifest.finish(status, code, dataset_stats=sink_stats,
                    timings={"submit_to_first_step_s": round(first_step_s, 3) if first_step_s else None})
    first = f"{first_step_s:.1f} s" if first_step_s else "never"
    driver.print_summary(root, run_id, driver.worker_statuses(results, plans),
                         header=f"run {run_id}: {status} in {manifest.data['duration_s']:.1f} s "
                                f"({len(plans)} actors; first step {first} after submit)")
    driver.print_failures(results)
    return code


def _node_infos(results: dict[str, dict]) -> dict:
    """System info from every node an actor ran on (one small task per node)."""
    nodes: dict[str, dict] = {}
    for r in results.values():
        node_id = (r.get("identity") or {}).get("node_id")
        if not node_id or node_id in nodes:
            continue
        try:
            nodes[node_id] = ray.get(ray.remote(node_info).options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)).remote(),
                timeout=60)
        except RayError as e:
            nodes[node_id] = {"error": _error_text(e)}
    return nodes
