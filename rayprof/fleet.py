"""The Ray shell around the engine — the only module that imports ray.

connect (``--address`` / spec ``address`` / ``RAY_ADDRESS`` / an embedded local Ray) → a sink
actor on the driver's node → one ``StreamWorker`` actor per plan → live progress → results,
failures and the manifest → an exit code.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from . import driver
from .errors import UserError
from .plan import WorkerPlan, make_run_id
from .sink import DatasetWriter
from .spec import FleetSpec
from .sysinfo import host_info
from .worker import StreamWorker

STOP_GRACE_S = 30.0
POLL_S = 0.5


class SinkService:
    """The dataset writer as an actor on the driver's node (num_cpus=0)."""

    def __init__(self, root: str, run_id: str):
        self.writer = DatasetWriter(root, run_id)

    def write(self, worker: str, actor_id: str, batch, seq: int) -> int:
        self.writer.write(worker, actor_id, batch, seq)
        return batch.num_rows

    def stats(self) -> dict:
        return self.writer.stats()


class SinkEmitter:
    """A worker's emitter under Ray (the contract of ``worker.Emitter``): batches go to the
    sink with at most ``window`` unacknowledged (back-pressure, not an unbounded queue). A
    write that is not acknowledged is sent again, once, with the same sequence number, so it
    replaces rather than duplicates; if that fails too the error propagates and the batch
    stays queued for ``drain()``."""

    def __init__(self, sink, worker: str, actor_id: str, window: int = 2):
        self.sink, self.worker, self.actor_id, self.window = sink, worker, actor_id, window
        self._inflight: list[tuple[object, int, object]] = []  # (ref, seq, batch), oldest first
        self._seq = 0
        self.rows = 0

    def _send(self, seq: int, batch):
        return self.sink.write.remote(self.worker, self.actor_id, batch, seq)

    def __call__(self, batch) -> None:
        self._inflight.append((self._send(self._seq, batch), self._seq, batch))
        self._seq += 1
        while len(self._inflight) > self.window:
            self._confirm_oldest()

    def _confirm_oldest(self) -> None:
        ref, seq, batch = self._inflight[0]
        try:
            ray.get(ref)
        except RayError:
            ref = self._send(seq, batch)
            self._inflight[0] = (ref, seq, batch)
            ray.get(ref)
        self._inflight.pop(0)
        self.rows += batch.num_rows

    def drain(self) -> None:
        while self._inflight:
            self._confirm_oldest()


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
    num_gpus = 1 if str(plan.exec_device).startswith("cuda") or str(plan.prep_device).startswith("cuda") else 0
    return dict(num_cpus=plan.num_cpus, num_gpus=num_gpus, max_concurrency=3,
                name=f"rayprof:{run_id}:{plan.actor_id}", max_restarts=0)


def _error_text(e: BaseException) -> str:
    if isinstance(e, RayActorError):
        cause = getattr(e, "error_msg", None) or str(e)
        return "actor died: " + " ".join(cause.split())[:300]
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def submit(spec: FleetSpec, address: str | None = None) -> int:
    """Run the fleet; returns the exit code (0 ok, 1 an actor failed or the run stopped)."""
    address = address or spec.address
    local = not (address or os.environ.get("RAY_ADDRESS"))
    driver.preflight(spec, local=local)
    run_id = make_run_id(spec.run)
    plans = driver.local_plans(spec, run_id)
    root = str(Path(spec.output).resolve())
    con = driver.console()
    t_submit = time.monotonic()
    embedded = _connect(address)
    manifest = driver.Manifest(root, run_id, spec, plans, mode="ray-embedded" if embedded else "ray")
    manifest.data["ray"] = {"address": "embedded" if embedded else address or os.environ.get("RAY_ADDRESS"),
                            "cluster_resources": ray.cluster_resources()}
    try:
        return _run(spec, plans, run_id, root, manifest, con, t_submit)
    finally:
        if embedded:
            ray.shutdown()


