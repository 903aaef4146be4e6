"""The split model in the engine: a head half and a tail half (``model.split``).

Two workers (the default), usually two Ray actors::

    head: StreamWorker(role=head)                          tail: TailWorker
      read → prep → exec(head half)                          wait   inbox.take(step)
      wait      Shipper.wait_room()   ─ window of N ─▶       transfer  link.fetch + .to(device)
      transfer  link.put(activation); link.push(Handoff)     exec   (tail half) → row, inbox.done

The head builds the whole model once and cuts it (:mod:`rayprof.split`); it ships the tail half
to the tail through the link before its first step, so both halves hold the same weights by
construction, whatever ``weights`` says and wherever the tail runs. A :class:`Link` says how
the two reach each other: ``fleet`` passes Ray's (the object store and actor calls),
:class:`LocalLink` runs a tail in a thread of the same process (tests, or no Ray at all).

``push`` returns once the tail has finished the batch, so the head's window (``pair.window``,
default 2) bounds the batches in flight: both halves work at once and memory stays bounded.
Rows of both halves carry the pair's ``pair_id`` and the head's step index; see
:class:`TailWorker` for what each stage means.

One process (``pair.in_process``, ``rayprof run --split-point``): :class:`SplitRunner` runs both
halves on two devices and moves the activation between them, the original tool's wrapper.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from .errors import UserError
from .markers import mark
from .metrics import StepRecord
from .model import ModelRunner, build_model, find_head
from .plan import WorkerPlan
from .split import cut
from .timing import StageTimer
from .worker import StreamWorker

__all__ = ["Handoff", "Inbox", "Link", "LocalLink", "Shipper", "SplitRunner", "TailWorker", "build_halves",
           "cut_model", "head_runner"]

POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class Handoff:
    """One batch on its way from head to tail."""

    step: int
    frames: int
    dropped: int
    capture_ts0: float  # capture time of the batch's oldest frame (epoch seconds)
    payload: Any  # the activation, or the link's handle to it


class Link(Protocol):
    """How a head reaches its tail."""

    def open(self, tail: nn.Module) -> None:
        """Give the tail its half of the model; returns once the tail is ready to run."""

    def put(self, activation: torch.Tensor) -> Any:
        """Serialise/store the activation; returns what the tail will fetch it by."""

    def push(self, handoff: Handoff) -> Any:
        """Hand a batch to the tail; returns a future that completes when the tail has run it."""

    def wait(self, future: Any) -> None:
        """Wait for a future of :meth:`push`; raises when the tail failed."""

    def close(self, sent: int) -> None:
        """No batch after the first ``sent``."""


# --------------------------------------------------------------------------- building the halves


def build_halves(plan: WorkerPlan) -> tuple[nn.Module, nn.Module]:
    """The plan's model, built once (weights, retrain head) and cut at ``plan.split_point``."""
    prefix = f"{plan.field}.model"
    model = build_model(plan.model, mode=plan.mode, weights=plan.weights, num_classes=plan.num_classes,
                        compile=plan.compile, seed=plan.seed, field_prefix=prefix)
    return cut_model(model, plan.split_point, name=plan.model, mode=plan.mode, field=f"{prefix}.split")


def cut_model(model: nn.Module, point: str, *, name: str, mode: str, field: str) -> tuple[nn.Module, nn.Module]:
    """:func:`rayprof.split.cut`, and in retrain a check that the classifier, which the tail
    trains, is in the tail half."""
    head, tail = cut(model, point, name=name, field=field)
    if mode == "retrain":
        classifier = find_head(model)[0]
        try:
            tail.get_submodule(classifier)
        except AttributeError:
            raise UserError(field, point, f"puts {name}'s classifier ({classifier}) in the head half, "
                            "and in retrain the tail trains it",
                            "cut at an earlier point (rayprof split-points lists them)") from None
    return head, tail


def _half_runner(plan: WorkerPlan, module: nn.Module, device: str, mode: str) -> ModelRunner:
    return ModelRunner(plan.model, module=module, mode=mode, device=device, compile=plan.compile, amp=plan.amp,
                       lr=plan.lr, seed=plan.seed, field_prefix=f"{plan.field}.model")


def head_runner(plan: WorkerPlan, link: Link) -> ModelRunner:
    """The head's runner (the head half, frozen, in inference); the tail half goes to the tail."""
    head, tail = build_halves(plan)
    link.open(tail)
    return _half_runner(plan, head, plan.exec_device, "inference")


# --------------------------------------------------------------------------- the head's side


