"""NVTX ranges (domain ``rayprof``) that also show up in ``torch.profiler`` traces.

``mark("prep", step)`` opens one range around a stage. Under Nsight Systems it is an NVTX
push/pop range in the ``rayprof`` domain whose payload is the step index; under
``torch.profiler`` it is a ``record_function`` range named ``rayprof/prep``. With neither tool
attached it costs well under a microsecond (``benchmarks/instrumentation_overhead.py`` measures it): the
NVTX call has no tool to forward to, and ``record_function`` is only entered while a torch
profiler is actually recording.
"""

from __future__ import annotations

DOMAIN = "rayprof"

try:  # the nvtx package works without CUDA: NVTX v3 is header-only and a no-op without a tool
    import nvtx as _nvtx

    _domain = _nvtx.get_domain(DOMAIN)

    # nvtx hands out a DummyDomain when no tool (nsys) injected itself at process start
    if type(_domain).__name__ != "DummyDomain":

        def _push(name: str, step: int) -> None:
            _domain.push_range(message=name, payload=step)

        def _pop() -> None:
            _domain.pop_range()

    else:  # no tool: NVTX would drop the range anyway; skip the call entirely

        def _push(name: str, step: int) -> None:
            return None

        def _pop() -> None:
            return None

    NVTX_BACKEND = "nvtx"
except Exception:  # pragma: no cover - nvtx missing: fall back to torch's binding (no domain)
    _nvtx = None
    try:
        import torch.cuda.nvtx as _tnvtx

        def _push(name: str, step: int) -> None:
            _tnvtx.range_push(f"{DOMAIN}/{name} {step}")

        def _pop() -> None:
            _tnvtx.range_pop()

        NVTX_BACKEND = "torch.cuda.nvtx"
    except Exception:

        def _push(name: str, step: int) -> None:
            return None

        def _pop() -> None:
            return None

        NVTX_BACKEND = "none"

import torch
from torch.autograd import profiler as _autograd_profiler

_profiler_enabled = getattr(torch.autograd, "_profiler_enabled", None) or (
    lambda: bool(getattr(_autograd_profiler, "_is_profiler_enabled", False))
)


def torch_profiler_active() -> bool:
    """True while a torch.profiler / autograd profiler session is recording."""
    return bool(_profiler_enabled())


class mark:
    """One NVTX range (domain ``rayprof``, payload ``step``) and, while a torch profiler
    records, a ``record_function("rayprof/<name>")`` range. Use as ``with mark("prep", step):``.

    A plain class rather than a generator context manager: with no tool attached it costs two
    method calls and one check of the profiler's state.
    """

    __slots__ = ("name", "step", "_rf")

    def __init__(self, name: str, step: int = 0):
        self.name = name
        self.step = step
        self._rf = None

    def __enter__(self) -> None:
        _push(self.name, self.step)
        if _profiler_enabled():
            self._rf = _autograd_profiler.record_function(f"{DOMAIN}/{self.name}")
            self._rf.__enter__()

    def __exit__(self, *exc) -> None:
        if self._rf is not None:
            self._rf.__exit__(*exc)
            self._rf = None
        _pop()
