"""Connect, plan, place, run, collect: the body of ``rayprof submit``.

connect (``--address`` / spec ``address`` / ``RAY_ADDRESS`` / an embedded local Ray) → node
inventory and placement (``rayprof.placement``) → the sink (an actor on the driver's node, or
direct writes) → one ``StreamWorker`` actor per plan, pinned to its node → live progress →
results, failures, profiler traces and the manifest → an exit code.

Start-up is what a user waits for before the first step. The driver does not import torch or
torchvision (seconds of CPU each): its checks need neither (:mod:`rayprof.checks`), the actor
classes import the engine in the actors' processes (:mod:`._actors`), and for an embedded Ray
the local checks (files, sources, the placement) run on a thread while Ray starts its
processes (:func:`_connect_checking`). ``manifest.timings`` records the start-up in seconds
since :func:`submit` was called: Ray ready, actors created, first step (the earliest ``t_start``;
each actor's own is its ``first_step_s``).
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from logging.handlers import BufferingHandler

import ray
from ray.exceptions import RayActorError, RayError

from .. import driver, summary
from ..errors import UserError
from ..plan import WorkerPlan, make_run_id, plan_fleet
from ..sink import dataset_stats, resolve_root, run_dir
from ..source import mask_text, mask_url
from ..spec import FleetSpec
from ._connect import connect
from ._nodes import inventory, node_labels, pinned
from ._sink import RunSink, nodes_to_probe, resolve_mode

STOP_GRACE_S = 30.0
POLL_S = 0.5


def ray_context() -> dict:
    """Row identity from inside an actor: Ray's node id and address."""
    ctx = ray.get_runtime_context()
    import socket

    return {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname()}


def _actor_options(plan: WorkerPlan, run_id: str) -> dict:
    """Exactly what placement decided: the node (hard affinity), CPUs, GPUs, custom resources."""
    from . import _nsight

    opts = dict(num_cpus=plan.num_cpus, num_gpus=plan.num_gpus, resources=dict(plan.resources),
                max_concurrency=3, name=f"rayprof:{run_id}:{plan.actor_id}", max_restarts=0)
    if plan.node_id:
        opts["scheduling_strategy"] = pinned(plan.node_id)
    if nsight := _nsight.runtime_env_for(plan):  # profile.nsys: Ray runs the actor under nsys
        opts["runtime_env"] = nsight
    return opts


def _for_ray(plan: WorkerPlan) -> WorkerPlan:
    """Ray gives each GPU actor its own ``CUDA_VISIBLE_DEVICES``: ``cuda:N`` becomes ``cuda``."""
    fix = {k: "cuda" for k in ("exec_device", "prep_device") if str(getattr(plan, k)).startswith("cuda:")}
    return replace(plan, **fix) if fix else plan


def _error_text(e: BaseException) -> str:
    if isinstance(e, RayActorError):
        cause = getattr(e, "error_msg", None) or str(e)
        return "actor died: " + " ".join(cause.split())[:300]
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def _plan(spec: FleetSpec, run_id: str, embedded: bool, checked: bool) -> tuple[list[WorkerPlan], dict, dict]:
    """Inventory the connected cluster and place the fleet on it; raises UserError for what
    could never run. ``checked``: the local pre-flight already ran."""
    from . import _nsight

    nodes, facts = inventory(embedded=embedded)
    here = next((n for n in nodes if n.is_driver), None)
    if not checked:  # files, devices and sources are checked here when every node is this host
        driver.preflight(spec, local=bool(here) and all(n.ip == here.ip for n in nodes))
    plans = plan_fleet(spec, run_id, nodes=nodes)
    _nsight.preflight(plans)  # profile.nsys: nsys on every node that may host such an actor
    return plans, node_labels(nodes), facts


def plan_on_cluster(spec: FleetSpec, address: str | None) -> tuple[list[WorkerPlan], dict[str, str]]:
    """``rayprof validate --address``: the placement a submit would use now, starting nothing."""
    address = address or spec.address
    spec = driver.resolve_splits(spec)
    started = connect(address, spec)
    try:
        plans, labels, _facts = _plan(spec, make_run_id(spec.run), embedded=started, checked=False)
        return plans, labels
    finally:
        if started:
            ray.shutdown()


def submit(spec: FleetSpec, address: str | None = None, resume: str | None = None) -> int:
    """Run the fleet; returns the exit code (0 ok, 1 an actor failed or the run stopped).
    ``resume``: a run id (or ``latest``) of the same spec: its completed sweep points are kept,
    the rest run again."""
    t_submit = time.time()  # wall clock: compared with the rows' t_start (submit → first step)
    address = address or spec.address
    embedded = not (address or os.environ.get("RAY_ADDRESS") or ray.is_initialized())
    stopping = _Stopping()
    # from here on a signal stops the run cleanly: during start-up nothing starts, and the
    # manifest (written once the run's folder exists) says stopped
    with driver.StopSignals() as signals:
        signals.on_stop(stopping.request)
        try:
            return _submit(spec, address, resume, embedded, t_submit, signals, stopping)
        finally:
            if embedded and ray.is_initialized():  # also after an abort (a second Ctrl-C) during start-up
                ray.shutdown()


