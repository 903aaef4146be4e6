"""The Parquet dataset writer, and the one reader every other module uses.

Layout (hive partitions; the partition columns are not stored inside the files)::

    <root>/run=<run_id>/worker=<worker>/part-<actor_id>-<seq>.parquet
    <root>/run=<run_id>/_manifest.json
    <root>/run=<run_id>/_profiles/<kind>/<file>          (profiler traces, when asked for)

``root`` is a local (or shared) folder, or a URI that pyarrow's filesystems open
(``s3://bucket/prefix``, ``gs://…``, ``file:///…``; ``pyarrow.fs.FileSystem.from_uri``).
Every file appears whole or not at all, so pandas, pyarrow and DuckDB can read the dataset at
any moment, even while a run writes it: on filesystems with directories a file is written
under a hidden name (``.part-….parquet.tmp``) and renamed when complete; object stores have
no rename, but a PUT is atomic, so the final key is written directly (each file is one small
PUT: a batch holds at most a few thousand rows). The manifest starts with ``_`` so that
``pd.read_parquet(root)`` and ``pyarrow.dataset`` skip it (they ignore ``_``/``.`` names).
A file that cannot be written (a full disk, a read-only folder) is an :class:`OutputError`
that names it and the cause (``No space left on device (ENOSPC)``); its temporary file is
removed, and every file written before stays complete and readable.

Every path component that comes from a spec (run id, worker, actor, artifact names) is checked
by :func:`safe_component`, so nothing is written outside the root. Credentials in a URI
(``s3://KEY:SECRET@bucket``, ``?secret_key=…``) are never shown: pass any path that is
printed or stored through ``source.mask_url``.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import re
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import UserError
from .metrics import FILE_SCHEMA, PARTITIONING_SCHEMA
from .source import mask_text, mask_url

MANIFEST = "_manifest.json"
PROFILES = "_profiles"  # run=<id>/_profiles/<kind>/<file>: torch traces, nsys reports
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
OBJECT_STORES = frozenset({"s3", "gcs", "abfs"})  # pyarrow type names: no rename, an atomic PUT


def safe_component(value: str, what: str) -> str:
    """A path component that cannot escape its parent (no separators, no '..', no hidden names)."""
    if not _SAFE.match(value) or ".." in value:
        raise ValueError(f"unsafe {what} for a path component: {value!r}")
    return value


# --------------------------------------------------------------------------- roots


def is_uri(root: str | Path) -> bool:
    """``scheme://…`` (``s3://``, ``gs://``, ``file://``…) rather than a plain path."""
    return isinstance(root, str) and bool(_URI.match(root))


def is_remote(root: str | Path) -> bool:
    """A URI that does not name the local filesystem (``s3://…``; not ``file://``)."""
    return is_uri(root) and _URI.match(str(root)).group(1).lower() != "file"


def resolve_root(root: str | Path) -> str:
    """A URI as given; a path made absolute (workers on other nodes get the same string)."""
    return str(root) if is_uri(root) else str(Path(root).expanduser().resolve())


