"""The per-stream engine: ``StreamWorker`` runs read → prep → exec per step and emits rows.

It knows nothing of Ray: ``fleet.py`` makes it an actor, ``rayprof run`` calls it in-process,
and tests drive it with fakes (sources, preprocessors and runners are injectable factories; the
clocks are injected so stage accounting is checked exactly).

Per step (serial, the original tool's semantics)::

    with mark("step"):
        with mark("read"):  batch = source.read(batch_size)      → read_ms
        with mark("prep"):  x = prep(batch.frames); sync         → prep_ms
        with mark("exec"):  loss = runner.step(x, labels); sync  → exec_ms
    row(step, warmup, t_start, read_ms, prep_ms, exec_ms, total_ms, frames, dropped, age, loss)

``pipeline: overlap`` reads and preps the next batch on a background thread while the model
runs this one (:mod:`rayprof.prefetch`, which also says what each column then means)::

    prefetch thread:  read N+1 → prep N+1 ─────────▶ read N+2 → prep N+2 …   → read_ms, prep_ms
    worker thread:    wait for N → exec N            wait for N+1 → exec N+1  → wait_ms, exec_ms

Endings (max_steps, end of stream, stop, errors), warm-up, flushing and drop accounting are the
same in both modes: the prefetch thread reads no batch beyond ``max_steps``, its errors are the
worker's, and it is joined before the source closes.

Rows are shipped through ``emit(RecordBatch)`` at least every ``flush_interval_s`` (and every
4096 rows), between steps, so a worker's death loses at most that much.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from . import affinity
from .errors import UserError
from .markers import mark
from .metrics import RowBuffer
from .plan import WorkerPlan
from .prefetch import Prefetcher, Staged, stager, staging_for
from .profiling import tracer_for
from .timing import Clock, StageTimer, WallClock, cuda_sync_for

Emit = Callable[[pa.RecordBatch], None]
MAX_BUFFERED_ROWS = 4096


class Emitter:
    """Ships a worker's batches and owns them once handed over: a batch whose delivery fails
    is kept and delivered first on the next call or on ``drain()``. Each batch carries its
    sequence number, so a sink that names files by (actor, seq) makes a re-delivery replace
    the same file: exactly one row per executed step, even across retries.

    This one wraps a synchronous ``write(batch, seq)``; ``fleet.SinkEmitter`` is the
    asynchronous Ray version with the same contract.
    """

    def __init__(self, write: Callable[[pa.RecordBatch, int], object], max_unsent: int = 8,
                 put_file: Callable[[str, str, bytes], object] | None = None):
        self._write = write
        self._put_file = put_file
        self._unsent: list[tuple[int, pa.RecordBatch]] = []
        self._seq = 0
        self.max_unsent = max_unsent
        self.rows = 0  # rows whose delivery was acknowledged
        self.resends = 0  # deliveries that failed (the batch is sent again)

    def __call__(self, batch: pa.RecordBatch) -> None:
        """Deliver ``batch`` (and any earlier undelivered ones). A failure is survived while at
        most ``max_unsent`` batches wait; past that it is raised (the sink is gone)."""
        self._unsent.append((self._seq, batch))
        self._seq += 1
        try:
            self.drain()
        except Exception:
            self.resends += 1
            if len(self._unsent) > self.max_unsent:
                raise

    def drain(self) -> None:
        while self._unsent:
            seq, batch = self._unsent[0]
            self._write(batch, seq)
            self._unsent.pop(0)
            self.rows += batch.num_rows

    def artifact(self, kind: str, name: str, data: bytes) -> str | None:
        """Store a profiler artifact (``kind``/``name``) next to the run's dataset."""
        if self._put_file is None:
            return None
        return str(self._put_file(kind, name, data))


@dataclass
class WorkerResult:
    """How an actor's run ended."""

    actor_id: str
    worker: str
    status: str  # completed | failed | stopped
    ended_by: str  # max_steps | end_of_stream | stop | error
    steps: int = 0
    frames: int = 0
    rows_emitted: int = 0
    resends: int = 0  # batches the sink did not take at first, sent again (no row is doubled)
    error: str | None = None
    traceback: str | None = None
    setup_s: float = 0.0
    run_s: float = 0.0
    identity: dict = field(default_factory=dict)
    source_stats: dict = field(default_factory=dict)
    model_info: dict = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)  # profiler files, relative to the run's folder

    def to_dict(self) -> dict:
        return asdict(self)


