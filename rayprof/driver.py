"""What every driver does, with or without Ray: pre-flight checks, the manifest, live
progress, and the final table. ``rayprof run`` (one worker, in-process) lives here too;
``fleet.py`` adds Ray around the same pieces.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone


from . import __version__
from .errors import UserError, check_output_folder
from .metrics import SCHEMA_VERSION
from .summary import console, print_summary
from .plan import WorkerPlan, make_run_id, plan_fleet
from .sink import DatasetWriter, OutputError, is_uri, read_table, resolve_root, run_dir, write_manifest
from .spec import FleetSpec
from .sysinfo import host_info

EXIT_OK, EXIT_FAILED = 0, 1  # bad input (2) never gets this far: UserError


# --------------------------------------------------------------------------- checks


def preflight(spec: FleetSpec, *, local: bool = True) -> None:
    """Semantic checks before anything starts; raises the first UserError.

    ``local``: the workers run on this machine, so the output folder, files, cores and GPUs are
    checked here. Every sweep point's workers are checked; an error in a value the sweep set
    names the ``sweep`` key that set it.
    """
    from .sweep import points

    if local and not is_uri(spec.output):
        check_output_folder("output", spec.output)
    seen: set[str] = set()
    for point in points(spec):
        for i, w in enumerate(point.spec.workers):
            key = w.model_dump_json()
            if key in seen:
                continue
            seen.add(key)
            try:
                _check_worker(f"workers[{i}]", w, local)
            except UserError as e:
                swept = next((k for k, v in point.values if str(v) == str(e.value)), None)
                if swept is None or spec.sweep is None:
                    raise
                raise UserError(f"sweep.{swept}", e.value, e.problem, e.fix) from None


def _check_worker(f: str, w, local: bool) -> None:
    from .checks import check_device, check_model, check_prep, is_local_path  # no torch: see checks
    from .samples import resolve_uri
    from .source import SourceSettings, check_source

    check_model(w.model.name, w.model.weights, field_prefix=f"{f}.model", mode=w.mode,
                compile=w.model.compile, num_classes=w.model.num_classes)
    if local and w.model.weights and is_local_path(w.model.weights):  # load it once: wrong files fail here
        from .model import ModelRunner

        ModelRunner(w.model.name, mode=w.mode, device="cpu", weights=w.model.weights,
                    num_classes=w.model.num_classes, field_prefix=f"{f}.model")
    check_prep(w.prep.level, w.prep.device if local and w.prep.device != "auto" else "cpu", field=f"{f}.prep.level")
    if local and w.device != "auto":
        check_device(w.device, field=f"{f}.device")
    if local:
        check_source(SourceSettings(uri=resolve_uri(w.source.uri), width=w.source.width,
                                    height=w.source.height, field=f"{f}.source.uri"))
    _check_split(f, w, local)


def _check_split(f: str, w, local: bool) -> None:
    """Every split point of the worker cuts its model (a retrain tail must hold the classifier);
    the head's device exists here."""
    from .checks import check_device
    from .spec import ALL_POINTS, split_points_of

    points = [p for p in split_points_of(w) if p and p != ALL_POINTS]
    if not points:
        return
    from .model import build_model
    from .pair import cut_model

    model = build_model(w.model.name, mode=w.mode, num_classes=w.model.num_classes)  # the structure is enough
    for point in points:
        cut_model(model, point, name=w.model.name, mode=w.mode, field=f"{f}.model.split")
    if local and w.pair.head_device != "auto":
        check_device(w.pair.head_device, field=f"{f}.pair.head_device")


def resolve_splits(spec: FleetSpec) -> FleetSpec:
    """``model.split: all`` → the model's split points, in order."""
    from .spec import ALL_POINTS

    if not any(isinstance(w.model.split, str) and w.model.split.lower() == ALL_POINTS for w in spec.workers):
        return spec
    from .split import split_points

    workers = [w.model_copy(update={"model": w.model.model_copy(update={"split": split_points(w.model.name)})})
               if isinstance(w.model.split, str) and w.model.split.lower() == ALL_POINTS else w
               for w in spec.workers]
    return spec.model_copy(update={"workers": workers})


