"""The Ray shell around the engine: the only package that imports ray.

connect (``--address`` / spec ``address`` / ``RAY_ADDRESS`` / an embedded local Ray) → node
inventory and placement → a sink actor on the driver's node (or direct writes) → one
``StreamWorker`` actor per plan → live progress → results, failures, profiler traces and the
manifest → an exit code.
"""

from importlib import import_module

# Lazy: Ray pickles the package's remote functions (node facts, probes) by reference, and a node
# that runs one imports this package; only what is asked for is imported (no torch for a probe).
_EXPORTS = {"submit": "_run", "plan_on_cluster": "_run", "DirectEmitter": "_sink", "RunSink": "_sink",
            "SinkEmitter": "_sink", "resolve_mode": "_sink"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
