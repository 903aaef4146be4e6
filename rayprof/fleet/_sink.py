"""The metrics sink under Ray: a writer actor on the driver's node and the workers' emitter."""

from __future__ import annotations

import ray
from ray.exceptions import RayError

from ..sink import DatasetWriter


class SinkService:
    """The dataset writer as an actor on the driver's node (num_cpus=0)."""

    def __init__(self, root: str, run_id: str):
        self.writer = DatasetWriter(root, run_id)

    def write(self, worker: str, actor_id: str, batch, seq: int) -> int:
        self.writer.write(worker, actor_id, batch, seq)
        return batch.num_rows

    def put_file(self, kind: str, name: str, data: bytes) -> str:
        return str(self.writer.put_file(kind, name, data))

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

    def artifact(self, kind: str, name: str, data: bytes) -> str:
        """Store a profiler artifact in the run's folder on the sink's node; waits for it."""
        return ray.get(self.sink.put_file.remote(kind, name, data))
