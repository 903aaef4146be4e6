"""How many metric rows per second the sink takes, measured side by side in one run.

N simulated workers (Ray actors, zero CPUs) each send K record batches of the real schema,
made by ``RowBuffer``/``StepRecord`` exactly as a worker makes them, as fast as the emitter's
back-pressure lets them, through:

1. ``driver`` mode: ``SinkEmitter`` → the sink actor (a remote ``DatasetWriter``) writing
   ``SINK_THREADS`` (4) batches at once, as rayprof runs it;
2. the same sink actor writing one batch at a time (``max_concurrency=1``), for comparison;
3. ``direct`` mode: each worker's ``DirectEmitter`` writes its own files;

against a bare ``pq.write_table`` loop in this process on the same batches (one file each).
Rows per second count from the first send to the last acknowledged write. The sink actor's
peak RSS shows its memory stays bounded (workers × window batches at most).

    python benchmarks/sink_throughput.py [--workers 4] [--batches 30] [--rows 256,4096] [--rounds 3]

Prints a table and rewrites its section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from instrumentation_overhead import write_section  # noqa: E402

from rayprof import __version__  # noqa: E402
from rayprof.fleet._sink import SINK_THREADS, WINDOW, RunSink, SinkEmitter  # noqa: E402
from rayprof.metrics import RowBuffer, StepRecord  # noqa: E402
from rayprof.sink import DatasetWriter  # noqa: E402

T0_NS = 1_700_000_000_000_000_000


def make_batches(actor_id: str, rows: int, count: int) -> list[pa.RecordBatch]:
    """``count`` batches of ``rows`` steps each, as a worker's RowBuffer emits them."""
    buf = RowBuffer({"replica": 0, "actor_id": actor_id, "node_id": "0" * 56, "node_ip": "10.0.0.1",
                     "hostname": "bench", "pid": 4242, "cores": "0-3", "model": "resnet50", "mode": "inference",
                     "role": "full", "batch_size": 8, "prep_level": "simple", "prep_device": "cpu",
                     "exec_device": "cuda", "amp": False, "compiled": False})
    batches = []
    for b in range(count):
        for i in range(rows):
            step = b * rows + i
            ms = 10.0 + (step % 17) * 0.37  # varied values: compression sees realistic data
            buf.append(StepRecord(step, step < 5, T0_NS + step * 10_000_000, ms * 0.1, ms * 0.2, ms * 0.7, None,
                                  ms, 8, step % 3, ms * 2.5, None))
        batches.append(buf.to_batch())
    return batches


class SimWorker:
    """A worker that only emits: its batches are made before the clock starts."""

    def __init__(self, actor_id: str):
        self.actor_id, self.batches = actor_id, []

    def prepare(self, rows: int, count: int) -> None:
        import rayprof.fleet._sink  # noqa: F401 - the emitters' module is loaded before the clock starts

        self.batches = make_batches(self.actor_id, rows, count)

    def run(self, emit) -> int:
        for batch in self.batches:
            emit(batch)
        emit.drain()
        return emit.rows


class MeasuredSink(DatasetWriter):
    def peak_rss_mb(self) -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def through_ray(sims: list, emitters: list) -> float:
    """Seconds for every simulated worker to send and confirm all of its batches."""
    t0 = time.perf_counter()
    ray.get([s.run.remote(e) for s, e in zip(sims, emitters)])
    return time.perf_counter() - t0


def driver_mode(sims: list, root: str, run_id: str, concurrency: int) -> dict:
    sink = ray.remote(MeasuredSink).options(num_cpus=0, max_concurrency=concurrency).remote(root, run_id)
    ray.get(sink.stats.remote())  # started
    seconds = through_ray(sims, [SinkEmitter(sink, "w", f"w-{i}") for i in range(len(sims))])
    out = {"seconds": seconds, "sink_rss_mb": ray.get(sink.peak_rss_mb.remote()), **ray.get(sink.stats.remote())}
    ray.kill(sink)
    return out


def direct_mode(sims: list, root: str, run_id: str) -> dict:
    sink = RunSink("direct", root, run_id)  # nothing to probe: one node
    seconds = through_ray(sims, [sink.emitter(SimpleNamespace(worker="w", actor_id=f"w-{i}"))
                                 for i in range(len(sims))])
    return {"seconds": seconds, "sink_rss_mb": None, **sink.finish()}


