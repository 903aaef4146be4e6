"""NVTX ranges (domain ``rayprof``) that also show up in ``torch.profiler`` traces.

``mark("prep", step)`` opens one range around a stage. Under Nsight Systems it is an NVTX
push/pop range in the ``rayprof`` domain whose payload is the step index; under
``torch.profiler`` it is a ``record_function`` range named ``rayprof/prep``. With neither tool
attached it costs a few hundred nanoseconds (``benchmarks/instrumentation_overhead.py`` measures
it): NVTX has no tool to forward to, so it is not called, and ``record_function`` is only
entered while a torch profiler is actually recording.
"""

from __future__ import annotations

DOMAIN = "rayprof"

try:  # the nvtx package works without CUDA: NVTX v3 is header-only and a no-op without a tool
    import nvtx as _nvtx

    _domain = _nvtx.get_domain(DOMAIN)

    # nvtx hands out a DummyDomain when no tool (nsys) injected itself at process start
    NVTX_ATTACHED = type(_domain).__name__ != "DummyDomain"

    def _push(name: str, step: int) -> None:
        _domain.push_range(message=name, payload=step)

    def _pop() -> None:
        _domain.pop_range()

    NVTX_BACKEND = "nvtx"
except Exception:  # pragma: no cover - nvtx missing: fall back to torch's binding (no domain)
    _nvtx = None
    try:
        import torch.cuda.nvtx as _tnvtx

        def _push(name: str, step: int) -> None:
            _tnvtx.range_push(f"{DOMAIN}/{name} {step}")

        def _pop() -> None:
            _tnvtx.range_pop()

        NVTX_ATTACHED = True  # torch's binding cannot tell whether a tool listens: always push
        NVTX_BACKEND = "torch.cuda.nvtx"
    except Exception:
        NVTX_ATTACHED = False
        NVTX_BACKEND = "none"

import torch
from torch.autograd import profiler as _autograd_profiler

_profiler_enabled = getattr(torch.autograd, "_profiler_enabled", None) or (
    lambda: bool(getattr(_autograd_profiler, "_is_profiler_enabled", False))
)


def torch_profiler_active() -> bool:
    """True while a torch.profiler / autograd profiler session is recording."""
    return bool(_profiler_enabled())


def mark(name: str, step: int = 0) -> _Range | _Unobserved:
    """One range around a stage: ``with mark("prep", step):``. An NVTX range (domain
    ``rayprof``, payload ``step``) and, while a torch profiler records, a
    ``record_function("rayprof/<name>")`` range.

    With no NVTX tool attached and no profiler recording, it returns one shared object that does
    nothing on entering and leaving: no range object is created, no NVTX call made.
    """
    if NVTX_ATTACHED or _profiler_enabled():
        return _Range(name, step)
    return _UNOBSERVED


class _Range:
    """An open range: NVTX push/pop, and ``record_function`` while a torch profiler records."""

    __slots__ = ("name", "step", "_rf")

    def __init__(self, name: str, step: int):
        self.name = name
        self.step = step
        self._rf = None

    def __enter__(self) -> None:
        if NVTX_ATTACHED:  # else NVTX would drop the range anyway: it only feeds the torch profiler
            _push(self.name, self.step)
        if _profiler_enabled():
            self._rf = _autograd_profiler.record_function(f"{DOMAIN}/{self.name}")
            self._rf.__enter__()

    def __exit__(self, *exc) -> None:
        if self._rf is not None:
            self._rf.__exit__(*exc)
            self._rf = None
        if NVTX_ATTACHED:
            _pop()


class _Unobserved:
    """The range of a process that nothing observes: entering and leaving it do nothing."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> None:
        return None


_UNOBSERVED = _Unobserved()
