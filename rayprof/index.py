"""A run's summary index: what ``rayprof query`` needs, computed once when the run ends.

A summary of ten million rows cannot be both exact and fast if every query sorts the rows
again: exact percentiles of four stages cost more than a second on two cores with the values
already in memory. So when a run ends, :func:`build` sorts every stage of every actor's batches
once and stores them beside the dataset, in ``run=<id>/_index/``, as Arrow IPC files (a ``_``
folder that pyarrow's discovery skips, and no ``.parquet`` name for a ``**/*.parquet`` glob to
pick up as data):

``batches.arrow``
    One row per batch actor (a full or split actor, or a pair under its head's id) and warm-up
    flag: the actor's identity (the ``batches`` view's constant columns), ``n`` batches,
    ``frames``, ``t0``/``t1`` (first start, last end, ns), ``s_max`` (last step), and per stage
    ``<stage>_n``, ``<stage>_sum`` and ``<stage>_off`` (where its sorted values begin). Its
    metadata holds the index version, a build id, and the data files it covers (path in the
    run folder and size).
``values.arrow``
    Uncompressed, one record batch per stage: the sorted values of every actor and
    warm-up flag one after another. A local root memory-maps it: a percentile reads a few pages.
``tail.arrow``
    The last :data:`TAIL_STEPS` batches of each actor (step, warm-up, frames, start, end,
    ``total_ms``): the stability windows.
``catalogue.arrow``
    The per-actor catalogue the query module would otherwise read from each actor's first and
    last file.

:func:`load` returns the index only where it covers exactly the run's files (names and sizes),
so a run still being written, resumed, or changed by hand falls back to scanning the rows.
Percentiles of a group of actors come from their sorted arrays by bisection (:func:`quantiles`):
exact, the same numbers DuckDB's ``quantile_cont`` gives over the rows (``tests/unit/test_index``
compares every column). ``rayprof index ROOT`` builds the index of runs that ended without one.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc

from . import sink
from .metrics import IDENTITY_FIELDS

VERSION = "1"
FOLDER = "_index"
TAIL_STEPS = 300
"""Batches kept per actor for the stability windows: three windows of the largest default window."""
KEY_COLUMNS = ("run_id", "worker", *(f.name for f in IDENTITY_FIELDS), "tail_actor_id")
"""The ``batches`` columns that are constant per batch actor (plus ``node`` and ``tail_node``,
named at query time: a node's display name depends on the runs selected together)."""
_FILES = ("batches.arrow", "values.arrow", "tail.arrow", "catalogue.arrow")


@dataclass
class RunIndex:
    """A loaded index: the tables of the module docstring, ``values`` per stage (numpy, float64)."""

    run_id: str
    batches: pd.DataFrame
    values: dict[str, np.ndarray]
    tail: pd.DataFrame
    catalogue: pd.DataFrame

    @property
    def stages(self) -> list[str]:
        return list(self.values)


def build(root, run_id: str) -> str:
    """Write the run's index (replacing an older one); returns its folder. Reads the run once per
    stage through the query module's ``batches`` view, so the index holds what a scan would."""
    from .query import _END_NS, STAGES, Dataset

    ds = Dataset(root, run_id, use_index=False)
    fs, base, infos = sink._listing(root, run_id)
    run_path = sink._run_path(base, run_id)
    folder = posixpath.join(run_path, FOLDER)
    build_id = uuid.uuid4().hex
    stages = [s for s in STAGES if s in ds.stages]
    keys = ", ".join(KEY_COLUMNS)
    per_stage = "".join(f", count({s}_ms) AS {s}_n, sum({s}_ms) AS {s}_sum" for s in stages)
    batches = ds.con.sql(f"""SELECT {keys}, warmup, count(*) AS n, CAST(sum(frames) AS BIGINT) AS frames,
        min(epoch_ns(t_start)) AS t0, max({_END_NS}) AS t1, max(step) AS s_max{per_stage}
        FROM batches GROUP BY ALL""").df()
    batches = batches.sort_values(["actor_id", "warmup"], kind="stable").reset_index(drop=True)
    if batches.duplicated(["actor_id", "warmup"]).any():
        raise ValueError(f"run {run_id}: an actor's identity changes between its rows; the index needs it constant")

    try:
        out = pa.BufferOutputStream()
        meta = {"rayprof.index_version": VERSION, "rayprof.build_id": build_id}
        with ipc.new_file(out, pa.schema([pa.field("value", pa.float64())], metadata=meta)) as writer:
            for s in stages:
                batches[f"{s}_off"] = np.concatenate([[0], np.cumsum(batches[f"{s}_n"].to_numpy())[:-1]]).astype("int64")
                # sorted by actor and warm-up in the order of ``batches``, each stretch by value
                values = ds.con.sql(f"""SELECT {s}_ms FROM batches WHERE {s}_ms IS NOT NULL
                    ORDER BY actor_id, warmup, {s}_ms""").arrow().read_all().column(0).combine_chunks()
                if len(values) != batches[f"{s}_n"].sum():
                    raise ValueError(f"run {run_id}: {s}_ms changed while the index was built")
                writer.write_batch(pa.record_batch([values], names=["value"]))
        sink._put(fs, posixpath.join(folder, "values.arrow"), out.getvalue())

        ends = batches.groupby("actor_id", as_index=False)["s_max"].max()
        ds.con.register("_ends", ends)
        tail = ds.con.sql(f"""SELECT b.actor_id, b.step, b.warmup, b.frames, epoch_ns(b.t_start) AS t0,
                {_END_NS} AS t1, total_ms
            FROM batches AS b JOIN _ends AS e ON b.actor_id = e.actor_id
            WHERE b.step > e.s_max - {TAIL_STEPS} ORDER BY b.actor_id, b.step""").arrow().read_all()
        _write_arrow(fs, posixpath.join(folder, "tail.arrow"), tail, meta)
        _write_arrow(fs, posixpath.join(folder, "catalogue.arrow"), pa.Table.from_pandas(ds.actors), meta)
        covered = [[i.path[len(run_path):].lstrip("/"), i.size] for i in infos]
        table = pa.Table.from_pandas(batches, preserve_index=False)
        _write_arrow(fs, posixpath.join(folder, "batches.arrow"), table,  # last: the index is whole once it is there
                       {**meta, "rayprof.files": json.dumps(covered), "rayprof.stages": json.dumps(stages)})
    except BaseException:  # a full disk, a stop request: no half-built index is left behind
        _delete_dir_quietly(fs, folder)
        raise
    return folder


def _delete_dir_quietly(fs: pafs.FileSystem, folder: str) -> None:
    try:
        fs.delete_dir(folder)
    except OSError:  # never created, or the store refuses: a stale index is ignored anyway
        pass


def load(fs: pafs.FileSystem, base: str, run_id: str, infos: Sequence[pafs.FileInfo]) -> RunIndex | None:
    """The run's index if it covers exactly ``infos`` (the run's data files, from
    :func:`rayprof.sink._listing`); None where there is none, or it is stale or unreadable."""
    run_path = sink._run_path(base, run_id)
    folder = posixpath.join(run_path, FOLDER)
    try:
        batches_file = _open_arrow(fs, posixpath.join(folder, "batches.arrow")).read_all()
        meta = {k.decode(): v.decode() for k, v in (batches_file.schema.metadata or {}).items()}
        if meta.get("rayprof.index_version") != VERSION:
            return None
        files = [[i.path[len(run_path):].lstrip("/"), i.size] for i in infos]
        if json.loads(meta["rayprof.files"]) != files:
            return None  # rows were added, removed or rewritten since the index was built
        build_id, stages = meta["rayprof.build_id"], json.loads(meta["rayprof.stages"])
        values_file = _open_arrow(fs, posixpath.join(folder, "values.arrow"))
        tail, catalogue = (_open_arrow(fs, posixpath.join(folder, name)).read_all() for name in _FILES[2:])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None
    tables = (values_file, tail, catalogue)
    if any((t.schema.metadata or {}).get(b"rayprof.build_id") != build_id.encode() for t in tables):
        return None  # caught between two builds
    values = {s: values_file.get_batch(i).column(0).to_numpy() for i, s in enumerate(stages)}
    return RunIndex(run_id, batches_file.to_pandas(), values, tail.to_pandas(), catalogue.to_pandas())


def quantiles(arrays: Sequence[np.ndarray], qs: Sequence[float]) -> np.ndarray:
    """``quantile_cont`` (linear interpolation) at each of ``qs`` over the union of sorted
    ``arrays``, exactly, without merging them: the k-th smallest value is found by bisection
    over the values' bit patterns (order-preserving as unsigned integers), counting with
    ``searchsorted``. NaN for each q where the arrays are empty."""
    arrays = [a for a in arrays if len(a)]
    n = sum(len(a) for a in arrays)
    if not n:
        return np.full(len(qs), np.nan)
    pos = np.asarray(qs, dtype=float) * (n - 1)
    lo_rank, hi_rank = np.floor(pos).astype(np.int64), np.ceil(pos).astype(np.int64)
    ranks = np.concatenate([lo_rank, hi_rank])
    if len(arrays) == 1:
        found = arrays[0][ranks]
    else:
        found = _kth(arrays, ranks)
    lo, hi = found[: len(qs)], found[len(qs):]
    return lo + (pos - lo_rank) * (hi - lo)


def _kth(arrays: list[np.ndarray], ranks: np.ndarray) -> np.ndarray:
    """The ``ranks``-th smallest values (0-based) of the union of sorted float64 ``arrays``."""
    low = _ordered(np.array([min(a[0] for a in arrays)]))[0]
    high = _ordered(np.array([max(a[-1] for a in arrays)]))[0]
    lo, hi = np.full(len(ranks), low, np.uint64), np.full(len(ranks), high, np.uint64)
    while (lo < hi).any():  # at most 64 rounds: the smallest value with more than rank values <= it
        mid = lo + (hi - lo) // np.uint64(2)
        v = _unordered(mid)
        count = sum(np.searchsorted(a, v, side="right") for a in arrays)
        enough = count > ranks
        hi = np.where(enough, mid, hi)
        lo = np.where(enough, lo, mid + np.uint64(1))
    return _unordered(lo)


_SIGN = np.uint64(1 << 63)


def _ordered(x: np.ndarray) -> np.ndarray:
    """float64 → uint64 with the same order (sign bit flipped for positives, all bits for negatives)."""
    u = x.view(np.uint64)
    return np.where(u & _SIGN, ~u, u | _SIGN)


def _unordered(u: np.ndarray) -> np.ndarray:
    return np.where(u & _SIGN, u & ~_SIGN, ~u).view(np.float64)


def _write_arrow(fs: pafs.FileSystem, path: str, table: pa.Table, meta: dict[str, str]) -> None:
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in meta.items()}})
    out = pa.BufferOutputStream()
    with ipc.new_file(out, table.schema) as writer:
        writer.write_table(table)
    sink._put(fs, path, out.getvalue())


def _open_arrow(fs: pafs.FileSystem, path: str) -> ipc.RecordBatchFileReader:
    """An Arrow IPC file: memory-mapped on a local disk, read whole elsewhere."""
    if isinstance(fs, pafs.LocalFileSystem):
        return ipc.open_file(pa.memory_map(path))
    with fs.open_input_file(path) as f:
        return ipc.open_file(pa.py_buffer(f.read()))
