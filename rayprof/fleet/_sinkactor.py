"""The sink actor's class, in a module of its own: the sink process imports only this, Ray and
``rayprof.sink`` (no torch, no spec)."""

from __future__ import annotations

import warnings

import ray

from ..sink import DatasetWriter


class SinkActor(DatasetWriter):
    """A ``DatasetWriter`` that Ray restarts when its process dies. Its counts cover its own
    lifetime only, so :meth:`stats` says whether this is a restarted one: then the dataset's
    own files are the count (``sink.dataset_stats``)."""

    def stats(self) -> dict:
        with warnings.catch_warnings():  # the property reads Ray's own deprecated ``actor_id``
            warnings.simplefilter("ignore", DeprecationWarning)
            restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        return {**super().stats(), "restarted": restarted}