class Shipper:
    """The head's end of the pair: at most ``window`` batches in flight to the tail."""

    def __init__(self, link: Link, window: int):
        self.link, self.window = link, window
        self._inflight: deque = deque()
        self._sent = 0
        self._closed = False

    def wait_room(self) -> None:
        """Block while ``window`` batches are in flight (the tail is behind)."""
        while len(self._inflight) >= self.window:
            self.link.wait(self._inflight.popleft())

    def ship(self, step: int, batch, activation: torch.Tensor) -> None:
        """Send one batch's activation (moved to the CPU first: the tail may have no GPU)."""
        handle = self.link.put(activation.detach().cpu())
        self._inflight.append(self.link.push(Handoff(step, batch.n, batch.dropped, float(batch.capture_ts[0]), handle)))
        self._sent = step + 1

    def close(self) -> None:
        """End of the head's stream: wait for the batches in flight (a tail failure raises here)."""
        self._closed = True
        self.link.close(self._sent)
        while self._inflight:
            self.link.wait(self._inflight.popleft())

    def abandon(self) -> None:
        """The head failed or stopped: tell the tail, wait for nothing."""
        if not self._closed:
            self._closed = True
            try:
                self.link.close(self._sent)
            except Exception:
                pass


# --------------------------------------------------------------------------- the tail


class Inbox:
    """The tail's queue of batches, taken in step order (a threaded actor may run the head's
    calls out of order). :meth:`push` returns once the tail is done with the batch."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._items: dict[int, tuple[Handoff, threading.Event]] = {}
        self._sent: int | None = None  # set by end(): batches the head sent
        self._ended = False  # the head said it is done
        self._shut: str | None = None  # the tail is done: "" or why it failed

    def push(self, handoff: Handoff) -> None:
        done = threading.Event()
        with self._cv:
            self._raise_if_shut()
            self._items[handoff.step] = (handoff, done)
            self._cv.notify_all()
        while not done.wait(POLL_S):
            with self._cv:
                if self._shut is not None:
                    self._raise_if_shut()
                    return

    def _raise_if_shut(self) -> None:
        if self._shut:
            raise RuntimeError(self._shut)

    @property
    def ended(self) -> bool:
        """The head said it sends no more."""
        return self._ended

    def end(self, sent: int | None = None) -> None:
        """No more batches after the first ``sent`` (None: after those already here)."""
        with self._cv:
            self._ended = True
            if sent is not None:
                self._sent = sent
            self._cv.notify_all()

    def take(self, step: int, stopped: Callable[[], bool]) -> Handoff | None:
        """Batch ``step``, when it comes; None at the end of the head's stream or on stop."""
        with self._cv:
            while step not in self._items:
                if stopped() or (self._ended and (self._sent is None or step >= self._sent)):
                    return None
                self._cv.wait(POLL_S)
            return self._items[step][0]

    def done(self, step: int) -> None:
        with self._cv:
            _, event = self._items.pop(step)
        event.set()

    def shutdown(self, error: str | None = None) -> None:
        """The tail is done: release every waiting ``push`` (raising ``error`` in it, if any)."""
        with self._cv:
            self._shut = error or ""
            items, self._items = list(self._items.values()), {}
            self._cv.notify_all()
        for _, event in items:
            event.set()

    def close(self) -> None:
        """The worker closes its source when it ends; the inbox ends by :meth:`shutdown`."""