def resume_id(root: str | os.PathLike, value: str, spec: FleetSpec) -> str:
    """``--resume``: a run id under ``root``, or ``latest`` (the last run of this spec's name)."""
    from .sink import list_runs

    try:
        runs = list_runs(root)
    except FileNotFoundError:
        runs = []
    if value == "latest":
        mine = [r for r in runs if r.startswith(f"{spec.run}-")]
        if not mine:
            raise UserError("--resume", value, f"finds no run named {spec.run} in {root}", "start it without --resume")
        return mine[-1]
    if value not in runs:
        from .errors import did_you_mean

        raise UserError("--resume", value, f"is not a run in {root}" + did_you_mean(value, runs),
                        "give a run id (the folder name after run=) or latest")
    return value


def resumed(root: str | os.PathLike, run_id: str, plans: list[WorkerPlan]) -> dict[str, dict]:
    """The actors of ``run_id`` whose whole sweep point completed before: their manifest
    entries (kept, not run again). The files of every other actor of the plan are removed, so
    each of its steps is one row again when it reruns."""
    from .sink import read_manifest, remove_actor_files

    try:
        old = read_manifest(root, run_id)["actors"]
    except (OSError, ValueError, KeyError):
        raise UserError("--resume", run_id, "has no readable manifest", "start a new run") from None
    if set(old) != {p.actor_id for p in plans}:
        raise UserError("--resume", run_id, "ran another plan (its actors differ from this spec's)",
                        "resume with the spec and --set values it ran with, or start a new run")
    phases: dict[int, list[WorkerPlan]] = {}
    for p in plans:
        phases.setdefault(p.phase, []).append(p)
    done = {p.actor_id: old[p.actor_id] for ps in phases.values()
            if all(old[p.actor_id].get("status") == "completed" for p in ps) for p in ps}
    remove_actor_files(root, run_id, {p.actor_id: p.worker for p in plans if p.actor_id not in done})
    return done


def local_plans(spec: FleetSpec, run_id: str) -> list[WorkerPlan]:
    """Plans for actors that run on this machine."""
    from . import affinity
    from .checks import gpu_count

    gpus = gpu_count()
    return plan_fleet(spec, run_id, cores_available=affinity.available_cores(), cuda_available=gpus > 0,
                      gpus=float(gpus))


# --------------------------------------------------------------------------- manifest


