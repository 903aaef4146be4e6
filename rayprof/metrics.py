"""The metrics schema (the one place that defines it), per-step rows, and summaries.

One row per executed step. Identity and configuration columns are constant for an actor and
kept once per buffer; a step's values are one tuple (a :class:`StepRecord`), so recording a step
is one list append. ``RowBuffer.to_batch()`` turns the tuples into an Arrow ``RecordBatch``
with :data:`FILE_SCHEMA`, column by column.

The partition columns ``run`` and ``worker`` live in the dataset's directory names, not in the
files; :func:`read_table` adds them back (``run`` as ``run_id``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

SCHEMA_VERSION = "3"  # 2: wait_ms and split_point (split models); 3: pipeline

_TS = pa.timestamp("ns", tz="UTC")

IDENTITY_FIELDS: list[pa.Field] = [
    pa.field("replica", pa.int32(), nullable=False),
    pa.field("actor_id", pa.string(), nullable=False),
    pa.field("pair_id", pa.string()),
    pa.field("node_id", pa.string()),
    pa.field("node_ip", pa.string()),
    pa.field("hostname", pa.string()),
    pa.field("pid", pa.int32()),
    pa.field("gpu_name", pa.string()),
    pa.field("cores", pa.string()),
    pa.field("model", pa.string(), nullable=False),
    pa.field("mode", pa.string(), nullable=False),
    pa.field("role", pa.string(), nullable=False),
    pa.field("batch_size", pa.int32(), nullable=False),
    pa.field("prep_level", pa.string()),
    pa.field("prep_device", pa.string()),
    pa.field("exec_device", pa.string()),
    pa.field("amp", pa.bool_()),
    pa.field("compiled", pa.bool_()),
    pa.field("sweep_point", pa.string()),
    pa.field("split_point", pa.string()),
    pa.field("pipeline", pa.string()),  # serial | overlap; null in files older than schema 3
]

STEP_FIELDS: list[pa.Field] = [
    pa.field("step", pa.int64(), nullable=False),
    pa.field("warmup", pa.bool_(), nullable=False),
    pa.field("t_start", _TS, nullable=False),
    pa.field("read_ms", pa.float64()),
    pa.field("prep_ms", pa.float64()),
    pa.field("exec_ms", pa.float64()),
    pa.field("transfer_ms", pa.float64()),
    pa.field("total_ms", pa.float64()),
    pa.field("frames", pa.int32(), nullable=False),
    pa.field("dropped_frames", pa.int32()),
    pa.field("frame_age_ms", pa.float64()),
    pa.field("loss", pa.float64()),
    pa.field("wait_ms", pa.float64()),
]

FILE_SCHEMA = pa.schema(
    IDENTITY_FIELDS + STEP_FIELDS, metadata={"rayprof.schema_version": SCHEMA_VERSION}
)
"""What every Parquet file holds (partition columns excluded)."""

PARTITION_FIELDS = [pa.field("run", pa.string()), pa.field("worker", pa.string())]
PARTITIONING_SCHEMA = pa.schema(PARTITION_FIELDS)

STAGES = ("read", "prep", "exec", "transfer", "wait", "total")
PERCENTILES = (50, 90, 95, 99, 99.9)


class StepRecord(NamedTuple):
    """The per-step values of one row, in :data:`STEP_FIELDS` order (identity comes from the
    buffer). A plain tuple in this order is the same row: the engine appends those, since
    building a named one costs more than the rest of recording a step."""

    step: int
    warmup: bool
    t_start_ns: int
    read_ms: float | None
    prep_ms: float | None
    exec_ms: float | None
    transfer_ms: float | None
    total_ms: float | None
    frames: int
    dropped_frames: int = 0
    frame_age_ms: float | None = None
    loss: float | None = None
    wait_ms: float | None = None


class RowBuffer:
    """Accumulates one actor's rows; ``to_batch()`` drains them into a RecordBatch.

    ``append(row)`` takes a :class:`StepRecord` or a plain tuple of its values in its order."""

    def __init__(self, identity: dict[str, object]):
        missing = {f.name for f in IDENTITY_FIELDS if not f.nullable} - identity.keys()
        if missing:
            raise ValueError(f"identity lacks {sorted(missing)}")
        unknown = identity.keys() - {f.name for f in IDENTITY_FIELDS}
        if unknown:
            raise ValueError(f"unknown identity columns {sorted(unknown)}")
        self.identity = dict(identity)
        self._identity = [pa.scalar(identity.get(f.name), type=f.type) for f in IDENTITY_FIELDS]
        self._rows: list[tuple] = []
        self.append = self._rows.append  # the list's own append: the hot path calls it once a step

    def __len__(self) -> int:
        return len(self._rows)

    def to_batch(self) -> pa.RecordBatch:
        """All buffered rows as one RecordBatch with FILE_SCHEMA; the buffer is emptied."""
        n = len(self._rows)
        columns = zip(*self._rows) if n else [()] * len(STEP_FIELDS)  # rows → columns
        arrays = [pa.repeat(value, n) for value in self._identity]
        arrays += [pa.array(col, type=f.type) for f, col in zip(STEP_FIELDS, columns, strict=True)]
        self._rows.clear()  # in place: ``append`` stays bound to it
        return pa.RecordBatch.from_arrays(arrays, schema=FILE_SCHEMA)


# --------------------------------------------------------------------------- summaries


def _percentile_cols(stage: str) -> list[str]:
    return [f"{stage}_mean"] + [f"{stage}_p{_pname(p)}" for p in PERCENTILES]


def _pname(p: float) -> str:
    return f"{p:g}".replace(".", "")  # 99.9 -> "999", 50 -> "50"


def summarize(
    df: pd.DataFrame,
    by: Sequence[str] = ("worker",),
    include_warmup: bool = False,
    stages: Iterable[str] = STAGES,
) -> pd.DataFrame:
    """Per group: steps, frames, throughput and latency statistics of every stage.

    - ``steps``/``frames``: rows and frames counted (warm-up excluded unless asked).
    - ``fps``: frames over the group's wall-clock span, from the first counted step's start to
      the last one's end, so parallel replicas add up and idle gaps count against it.
    - ``<stage>_mean`` and ``<stage>_p50 … _p999`` in milliseconds (linear interpolation, like
      numpy and DuckDB's ``quantile_cont``); a stage with no values is NaN.
    """
    by = list(by)
    if not include_warmup and "warmup" in df:
        df = df[~df["warmup"].astype(bool)]
    stages = [s for s in stages if f"{s}_ms" in df]
    out_cols = by + ["steps", "frames", "fps"] + [c for s in stages for c in _percentile_cols(s)]
    if df.empty:
        return pd.DataFrame(columns=out_cols)
    rows = []
    for key, g in df.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        start_ns = g["t_start"].astype("int64")
        end_ns = start_ns + (g["total_ms"].fillna(0.0) * 1e6).astype("int64")
        span_s = (end_ns.max() - start_ns.min()) / 1e9
        frames = int(g["frames"].sum())
        row: dict[str, object] = dict(zip(by, key))
        row.update(steps=len(g), frames=frames, fps=frames / span_s if span_s > 0 else float("nan"))
        for s in stages:
            values = g[f"{s}_ms"].dropna().to_numpy(dtype=float)
            stats = _stats(values)
            row.update(zip(_percentile_cols(s), stats))
        rows.append(row)
    return pd.DataFrame(rows, columns=out_cols)


def concurrent_fps(df: pd.DataFrame) -> float:
    """Frames per second of a group of actors while all of them were running: over the window
    from the last actor's first step start to the first actor's last step end, each step
    counting the share of its frames that falls inside (a uniform rate within a step). Actors
    that start seconds apart (a cold worker process on another node) would otherwise stretch
    the span and understate what they sustain together. With one actor, or none overlapping,
    it is frames over the span, as in :func:`summarize`."""
    if df.empty:
        return float("nan")
    start = df["t_start"].astype("int64").to_numpy()
    end = start + (df["total_ms"].fillna(0.0).to_numpy() * 1e6).astype("int64")
    frames = df["frames"].to_numpy(dtype=float)
    spans = pd.DataFrame({"actor": df["actor_id"].to_numpy(), "start": start, "end": end}).groupby("actor")
    t0, t1 = spans["start"].min().max(), spans["end"].max().min()
    if t1 <= t0:
        t0, t1 = start.min(), end.max()
    if t1 <= t0:
        return float("nan")
    overlap = np.clip(np.minimum(end, t1) - np.maximum(start, t0), 0, None)
    share = np.divide(overlap, end - start, out=(overlap > 0).astype(float), where=end > start)
    return float((frames * share).sum() / ((t1 - t0) / 1e9))


def _stats(values: np.ndarray) -> list[float]:
    if values.size == 0:
        return [float("nan")] * (1 + len(PERCENTILES))
    return [float(values.mean())] + [float(v) for v in np.percentile(values, PERCENTILES)]


# --------------------------------------------------------------------------- split pairs

#: batch columns (see :func:`batches`) → the stage names the final table shows
BATCH_STAGES = {"read": "read", "prep": "prep", "wait": "wait", "exec": "exec", "head": "exec (head)",
                "head_wait": "wait (head)",
                "transfer": "transfer", "queue": "queue", "tail_wait": "wait (tail)", "tail": "exec (tail)",
                "total": "total"}


def batches(df: pd.DataFrame) -> pd.DataFrame:
    """One row per batch, end to end, whatever ran it.

    Rows of role ``full`` and ``split`` are batches already (``split``: ``exec_ms`` is both
    halves, ``transfer_ms`` the move between devices). A pair's ``head`` and ``tail`` rows are
    joined on (run, pair, sweep point, step): ``head_ms``/``tail_ms`` are the halves' compute,
    ``transfer_ms`` is both sides of the transfer (the head's serialise/put plus the tail's
    fetch/deserialise/copy), ``head_wait_ms`` the head blocked on a full window (the tail is
    behind), ``queue_ms`` the batch waiting in the tail's inbox while the tail finished earlier
    ones (from the head's hand-off to the tail taking it), ``tail_wait_ms`` the tail idle (the
    head is behind), and ``total_ms`` the end-to-end latency from the head's step start to the
    tail's end: about head + queue + the tail's transfer and exec (wall clocks: across nodes
    it is as good as their clock sync). ``frame_age_ms`` and ``loss`` are the tail's (capture to
    result; the tail trains). ``t_start`` is the head's, so :func:`summarize` over
    these rows gives the pair's throughput of finished batches. A head row without its tail
    row (a run cut short) is left out.
    """
    if df.empty:
        return df.assign(head_ms=[], tail_ms=[], head_wait_ms=[], queue_ms=[], tail_wait_ms=[])
    role = df["role"]
    whole = df[~role.isin(["head", "tail"])].assign(head_ms=np.nan, tail_ms=np.nan, head_wait_ms=np.nan,
                                                       queue_ms=np.nan, tail_wait_ms=np.nan)
    head, tail = df[role == "head"], df[role == "tail"]
    if head.empty or tail.empty:
        return whole
    keys = [k for k in ("run_id", "pair_id", "sweep_point", "step") if k in df]
    cols = keys + ["t_start", "total_ms", "exec_ms", "transfer_ms", "wait_ms", "frames", "frame_age_ms", "loss",
                   "node_ip", "node_id"]
    joined = head.merge(tail[[c for c in cols if c in tail]], on=keys, how="inner", suffixes=("", "_tail"))
    start_ns, tail_ns = joined["t_start"].astype("int64"), joined["t_start_tail"].astype("int64")
    end_ns = tail_ns + (joined["total_ms_tail"] * 1e6).astype("int64")
    handed_ms = (start_ns - tail_ns) / 1e6 + joined["total_ms"]  # the head's hand-off, in ms after the tail began waiting
    pairs = joined.assign(
        role="pair", head_ms=joined["exec_ms"], tail_ms=joined["exec_ms_tail"], exec_ms=np.nan,
        transfer_ms=joined["transfer_ms"].fillna(0) + joined["transfer_ms_tail"].fillna(0),
        head_wait_ms=joined["wait_ms"], tail_wait_ms=joined["wait_ms_tail"], wait_ms=np.nan,
        queue_ms=(joined["wait_ms_tail"].fillna(0) - handed_ms).clip(lower=0),
        total_ms=(end_ns - start_ns) / 1e6,
        frames=joined["frames_tail"],
        **{c: joined[f"{c}_tail"] for c in ("frame_age_ms", "loss") if f"{c}_tail" in joined})  # the tail's
    pairs = pairs[[c for c in whole.columns if c in pairs]]
    return pd.concat([whole, pairs], ignore_index=True) if not whole.empty else pairs.reset_index(drop=True)


def sweep_verdicts(summary: pd.DataFrame, sweeping: Iterable[str]) -> list[dict]:
    """For each worker in ``sweeping``, the split point with the lowest median end-to-end
    latency and the one with the highest throughput, from a per (worker, split point) summary
    of :func:`batches`."""
    out = []
    for worker in sweeping:
        rows = summary[summary["worker"] == worker].dropna(subset=["total_p50"])
        if len(rows) < 2:
            continue
        fast, busy = rows.loc[rows["total_p50"].idxmin()], rows.loc[rows["fps"].idxmax()]
        out.append({"worker": worker, "lowest_latency": fast["point"], "latency_p50_ms": float(fast["total_p50"]),
                    "highest_throughput": busy["point"], "fps": float(busy["fps"])})
    return out