def _submit(spec: FleetSpec, address: str | None, resume: str | None, embedded: bool, t_submit: float,
            signals: driver.StopSignals, stopping: _Stopping) -> int:
    run_id = driver.resume_id(spec.output, resume, spec) if resume else make_run_id(spec.run)
    spec = driver.resolve_splits(spec)  # split: all → the model's points
    root = resolve_root(spec.output)
    with _ray_logs_held():  # a mistake found while Ray starts or on the cluster stays one line
        started = _connect_checking(address, spec, run_id, embedded)
        signals.install()  # Ray's own SIGTERM handler would end the process without a word
        timings = {"submitted_at": driver.iso(t_submit), "ray_ready_s": _since(t_submit)}
        plans, labels, facts = _plan(spec, run_id, embedded=started, checked=embedded)
    sink = RunSink(resolve_mode(spec), root, run_id,  # direct: every actor's node must see the output
                   probe=nodes_to_probe(plans, labels, ray.get_runtime_context().get_node_id()))
    done = driver.resumed(root, run_id, plans) if resume else None
    manifest = driver.Manifest(root, run_id, spec, plans, mode="ray-embedded" if started else "ray", done=done)
    manifest.data["dataset"]["sink"] = sink.mode
    where = "embedded" if started else mask_text(address or os.environ.get("RAY_ADDRESS") or "connected")
    manifest.data["ray"] = {"address": where, "cluster_resources": ray.cluster_resources()}
    manifest.data["nodes"] = facts
    for p in plans:
        manifest.actor(p.actor_id, node_id=p.node_id, node=labels.get(p.node_id))
    return _run(plans, run_id, root, manifest, t_submit, timings, labels, sink, done or {}, signals, stopping)


def _local_checks(spec: FleetSpec, run_id: str) -> None:
    """What a fleet on this machine can fail on before it starts: files, models, devices,
    cores, and the placement itself (custom resources, GPUs, cores)."""
    driver.preflight(spec, local=True)
    if not any(w.node for w in spec.workers):  # Ray names this machine's node by its own IP
        driver.local_plans(spec, run_id)


def _connect_checking(address: str | None, spec: FleetSpec, run_id: str, embedded: bool) -> bool:
    """:func:`connect`; for an embedded Ray the local checks run meanwhile, on a thread, in the
    seconds Ray takes to start its processes (opening the sources, and torch where a split or a
    weights file is checked). A failed check is raised as if it had run first, with the new Ray
    shut down (the caller holds Ray's start-up log: :func:`_ray_logs_held`)."""
    if not embedded:
        return connect(address, spec)
    with ThreadPoolExecutor(1, thread_name_prefix="rayprof-checks") as pool:
        checks = pool.submit(_local_checks, spec, run_id)
        try:
            started = connect(address, spec)
        finally:
            if checks.exception() is not None:  # waits for the checks
                ray.shutdown()
                checks.result()  # raises the check's error, before any of connect's
    return started


@contextmanager
def _ray_logs_held():
    """Hold back the ``ray`` logger's records (Ray's start-up warnings) in the block, then show
    them; a UserError out of the block drops them, so that the mistake is said in one line."""
    ray_logger = logging.getLogger("ray")
    held = BufferingHandler(capacity=10_000)
    handlers, ray_logger.handlers = ray_logger.handlers, [held]
    try:
        yield
    except UserError:
        held.buffer.clear()
        raise
    finally:
        ray_logger.handlers = handlers
        for record in held.buffer:
            ray_logger.handle(record)


def _since(t0: float) -> float:
    return round(time.time() - t0, 3)


def _start(plans: list[WorkerPlan], run_id: str, sink: RunSink) -> dict:
    """One actor per plan; a split pair's tail first, so its head can be given the way to it."""
    from . import _pair
    from ._actors import TailActor, WorkerActor

    Worker, Tail = ray.remote(WorkerActor), ray.remote(TailActor)
    actors = {}
    for p in sorted(plans, key=lambda p: p.role != "tail"):
        opts = _actor_options(p, run_id)
        if p.role == "tail":
            opts["max_concurrency"] = _pair.max_concurrency(p.window)
            actors[p.actor_id] = Tail.options(**opts).remote(_for_ray(p), sink.emitter(p), context=ray_context,
                                                             fetch=_pair.fetch)
        else:
            link = _pair.RayLink(actors[p.peer], p.peer) if p.role == "head" else None
            actors[p.actor_id] = Worker.options(**opts).remote(_for_ray(p), sink.emitter(p), context=ray_context,
                                                               link=link)
    return actors


