"""In-memory fakes for the engine's parts, driven by one fake clock (torchtnt style)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rayprof.plan import WorkerPlan
from rayprof.source import FrameBatch, SourceSettings


class FakeClock:
    """Monotonic seconds and wall-clock ns that move only when told."""

    def __init__(self, t: float = 100.0, wall_ns: int = 1_700_000_000_000_000_000):
        self.t = t
        self.wall0 = wall_ns
        self.t0 = t

    def __call__(self) -> float:
        return self.t

    def wall(self) -> int:
        return self.wall0 + int(round((self.t - self.t0) * 1e9))

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeSource:
    kind, display, live = "file", "fake.mp4", False

    def __init__(self, clock: FakeClock, frames: int, read_s: float = 0.002, age_s: float = 0.0):
        self.clock, self.left, self.read_s, self.age_s = clock, frames, read_s, age_s
        self.next_index = 0
        self.closed = False

    def read(self, n: int):
        self.clock.advance(self.read_s)
        k = min(n, self.left)
        if k == 0:
            return None
        self.left -= k
        idx = np.arange(self.next_index, self.next_index + k)
        self.next_index += k
        ts = np.full(k, self.clock.wall() / 1e9 - self.age_s)
        return FrameBatch(frames=np.zeros((k, 4, 4, 3), np.uint8), capture_ts=ts, indices=idx, dropped=0)

    def stats(self):
        return {"frames": self.next_index, "dropped": 0, "reconnects": 0, "decode_errors": 0}

    def close(self):
        self.closed = True


class FakePrep:
    def __init__(self, clock: FakeClock, prep_s: float = 0.003):
        self.clock, self.prep_s = clock, prep_s

    def __call__(self, frames):
        self.clock.advance(self.prep_s)
        return torch.zeros((len(frames), 3, 2, 2))


@dataclass
class FakeInfo:
    compiled: bool = False


class FakeRunner:
    def __init__(self, clock: FakeClock, exec_s: float = 0.010, sync_s: float = 0.001, fail_at: int | None = None):
        self.clock, self.exec_s, self.sync_s, self.fail_at = clock, exec_s, sync_s, fail_at
        self.info = FakeInfo()
        self.steps = 0

    def step(self, x, labels=None, step=0):
        if self.fail_at is not None and step == self.fail_at:
            raise RuntimeError("boom at step %d" % step)
        self.clock.advance(self.exec_s)
        self.steps += 1
        return 0.5 if labels is not None else None

    def synchronize(self):
        self.clock.advance(self.sync_s)  # the device finishing its queued work

    def make_labels(self, n, generator):
        return torch.randint(0, 10, (n,), generator=generator)


def make_plan(**over) -> WorkerPlan:
    base = dict(
        run_id="r-1", worker="w", replica=0, actor_id="w-0", source=SourceSettings(uri="fake.mp4"),
        model="resnet18", weights=None, num_classes=None, compile=False, amp=False, lr=1e-3,
        mode="inference", batch_size=4, prep_level="simple", prep_device="cpu", prep_size=32,
        exec_device="cpu", cores=(0,), cores_spec="0", num_cpus=1.0, num_gpus=0.0, max_steps=0, warmup_steps=1, seed=0,
        flush_interval_s=1.0,
    )
    base.update(over)
    return WorkerPlan(**base)
