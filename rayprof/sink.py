"""The Parquet dataset writer, and the one reader every other module uses.

Layout (hive partitions; the partition columns are not stored inside the files)::

    <root>/run=<run_id>/worker=<worker>/part-<actor_id>-<seq>.parquet
    <root>/run=<run_id>/_manifest.json
    <root>/run=<run_id>/_profiles/<kind>/<file>          (profiler traces, when asked for)

Every file is written under a hidden name (``.part-….parquet.tmp``) and renamed when complete,
so pandas, pyarrow and DuckDB can read the dataset at any moment, even while a run writes it:
readers see only whole files. The manifest starts with ``_`` so that ``pd.read_parquet(root)``
and ``pyarrow.dataset`` skip it (they ignore ``_``/``.`` names by default).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .metrics import FILE_SCHEMA, PARTITIONING_SCHEMA

MANIFEST = "_manifest.json"
PROFILES = "_profiles"  # run=<id>/_profiles/<kind>/<file>: torch traces, nsys reports
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def safe_component(value: str, what: str) -> str:
    """A path component that cannot escape its parent (no separators, no '..', no hidden names)."""
    if not _SAFE.match(value) or ".." in value:
        raise ValueError(f"unsafe {what} for a path component: {value!r}")
    return value


def run_dir(root: str | os.PathLike, run_id: str) -> Path:
    return Path(root) / f"run={safe_component(run_id, 'run id')}"


def _inside(root: Path, path: Path) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ValueError(f"{path} is outside the output root {root}")
    return path


class DatasetWriter:
    """Writes record batches as atomic Parquet files; thread-safe; holds no rows in memory."""

    def __init__(self, root: str | os.PathLike, run_id: str, compression: str = "zstd"):
        self.root = Path(root)
        self.run_id = run_id
        self.dir = run_dir(self.root, run_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.compression = compression
        self._seq: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self.rows = 0
        self.files = 0
        self.bytes = 0

    def write(self, worker: str, actor_id: str, batch: pa.RecordBatch | pa.Table, seq: int | None = None) -> Path | None:
        """Write one batch of ``actor_id``'s rows to ``worker``'s partition as file ``seq``
        (the next free number if not given). Writing the same ``seq`` again replaces that file
        atomically, so a re-delivered batch is never counted twice."""
        if batch.num_rows == 0:
            return None
        if batch.schema != FILE_SCHEMA:
            batch = batch.cast(FILE_SCHEMA) if isinstance(batch, pa.Table) else pa.Table.from_batches([batch]).cast(FILE_SCHEMA)
        worker = safe_component(worker, "worker name")
        actor = safe_component(actor_id, "actor id")
        with self._lock:
            if seq is None:
                seq = self._seq.get((worker, actor), 0)
            self._seq[(worker, actor)] = max(seq + 1, self._seq.get((worker, actor), 0))
        part_dir = _inside(self.root, self.dir / f"worker={worker}")
        part_dir.mkdir(parents=True, exist_ok=True)
        final = part_dir / f"part-{actor}-{seq:06d}.parquet"
        tmp = part_dir / f".{final.name}.tmp"
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        replaced = final.exists()
        try:
            pq.write_table(table, tmp, compression=self.compression)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with self._lock:
            if not replaced:
                self.rows += table.num_rows
                self.files += 1
                self.bytes += final.stat().st_size
        return final

    def put_file(self, kind: str, name: str, data: bytes) -> Path:
        """Store a profiler artifact (a torch trace, an nsys report) as
        ``run=<id>/_profiles/<kind>/<name>``, atomically; dataset readers skip ``_`` folders."""
        d = _inside(self.root, self.dir / PROFILES / safe_component(kind, "artifact kind"))
        d.mkdir(parents=True, exist_ok=True)
        final = d / safe_component(name, "artifact name")
        tmp = d / f".{final.name}.tmp"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"rows": self.rows, "files": self.files, "bytes": self.bytes}


def write_json_atomic(path: Path, data: dict) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def write_manifest(root: str | os.PathLike, run_id: str, manifest: dict) -> Path:
    d = run_dir(root, run_id)
    d.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(d / MANIFEST, manifest)


def read_manifest(root: str | os.PathLike, run_id: str) -> dict:
    return json.loads((run_dir(root, run_id) / MANIFEST).read_text())


def dataset_files(root: str | os.PathLike, run_id: str | None = None) -> list[str]:
    base = run_dir(root, run_id) if run_id else Path(root)
    return sorted(str(p) for p in base.glob("**/*.parquet") if not p.name.startswith("."))


def read_table(
    root: str | os.PathLike, run_id: str | None = None, columns: Iterable[str] | None = None
) -> pa.Table:
    """The dataset (or one run of it) as a table with ``run_id`` and ``worker`` columns."""
    files = dataset_files(root, run_id)
    part = ds.partitioning(PARTITIONING_SCHEMA, flavor="hive")
    schema = pa.unify_schemas([FILE_SCHEMA, PARTITIONING_SCHEMA])
    dataset = ds.dataset(
        files, schema=schema, format="parquet", partitioning=part, partition_base_dir=str(root)
    )
    table = dataset.to_table(columns=list(columns) if columns else None)
    if "run" in table.column_names:
        table = table.rename_columns(["run_id" if c == "run" else c for c in table.column_names])
    return table