def _run(spec, plans, run_id, root, manifest, con, t_submit) -> int:
    here = ray.get_runtime_context().get_node_id()
    sink = ray.remote(SinkService).options(
        num_cpus=0, name=f"rayprof:{run_id}:sink",
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
    ).remote(root, run_id)
    Remote = ray.remote(StreamWorker)
    actors = {}
    for p in plans:
        actors[p.actor_id] = Remote.options(**_actor_options(p, run_id)).remote(
            p, SinkEmitter(sink, p.worker, p.actor_id), context=ray_context)
    con.print(f"rayprof submit {run_id}: {len(plans)} actor(s) on Ray "
              f"({int(ray.cluster_resources().get('CPU', 0))} CPUs, {int(ray.cluster_resources().get('GPU', 0))} GPUs) "
              f"→ {Path(root) / ('run=' + run_id)}")
    pending = {actors[aid].run.remote(): aid for aid in actors}
    results: dict[str, dict] = {}
    view = driver.ProgressView(plans)
    first_step_s = None
    stop_deadline = None

    def stop_all():
        nonlocal stop_deadline
        if stop_deadline is None:
            stop_deadline = time.monotonic() + STOP_GRACE_S
            for aid, a in actors.items():
                if aid not in results:
                    a.stop.remote()

    with driver.stop_on_signals(stop_all):
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S, fetch_local=True)
            for ref in ready:
                aid = pending.pop(ref)
                try:
                    results[aid] = ray.get(ref).to_dict()
                except RayError as e:
                    results[aid] = {"status": "failed", "ended_by": "error", "error": _error_text(e)}
                manifest.actor(aid, **driver._actor_fields(results[aid]))
                manifest.write()
                view.latest.setdefault(aid, {"actor_id": aid}).update(
                    {k: results[aid][k] for k in ("status", "steps", "frames") if k in results[aid]})
            try:
                progress = ray.get([actors[aid].progress.remote() for aid in pending.values()], timeout=5)
            except (GetTimeoutError, RayError):
                progress = []
            if first_step_s is None and any(pr.get("steps", 0) > 0 for pr in progress):
                first_step_s = time.monotonic() - t_submit
            view.update(progress)
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                for ref, aid in list(pending.items()):
                    ray.kill(actors[aid])
                    results[aid] = {"status": "stopped", "ended_by": "stop", "error": "killed after the stop grace period"}
                    manifest.actor(aid, **driver._actor_fields(results[aid]))
                    pending.pop(ref)
    view.close()
    try:
        sink_stats = ray.get(sink.stats.remote(), timeout=30)
    except RayError as e:
        sink_stats = {"error": _error_text(e)}
    nodes = {}
    for r in results.values():
        ident = r.get("identity") or {}
        if ident.get("node_id") and ident["node_id"] not in nodes:
            nodes[ident["node_id"]] = None
    for node_id in nodes:
        try:
            nodes[node_id] = ray.get(ray.remote(node_info).options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)).remote(), timeout=60)
        except RayError as e:
            nodes[node_id] = {"error": _error_text(e)}
    manifest.data["nodes"] = nodes
    stopped_by_user = stop_deadline is not None
    status, code = driver.run_status(results.values())
    if stopped_by_user and status == "completed":
        status, code = "stopped", driver.EXIT_FAILED
    manifest.finish(status, code, dataset_stats=sink_stats,
                    timings={"submit_to_first_step_s": round(first_step_s, 3) if first_step_s else None})
    driver.print_summary(root, run_id, driver.worker_statuses(results, plans),
                         header=f"run {run_id}: {status} in {manifest.data['duration_s']:.1f} s "
                                f"({len(plans)} actors; first step {first_step_s or float('nan'):.1f} s after submit)")
    for aid, r in results.items():
        if r.get("status") == "failed":
            con.print(f"[red]{aid} failed: {r.get('error')}[/red]")
    return code
