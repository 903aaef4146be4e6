"""A split pair on Ray: the head reaches its tail actor through the object store.

The engine's :class:`rayprof.pair.Link` in Ray's terms: ``put`` is ``ray.put`` (the activation
is serialised into the head node's object store), ``push`` is an actor call carrying the
``ObjectRef`` inside a :class:`~rayprof.pair.Handoff` (nested, so Ray does not resolve it on the
way), and the tail's ``fetch`` is ``ray.get`` (pulled from the head's node when the tail runs
elsewhere, then deserialised). A push's ``ObjectRef`` completes when the tail has finished the
batch: that is the head's window.
"""

from __future__ import annotations

import ray
from ray.exceptions import RayError, RayTaskError

def fetch(ref):
    """The tail's ``fetch``: the activation behind an ``ObjectRef``."""
    return ray.get(ref)


class RayLink:
    """A head's link to its tail actor (picklable: it travels to the head actor)."""

    def __init__(self, tail, tail_id: str):
        self.tail, self.tail_id = tail, tail_id

    def open(self, module) -> None:
        self._get(self.tail.load.remote(module))

    def put(self, activation):
        return ray.put(activation)

    def push(self, handoff):  # a rayprof.pair.Handoff
        return self.tail.push.remote(handoff)

    def wait(self, future) -> None:
        self._get(future)

    def close(self, sent: int) -> None:
        self.tail.end.remote(sent)

    def _get(self, ref) -> None:
        """``ray.get``, with the tail's own error as one line rather than a remote traceback."""
        try:
            ray.get(ref)
        except RayTaskError as e:
            cause = getattr(e, "cause", None) or e
            raise RuntimeError(" ".join(str(cause).split())[:300]) from None
        except RayError as e:
            raise RuntimeError(f"tail {self.tail_id} is gone ({type(e).__name__})") from None


def max_concurrency(window: int) -> int:
    """A tail serves ``window`` blocked pushes beside run, progress, stop, load and end."""
    return window + 5
