"""Realistic rayprof datasets, generated fast and written the way a run writes them.

Rows are made per actor with numpy (a worker's timing: stages drawn around typical values, each
step starting where the previous one ended) and written through :class:`rayprof.sink.DatasetWriter`
as :data:`rayprof.metrics.FILE_SCHEMA` batches, the same columns ``RowBuffer.to_batch`` makes
(``test_query`` checks that); manifests go through :func:`rayprof.sink.write_manifest`.

:func:`fleet_dataset` writes the standard test dataset: several runs, workers, replicas and nodes
(two of them on one IP, as a simulated cluster has), warm-up rows, a straggler, an unstable worker,
a split pair, a ``split`` worker, a sweep, a run without a manifest, one written before ``wait_ms``
existed, and a run still being written (a hidden temp file beside its parts).
:func:`large_run` writes many rows quickly for benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayprof.metrics import FILE_SCHEMA, RowBuffer
from rayprof.sink import DatasetWriter, write_manifest

T0_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
HOUR_NS = 3600 * 10**9

NODE_A = ("10.0.0.1", "a1" * 28)
NODE_B = ("10.0.0.2", "b2" * 28)
SIM_1 = ("127.0.0.1", "c3" * 28)  # two simulated nodes on one host: one IP, two node ids
SIM_2 = ("127.0.0.1", "d4" * 28)


@dataclass
class ActorRows:
    """One actor's identity (the ``RowBuffer`` identity) and per-step columns (numpy; NaN = null)."""

    worker: str
    identity: dict
    cols: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def actor_id(self) -> str:
        return self.identity["actor_id"]

    def batch(self, lo: int, hi: int, schema: pa.Schema = FILE_SCHEMA) -> pa.RecordBatch:
        """Rows ``lo:hi`` as one record batch of ``schema`` (the file schema, or an older one)."""
        RowBuffer(self.identity)  # the identity a worker would have: checked the same way
        n = hi - lo
        arrays = []
        for f in schema:
            if f.name in self.cols:
                values = self.cols[f.name][lo:hi]
                mask = np.isnan(values) if values.dtype.kind == "f" else None
                arrays.append(pa.array(values, type=f.type, mask=mask))
            else:
                arrays.append(pa.array([self.identity.get(f.name)] * n, type=f.type))
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    def __len__(self) -> int:
        return len(self.cols["step"])


def identity(worker: str, replica: int = 0, *, node=NODE_A, role: str = "full", model: str = "resnet18",
             batch_size: int = 8, pair_id: str | None = None, sweep_point: str | None = None,
             exec_device: str = "cpu", actor_id: str | None = None) -> dict:
    ip, node_id = node
    return {"replica": replica, "actor_id": actor_id or f"{worker}-{replica}", "pair_id": pair_id,
            "node_id": node_id, "node_ip": ip, "hostname": f"host-{ip}", "pid": 1000 + replica,
            "gpu_name": "NVIDIA H100" if exec_device == "cuda" else None, "cores": f"{4 * replica}-{4 * replica + 3}",
            "model": model, "mode": "inference", "role": role, "batch_size": batch_size, "prep_level": "simple",
            "prep_device": "cpu", "exec_device": exec_device, "amp": False, "compiled": False,
            "sweep_point": sweep_point}


def _jitter(rng: np.random.Generator, mean_ms: float, n: int) -> np.ndarray:
    """Latencies around ``mean_ms``: a gamma distribution (10 % spread and a right tail, like real stages)."""
    return rng.gamma(100.0, mean_ms / 100.0, n)


def _starts(start_ns: int, busy_ms: np.ndarray, gap_ms: float = 0.05) -> np.ndarray:
    """Each step starts where the previous one ended (plus a small gap)."""
    ns = ((busy_ms + gap_ms) * 1e6).astype(np.int64)
    return start_ns + np.concatenate([[0], np.cumsum(ns[:-1])])


def _step_cols(n: int, warmup: int, batch_size: int, t_start: np.ndarray) -> dict[str, np.ndarray]:
    return {"step": np.arange(n, dtype=np.int64), "warmup": np.arange(n) < warmup, "t_start": t_start,
            "frames": np.full(n, batch_size, np.int32), "dropped_frames": np.zeros(n, np.int32)}