def _waiting(get: Callable[[], Staged | None], lap: Callable[..., float]) -> Callable[[int], Staged | None]:
    """``take(step)`` of ``pipeline: overlap``: wait for the prefetch thread's batch (``wait_ms``)."""

    def take(step: int) -> Staged | None:
        with mark("wait", step):
            staged = get()
        wait_ms = lap("wait")
        if staged is not None:
            staged.wait_ms = wait_ms
        return staged

    return take


def default_context() -> dict:
    """Where this process runs, when no orchestrator says better."""
    host = socket.gethostname()
    try:
        ip = socket.gethostbyname(host)
    except OSError:
        ip = "127.0.0.1"
    return {"node_id": host, "node_ip": ip, "hostname": host}


def _default_source(plan: WorkerPlan, wall: WallClock):
    from dataclasses import replace

    from .samples import resolve_uri
    from .source import open_source

    settings = replace(plan.source, uri=resolve_uri(plan.source.uri))
    return open_source(settings, clock=lambda: wall() / 1e9)


def _default_prep(plan: WorkerPlan):
    from .prep import Preprocessor

    return Preprocessor(plan.prep_level, plan.prep_device, size=plan.prep_size, seed=plan.seed + plan.replica)


def _default_runner(plan: WorkerPlan, link=None, clock: Clock = time.perf_counter):
    """The plan's model: whole (role full), its head half shipping the tail half over ``link``
    (role head), or both halves in this process (role split, see :mod:`rayprof.pair`)."""
    from .model import ModelRunner

    if plan.role == "head":
        from .pair import head_runner

        return head_runner(plan, link)
    if plan.role == "split":
        from .pair import SplitRunner

        return SplitRunner(plan, clock)
    return ModelRunner(
        plan.model,
        mode=plan.mode,
        device=plan.exec_device,
        weights=plan.weights,
        num_classes=plan.num_classes,
        compile=plan.compile,
        amp=plan.amp,
        lr=plan.lr,
        seed=plan.seed,
        field_prefix=f"{plan.field}.model",
    )