def open_root(root: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the root's path inside it. A URI that pyarrow cannot open is the
    user's ``output``: a :class:`UserError` with the credentials masked."""
    if not is_uri(root):
        return pafs.LocalFileSystem(), resolve_root(root)
    try:
        fs, path = pafs.FileSystem.from_uri(str(root))
    except (pa.ArrowException, ValueError) as e:
        raise UserError("output", mask_url(str(root)), f"cannot open it ({mask_text(str(e).splitlines()[0])})",
                        "use a folder, a shared path, or a URI like s3://bucket/prefix") from None
    if not path.strip("/"):
        raise UserError("output", mask_url(str(root)), "names no bucket or folder", "use a URI like s3://bucket/prefix")
    return fs, path.rstrip("/")


def run_dir(root: str | Path, run_id: str) -> str:
    """The run's folder (a path, or a URI keeping the root's query options). It may hold the
    root's credentials: show it through ``mask_url``."""
    if not is_uri(root):
        return _run_path(resolve_root(root), run_id)
    u = urlsplit(str(root))
    return urlunsplit(u._replace(path=_run_path(u.path or "/", run_id)))


def _run_path(base: str, run_id: str) -> str:
    return posixpath.join(base, f"run={safe_component(run_id, 'run id')}")


# --------------------------------------------------------------------------- atomic files


class OutputError(UserError, OSError):
    """A file of the dataset could not be written (disk full, read-only, no permission, a
    store refusing it): one line naming the file, the cause and the fix, like a
    :class:`UserError`, but the run's failure rather than a mistake in its input (exit code 1).
    Also an ``OSError``, so code that handles I/O errors (retries, probes) still does. What was
    written before stays whole: every file is written atomically."""

    exit_code = 1

    def __reduce__(self):  # pickled whole (through Ray): the constructor takes four arguments
        return type(self), (self.field, self.value, self.problem, self.fix)


def output_error(path: str, e: OSError, kept: str = "") -> OutputError:
    """``e``, raised writing ``path``, as an :class:`OutputError`: ``No space left on device
    (ENOSPC)`` where the OS said why, else its first line (credentials masked). ``kept``: what
    is left as it was, said after the cause."""
    if e.errno in errno.errorcode:
        cause = f"{os.strerror(e.errno)} ({errno.errorcode[e.errno]})"
    else:
        cause = mask_text(str(e).splitlines()[0] if str(e) else type(e).__name__)
    fix = ("free space there or choose another output (--output)" if e.errno in (errno.ENOSPC, errno.EDQUOT)
           else "make it writable or choose another output (--output)")
    return OutputError("output file", mask_url(path), f"cannot be written: {cause}{kept}", fix)


def _put(fs: pafs.FileSystem, path: str, data: bytes | pa.Buffer) -> None:
    """Store ``data`` at ``path`` so that readers see the whole file or none of it; a failure
    is an :class:`OutputError` and leaves no partial or temporary file."""
    try:
        _put_atomic(fs, path, data)
    except OSError as e:
        raise output_error(path, e) from e


def _put_atomic(fs: pafs.FileSystem, path: str, data: bytes | pa.Buffer) -> None:
    if fs.type_name in OBJECT_STORES:  # the object appears only when close() completes the upload
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    parent, name = posixpath.split(path)
    fs.create_dir(parent, recursive=True)
    tmp = posixpath.join(parent, f".{name}.tmp")
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)  # rename(2): replaces an existing file atomically
    except BaseException:
        _delete_quietly(fs, tmp)
        raise