def full_actor(worker: str, replica: int = 0, *, steps: int = 300, warmup: int = 5, start_ns: int = T0_NS,
               read_ms: float = 2.0, prep_ms: float = 3.0, exec_ms: float = 20.0, drift: float = 1.0,
               seed: int = 0, role: str = "full", transfer_ms: float | None = None, **ident) -> ActorRows:
    """A worker's actor (``role`` full, or split: both halves in one process, with a transfer).
    ``drift``: exec time at the last step relative to the first (1.0: steady; 2.0: twice as slow)."""
    rng = np.random.default_rng(seed)
    idn = identity(worker, replica, role=role, **ident)
    read, prep = _jitter(rng, read_ms, steps), _jitter(rng, prep_ms, steps)
    exe = _jitter(rng, exec_ms, steps) * np.linspace(1.0, drift, steps)
    exe[:warmup] *= 5.0  # warm-up steps are slow (lazy init, autotuning)
    transfer = _jitter(rng, transfer_ms, steps) if transfer_ms else np.full(steps, np.nan)
    total = read + prep + exe + np.nan_to_num(transfer) + 0.02
    cols = _step_cols(steps, warmup, idn["batch_size"], _starts(start_ns, total))
    cols.update(read_ms=read, prep_ms=prep, exec_ms=exe, transfer_ms=transfer, total_ms=total,
                wait_ms=np.full(steps, np.nan))
    return ActorRows(worker, idn, cols)


def pair_actors(worker: str, replica: int = 0, *, steps: int = 300, warmup: int = 5, start_ns: int = T0_NS,
                read_ms: float = 2.0, prep_ms: float = 3.0, head_ms: float = 8.0, put_ms: float = 1.0,
                fetch_ms: float = 1.5, tail_ms: float = 6.0, tail_steps: int | None = None, seed: int = 0,
                sweep_point: str | None = None, **ident) -> tuple[ActorRows, ActorRows]:
    """A split pair's head and tail actors, as a pipeline: the tail takes batch i once its
    activation is in the object store and it has finished batch i-1; the head waits when more
    than two batches are in flight. ``tail_steps`` < ``steps``: a run cut short before the tail
    finished (head rows without a tail row)."""
    rng = np.random.default_rng(seed)
    pair_id = f"{worker}-{replica}" + (f"-{sweep_point.replace('=', '-')}" if sweep_point else "")
    head = identity(worker, replica, role="head", pair_id=pair_id, sweep_point=sweep_point,
                    actor_id=f"{pair_id}-head", **ident)
    tail = identity(worker, replica, role="tail", pair_id=pair_id, sweep_point=sweep_point,
                    actor_id=f"{pair_id}-tail", exec_device="cuda", **ident)
    read, prep, hexe, put = (_jitter(rng, m, steps) for m in (read_ms, prep_ms, head_ms, put_ms))
    fetch, texe = _jitter(rng, fetch_ms, steps), _jitter(rng, tail_ms, steps)
    hexe[:warmup] *= 5.0
    texe[:warmup] *= 5.0
    h_start, h_wait = np.zeros(steps, np.int64), np.zeros(steps)
    t_start, t_wait, t_end = np.zeros(steps, np.int64), np.zeros(steps), np.zeros(steps, np.int64)
    ms = 1_000_000
    clock = start_ns
    for i in range(steps):
        h_start[i] = clock
        ready = clock + int((read[i] + prep[i] + hexe[i] + put[i]) * ms)  # activation in the object store
        t_start[i] = t_end[i - 1] if i else h_start[0]  # the tail begins waiting for batch i
        t_wait[i] = max(ready - t_start[i], 0) / ms
        t_end[i] = t_start[i] + int((t_wait[i] + fetch[i] + texe[i]) * ms)
        free = t_end[i - 2] if i >= 2 else ready  # at most two batches in flight
        h_wait[i] = max(free - ready, 0) / ms
        clock = ready + int(h_wait[i] * ms)
    h_total = read + prep + hexe + put + h_wait
    hc = _step_cols(steps, warmup, head["batch_size"], h_start)
    hc.update(read_ms=read, prep_ms=prep, exec_ms=hexe, transfer_ms=put, wait_ms=h_wait, total_ms=h_total,
              frame_age_ms=h_total)  # capture → the head's hand-off
    nt = steps if tail_steps is None else tail_steps
    tc = _step_cols(steps, warmup, tail["batch_size"], t_start)
    tc.update(read_ms=np.full(steps, np.nan), prep_ms=np.full(steps, np.nan), exec_ms=texe, transfer_ms=fetch,
              wait_ms=t_wait, total_ms=t_wait + fetch + texe, frame_age_ms=(t_end - h_start) / ms)  # capture → result
    tc = {k: v[:nt] for k, v in tc.items()}
    return ActorRows(worker, head, hc), ActorRows(worker, tail, tc)