class StreamWorker:
    """One video stream through one model. ``setup()`` then ``run()``; ``stop()`` and
    ``progress()`` may be called from another thread while ``run()`` works."""

    def __init__(
        self,
        plan: WorkerPlan,
        emit: Emit,
        *,
        context: Callable[[], dict] | None = None,
        clock: Clock = time.perf_counter,
        wall_clock: WallClock = time.time_ns,
        source_factory: Callable | None = None,
        prep_factory: Callable | None = None,
        runner_factory: Callable | None = None,
        pin: bool = True,
        link=None,
    ):
        """``link``: the head of a split pair ships each batch's activation to its tail through
        it (a :class:`rayprof.pair.Link`)."""
        self.plan = plan
        self._emit = emit if hasattr(emit, "drain") else Emitter(lambda batch, seq: emit(batch))
        self._context = context or default_context
        self._clock = clock
        self._wall = wall_clock
        self._source_factory = source_factory or (lambda p: _default_source(p, wall_clock))
        self._prep_factory = prep_factory or _default_prep
        self._runner_factory = runner_factory or (lambda p: _default_runner(p, link, clock))
        self._link = link
        self._shipper = None
        self._pin = pin
        self._stop = threading.Event()
        self._ready = False
        self.source = self.prep = self.runner = None
        self.buffer: RowBuffer | None = None
        self.identity: dict = {}
        self._steps = 0
        self._frames = 0
        self._status = "created"
        self._t_run0: float | None = None
        self._setup_s = 0.0
        self._tracer = tracer_for(plan, self._emit)  # profile.torch, or a no-op

    # ------------------------------------------------------------------ lifecycle

    def setup(self) -> dict:
        """Pin cores, open the source, build prep and model. Returns the row identity."""
        if self._ready:
            return self.identity
        t0 = self._clock()
        self._status = "starting"
        p = self.plan
        pinned = affinity.pin(list(p.cores)) if self._pin and p.cores else list(p.cores)
        self.prep = self._prep_factory(p)
        if self._link is not None:
            from .pair import Shipper

            self._shipper = Shipper(self._link, p.window)
        self.runner = self._runner_factory(p)
        # the source opens last: a live stream's buffer must not fill while the model loads
        self.source = self._source_factory(p)
        info = getattr(self.runner, "info", None)
        ctx = self._context()
        gpu_name = None
        if str(p.exec_device).startswith("cuda") or str(p.prep_device).startswith("cuda"):
            import torch

            dev = p.exec_device if str(p.exec_device).startswith("cuda") else p.prep_device
            gpu_name = torch.cuda.get_device_name(torch.device(dev))
        self.identity = {
            "replica": p.replica,
            "actor_id": p.actor_id,
            "pair_id": p.pair_id,
            "node_id": ctx.get("node_id"),
            "node_ip": ctx.get("node_ip"),
            "hostname": ctx.get("hostname"),
            "pid": os.getpid(),
            "gpu_name": gpu_name,
            "cores": affinity.format_cores(pinned) if pinned else None,
            "model": p.model,
            "mode": p.mode,
            "role": p.role,
            "batch_size": p.batch_size,
            "prep_level": p.prep_level,
            "prep_device": str(p.prep_device),
            "exec_device": str(p.exec_device),
            "amp": bool(p.amp),
            "compiled": bool(getattr(info, "compiled", p.compile)),
            "sweep_point": p.sweep_point,
            "split_point": p.split_point,
            "pipeline": p.pipeline,
        }
        self.buffer = RowBuffer(self.identity)
        self._prep_sync = cuda_sync_for(p.prep_device)
        self._setup_s = self._clock() - t0
        self._ready = True
        self._status = "ready"
        return self.identity

    def stop(self) -> None:
        """Ask the loop to end after the current step (rows are flushed)."""
        self._stop.set()

    def progress(self) -> dict:
        elapsed = (self._clock() - self._t_run0) if self._t_run0 is not None else 0.0
        return {
            "actor_id": self.plan.actor_id,
            "worker": self.plan.worker,
            "status": self._status,
            "steps": self._steps,
            "frames": self._frames,
            "rows_emitted": self._emit.rows,
            "elapsed_s": elapsed,
            "fps": self._frames / elapsed if elapsed > 0 else 0.0,
            "node_ip": self.identity.get("node_ip"),
            "cores": self.identity.get("cores"),
        }

    # ------------------------------------------------------------------ the loop

    def run(self) -> WorkerResult:
        """Run until max_steps, the end of the source, stop() or an error. Never raises:
        an error is flushed, closed and returned as a ``failed`` result."""
        p = self.plan
        result = WorkerResult(actor_id=p.actor_id, worker=p.worker, status="failed", ended_by="error")
        t0 = self._clock()
        try:
            self.setup()
            self._status = "running"
            self._t_run0 = self._clock()
            self._tracer.start()
            result.ended_by = self._loop()
            if self._shipper is not None:  # the tail finishes what is in flight; its failure is ours
                self._shipper.close()
            result.status = "stopped" if result.ended_by == "stop" else "completed"
        except BaseException as e:  # noqa: BLE001 - reported, not swallowed
            if isinstance(e, UserError):  # e.g. a stream that cannot be opened: its one line says it all
                result.error = e.message
            else:
                result.error = f"{type(e).__name__}: {e}".splitlines()[0]
                result.traceback = traceback.format_exc()
                print(result.traceback, file=sys.stderr, flush=True)
            if isinstance(e, KeyboardInterrupt):
                result.status, result.ended_by = "stopped", "stop"
        finally:
            if self._shipper is not None:
                self._shipper.abandon()  # after a failure: the tail must not wait for more
            result.artifacts = self._tracer.stop()  # exports a partial active cycle; never raises
            try:
                self._flush()
                self._emit.drain()  # every batch confirmed before run() returns
            except Exception as e:  # the sink is gone or the output full: say so, keep the first error
                result.status = "failed"
                said = e.message if isinstance(e, UserError) else f"{type(e).__name__}: {e}".splitlines()[0]
                result.error = result.error or f"flush failed: {said}"
            self.close()
        self._status = result.status
        result.steps, result.frames, result.rows_emitted = self._steps, self._frames, self._emit.rows
        result.resends = self._emit.resends
        result.setup_s, result.run_s = self._setup_s, self._clock() - t0
        result.identity = dict(self.identity)
        if self.source is not None and hasattr(self.source, "stats"):
            result.source_stats = dict(self.source.stats())
        info = getattr(self.runner, "info", None)
        if info is not None:
            result.model_info = asdict(info) if hasattr(info, "__dataclass_fields__") else dict(info)
        return result

    def _loop(self) -> str:
        """Steps until an ending; each step's input is read and prepped in the step (serial) or
        waited for from the prefetch thread (overlap)."""
        p = self.plan
        timer = StageTimer(self._clock)
        if p.pipeline != "overlap":
            return self._run_steps(timer, stager(self.source.read, self._staging(False), p.batch_size, timer.lap))
        staging = self._staging(True)
        with Prefetcher(self.source.read, staging, p.batch_size, self._clock, limit=p.max_steps) as prefetch:
            return self._run_steps(timer, _waiting(prefetch.get, timer.lap))

    def _staging(self, overlap: bool):
        """How this worker's batches are preprocessed: see :func:`rayprof.prefetch.staging_for`."""
        p = self.plan
        input_device = p.head_device if p.role == "split" else p.exec_device
        return staging_for(self.prep, p.prep_device, input_device, self._prep_sync, overlap)

    def _run_steps(self, timer: StageTimer, take: Callable[[int], Staged | None]) -> str:
        """The loop: ``take(step)`` gives each step's input (None at the end of the source),
        timing what it does on this thread with ``timer``, which times the rest of the step."""
        p = self.plan
        # the hot path reads locals only: every attribute lookup here is paid once per step
        clock, wall = self._clock, self._wall
        lap = timer.lap
        run_step, exec_sync = self.runner.step, self.runner.synchronize
        append, stopped = self.buffer.append, self._stop.is_set
        max_steps, warmup_steps = p.max_steps, p.warmup_steps
        make_labels, labels_gen = self._labels()
        shipper = self._shipper  # a split pair's head: after exec, the activation goes to the tail
        wait_room, ship = (shipper.wait_room, shipper.ship) if shipper is not None else (None, None)
        output = (lambda: self.runner.last_output) if shipper is not None else None
        split_runner = hasattr(self.runner, "transfer_ms")  # both halves in here: the move is its own stage
        last_flush = clock()
        step = 0
        while True:
            if stopped():
                return "stop"
            if max_steps and step >= max_steps:
                return "max_steps"
            t_wall = wall()
            timer.start()
            with mark("step", step):
                staged = take(step)
                if staged is None:
                    return "end_of_stream"
                batch, n = staged.batch, staged.n
                labels = make_labels(n, labels_gen) if make_labels is not None else None
                with mark("exec", step):
                    loss = run_step(staged.x, labels, step=step)
                    exec_ms = lap("exec", exec_sync)
                transfer_ms, wait_ms = None, staged.wait_ms
                if ship is not None:
                    with mark("wait", step):
                        wait_room()
                    wait_ms = lap("wait")
                    with mark("transfer", step):
                        ship(step, batch, output())
                    transfer_ms = lap("transfer")
                elif split_runner:
                    transfer_ms = self.runner.transfer_ms
                    exec_ms -= transfer_ms
            # frames arrive in capture order: the first is the oldest in the batch
            age_ms = wall() / 1e6 - batch.capture_ts.item(0) * 1e3
            # the row, as a plain tuple in StepRecord's field order: building a named StepRecord every
            # step would cost several times what appending the row does
            append((step, step < warmup_steps, t_wall, staged.read_ms, staged.prep_ms, exec_ms, transfer_ms,
                    timer.total_ms(), n, batch.dropped, age_ms, loss, wait_ms))
            step += 1
            last_flush = self._stepped(step, n, last_flush)

    def _labels(self):
        """Retrain: the label maker and its generator (seeded per replica); else (None, None)."""
        import torch

        p = self.plan
        if p.mode != "retrain":
            return None, None
        return self.runner.make_labels, torch.Generator().manual_seed(p.seed + p.replica)

    def _stepped(self, steps: int, frames: int, last_flush: float) -> float:
        """After a step's row: the progress counters, the profiler's schedule (a no-op without
        profile.torch), and a flush when due. Returns the time of the last flush."""
        self._steps = steps
        self._frames += frames
        self._tracer.step()
        if len(self.buffer) >= MAX_BUFFERED_ROWS or self._clock() - last_flush >= self.plan.flush_interval_s:
            self._flush()
            return self._clock()
        return last_flush

    def _flush(self) -> None:
        """Hand the buffered rows to the emitter (which keeps them until delivered)."""
        if self.buffer is not None and len(self.buffer):
            self._emit(self.buffer.to_batch())

    def close(self) -> None:
        if self.source is not None:
            try:
                self.source.close()
            except Exception:
                pass