def masked_spec(spec: FleetSpec) -> dict:
    from .source import mask_url

    data = spec.model_dump(mode="json")

    def walk(node):
        if isinstance(node, dict):
            return {k: (mask_url(v) if k in ("uri", "output") and isinstance(v, str) else walk(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(x) for x in node]
        return node

    return walk(data)


def plan_row(plan: WorkerPlan) -> dict:
    from .affinity import format_cores
    from .source import mask_url

    opts = [o for o, on in (("amp", plan.amp), ("compile", plan.compile)) if on]
    return {
        "actor": plan.actor_id,
        "worker": plan.worker,
        "point": plan.sweep_point or "-",
        "source": mask_url(plan.source.uri) + (" (loop)" if plan.source.loop else ""),
        "model": plan.model,
        "mode": plan.mode,
        "batch": plan.batch_size,
        "prep": f"{plan.prep_level}@{plan.prep_device}",
        "exec": plan.exec_device,
        "split": _split_text(plan),
        "opts": ",".join(opts) or "-",
        "cores": format_cores(plan.cores) or "unpinned",
        "cpus": f"{plan.num_cpus:g}",
        "gpus": f"{plan.num_gpus:g}",
        "steps": plan.max_steps or "until end",
        "warmup": plan.warmup_steps,
    }


def _split_text(plan: WorkerPlan) -> str:
    """Where the plan's model is cut and which half this actor runs: ``layer3 head``."""
    if not plan.split_point:
        return "-"
    if plan.role == "split":
        return f"{plan.split_point} in-process (head@{plan.head_device})"
    return f"{plan.split_point} {plan.role}"


class Manifest:
    """The run's ``_manifest.json``, rewritten atomically at start and at the end."""

    unwritten: OutputError | None = None  # why the last write failed (the older version stays)

    def __init__(self, root: str | os.PathLike, run_id: str, spec: FleetSpec, plans: list[WorkerPlan], mode: str,
                 done: dict[str, dict] | None = None):
        """``done``: a resumed run's actors that completed before (their entries are kept)."""
        from .source import mask_text, mask_url

        self.root, self.run_id = root, run_id
        self.t0 = time.time()
        self.data = {
            "manifest_version": 1,
            "schema_version": SCHEMA_VERSION,
            "run_id": run_id,
            "run_name": spec.run,
            "status": "running",
            "exit_code": None,
            "started_at": iso(self.t0),
            "ended_at": None,
            "duration_s": None,
            "launcher": mode,
            "command": [mask_text(a) for a in sys.argv],
            "rayprof_version": __version__,
            "driver": host_info(),
            "nodes": {},
            "spec": masked_spec(spec),
            "actors": {p.actor_id: (done or {}).get(p.actor_id) or {"plan": plan_row(p), "status": "pending"}
                       for p in plans},
            "dataset": {"root": mask_url(resolve_root(root)), "path": mask_url(run_dir(root, run_id))},
        }
        if done is not None:
            self.data["resumed"] = True
        write_manifest(self.root, self.run_id, self.data)  # an output that cannot take it ends the run here

    def write(self) -> None:
        """Replace the manifest. Once the run has started, an output that cannot take it (a full
        disk) does not end the run: the first such error is said on stderr, the last version
        written stays, and :attr:`unwritten` holds the error until a write succeeds."""
        try:
            write_manifest(self.root, self.run_id, self.data)
        except OutputError as e:
            if self.unwritten is None:
                print(f"error: {e.message}", file=sys.stderr, flush=True)
            self.unwritten = e
            return
        self.unwritten = None

    def actor(self, actor_id: str, **fields) -> None:
        self.data["actors"][actor_id].update(fields)

    def finish(self, status: str, exit_code: int, signals: StopSignals | None = None, **extra) -> None:
        """Record the end; a run that was not stopped also gets its summary index (``index`` in the
        manifest: how long it took, or why it failed: the run's outcome stands either way).
        ``signals``: a stop request up to here, or while the index is built, makes the run
        ``stopped`` (the index is left to `rayprof index`)."""
        if status != "stopped":  # after Ctrl-C, leave at once: `rayprof index` builds it later
            extra["index"] = _index_run(self.root, self.run_id, signals)
        if signals is not None and signals.requested and status == "completed":
            status, exit_code = "stopped", EXIT_FAILED
        t1 = time.time()
        self.data.update(status=status, exit_code=exit_code, ended_at=iso(t1), duration_s=round(t1 - self.t0, 3), **extra)
        self.write()
        if self.unwritten is not None:  # the manifest on disk says less than this: the run failed
            self.data.update(status="failed", exit_code=EXIT_FAILED)


def _index_run(root: str, run_id: str, signals: StopSignals | None) -> dict:
    from . import index

    t0 = time.perf_counter()
    try:
        with signals.interruptible() if signals is not None else nullcontext():
            index.build(root, run_id)
    except KeyboardInterrupt:  # a stop request: leave at once
        return {"skipped": "the run was stopped; `rayprof index` builds it"}
    except Exception as e:  # noqa: BLE001 - an index is a convenience; the dataset is complete without it
        print(f"could not index run {run_id} ({type(e).__name__}: {e}); `rayprof index` can build it later",
              file=sys.stderr, flush=True)
        return {"error": f"{type(e).__name__}: {e}"}
    return {"built_s": round(time.perf_counter() - t0, 3)}


def iso(t: float) -> str:
    """A wall-clock time (``time.time()``) as the manifest writes it: ISO 8601, UTC, milliseconds."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


def run_status(results: Iterable[dict]) -> tuple[str, int]:
    statuses = [r.get("status") for r in results]
    if any(s == "failed" for s in statuses):
        return "failed", EXIT_FAILED
    if any(s == "stopped" for s in statuses):
        return "stopped", EXIT_FAILED
    return "completed", EXIT_OK


# --------------------------------------------------------------------------- display


class ProgressView:
    """Live per-actor progress: a rich table on a terminal, plain lines otherwise."""

    def __init__(self, plans: list[WorkerPlan], interval_s: float | None = None, node_labels: dict | None = None):
        self.plans = {p.actor_id: p for p in plans}
        self.nodes = {p.actor_id: (node_labels or {}).get(p.node_id) for p in plans}  # where placement put it
        self.tty = sys.stdout.isatty()
        self.interval_s = interval_s if interval_s is not None else (0.5 if self.tty else 5.0)
        self.t0 = time.monotonic()
        self._last_print = 0.0
        self._printed: dict[str, tuple] = {}
        self._live = None
        self.latest: dict[str, dict] = {aid: {"actor_id": aid, "status": "pending"} for aid in self.plans}
        if self.tty:
            from rich.live import Live

            self._live = Live(self._table(), refresh_per_second=4, transient=True, console=console())
            self._live.start()

    def _table(self):
        from rich.table import Table

        t = Table(title=f"rayprof · {time.monotonic() - self.t0:5.1f} s", box=None, header_style="bold")
        for col in ("actor", "node", "cores", "status", "step", "frames", "fps"):
            t.add_column(col, justify="right" if col in ("step", "frames", "fps") else "left")
        for aid, p in self.plans.items():
            pr = self.latest.get(aid, {})
            limit = f"/{p.max_steps}" if p.max_steps else ""
            t.add_row(aid, self._node(aid, pr), str(pr.get("cores") or "-"), pr.get("status", "pending"),
                      f"{pr.get('steps', 0)}{limit}", str(pr.get("frames", 0)), f"{pr.get('fps', 0.0):.1f}")
        return t

    def _node(self, aid: str, pr: dict) -> str:
        return str(self.nodes.get(aid) or pr.get("node_ip") or "-")

    def update(self, progress: Iterable[dict]) -> None:
        for pr in progress:
            self.latest[pr["actor_id"]] = pr
        if self._live is not None:
            self._live.update(self._table())
            return
        now = time.monotonic()
        if now - self._last_print >= self.interval_s:
            self._last_print = now
            for aid, pr in self.latest.items():  # one line per actor that moved since the last print
                key = (pr.get("status"), pr.get("steps", 0))
                if self._printed.get(aid) == key:
                    continue
                self._printed[aid] = key
                limit = self.plans[aid].max_steps if aid in self.plans else 0
                steps = f"{pr.get('steps', 0)}/{limit}" if limit else f"{pr.get('steps', 0)}"
                print(f"[{now - self.t0:6.1f}s] {aid:<24} {pr.get('status', ''):<9} step {steps:>9} "
                      f"{pr.get('fps', 0.0):8.1f} fps  {self._node(aid, pr)}", flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def first_steps(root: str | os.PathLike, run_id: str, since: float) -> dict[str, float]:
    """Per actor, seconds from ``since`` (wall clock) to the start of its first step, from the
    rows; actors without rows are left out."""
    try:
        table = read_table(root, run_id, columns=["actor_id", "t_start"])
    except (OSError, ValueError):
        return {}
    firsts = table.group_by("actor_id").aggregate([("t_start", "min")]).to_pylist()
    return {r["actor_id"]: max(0.0, r["t_start_min"].timestamp() - since) for r in firsts}


def worker_statuses(results: dict[str, dict], plans: list[WorkerPlan]) -> dict[str, str]:
    """Per worker: the worst status among its actors (failed > stopped > completed)."""
    rank = {"completed": 0, "stopped": 1, "failed": 2}
    out: dict[str, str] = {}
    for p in plans:
        s = results.get(p.actor_id, {}).get("status", "failed")
        if p.worker not in out or rank.get(s, 2) > rank.get(out[p.worker], 2):
            out[p.worker] = s
    return out


class StopSignals:
    """SIGINT/SIGTERM over a whole run, from start-up to the last manifest write (a context
    manager). The first signal asks for a graceful stop: every callback given to :meth:`on_stop`
    runs (workers end after their step and flush; a run not started yet starts nothing), and the
    manifest says ``stopped``. Inside :meth:`interruptible` (the end-of-run index) it also ends
    the block at once. A second SIGINT aborts (KeyboardInterrupt)."""

    def __init__(self):
        self.requested = False
        self.hits = 0
        self._stops: list[Callable[[], None]] = []
        self._interruptible = False
        self._old: dict = {}

    def on_stop(self, stop: Callable[[], None]) -> None:
        """Call ``stop()`` on a stop request; at once if one came already."""
        self._stops.append(stop)
        if self.requested:
            stop()

    def _handler(self, signum, frame) -> None:
        self.hits += 1
        if self.hits > 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.requested:
            print(f"\n{signal.Signals(signum).name}: stopping every worker (again to abort)…", file=sys.stderr, flush=True)
            self.requested = True
            for stop in self._stops:
                stop()
        if self._interruptible:
            raise KeyboardInterrupt

    @contextmanager
    def interruptible(self):
        """A block that a stop request ends at once, raising KeyboardInterrupt (also on entry,
        when the request came before)."""
        if self.requested:
            raise KeyboardInterrupt
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def install(self) -> None:
        """Handle the signals (again: ``ray.init`` sets a SIGTERM handler of its own)."""
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for sig in (signal.SIGINT, signal.SIGTERM):
                old = signal.signal(sig, self._handler)
                self._old.setdefault(sig, old)

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)
        self._old.clear()


# --------------------------------------------------------------------------- rayprof run


def run_single(spec: FleetSpec) -> int:
    """One worker in this process, no Ray: the original tool's ``worker.py``."""
    with StopSignals() as signals:  # from the start: a signal at any moment stops the run cleanly
        return _run_single(spec, signals)


def _run_single(spec: FleetSpec, signals: StopSignals) -> int:
    from .worker import Emitter, StreamWorker

    preflight(spec, local=True)
    run_id = make_run_id(spec.run)
    plans = local_plans(resolve_splits(spec), run_id)
    if len(plans) != 1:
        raise UserError("workers", len(plans), "rayprof run runs exactly one worker", "use rayprof submit for several")
    plan = plans[0]
    writer = DatasetWriter(spec.output, run_id)
    manifest = Manifest(spec.output, run_id, spec, plans, mode="in-process")
    con = console()
    split = f", split after {plan.split_point} (head on {plan.head_device})" if plan.split_point else ""
    con.print(f"rayprof run {run_id}: {plan.model} {plan.mode} batch {plan.batch_size} on {plan.exec_device}{split}, "
              f"prep {plan.prep_level}@{plan.prep_device}, cores {plan_row(plan)['cores']}")
    worker = StreamWorker(plan, Emitter(lambda b, seq: writer.write(plan.worker, plan.actor_id, b, seq),
                                         put_file=writer.put_file))
    view = ProgressView(plans)
    done = threading.Event()

    def poll():
        while not done.wait(view.interval_s / 2):
            view.update([worker.progress()])

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    signals.on_stop(worker.stop)
    result = worker.run().to_dict()
    done.set()
    poller.join()
    view.update([worker.progress()])
    view.close()
    manifest.data["nodes"][result["identity"].get("node_id") or "local"] = host_info()
    manifest.actor(plan.actor_id, **_actor_fields(result))
    status, code = run_status([result])
    manifest.finish(status, code, signals, dataset_stats=writer.stats())
    status, code = manifest.data["status"], manifest.data["exit_code"]
    print_summary(spec.output, run_id, worker_statuses({plan.actor_id: result}, plans),
                  header=f"run {run_id}: {status} in {manifest.data['duration_s']:.1f} s")
    print_losses({plan.actor_id: result})
    print_failures({plan.actor_id: result})
    return code


def print_losses(results: dict[str, dict]) -> None:
    """One line per actor whose source lost frames or time (decode errors, drops, outages)."""
    from .source import describe_losses

    for aid, r in results.items():
        if said := describe_losses(r.get("source_stats") or {}):
            print(f"{aid} source: {said}", flush=True)


def print_failures(results: dict[str, dict]) -> None:
    """One plain line per failed actor on stderr (no markup: error texts may hold brackets)."""
    for aid, r in results.items():
        if r.get("status") == "failed":
            print(f"{aid} failed: {r.get('error')}", file=sys.stderr, flush=True)


def _actor_fields(result: dict) -> dict:
    keep = ("status", "ended_by", "error", "steps", "frames", "rows_emitted", "resends", "setup_s", "run_s",
            "identity", "source_stats", "model_info", "traceback", "artifacts")
    return {k: result.get(k) for k in keep}