def write_actors(root: str | Path, run_id: str, actors: list[ActorRows], *, rows_per_file: int = 64,
                 schema: pa.Schema = FILE_SCHEMA) -> None:
    """Each actor's rows as files of ``rows_per_file`` rows (a worker's flushes). With an older
    ``schema`` the files are written as that rayprof version wrote them (the writer of today
    casts every batch to today's schema)."""
    writer = DatasetWriter(root, run_id)
    for a in actors:
        for seq, lo in enumerate(range(0, len(a), rows_per_file)):
            batch = a.batch(lo, min(lo + rows_per_file, len(a)), schema)
            if schema == FILE_SCHEMA:
                writer.write(a.worker, a.actor_id, batch)
            else:
                path = Path(writer.dir, f"worker={a.worker}", f"part-{a.actor_id}-{seq:06d}.parquet")
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.Table.from_batches([batch]), path)


def manifest(run_id: str, name: str, actors: list[ActorRows], *, status: str = "completed",
             duration_s: float | None = None) -> dict:
    """The fields of ``driver.Manifest`` the query layer reads (with the rest's shape)."""
    start = min(int(a.cols["t_start"][0]) for a in actors) / 1e9 - 2.0  # the driver starts before the steps
    iso = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")  # noqa: E731
    return {
        "manifest_version": 1, "run_id": run_id, "run_name": name, "status": status,
        "exit_code": None if status == "running" else int(status != "completed"),
        "started_at": iso(start), "ended_at": None if duration_s is None else iso(start + duration_s),
        "duration_s": duration_s, "launcher": "ray",
        "nodes": {a.identity["node_id"]: {"ip": a.identity["node_ip"]} for a in actors},
        "actors": {a.actor_id: {"plan": {"worker": a.worker, "replica": a.identity["replica"]},
                                "status": "running" if status == "running" else "completed"} for a in actors},
    }


def write_run(root: str | Path, run_id: str, actors: list[ActorRows], *, name: str | None = None,
              status: str | None = "completed", duration_s: float | None = 60.0, rows_per_file: int = 64,
              schema: pa.Schema = FILE_SCHEMA) -> str:
    """A run's files and (unless ``status`` is None) its manifest; returns the run id."""
    write_actors(root, run_id, actors, rows_per_file=rows_per_file, schema=schema)
    if status is not None:
        write_manifest(root, run_id, manifest(run_id, name or run_id.split("-")[0], actors, status=status,
                                              duration_s=duration_s))
    return run_id


# --------------------------------------------------------------------------- the standard dataset

FLEET = "fleet-20260101-000000-aaaa"
SPLIT = "split-20260101-010000-bbbb"
SWEEP = "sweep-20260101-020000-cccc"
OLD = "old-20260101-030000-dddd"
BARE = "bare-20260101-040000-eeee"
LIVE = "live-20260101-050000-ffff"

V1_SCHEMA = pa.schema([f for f in FILE_SCHEMA if f.name != "wait_ms"], metadata={"rayprof.schema_version": "1"})


