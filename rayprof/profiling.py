"""``profile.torch``: a ``torch.profiler`` Chrome trace per actor, on a step schedule.

The engine calls ``start()`` before its loop, ``step()`` after every step and ``stop()`` when
the loop ends. The profiler follows ``schedule(wait, warmup, active, repeat)``: each cycle that
reaches the end of its ``active`` steps is exported as a gzipped Chrome trace (the format of
``tensorboard_trace_handler``, opened by Perfetto, ``chrome://tracing`` and Holistic Trace
Analysis) and handed to ``store(name, data)``; ``stop()`` during an active phase exports that
partial cycle too. The stage ranges of :mod:`rayprof.markers` (``rayprof/read`` …) are in it.

Trace names: ``<actor_id>.<cycle>.pt.trace.json.gz``. With no ``profile.torch`` the engine
gets :data:`NO_TRACER`, whose methods do nothing (no profiler is created).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch.profiler as tp

from .plan import WorkerPlan
from .sink import PROFILES

KIND = "torch"
_RECORDING = (tp.ProfilerAction.RECORD, tp.ProfilerAction.RECORD_AND_SAVE)
Store = Callable[[str, bytes], object]  # (name, data) → where it was stored, or None if nowhere


def trace_name(actor_id: str, cycle: int) -> str:
    return f"{actor_id}.{cycle}.pt.trace.json.gz"


class TorchTracer:
    """One ``torch.profiler.profile`` on a schedule; every finished cycle goes to ``store``.

    ``settings``: a ``TorchProfileSpec`` as a dict (wait, warmup, active, repeat,
    record_shapes, profile_memory, with_stack). ``artifacts``: the stored traces, as paths
    relative to the run's folder (``_profiles/torch/<name>``)."""

    def __init__(self, settings: dict, actor_id: str, store: Store, *, cuda: bool = False):
        self.settings, self.actor_id, self._store = settings, actor_id, store
        self.activities = [tp.ProfilerActivity.CPU] + ([tp.ProfilerActivity.CUDA] if cuda else [])
        self.artifacts: list[str] = []
        self._cycle = 0
        self._recorded = 0  # steps completed in the current active phase
        self._prof: tp.profile | None = None

    def start(self) -> None:
        s = self.settings
        self._prof = tp.profile(
            activities=self.activities,
            schedule=tp.schedule(wait=s["wait"], warmup=s["warmup"], active=s["active"], repeat=s["repeat"]),
            on_trace_ready=self._export,
            record_shapes=s["record_shapes"], profile_memory=s["profile_memory"], with_stack=s["with_stack"],
        )
        self._prof.start()

    def step(self) -> None:
        """After each step of the loop (torch's "the next step starts")."""
        self._recorded += self._prof.current_action in _RECORDING
        self._prof.step()

    def stop(self) -> list[str]:
        """End profiling (a cycle stopped in its active phase is exported); returns the stored
        traces. Never raises: a profiler that fails to stop is reported on stderr."""
        if self._prof is not None:
            prof, self._prof = self._prof, None
            try:
                prof.stop()
            except Exception as e:  # noqa: BLE001 - the worker's result must still be returned
                _say(f"torch profiler did not stop cleanly: {type(e).__name__}: {e}")
        return self.artifacts

    def _export(self, prof: tp.profile) -> None:
        """``on_trace_ready``: the cycle as gzipped Chrome-trace bytes → ``store``. A trace
        that cannot be stored is reported on stderr; the measured run goes on. A cycle cut
        off before any of its active steps ended (the loop's last ``step()`` announced a step
        that never ran) has nothing to show and is dropped."""
        recorded, self._recorded = self._recorded, 0
        if not recorded:
            return
        name = trace_name(self.actor_id, self._cycle)
        self._cycle += 1
        try:
            with tempfile.TemporaryDirectory(prefix="rayprof-trace-") as tmp:
                path = Path(tmp) / name
                prof.export_chrome_trace(str(path))  # a .gz name: torch gzips it
                stored = self._store(name, path.read_bytes())
        except Exception as e:  # noqa: BLE001 - said on stderr, the run's rows matter more
            _say(f"torch trace {name} not stored: {type(e).__name__}: {e}")
            return
        if stored is not None:
            self.artifacts.append(f"{PROFILES}/{KIND}/{name}")


def _say(line: str) -> None:
    print(f"rayprof: {line}", file=sys.stderr, flush=True)


class _NoTracer:
    """What the engine gets without ``profile.torch``: nothing is created, nothing recorded."""

    def start(self) -> None:
        return None

    def step(self) -> None:
        return None

    def stop(self) -> list[str]:
        return []


NO_TRACER = _NoTracer()


def tracer_for(plan: WorkerPlan, emit: object) -> TorchTracer | _NoTracer:
    """The tracer for ``plan``: a :class:`TorchTracer` storing through ``emit.artifact`` when
    the plan asks for ``profile.torch``, else :data:`NO_TRACER`. An emitter without
    ``artifact`` has nowhere to put traces: no profiler then either (one whose ``artifact``
    returns None stores nothing, and the result lists nothing)."""
    artifact = getattr(emit, "artifact", None)
    if not plan.profile_torch or artifact is None:
        return NO_TRACER
    cuda = any(str(d).startswith("cuda") for d in (plan.exec_device, plan.prep_device))
    return TorchTracer(plan.profile_torch, plan.actor_id, lambda name, data: artifact(KIND, name, data), cuda=cuda)