class TailWorker(StreamWorker):
    """The tail half of a split pair: the same engine (setup, rows, flush, progress, stop,
    profiler) with a loop that takes batches from the head instead of reading a source.

    A tail row has the head's ``step`` and these stages: ``wait_ms`` (waiting for the batch: the
    head is behind), ``transfer_ms`` (fetch and deserialise the activation and copy it to the
    device: the tail's part of the transfer), ``exec_ms`` (the tail half); ``read_ms`` and
    ``prep_ms`` are null; ``t_start`` is when it began waiting. ``frame_age_ms`` is measured
    at the tail's end: capture to result. ``fetch`` turns a handoff's payload into the
    activation (Ray: ``ray.get``).
    """

    def __init__(self, plan: WorkerPlan, emit, *, fetch: Callable[[Any], torch.Tensor] = lambda h: h, **kwargs):
        self.inbox = Inbox()
        self._fetch = fetch
        self._module: nn.Module | None = None
        self._arrived = threading.Event()  # the head sent the tail half
        self._setup_done = threading.Event()  # setup ended, well or not
        self._setup_error: str | None = None
        kwargs.setdefault("runner_factory", self._build_runner)
        super().__init__(plan, emit, source_factory=lambda p: self.inbox, prep_factory=lambda p: None, **kwargs)

    # ---- called by the head, through its link

    def load(self, tail: nn.Module) -> None:
        """Receive the tail half; returns once the tail is ready (raises if its setup failed)."""
        self._module = tail
        self._arrived.set()
        while not self._setup_done.wait(POLL_S):
            if self._stop.is_set():
                break
        if self._setup_error:
            raise RuntimeError(f"tail {self.plan.actor_id}: {self._setup_error}")

    def push(self, handoff: Handoff) -> None:
        self.inbox.push(handoff)

    def end(self, sent: int | None = None) -> None:
        self.inbox.end(sent)

    # ---- the engine's hooks

    def _build_runner(self, plan: WorkerPlan) -> ModelRunner | None:
        """The tail half on the tail's device, once the head has sent it (None: stopped or the
        head ended before sending it)."""
        while not self._arrived.wait(POLL_S):
            if self._stop.is_set() or self.inbox.ended:
                return None
        return _half_runner(plan, self._module, plan.exec_device, plan.mode)

    def setup(self) -> dict:
        try:
            return super().setup()
        except BaseException as e:
            self._setup_error = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
            raise
        finally:
            self._setup_done.set()

    def run(self):
        result = super().run()
        self.inbox.shutdown(f"tail {self.plan.actor_id} failed: {result.error}" if result.status == "failed" else None)
        return result

    def _loop(self) -> str:
        if self.runner is None:  # stopped, or the head never came
            return "stop"
        p = self.plan
        clock, wall = self._clock, self._wall
        timer = StageTimer(clock)
        lap = timer.lap
        take, done, fetch = self.inbox.take, self.inbox.done, self._fetch
        device, sync, run_step = self.runner.device, self.runner.synchronize, self.runner.step
        append, stopped = self.buffer.append, self._stop.is_set
        max_steps, warmup_steps = p.max_steps, p.warmup_steps
        make_labels, labels_gen = self._labels()
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
                with mark("wait", step):
                    h = take(step, stopped)
                lap("wait")
                if h is None:
                    return "stop" if stopped() else "end_of_stream"
                with mark("transfer", step):
                    x = fetch(h.payload).to(device, non_blocking=True)
                    lap("transfer", sync)
                labels = make_labels(h.frames, labels_gen) if make_labels is not None else None
                with mark("exec", step):
                    loss = run_step(x, labels, step=step)
                    lap("exec", sync)
            age_ms = wall() / 1e6 - h.capture_ts0 * 1e3
            ms = timer.ms
            append(StepRecord(step, step < warmup_steps, t_wall, None, None, ms["exec"], ms["transfer"],
                              timer.total_ms(), h.frames, h.dropped, age_ms, loss, ms["wait"]))
            done(step)
            step += 1
            last_flush = self._stepped(step, h.frames, last_flush)


class LocalLink:
    """A head's link to a :class:`TailWorker` running in a thread of this process (no Ray).
    ``copy``: pass activations as copies, as a process boundary would."""

    def __init__(self, tail: TailWorker, copy: bool = True):
        from concurrent.futures import ThreadPoolExecutor

        self.tail, self.copy = tail, copy
        self._pool = ThreadPoolExecutor(max_workers=max(2, tail.plan.window + 1), thread_name_prefix="pair")

    def open(self, tail: nn.Module) -> None:
        self.tail.load(tail)

    def put(self, activation: torch.Tensor) -> torch.Tensor:
        return activation.clone() if self.copy else activation

    def push(self, handoff: Handoff):
        return self._pool.submit(self.tail.push, handoff)

    def wait(self, future) -> None:
        future.result()

    def close(self, sent: int) -> None:
        self.tail.end(sent)


# --------------------------------------------------------------------------- one process


class SplitRunner:
    """Both halves in one process (the original ``SplitModelWrapper``): the head on
    ``plan.head_device``, the tail on ``plan.exec_device``, the activation moved between them.

    The worker times :meth:`step` as ``exec``; the move is measured here (after both devices
    are synchronised) and reported as :attr:`transfer_ms`, which the worker takes out of
    ``exec_ms`` into ``transfer_ms``. NVTX ranges ``head``, ``transfer`` and ``tail`` nest in
    ``exec``.
    """

    def __init__(self, plan: WorkerPlan, clock: Callable[[], float]):
        head, tail = build_halves(plan)
        self.head = _half_runner(plan, head, plan.head_device, "inference")
        self.tail = _half_runner(plan, tail, plan.exec_device, plan.mode)
        self.device, self.info = self.tail.device, self.tail.info
        self.make_labels, self.synchronize = self.tail.make_labels, self.tail.synchronize
        self._clock = clock
        self.transfer_ms = 0.0

    def step(self, x: torch.Tensor, labels: torch.Tensor | None = None, step: int = 0) -> float | None:
        with mark("head", step):
            self.head.step(x, step=step)
            self.head.synchronize()
        t0 = self._clock()
        with mark("transfer", step):  # a copy made outside inference mode: the tail may train on it
            activation = self.head.last_output.to(self.tail.device, copy=True)
            self.tail.synchronize()
        self.transfer_ms = (self._clock() - t0) * 1e3
        with mark("tail", step):
            return self.tail.step(activation, labels, step=step)
