"""Clocks and CUDA-correct stage timing.

A stage ends when its work has finished, not when its kernels were launched: on CUDA the
stage's ``sync`` (``torch.cuda.synchronize``) runs before the clock is read. The clock is
injected, so tests check stage accounting exactly with a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]
"""Monotonic seconds (``time.perf_counter`` in production, a fake in tests)."""

WallClock = Callable[[], int]
"""Wall-clock nanoseconds since the epoch (``time.time_ns``), for timelines across nodes."""


def no_sync() -> None:
    return None


def cuda_sync_for(device: object) -> Callable[[], None]:
    """A function that waits for ``device`` to finish its queued work (no-op off CUDA)."""
    import torch

    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type != "cuda":
        return no_sync
    return lambda: torch.cuda.synchronize(dev)


class StageTimer:
    """Times the stages of one step in milliseconds.

    >>> t = StageTimer(clock)
    >>> t.start()
    >>> ...read...;  t.lap("read")
    >>> ...prep...;  t.lap("prep", sync)      # sync() runs before the clock is read
    >>> t.ms["read"], t.total_ms()
    """

    __slots__ = ("clock", "ms", "_t0", "_last")

    def __init__(self, clock: Clock = time.perf_counter):
        self.clock = clock
        self.ms: dict[str, float] = {}
        self._t0 = 0.0
        self._last = 0.0

    def start(self) -> None:
        self.ms = {}
        self._t0 = self._last = self.clock()

    def lap(self, stage: str, sync: Callable[[], None] = no_sync) -> float:
        """End ``stage`` now (after ``sync``); the next stage starts at the same instant."""
        sync()
        now = self.clock()
        elapsed = (now - self._last) * 1e3
        self.ms[stage] = elapsed
        self._last = now
        return elapsed

    def total_ms(self) -> float:
        """Start of the step to the end of its last stage."""
        return (self._last - self._t0) * 1e3


def wall_ns() -> int:
    return time.time_ns()
