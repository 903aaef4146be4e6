"""Getting a step's input ready: read and prep, in the step (``pipeline: serial``) or on a
background thread one batch ahead of the model (``pipeline: overlap``).

Serial (the original tool's semantics): the step reads, preps and runs the model one after
another on one thread, so ``total_ms = read_ms + prep_ms + exec_ms``.

Overlap: a :class:`Prefetcher` thread reads and preprocesses batch N+1 while the worker's thread
runs the model on batch N (it stays at most :data:`AHEAD` batch ahead, so memory stays bounded
and a live source's frames are not taken long before the model can use them). Every stage is
still timed, each where it ran, and each row says:

- ``read_ms``, ``prep_ms``: how long reading and preprocessing *this* batch took, on the
  prefetch thread (so they overlap the previous step's ``exec_ms``);
- ``wait_ms``: how long the worker's thread waited for this batch to be ready (near 0 when the
  model is the bottleneck; about ``read_ms + prep_ms - exec_ms`` when the input is);
- ``exec_ms``: the model, as in serial;
- ``total_ms``: the step's wall time on the worker's thread, ``wait_ms + exec_ms`` (plus a split
  runner's ``transfer_ms``): consecutive steps tile the run, so the sum of ``total_ms`` is the
  wall clock (less the microseconds of bookkeeping between steps, as in serial) and frames over
  that sum is the throughput actually sustained;
- ``frame_age_ms``: still capture → result (taken when the model is done with the batch), so
  the time a batch waited ready on the prefetch thread counts in it.

On CUDA (the model's input or the preprocessing on a GPU) the prefetch thread works on its own
CUDA stream: a GPU Preprocessor copies the uint8 frames there from pinned host memory
(``non_blocking``) and transforms them there; a batch prepped on the CPU is pinned and copied to
the model's device on that stream. An event recorded on the stream marks the batch ready. ``prep_ms`` ends when the event has
completed (the prefetch thread waits for it, not the model's), and the worker's stream waits for
the event before the model reads the batch (``CudaStaging.hand_over``), so the copy overlaps
the model's kernels and the model never reads a half-copied input.

Markers: ``read`` and ``prep`` ranges are opened on the thread that runs them (NVTX ranges are
per thread: under Nsight Systems the prefetch thread has its own row), ``wait`` and ``exec`` on
the worker's thread, all with the step index as payload.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .markers import mark
from .timing import Clock, StageTimer

__all__ = ["AHEAD", "CudaStaging", "HostStaging", "Prefetcher", "Staged", "stager", "staging_for"]

AHEAD = 1
"""Batches the prefetch thread may have read beyond the one the model runs."""


@dataclass(slots=True)
class Staged:
    """One step's input, ready for the model: the source's batch and its frame count, the model
    input ``x``, how long reading and preprocessing took, the worker's wait for it (overlap;
    else None) and what marks it ready (a CUDA event, or a :class:`HostStaging`)."""

    batch: Any  # rayprof.source.FrameBatch
    n: int  # batch.n, read once
    x: Any  # torch.Tensor
    read_ms: float
    prep_ms: float
    ready: Any = None
    wait_ms: float | None = None


class HostStaging:
    """Prep on the calling thread's current stream; ``synchronize`` is the prep device's sync
    (a no-op on the CPU). It stands for the batch's ready event: the model runs on the same
    stream, so :meth:`hand_over` has nothing to do."""

    def __init__(self, prep: Callable, sync: Callable[[], None]):
        self.prep, self.synchronize = prep, sync

    def __call__(self, frames) -> tuple[Any, HostStaging]:
        return self.prep(frames), self

    @staticmethod
    def hand_over(x: Any, ready: Any) -> Any:
        return x


class CudaStaging:
    """Prep on a side CUDA stream of ``device`` (the model's input device when it is a GPU);
    the input ends on ``device``, copied from pinned memory, and an event recorded on the side
    stream marks it ready."""

    def __init__(self, prep: Callable, device: torch.device):
        self.prep, self.device = prep, device
        self.stream = torch.cuda.Stream(device)

    def __call__(self, frames) -> tuple[torch.Tensor, torch.cuda.Event]:
        with torch.cuda.stream(self.stream):
            x = self.prep(frames)  # a GPU Preprocessor pins the frames and copies them on this stream
            if x.device != self.device:
                x = (x.pin_memory() if x.device.type == "cpu" else x).to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self.stream)
        return x, ready

    def hand_over(self, x: Any, ready: Any) -> Any:
        """On the worker's thread: its stream waits for the batch, and the allocator learns that
        stream uses the tensor (so its memory is not reused while the model still reads it)."""
        consumer = torch.cuda.current_stream(self.device)
        consumer.wait_event(ready)
        x.record_stream(consumer)
        return x


def staging_for(prep: Callable, prep_device: Any, input_device: Any, sync: Callable[[], None],
                overlap: bool) -> HostStaging | CudaStaging:
    """How a worker stages its input: on a side CUDA stream when it overlaps and its input or
    its preprocessing is on a GPU that is there; else on the calling thread (with ``sync``)."""
    from .model import resolve_device

    if overlap and torch.cuda.is_available():
        gpus = [d for d in map(resolve_device, (str(input_device), str(prep_device))) if d.type == "cuda"]
        if gpus:
            return CudaStaging(prep, gpus[0])
    return HostStaging(prep, sync)


def stager(read: Callable, staging: HostStaging | CudaStaging, batch_size: int,
           lap: Callable[..., float]) -> Callable[[int], Staged | None]:
    """``stage(step)``: read a batch and prep it, timed by ``lap`` (a :class:`StageTimer`'s,
    started by the caller); None at the end of the source."""

    def stage(step: int) -> Staged | None:
        with mark("read", step):
            batch = read(batch_size)
        read_ms = lap("read")
        n = batch.n if batch is not None else 0
        if n == 0:
            return None
        with mark("prep", step):
            x, ready = staging(batch.frames)
            prep_ms = lap("prep", ready.synchronize)
        return Staged(batch, n, x, read_ms, prep_ms, ready)

    return stage


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


class Prefetcher:
    """Stages steps 0, 1, … (``limit`` of them; 0: until the source ends) on a background thread,
    at most ``ahead`` beyond the one the consumer took last.

    >>> with Prefetcher(read, staging, batch_size, clock, limit=max_steps) as pre:
    ...     staged = pre.get()          # None at the end of the source

    An error on the thread is raised by :meth:`get`, as it was raised (type, message and the
    thread's traceback). :meth:`close` (also on leaving the ``with``) ends the thread and joins
    it; a read in progress finishes first.
    """

    def __init__(self, read: Callable, staging: HostStaging | CudaStaging, batch_size: int, clock: Clock, *,
                 limit: int = 0, ahead: int = AHEAD):
        timer = StageTimer(clock)
        self._start, self._stage = timer.start, stager(read, staging, batch_size, timer.lap)
        self._hand_over = staging.hand_over
        self._limit, self._ahead = limit, ahead
        self._cv = threading.Condition()
        self._ready: deque = deque()  # staged batches in step order, then None (the end) or a _Failed
        self._taken = 0  # batches the consumer took
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="rayprof-prefetch", daemon=True)

    def __enter__(self) -> Prefetcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self) -> None:
        step = 0
        try:
            while (not self._limit or step < self._limit) and self._room_for(step):
                self._start()
                staged = self._stage(step)
                self._put(staged)
                if staged is None:
                    return
                step += 1
            self._put(None)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(_Failed(e))

    def _room_for(self, step: int) -> bool:
        """Wait until ``step`` is at most ``ahead`` beyond the consumer; False once closing."""
        with self._cv:
            while step >= self._taken + self._ahead and not self._closing:
                self._cv.wait()
            return not self._closing

    def _put(self, item: Staged | _Failed | None) -> None:
        with self._cv:
            self._ready.append(item)
            self._cv.notify_all()

    def get(self) -> Staged | None:
        """The next step's input, handed over to the calling thread's stream (waits for it);
        None once the source has ended. Raises the thread's error."""
        with self._cv:
            while not self._ready:
                self._cv.wait()
            item = self._ready[0]
            if isinstance(item, _Failed):
                raise item.error
            if item is None:  # the end stays in place: every later get() says so too
                return None
            self._ready.popleft()
            self._taken += 1
            self._cv.notify_all()
        item.x = self._hand_over(item.x, item.ready)
        return item

    def close(self) -> None:
        """Stop staging and join the thread (batches staged but not taken are dropped)."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        self._ready.clear()