def _delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except OSError:  # not there (never written), or already gone
        pass


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _read(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _parquet_bytes(table: pa.Table, compression: str) -> pa.Buffer:
    out = pa.BufferOutputStream()
    pq.write_table(table, out, compression=compression)
    return out.getvalue()


def _as_table(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    return table if table.schema == FILE_SCHEMA else table.cast(FILE_SCHEMA)


# --------------------------------------------------------------------------- the writer


class DatasetWriter:
    """Writes record batches as atomic Parquet files; thread-safe; holds no rows beyond the
    one file being written. ``filesystem`` overrides the one opened from ``root`` (``root`` is
    then a path inside it)."""

    def __init__(self, root: str | Path, run_id: str, compression: str = "zstd",
                 filesystem: pafs.FileSystem | None = None):
        self.fs, base = (filesystem, str(root)) if filesystem is not None else open_root(root)
        self.run_id = run_id
        self.dir = _run_path(base, run_id)
        if self.fs.type_name not in OBJECT_STORES:  # the run's folder exists from the start
            self.fs.create_dir(self.dir, recursive=True)
        self.compression = compression
        self._next: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self.rows = 0
        self.files = 0
        self.bytes = 0

    def write(self, worker: str, actor_id: str, batch: pa.RecordBatch | pa.Table, seq: int | None = None) -> str | None:
        """Write one batch of ``actor_id``'s rows to ``worker``'s partition as file ``seq``
        (the next free number if not given). Writing the same ``seq`` again replaces that file
        atomically, so a re-delivered batch is never counted twice. Returns the file's path
        inside the filesystem (None for an empty batch)."""
        if batch.num_rows == 0:
            return None
        key = (safe_component(worker, "worker name"), safe_component(actor_id, "actor id"))
        with self._lock:
            seq = self._next.get(key, 0) if seq is None else seq
            maybe_written = seq < self._next.get(key, 0)  # a re-delivery: only then look
            self._next[key] = max(seq + 1, self._next.get(key, 0))
        path = posixpath.join(self.dir, f"worker={key[0]}", f"part-{key[1]}-{seq:06d}.parquet")
        table = _as_table(batch)
        data = _parquet_bytes(table, self.compression)
        replaced = maybe_written and _exists(self.fs, path)
        _put(self.fs, path, data)
        if not replaced:
            with self._lock:
                self.rows += table.num_rows
                self.files += 1
                self.bytes += data.size
        return path

    def put_file(self, kind: str, name: str, data: bytes) -> str:
        """Store a profiler artifact (a torch trace, an nsys report) as
        ``run=<id>/_profiles/<kind>/<name>``, atomically; dataset readers skip ``_`` folders."""
        path = posixpath.join(self.dir, PROFILES, safe_component(kind, "artifact kind"),
                              safe_component(name, "artifact name"))
        _put(self.fs, path, data)
        return path

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"rows": self.rows, "files": self.files, "bytes": self.bytes}


# --------------------------------------------------------------------------- manifest


def write_manifest(root: str | Path, run_id: str, manifest: dict) -> str:
    """Write (or replace) the run's ``_manifest.json`` atomically; returns its path in the
    filesystem. If it cannot be written, the :class:`OutputError` says which version is kept
    (with no room even for the manifest, the last one written stays, e.g. one saying running)."""
    fs, base = open_root(root)
    path = posixpath.join(_run_path(base, run_id), MANIFEST)
    try:
        _put_atomic(fs, path, (json.dumps(manifest, indent=2, default=str) + "\n").encode())
    except OSError as e:
        raise output_error(path, e, kept=_kept_manifest(fs, path)) from e
    return path


def _kept_manifest(fs: pafs.FileSystem, path: str) -> str:
    """``; the manifest written before is kept (status 'running')``, or ``''`` if there is none."""
    try:
        status = json.loads(_read(fs, path)).get("status")
    except (OSError, ValueError):
        return ""
    return f"; the manifest written before is kept (status {status!r})"


def read_manifest(root: str | Path, run_id: str) -> dict:
    fs, base = open_root(root)
    return json.loads(_read(fs, posixpath.join(_run_path(base, run_id), MANIFEST)))


# --------------------------------------------------------------------------- readers


def _listing(root: str | Path, run_id: str | None) -> tuple[pafs.FileSystem, str, list[pafs.FileInfo]]:
    """The root's filesystem and path, and the dataset's files (of one run, or all), sorted;
    hidden and ``_`` names are skipped, as pyarrow's own discovery does."""
    fs, base = open_root(root)
    top = _run_path(base, run_id) if run_id else base
    selector = pafs.FileSelector(top, recursive=True, allow_not_found=True)
    infos = [i for i in fs.get_file_info(selector)
             if i.type == pafs.FileType.File and i.path.endswith(".parquet")
             and not any(part.startswith((".", "_")) for part in i.path[len(base):].lstrip("/").split("/"))]
    return fs, base, sorted(infos, key=lambda i: i.path)


def remove_actor_files(root: str | Path, run_id: str, actors: dict[str, str]) -> int:
    """Delete the dataset files of these actors (actor id → worker) in one run, before they run
    again (a resumed sweep): their new files would otherwise sit beside old ones. Returns how
    many files went."""
    fs, base, infos = _listing(root, run_id)
    run = _run_path(base, run_id)
    patterns = [re.compile(re.escape(posixpath.join(run, f"worker={w}", f"part-{a}-")) + r"\d{6}\.parquet$")
                for a, w in actors.items()]
    gone = [i.path for i in infos if any(p.match(i.path) for p in patterns)]
    for path in gone:
        fs.delete_file(path)
    return len(gone)


def run_folders(fs: pafs.FileSystem, base: str) -> list[str]:
    """The run ids of the ``run=<id>`` folders at ``base``, sorted (ids start with the name and
    the UTC start). A missing ``base`` raises FileNotFoundError."""
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=False))
    return sorted(i.base_name.removeprefix("run=") for i in infos
                  if i.type == pafs.FileType.Directory and i.base_name.startswith("run="))