def _run(plans, run_id, root, manifest, t_submit: float, timings: dict, labels: dict[str, str], sink: RunSink,
         done: dict[str, dict], signals: driver.StopSignals, stopping: _Stopping) -> int:
    from . import _nsight

    con = summary.console()
    res = ray.cluster_resources()
    phases = sorted({p.phase for p in plans})
    con.print(f"rayprof submit {run_id}: {len(plans)} actor(s) on Ray ({res.get('CPU', 0):g} CPUs, "
              f"{res.get('GPU', 0):g} GPUs)" + (f" in {len(phases)} sweep points, one after another" if len(phases) > 1 else "")
              + f" → {mask_url(run_dir(root, run_id))}")
    results: dict[str, dict] = dict(done)  # a resumed run's completed points
    if done:
        con.print(f"resuming {run_id}: {len({p.phase for p in plans if p.actor_id in done})} sweep point(s) "
                  "completed before are kept")
    view = driver.ProgressView(plans, node_labels=labels)

    def finish_actor(aid: str, result: dict) -> None:
        results[aid] = result
        manifest.actor(aid, **driver._actor_fields(result))
        manifest.write()
        view.latest.setdefault(aid, {"actor_id": aid}).update(
            {k: result[k] for k in ("status", "steps", "frames") if k in result})

    for phase in phases:
        batch = [p for p in plans if p.phase == phase]
        if all(p.actor_id in done for p in batch):
            continue
        if stopping.requested:  # a stopped sweep leaves its later points unrun
            for p in batch:
                finish_actor(p.actor_id, {"status": "stopped", "ended_by": "stop", "error": "not started: the run was stopped"})
            continue
        actors = _start(batch, run_id, sink)
        timings.setdefault("actors_created_s", _since(t_submit))
        _watch(batch, actors, results, finish_actor, view, stopping)
        _nsight.collect_reports(batch, actors, results, root, run_id, manifest)  # profile.nsys: every .nsys-rep
        for a in actors.values():  # free the phase's resources for the next one
            ray.kill(a)
    view.close()
    sink_stats = sink.finish()
    if done:  # the sink counted this session's rows; the run's dataset holds the earlier ones too
        sink_stats = dataset_stats(root, run_id)
    if resends := sum(r.get("resends") or 0 for r in results.values()):
        sink_stats["resends"] = resends
        con.print(f"{resends} batch(es) of rows were sent to the sink again"
                  + (" after it restarted" if sink_stats.get("sink_restarted") else "") + "; each is stored once")
    status, code = driver.run_status(results.values())
    firsts = {} if done else driver.first_steps(root, run_id, t_submit)  # resumed: some rows predate this submit
    for aid, first_s in firsts.items():
        manifest.actor(aid, first_step_s=round(first_s, 3))
    first_step_s = min(firsts.values(), default=None)
    timings["submit_to_first_step_s"] = None if first_step_s is None else round(first_step_s, 3)
    manifest.finish(status, code, signals, dataset_stats=sink_stats, timings=timings)
    status, code = manifest.data["status"], manifest.data["exit_code"]  # a stop during the finish
    first = "never" if first_step_s is None else f"{first_step_s:.1f} s"
    summary.print_summary(root, run_id, driver.worker_statuses(results, plans),
                         header=f"run {run_id}: {status} in {manifest.data['duration_s']:.1f} s "
                                f"({len(plans)} actors; first step {first} after submit)", manifest=manifest)
    driver.print_losses(results)
    driver.print_failures(results)
    return code


class _Stopping:
    """Ctrl-C / SIGTERM: ask every actor to stop, then kill what has not after a grace period."""

    def __init__(self):
        self.requested = False
        self.deadline: float | None = None
        self.actors: dict = {}
        self.done: dict = {}

    def request(self) -> None:
        """Ask every running actor to stop (again is harmless); the grace period starts at the first request."""
        if not self.requested:
            self.requested = True
            self.deadline = time.monotonic() + STOP_GRACE_S
        for aid, a in self.actors.items():
            if aid not in self.done:
                a.stop.remote()

    def overdue(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


def _watch(plans, actors, results, finish_actor, view, stopping: _Stopping) -> None:
    """Wait for one phase's actors to end, updating the progress view; a head that ends tells
    its tail that nothing more will come (whatever the head managed to say itself)."""
    stopping.actors, stopping.done = actors, results
    if stopping.requested:
        stopping.request()
    by_id = {p.actor_id: p for p in plans}
    pending = {actors[aid].run.remote(): aid for aid in actors}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S)
            for ref in ready:
                aid = pending.pop(ref)
                try:
                    finish_actor(aid, ray.get(ref))
                except RayError as e:
                    finish_actor(aid, {"status": "failed", "ended_by": "error", "error": _error_text(e)})
                if by_id[aid].role == "head" and by_id[aid].peer not in results:
                    actors[by_id[aid].peer].end.remote(None)
            # progress: whatever answers within the poll; a busy or pending actor keeps its last
            refs = [actors[aid].progress.remote() for aid in pending.values()]
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=POLL_S) if refs else ([], [])
            progress = []
            for ref in done:
                try:
                    progress.append(ray.get(ref))
                except RayError:
                    pass
            view.update(progress)
            if stopping.overdue():
                raise KeyboardInterrupt  # the grace period is over
    except KeyboardInterrupt:  # a second Ctrl-C, or actors that ignored stop(): end them now
        for ref, aid in list(pending.items()):
            ray.kill(actors[aid])
            finish_actor(aid, {"status": "stopped", "ended_by": "stop", "error": "killed: did not stop in time"})
        stopping.requested = True
