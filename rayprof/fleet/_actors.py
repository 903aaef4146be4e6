"""The engine's workers as Ray actor classes that the driver can name without importing torch.

``ray.remote`` needs the class on the driver, and Ray pickles it by reference; the engine's
:class:`~rayprof.worker.StreamWorker` imports torch and torchvision with its modules (6
CPU-seconds on a 2-core machine, the driver's largest part of the start-up). These classes
import the engine in their constructor, in the actor's own process, and forward the calls the
driver, the sink and a split pair's head make. ``run`` answers a plain dict
(:meth:`~rayprof.worker.WorkerResult.to_dict`), so the driver unpickles no engine class either.

``exit`` ends the actor's process normally (atexit handlers run, a process wrapper such as nsys
sees its target exit and writes its report); the caller sees the actor's death.
"""

from __future__ import annotations

import ray

__all__ = ["TailActor", "WorkerActor"]


class WorkerActor:
    """A :class:`~rayprof.worker.StreamWorker` (a split pair's head too) as a Ray actor."""

    def __init__(self, plan, emit, **kwargs):
        from ..worker import StreamWorker

        self.engine = StreamWorker(plan, emit, **kwargs)

    def setup(self) -> dict:
        return self.engine.setup()

    def run(self) -> dict:
        return self.engine.run().to_dict()

    def stop(self) -> None:
        self.engine.stop()

    def progress(self) -> dict:
        return self.engine.progress()

    def exit(self) -> None:
        ray.actor.exit_actor()


class TailActor(WorkerActor):
    """A split pair's :class:`~rayprof.pair.TailWorker`: its head calls ``load``, ``push`` and
    ``end`` through a :class:`~rayprof.fleet._pair.RayLink`."""

    def __init__(self, plan, emit, **kwargs):
        from ..pair import TailWorker

        self.engine = TailWorker(plan, emit, **kwargs)

    def load(self, tail) -> None:
        self.engine.load(tail)

    def push(self, handoff) -> None:
        self.engine.push(handoff)

    def end(self, sent: int | None = None) -> None:
        self.engine.end(sent)