def list_runs(root: str | Path) -> list[str]:
    """The run ids under ``root`` (see :func:`run_folders`)."""
    return run_folders(*open_root(root))


def dataset_files(root: str | Path, run_id: str | None = None) -> list[str]:
    """The dataset's Parquet files (paths inside the root's filesystem), sorted."""
    return [i.path for i in _listing(root, run_id)[2]]


def dataset_stats(root: str | Path, run_id: str) -> dict[str, int]:
    """Rows, files and bytes of one run as written (rows from the files' footers)."""
    fs, _, infos = _listing(root, run_id)
    rows = ds.dataset([i.path for i in infos], filesystem=fs, format="parquet").count_rows() if infos else 0
    return {"rows": rows, "files": len(infos), "bytes": sum(i.size for i in infos)}


def files_dataset(fs: pafs.FileSystem, base: str, paths: list[str]) -> ds.Dataset:
    """A pyarrow dataset of these files of the root at ``base`` (from :func:`_listing`): today's
    schema (a column a file lacks reads as null) plus the partition columns ``run`` and ``worker``."""
    part = ds.partitioning(PARTITIONING_SCHEMA, flavor="hive")
    schema = pa.unify_schemas([FILE_SCHEMA, PARTITIONING_SCHEMA])
    return ds.dataset(paths, schema=schema, format="parquet", partitioning=part, partition_base_dir=base,
                      filesystem=fs)


def read_table(
    root: str | Path, run_id: str | None = None, columns: Iterable[str] | None = None
) -> pa.Table:
    """The dataset (or one run of it) as a table with ``run_id`` and ``worker`` columns."""
    fs, base, infos = _listing(root, run_id)
    table = files_dataset(fs, base, [i.path for i in infos]).to_table(columns=list(columns) if columns else None)
    if "run" in table.column_names:
        table = table.rename_columns(["run_id" if c == "run" else c for c in table.column_names])
    return table


# --------------------------------------------------------------------------- can a node write here?


def write_probe(root: str | Path) -> str:
    """Put a hidden probe file at the root for other nodes to find (see :func:`answer_probe`);
    returns its name. Remove it with :func:`remove_probe`. Readers skip hidden names."""
    fs, base = open_root(root)
    name = f".rayprof-probe-{uuid.uuid4().hex}"
    _put(fs, posixpath.join(base, name), name.encode())
    return name


def answer_probe(root: str | Path, name: str) -> dict:
    """On another node: read the probe and write (then delete) a file beside it. ``{}`` when
    that works, else ``{"problem": "cannot see <root>"}`` or ``{"problem": "cannot use <root> (<error>)"}``
    (credentials masked)."""
    shown = mask_url(str(root))
    try:
        fs, base = open_root(root)
        path = posixpath.join(base, name)
        if not _exists(fs, path) or _read(fs, path) != name.encode():
            return {"problem": f"cannot see {shown}"}
        reply = f"{path}-{uuid.uuid4().hex}"
        _put(fs, reply, b"ok")
        fs.delete_file(reply)
    except OSError as e:
        return {"problem": f"cannot use {shown} ({mask_text(str(e).splitlines()[0])})"}
    return {}


def remove_probe(root: str | Path, name: str) -> None:
    fs, base = open_root(root)
    _delete_quietly(fs, posixpath.join(base, name))
