"""The load run of issue 7, shared by ``tests/ray/test_load.py`` and ``benchmarks/load.py``.

Many actors on a simulated multi-node cluster (``ray.cluster_utils.Cluster``: Ray nodes on this
machine), each a cheap stream (synthetic 32×32 frames, batch 1, squeezenet1_1 at 32 px), all
shipping rows to the driver-mode sink actor through ``rayprof.fleet.submit``, the code path of
``rayprof submit``. Two observers watch the run from the driver's process:

- :class:`SinkMemory`: the sink actor's resident memory (``VmRSS`` from ``/proc``, sampled on a
  thread) against the steps done so far, and its peak (``VmHWM``, the last value read before the
  process ended: the sink is killed in ``RunSink.finish``);
- :func:`progress_tap`: each call of the driver's progress loop (``ProgressView.update``), with
  the steps it had seen, so the loop's cadence under load is measured, not assumed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from rayprof import driver, fleet
from rayprof.query import open_dataset
from rayprof.spec import FleetSpec, parse_fleet

from .media import free_port

MODEL, SIZE = "squeezenet1_1", 32  # the cheapest torchvision classifier per step at 32 px on CPU (~3 ms)
WARMUP_STEPS = 2


@contextmanager
def simulated_cluster(nodes: int = 3, cpus_per_node: float = 2) -> Iterator[Cluster]:
    """A head and ``nodes - 1`` more Ray nodes on this machine, connected. Each advertises
    ``cpus_per_node`` CPUs: with 2 (this machine's cores) placement spreads a node's actors over
    both cores instead of piling them on core 0."""
    c = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": cpus_per_node, "gcs_server_port": free_port(), "include_dashboard": False})
    for _ in range(nodes - 1):
        c.add_node(num_cpus=cpus_per_node)
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING")
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def load_spec(output: str | Path, actors: int, steps: int, flush_interval_s: float = 0.5) -> FleetSpec:
    """One worker of ``actors`` replicas spread over the nodes, ``steps`` steps each."""
    return parse_fleet({"run": "load", "output": str(output), "flush_interval_s": flush_interval_s, "workers": [{
        "name": "load", "replicas": actors, "spread": True, "device": "cpu", "model": MODEL,
        "source": {"uri": "synthetic", "width": SIZE, "height": SIZE, "fps": 0},
        "prep": {"level": "simple", "size": SIZE}, "batch_size": 1, "max_steps": steps,
        "warmup_steps": WARMUP_STEPS}]})


# --------------------------------------------------------------------------- observers


@contextmanager
def progress_tap() -> Iterator[list[tuple[float, int]]]:
    """Record every ``ProgressView.update`` of the driver as ``(time.monotonic(), steps)``, steps
    being the sum over the actors as the view knows them after the call."""
    calls: list[tuple[float, int]] = []
    original = driver.ProgressView.update

    def update(self, progress):
        original(self, progress)
        calls.append((time.monotonic(), sum(pr.get("steps", 0) for pr in self.latest.values())))

    driver.ProgressView.update = update
    try:
        yield calls
    finally:
        driver.ProgressView.update = original


def _status_kb(pid: int) -> dict[str, int] | None:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in kB, None once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    if "VmRSS" not in fields:  # a zombie: gone for our purpose
        return None
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}


class SinkMemory:
    """Samples the memory of a run's sink actor from a thread: it waits for the actor
    (``rayprof:<run_id>:sink``, the only one in this Ray), asks it for its PID, then reads
    ``/proc/<pid>/status`` every ``interval_s`` until the process ends or :meth:`stop`."""

    def __init__(self, steps: Callable[[], int], interval_s: float = 0.5):
        """``steps``: how many steps the run has done, stored with each sample."""
        self.steps, self.interval_s = steps, interval_s
        self.samples: list[tuple[int, int]] = []  # (steps, VmRSS kB)
        self.peak_kb = 0  # the last VmHWM read
        self.pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sink-memory", daemon=True)

    def __enter__(self) -> SinkMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        self.pid = self._sink_pid()
        while self.pid is not None:
            kb = _status_kb(self.pid)
            if kb is None:
                return
            self.samples.append((self.steps(), kb["VmRSS"]))
            self.peak_kb = kb["VmHWM"]
            if self._stop.wait(self.interval_s):
                return

    def _sink_pid(self) -> int | None:
        while not self._stop.wait(0.1):
            name = next((n for n in ray.util.list_named_actors() if n.startswith("rayprof:") and n.endswith(":sink")),
                        None)
            if name:
                return ray.get(ray.get_actor(name).__ray_call__.remote(lambda _self: os.getpid()))
        return None


# --------------------------------------------------------------------------- the run


@dataclass
class LoadRun:
    """What one load run measured."""

    exit_code: int
    seconds: float  # the whole submit: Ray already up
    progress: list[tuple[float, int]]  # (monotonic time, steps) of each progress update
    rss: list[tuple[int, int]]  # (steps, sink VmRSS kB)
    sink_peak_kb: int
    target_steps: int
    run_id: str = ""  # the fields from here on: empty for a measure taken without a run
    per_actor: dict = field(default_factory=dict)  # actor_id -> {rows, steps, first, last}
    rows_per_s: float = 0.0  # rows over the span of their t_start

    @property
    def max_progress_gap_s(self) -> float:
        """The longest time between two progress updates of the driver."""
        times = [t for t, _ in self.progress]
        return max((b - a for a, b in zip(times, times[1:])), default=float("nan"))

    def rss_mb(self, lo: float, hi: float) -> float:
        """The sink's highest sampled RSS (MB) while the steps done were in [lo, hi) of the target."""
        window = [kb for s, kb in self.rss if lo * self.target_steps <= s < hi * self.target_steps]
        return max(window, default=0) / 1024

    def progress_in(self, lo: float, hi: float) -> int:
        """Progress updates that saw the steps done in [lo, hi) of the target."""
        return sum(lo * self.target_steps <= s < hi * self.target_steps for _, s in self.progress)


def run_load(spec: FleetSpec, root: str | Path) -> LoadRun:
    """Submit ``spec`` (Ray connected; ``root`` its empty output) with both observers, then read
    its rows back."""
    target = sum(w.replicas * w.max_steps for w in spec.workers)
    with progress_tap() as calls:
        with SinkMemory(lambda: calls[-1][1] if calls else 0) as memory:
            t0 = time.monotonic()
            code = fleet.submit(spec)
            seconds = time.monotonic() - t0
    (run_id,) = [p.name.removeprefix("run=") for p in Path(root).glob("run=*")]
    return LoadRun(code, seconds, calls, memory.samples, memory.peak_kb, target, run_id, *_read_rows(root, run_id))


def _read_rows(root: str | Path, run_id: str) -> tuple[dict, float]:
    """Through DuckDB (``rayprof.query``): per actor, its rows, distinct steps and their range;
    and the rows per second over the span of their ``t_start``."""
    ds = open_dataset(root, run_id, use_index=False)
    rows = ds.sql("SELECT actor_id, count(*) AS rows, count(DISTINCT step) AS steps, min(step) AS first, "
                  "max(step) AS last FROM steps GROUP BY actor_id").df()
    per_actor = {r.actor_id: {"rows": r.rows, "steps": r.steps, "first": r.first, "last": r.last}
                 for r in rows.itertuples()}
    span = ds.sql("SELECT (epoch_ns(max(t_start)) - epoch_ns(min(t_start))) / 1e9 FROM steps").fetchall()[0][0]
    return per_actor, sum(r["rows"] for r in per_actor.values()) / span if span else float("nan")
