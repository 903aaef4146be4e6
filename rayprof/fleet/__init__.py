"""The Ray shell around the engine: the only package that imports ray.

connect (``--address`` / spec ``address`` / ``RAY_ADDRESS`` / an embedded local Ray) → node
inventory and placement → a sink actor on the driver's node (or direct writes) → one
``StreamWorker`` actor per plan → live progress → results, failures, profiler traces and the
manifest → an exit code.
"""

from ._run import check_feasible, submit
from ._sink import SinkEmitter, SinkService

__all__ = ["SinkEmitter", "SinkService", "check_feasible", "submit"]
