"""``--workers N``: the image list split into N contiguous shards, one Ray actor per shard.

The only module of ``frame_extract`` that imports Ray, and only when it is called. The driver
builds the model once and hands the same object to every actor (through the object store), so
all actors have identical weights, whatever they are (random, a file, torchvision's) and wherever
they run. Each actor annotates its shard batch by batch with :func:`_work.process_batch` and
writes its annotated copies itself (so the input and output folders must be reachable at the
same paths from every node: a local cluster, or a shared filesystem). Each batch returns its
detections to the driver, which merges them into one COCO document with ids sorted by file name,
equal to what a single process writes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

from frame_extract._coco import ImageRecord
from frame_extract._work import ImageJob, Skipped, WorkSettings, process_batch


class ShardAnnotator:
    """Plain class made a Ray actor at run time: the model on this actor's device, one batch per call."""

    def __init__(self, model, settings: WorkSettings, device: str, threads: int):
        import cv2
        import torch

        from rayprof.model import resolve_device

        threads = max(1, min(threads, os.cpu_count() or 1))
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.settings = settings

    def run(self, jobs: Sequence[ImageJob]) -> list[ImageRecord | Skipped]:
        return process_batch(self.model, jobs, self.settings, self.device)


def shards(items: Sequence, n: int) -> list[list]:
    """``items`` in ``n`` contiguous, near-equal, non-empty parts (fewer if there are fewer items)."""
    n = max(1, min(n, len(items)))
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for k in range(n):
        stop = start + size + (1 if k < extra else 0)
        out.append(list(items[start:stop]))
        start = stop
    return out


def actor_resources(cpus: float, gpus: float, actors: int, device: str) -> tuple[dict, int]:
    """Ray resources for each of ``actors`` actors on a cluster with ``cpus``/``gpus``, and the
    threads each may use: one CPU each while there are enough, else an equal share (so more actors
    than CPUs share them instead of waiting forever); a GPU share when the device is not the CPU
    and the cluster has GPUs."""
    options: dict = {"num_cpus": min(1.0, cpus / actors)}
    if str(device).strip().lower() != "cpu" and gpus > 0:
        options["num_gpus"] = min(1.0, gpus / actors)
    return options, max(1, math.floor(cpus / actors))


def annotate_with_ray(jobs: Sequence[ImageJob], model, settings: WorkSettings, *, device: str, workers: int,
                      batch_size: int, on_batch: Callable[[int], None] = lambda n: None) -> list[ImageRecord | Skipped]:
    """Annotate ``jobs`` on ``workers`` actors; the outcomes in job order. Connects to the Ray
    cluster ``RAY_ADDRESS`` names, or starts a local one (stopped again at the end)."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                 logging_level="WARNING", log_to_driver=True)
        started = True
    actors = []
    try:
        parts = shards(jobs, workers)
        resources = ray.cluster_resources()
        options, threads = actor_resources(float(resources.get("CPU", 1.0)), float(resources.get("GPU", 0.0)),
                                           len(parts), device)
        remote_cls = ray.remote(ShardAnnotator)
        model_ref = ray.put(model)
        actors = [remote_cls.options(**options).remote(model_ref, settings, device, threads) for _ in parts]
        pending: dict = {}
        for actor, part in zip(actors, parts):
            for start in range(0, len(part), batch_size):
                batch = part[start:start + batch_size]
                pending[actor.run.remote(batch)] = batch
        done: dict = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                batch = pending.pop(ref)
                for job, outcome in zip(batch, ray.get(ref)):
                    done[job.file_name] = outcome
                on_batch(len(batch))
        return [done[job.file_name] for job in jobs]
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()