def fleet_actors() -> list[ActorRows]:
    """``r18``: four replicas, two on node A and two on node B, whose exec is 60 % slower on B
    (a straggling node); ``r34``: three replicas on node A, replica 2's prep four times as long (a
    straggling actor); ``mnv3``: one replica whose exec drifts to twice as slow (unstable);
    ``sim``: two replicas on two simulated nodes sharing one IP. Replicas start 0.3 s apart."""
    start = lambda r: T0_NS + r * 300_000_000  # noqa: E731 - placement starts replicas one after another
    return [
        *(full_actor("r18", r, node=NODE_A if r < 2 else NODE_B, exec_ms=20.0 if r < 2 else 32.0, start_ns=start(r),
                     seed=r) for r in range(4)),
        *(full_actor("r34", r, model="resnet34", node=NODE_A, exec_ms=30.0, prep_ms=12.0 if r == 2 else 3.0,
                     start_ns=start(r), seed=10 + r) for r in range(3)),
        full_actor("mnv3", 0, model="mobilenet_v3_small", exec_ms=5.0, drift=2.0, node=NODE_B, seed=4),
        full_actor("sim", 0, node=SIM_1, seed=5), full_actor("sim", 1, node=SIM_2, start_ns=start(1), seed=6),
    ]


def split_actors(start_ns: int = T0_NS + HOUR_NS) -> list[ActorRows]:
    """``r50s``: a split pair whose tail stopped 10 batches early (the run was cut short);
    ``r50x``: a ``split`` worker (both halves in one process)."""
    head, tail = pair_actors("r50s", 0, steps=200, tail_steps=190, start_ns=start_ns, seed=7, node=NODE_A)
    return [head, tail, full_actor("r50x", 0, role="split", transfer_ms=1.2, steps=200, start_ns=start_ns, seed=8)]


def sweep_actors(start_ns: int = T0_NS + 2 * HOUR_NS) -> list[ActorRows]:
    """Split point sweep of one pair: layer2 then layer3 (points one after another)."""
    out: list[ActorRows] = []
    for i, (point, head_ms, tail_ms) in enumerate((("split=layer2", 5.0, 9.0), ("split=layer3", 9.0, 5.0))):
        out += pair_actors("r50s", 0, steps=150, start_ns=start_ns + i * 60 * 10**9, head_ms=head_ms,
                           tail_ms=tail_ms, sweep_point=point, seed=9 + i)
    return out


def fleet_dataset(root: str | Path) -> dict[str, list[ActorRows]]:
    """Write the standard test dataset under ``root``; returns each run's actors by run id."""
    runs = {
        FLEET: fleet_actors(),
        SPLIT: split_actors(),
        SWEEP: sweep_actors(),
        OLD: [full_actor("r18", 0, steps=120, start_ns=T0_NS + 3 * HOUR_NS, seed=11)],
        BARE: [full_actor("r18", 0, steps=120, start_ns=T0_NS + 4 * HOUR_NS, seed=12)],
        LIVE: [full_actor("r18", r, steps=100 + 20 * r, start_ns=T0_NS + 5 * HOUR_NS, seed=13 + r) for r in range(2)],
    }
    for run_id in (FLEET, SPLIT, SWEEP):
        write_run(root, run_id, runs[run_id])
    write_run(root, OLD, runs[OLD], schema=V1_SCHEMA)
    write_run(root, BARE, runs[BARE], status=None)
    write_run(root, LIVE, runs[LIVE], status="running", duration_s=None)
    live = Path(root) / f"run={LIVE}" / "worker=r18"  # a part being written: hidden until renamed
    (live / ".part-r18-0-999999.parquet.tmp").write_bytes(b"PAR1 half a file")
    return runs


def large_run(root: str | Path, rows: int, *, actors: int = 32, workers: int = 8, rows_per_file: int = 4096,
              run_id: str = "bench-20260101-000000-0000") -> str:
    """``rows`` rows of ``actors`` full actors (``workers`` workers, three nodes), written in files of
    ``rows_per_file`` rows (a worker's largest flush)."""
    per = rows // actors
    nodes = [(f"10.0.0.{i + 1}", f"{i + 1:02x}" * 28) for i in range(3)]
    fleet = [full_actor(f"w{a % workers}", a // workers, steps=per, node=nodes[a % 3], seed=a,
                        exec_ms=10.0 + a % workers) for a in range(actors)]
    write_actors(root, run_id, fleet, rows_per_file=rows_per_file)
    return run_id
