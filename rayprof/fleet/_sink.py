"""The metrics sink under Ray, in either mode (``sink:`` in the spec).

- ``driver`` (the default for a folder): a ``DatasetWriter`` actor on the driver's node writes
  the dataset; each worker's ``SinkEmitter`` ships its record batches there through Ray. No
  shared filesystem is needed. (The actor class comes from ``rayprof.sink``, which imports
  neither torch nor this package: the sink process stays small.)
- ``direct`` (the default for an object-store URI such as ``s3://…``): each worker's
  ``DirectEmitter`` writes its own files straight to ``output`` from its node. A plain path is
  accepted only when every node sees the same folder (:func:`check_direct_output`).

Memory is bounded everywhere, by back-pressure rather than queues: a worker buffers at most
4096 rows (or ``flush_interval_s`` of rows) before it emits, and its emitter keeps at most
``window`` (2) batches unacknowledged; the next emit waits for the oldest. So the sink actor's
backlog is at most workers × window batches, of which it encodes ``SINK_THREADS`` (4) at once,
and a direct writer holds one batch's Parquet bytes while it writes.

Nothing is lost when the sink actor's process dies: Ray restarts it (up to ``SINK_RESTARTS``
times), and every worker holds the batches the sink has not acknowledged and sends them again,
with their sequence numbers, until the new sink takes them (for up to ``SINK_RESTART_WAIT_S``;
the worker's steps wait meanwhile). A batch is a file named by (actor, seq), so a batch the old
sink had written before dying is replaced, not doubled: every (actor, step) is in the dataset once.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import time

import ray
from ray.exceptions import RayActorError, RayError

from ..errors import UserError
from ..plan import WorkerPlan
from ..sink import DatasetWriter, answer_probe, dataset_stats, is_remote, remove_probe, write_probe
from ..source import mask_text
from ..spec import FleetSpec
from ._nodes import pinned, run_on_nodes
from ._sinkactor import SinkActor

WINDOW = 2  # unacknowledged batches per worker
SINK_THREADS = 4  # concurrent writes in the sink actor: overlaps compression and a remote store's latency
PROBE_TIMEOUT_S = 60.0
SINK_RESTARTS = 5  # the sink actor's process may die this many times in a run
SINK_RESTART_WAIT_S = 120.0  # how long a worker keeps resending to a sink that is down


def resolve_mode(spec: FleetSpec) -> str:
    """``sink: auto`` is ``direct`` for an object-store URI (``s3://…``) and ``driver`` otherwise."""
    if spec.sink != "auto":
        return spec.sink
    return "direct" if is_remote(spec.output) else "driver"


# --------------------------------------------------------------------------- emitters


class _WindowedEmitter:
    """A worker's emitter (the contract of ``worker.Emitter``), asynchronous: batches are sent
    with at most ``window`` unacknowledged (back-pressure, not an unbounded queue). A write
    that fails with one of ``retry_on`` is sent again with the same sequence number, so it
    replaces rather than duplicates: once, or for as long as :meth:`_patience` allows for that
    error, with a growing pause; past that the error propagates and the batch stays queued for
    ``drain()``. ``resends`` counts the batches sent again. Subclasses say how to send and wait."""

    retry_on: tuple[type[BaseException], ...] = ()

    def __init__(self, worker: str, actor_id: str, window: int = WINDOW):
        self.worker, self.actor_id, self.window = worker, actor_id, window
        self._inflight: list[tuple[object, int, object]] = []  # (handle, seq, batch), oldest first
        self._seq = 0
        self.rows = 0
        self.resends = 0

    def _send(self, seq: int, batch) -> object:
        raise NotImplementedError

    def _wait(self, handle) -> None:
        raise NotImplementedError

    def __call__(self, batch) -> None:
        self._inflight.append((self._send(self._seq, batch), self._seq, batch))
        self._seq += 1
        while len(self._inflight) > self.window:
            self._confirm_oldest()

    def _patience(self, error: BaseException) -> float:
        """Seconds to keep resending after ``error``; 0: one resend only."""
        return 0.0

    def _confirm_oldest(self) -> None:
        handle, seq, batch = self._inflight[0]
        tries, first_failure = 0, None
        while True:
            try:
                self._wait(handle)
                break
            except self.retry_on as e:
                now = time.monotonic()
                first_failure = first_failure or now
                if tries and now - first_failure >= self._patience(e):
                    raise
                time.sleep(min(0.1 * 2 ** tries, 2.0) if tries else 0.0)
                tries += 1
                self.resends += 1
                handle = self._send(seq, batch)
                self._inflight[0] = (handle, seq, batch)
        self._inflight.pop(0)
        self.rows += batch.num_rows

    def drain(self) -> None:
        while self._inflight:
            self._confirm_oldest()


# --------------------------------------------------------------------------- driver mode


class SinkEmitter(_WindowedEmitter):
    """Ships batches to the sink actor (a remote ``DatasetWriter``)."""

    retry_on = (RayError,)

    def __init__(self, sink, worker: str, actor_id: str, window: int = WINDOW):
        super().__init__(worker, actor_id, window)
        self.sink = sink

    def _send(self, seq: int, batch):
        return self.sink.write.remote(self.worker, self.actor_id, batch, seq)

    def _wait(self, handle) -> None:
        ray.get(handle)

    def _patience(self, error: BaseException) -> float:
        """A sink actor that died is being restarted by Ray: resend until it is back."""
        return SINK_RESTART_WAIT_S if isinstance(error, RayActorError) else 0.0

    def artifact(self, kind: str, name: str, data: bytes) -> str:
        """Store a profiler artifact in the run's folder on the sink's node; waits for it."""
        return ray.get(self.sink.put_file.remote(kind, name, data))


# --------------------------------------------------------------------------- direct mode


class DirectEmitter(_WindowedEmitter):
    """Writes batches straight to the output from the worker's own node, on one background
    thread, so a slow store (an S3 PUT) does not stall the step loop. Built in the driver and
    pickled into the actor: the filesystem and the thread are opened on first use, there."""

    retry_on = (OSError,)  # pyarrow's I/O errors

    def __init__(self, root: str, run_id: str, worker: str, actor_id: str, window: int = WINDOW):
        super().__init__(worker, actor_id, window)
        self.root, self.run_id = root, run_id
        self._dataset: DatasetWriter | None = None
        self._pool: ThreadPoolExecutor | None = None

    def _writer(self) -> DatasetWriter:
        if self._dataset is None:
            self._dataset = DatasetWriter(self.root, self.run_id)
        return self._dataset

    def _send(self, seq: int, batch) -> Future:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rayprof-sink-{self.actor_id}")
        return self._pool.submit(self._writer().write, self.worker, self.actor_id, batch, seq)

    def _wait(self, handle: Future) -> None:
        handle.result()

    def artifact(self, kind: str, name: str, data: bytes) -> str:
        """Store a profiler artifact in the run's folder, from this node."""
        return self._writer().put_file(kind, name, data)


def probe_nodes(root: str, name: str, node_ids: list[str]) -> dict[str, dict]:
    """``sink.answer_probe`` on every node at once (zero-CPU tasks pinned to each)."""
    return run_on_nodes(answer_probe, node_ids, PROBE_TIMEOUT_S, root, name)


def nodes_to_probe(plans, labels: dict[str, str], here: str) -> dict[str, str]:
    """``{node_id: label}`` of the nodes other than the driver's that will run actors: those
    placement chose, or every node when Ray decides for some actor."""
    ids = set(labels) if any(p.node_id is None for p in plans) else {p.node_id for p in plans}
    return {nid: labels.get(nid, nid) for nid in sorted(ids - {here})}


def check_direct_output(root: str, nodes: dict[str, str], probe=probe_nodes) -> None:
    """``sink: direct`` needs every node to see the output the driver sees: the driver writes a
    probe file there, each node in ``nodes`` ({node_id: label}) must find it and write beside
    it. The first node that cannot is a one-line UserError."""
    if not nodes:
        return
    name = write_probe(root)
    try:
        answers = probe(root, name, list(nodes))
    finally:
        remove_probe(root, name)
    for nid, answer in answers.items():
        problem = answer.get("problem") or (answer.get("error") and f"did not answer a probe ({answer['error']})")
        if problem:
            fix = ("give every node credentials for it (environment or instance role), or use sink: driver"
                   if is_remote(root) else "use a shared path, an s3:// URI, or sink: driver")
            raise UserError("sink", "direct", f"node {nodes[nid]} {problem}", fix)


# --------------------------------------------------------------------------- either mode


class RunSink:
    """A run's sink in the mode given, built by the driver before any actor starts:
    ``emitter(plan)`` for each actor, ``finish()`` at the end for the dataset's stats."""

    def __init__(self, mode: str, root: str, run_id: str, probe: dict[str, str] | None = None,
                 window: int = WINDOW):
        """``probe``: the nodes that direct mode must check first (:func:`nodes_to_probe`)."""
        self.mode, self.root, self.run_id, self.window = mode, root, run_id, window
        self.actor = None
        if mode == "direct":
            check_direct_output(root, probe or {})
        else:
            here = ray.get_runtime_context().get_node_id()
            self.actor = ray.remote(SinkActor).options(  # thread-safe: several writes at once
                num_cpus=0, max_concurrency=SINK_THREADS, name=f"rayprof:{run_id}:sink",
                max_restarts=SINK_RESTARTS, scheduling_strategy=pinned(here)).remote(root, run_id)

    def emitter(self, plan: WorkerPlan) -> SinkEmitter | DirectEmitter:
        """The emitter for ``plan``'s actor (it is pickled into the actor with it)."""
        if self.actor is None:
            return DirectEmitter(self.root, self.run_id, plan.worker, plan.actor_id, self.window)
        return SinkEmitter(self.actor, plan.worker, plan.actor_id, self.window)

    def finish(self) -> dict:
        """Rows, files and bytes written (direct, or a sink actor that was restarted: read back
        from the files), or an error; ends the sink actor, so call it after the last write."""
        try:
            if self.actor is None:
                return dataset_stats(self.root, self.run_id)
            stats = ray.get(self.actor.stats.remote(), timeout=30)
            if stats.pop("restarted"):  # the first sink's counts died with it
                return {**dataset_stats(self.root, self.run_id), "sink_restarted": True}
            return stats
        except (RayError, OSError) as e:
            return {"error": mask_text(f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")}
        finally:
            if self.actor is not None:
                ray.kill(self.actor)