def bare_loop(folder: Path, workers: int, rows: int, count: int) -> dict:
    batches = [b for i in range(workers) for b in make_batches(f"w-{i}", rows, count)]
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    for n, b in enumerate(batches):
        pq.write_table(pa.Table.from_batches([b]), folder / f"part-{n:06d}.parquet", compression="zstd")
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "sink_rss_mb": None, "rows": sum(b.num_rows for b in batches),
            "files": len(batches), "bytes": sum(p.stat().st_size for p in folder.iterdir())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--batches", type=int, default=30, help="batches per worker")
    ap.add_argument("--rows", default="256,4096", help="rows per batch, comma-separated")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every case, interleaved; the median is shown")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # rayprof in every worker
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    tmp = Path(tempfile.mkdtemp(prefix="rayprof-sink-bench-"))
    w, k = args.workers, args.batches
    sims = [ray.remote(num_cpus=0)(SimWorker).remote(f"w-{i}") for i in range(w)]
    runs: dict[tuple[int, str], list[dict]] = {}
    try:
        for rows in (int(r) for r in args.rows.split(",")):
            ray.get([s.prepare.remote(rows, k) for s in sims])
            cases = {  # each takes a tag that names its output
                "bare `pq.write_table` loop (1 process)": lambda tag: bare_loop(tmp / f"bare-{tag}", w, rows, k),
                f"driver: sink actor, {SINK_THREADS} threads (rayprof's)":
                    lambda tag: driver_mode(sims, str(tmp), f"drv-{tag}", SINK_THREADS),
                "driver: sink actor, 1 thread": lambda tag: driver_mode(sims, str(tmp), f"drv1-{tag}", 1),
                "direct: each worker writes": lambda tag: direct_mode(sims, str(tmp), f"dir-{tag}"),
            }
            for n in range(args.rounds):  # interleaved, so a slow moment of a shared machine hits every case
                for name, case in cases.items():
                    r = case(f"{rows}-{n}")
                    assert r["rows"] == w * k * rows, (name, r)  # each row landed, once
                    runs.setdefault((rows, name), []).append(r)
                    print(f"{rows:>5} rows/batch  round {n}  {name:<44} {r['rows'] / r['seconds']:>10,.0f} rows/s",
                          flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    lines = [
        "## Sink throughput (`benchmarks/sink_throughput.py`)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; pyarrow {pa.__version__}, "
        f"ray {ray.__version__}, rayprof {__version__}, Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}; output on the local disk.",
        f"Reproduce: `python benchmarks/sink_throughput.py --workers {args.workers} --batches {args.batches} "
        f"--rows {args.rows} --rounds {args.rounds}`",
        "",
        f"{args.workers} simulated workers × {args.batches} batches each, window {WINDOW} "
        f"unacknowledged batches per worker, zstd Parquet, one file per batch; the median of {args.rounds} "
        "interleaved rounds.",
        "",
        "| rows/batch | path | rows/s | files/s | MB/s written | vs bare loop | sink actor peak RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    results = [{"case": name, "rows_per_batch": rows, **sorted(rs, key=lambda r: r["seconds"])[len(rs) // 2]}
               for (rows, name), rs in runs.items()]  # the median round of each case
    bare = {r["rows_per_batch"]: r for r in results if r["case"].startswith("bare")}
    for r in results:
        rate = r["rows"] / r["seconds"]
        base = bare[r["rows_per_batch"]]
        rss = f"{r['sink_rss_mb']:.0f} MB" if r["sink_rss_mb"] else "-"
        lines.append(f"| {r['rows_per_batch']} | {r['case']} | **{rate:,.0f}** | {r['files'] / r['seconds']:,.0f} | "
                     f"{r['bytes'] / r['seconds'] / 1e6:.1f} | {rate / (base['rows'] / base['seconds']):.2f} | {rss} |")
    lines += ["", "Rates count from the first send to the last acknowledged write. A worker flushes at least once a "
              "second, so files/s is about how many workers one sink keeps up with at one flush per second, and "
              "rows/s the ceiling for fast workers (a flush holds at most 4096 rows). Direct writes grow with the "
              "number of writers (each writes from its own process); the sink actor is one process, whose threads "
              "overlap Parquet encoding and the store's latency. Its peak RSS includes the Ray worker and pyarrow "
              "themselves; its backlog is at most workers × window batches.", "",
              "Goal (issue 8): at least 1,000,000 rows/s per sink, missed here. Parquet encoding of the 33-column "
              "schema is the floor: one process's bare `pq.write_table` loop stays under 600,000 rows/s on one of "
              "these cores whatever the file size (4,096, 16,384 and 65,536 rows per file all measured 500,000-"
              "620,000 rows/s, zstd or lz4), so a sink reaches the goal only with about two free cores of its own for "
              "its encoding threads, which this 2-core machine cannot give it while the workers run beside it. Direct "
              "writes spread the encoding over the workers' processes and grow with them.", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(ROOT / "benchmarks" / "RESULTS.md", "## Sink throughput", text)


if __name__ == "__main__":
    main()
