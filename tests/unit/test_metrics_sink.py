"""The schema, the row buffer, summaries with known answers, and the atomic dataset writer."""

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from rayprof.metrics import FILE_SCHEMA, SCHEMA_VERSION, STEP_FIELDS, RowBuffer, StepRecord, summarize
from rayprof.errors import UserError
from rayprof.sink import (DatasetWriter, answer_probe, dataset_files, dataset_stats, is_remote, read_manifest,
                          read_table, remove_probe, resolve_root, run_dir, write_manifest, write_probe)
from rayprof.source import mask_url

IDENT = dict(replica=0, actor_id="w-0", model="resnet18", mode="inference", role="full", batch_size=4,
             node_id="n1", cores="0-1", amp=False, compiled=False)
T0 = 1_700_000_000_000_000_000


def batch_of(steps, warmup=0, total=10.0, frames=4, ident=IDENT):
    buf = RowBuffer(ident)
    for s in steps:
        buf.append(StepRecord(step=s, warmup=s < warmup, t_start_ns=T0 + int(s * total * 1e6), read_ms=1.0,
                              prep_ms=2.0, exec_ms=total - 3.0, transfer_ms=None, total_ms=total, frames=frames))
    return buf.to_batch()


def test_schema_is_versioned_and_partition_free():
    assert FILE_SCHEMA.metadata[b"rayprof.schema_version"] == SCHEMA_VERSION.encode()
    names = FILE_SCHEMA.names
    assert "run_id" not in names and "worker" not in names and "run" not in names
    for col in ("replica", "actor_id", "pair_id", "node_id", "node_ip", "hostname", "pid", "gpu_name", "cores",
                "model", "mode", "role", "batch_size", "prep_level", "prep_device", "exec_device", "amp",
                "compiled", "sweep_point", "step", "warmup", "t_start", "read_ms", "prep_ms", "exec_ms",
                "transfer_ms", "total_ms", "frames", "dropped_frames", "frame_age_ms", "loss"):
        assert col in names
    assert FILE_SCHEMA.field("t_start").type == pa.timestamp("ns", tz="UTC")


def test_row_buffer_drains_and_validates_identity():
    b = batch_of(range(3))
    assert b.num_rows == 3 and b.schema == FILE_SCHEMA
    assert b.column("actor_id").to_pylist() == ["w-0"] * 3
    with pytest.raises(ValueError, match="lacks"):
        RowBuffer({"replica": 0})
    with pytest.raises(ValueError, match="unknown"):
        RowBuffer({**IDENT, "colour": "red"})


def test_a_row_is_a_step_record_or_a_plain_tuple_in_its_order():
    """The engine appends plain tuples; they make the same rows as StepRecords, and the buffer
    keeps taking rows after each drain."""
    assert StepRecord._fields == ("step", "warmup", "t_start_ns", *(f.name for f in STEP_FIELDS[3:]))
    named, plain = RowBuffer(IDENT), RowBuffer(IDENT)
    for drain in range(2):
        for s in range(3):
            values = (s, s == 0, T0 + s, 1.0, None, 3.0, None, 4.0, 4, 1, 2.5, None, 0.5)
            named.append(StepRecord(*values))
            plain.append(values)
        a, b = named.to_batch(), plain.to_batch()
        assert a.equals(b) and a.num_rows == 3 and len(plain) == 0
        assert b.column("dropped_frames").to_pylist() == [1] * 3 and b.column("prep_ms").null_count == 3
    empty = RowBuffer(IDENT).to_batch()
    assert empty.num_rows == 0 and empty.schema == FILE_SCHEMA


def test_summary_known_answers():
    # 100 steps of 10 ms, 4 frames each, back to back: 400 frames over exactly 1.0 s
    df = pa.Table.from_batches([batch_of(range(100))]).to_pandas()
    df["worker"] = "w"
    s = summarize(df).iloc[0]
    assert (s["steps"], s["frames"]) == (100, 400)
    assert s["fps"] == pytest.approx(400.0)
    assert s["total_p50"] == pytest.approx(10.0) and s["read_mean"] == pytest.approx(1.0)
    assert np.isnan(s["transfer_mean"])  # no split: no transfer stage


def test_summary_excludes_warmup_and_interpolates_percentiles():
    buf = RowBuffer(IDENT)
    for i, v in enumerate([1000.0] + [float(x) for x in range(1, 101)]):
        buf.append(StepRecord(step=i, warmup=i == 0, t_start_ns=T0 + i * 10**9, read_ms=v, prep_ms=0, exec_ms=0,
                              transfer_ms=None, total_ms=v, frames=1))
    df = pa.Table.from_batches([buf.to_batch()]).to_pandas()
    df["worker"] = "w"
    s = summarize(df).iloc[0]
    assert s["steps"] == 100
    assert s["read_p50"] == pytest.approx(50.5) and s["read_p99"] == pytest.approx(99.01)
    assert s["read_p999"] == pytest.approx(99.901)
    s_all = summarize(df, include_warmup=True).iloc[0]
    assert s_all["steps"] == 101 and s_all["read_mean"] > s["read_mean"]


def test_writer_partitions_and_every_reader(tmp_path):
    w = DatasetWriter(tmp_path, "run-1")
    w.write("alpha", "alpha-0", batch_of(range(0, 5)))
    w.write("alpha", "alpha-0", batch_of(range(5, 9)))
    w.write("beta", "beta-0", batch_of(range(3), ident={**IDENT, "actor_id": "beta-0"}))
    write_manifest(tmp_path, "run-1", {"status": "completed"})
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["run=run-1/_manifest.json", "run=run-1/worker=alpha/part-alpha-0-000000.parquet",
                     "run=run-1/worker=alpha/part-alpha-0-000001.parquet",
                     "run=run-1/worker=beta/part-beta-0-000000.parquet"]
    assert w.stats()["rows"] == 12 and w.stats()["files"] == 3
    t = read_table(tmp_path, "run-1")
    assert t.num_rows == 12 and set(t.column("worker").to_pylist()) == {"alpha", "beta"}
    assert set(t.column("run_id").to_pylist()) == {"run-1"}
    # pandas and pyarrow on the bare root (the manifest is skipped: it starts with '_')
    assert len(pd.read_parquet(tmp_path)) == 12
    assert pq.read_table(tmp_path).num_rows == 12
    con = duckdb.connect()
    n, = con.execute(f"SELECT count(*) FROM read_parquet('{tmp_path}/**/*.parquet', hive_partitioning=true) "
                     "WHERE worker = 'alpha' AND run = 'run-1'").fetchone()
    assert n == 9
    assert read_manifest(tmp_path, "run-1") == {"status": "completed"}


class _FailingRename(pafs.FSSpecHandler):
    """The local disk, except that a rename fails (a crash between write and rename)."""

    def move(self, src, dest):
        raise OSError("disk full")


def test_files_appear_whole_or_not_at_all(tmp_path):
    import fsspec

    fs = pafs.PyFileSystem(_FailingRename(fsspec.filesystem("file")))
    w = DatasetWriter(str(tmp_path), "r", filesystem=fs)
    with pytest.raises(OSError, match="disk full"):
        w.write("a", "a-0", batch_of(range(3)))
    with pytest.raises(OSError, match="disk full"):
        w.put_file("torch", "t.json", b"{}")
    # no partial file, not even the hidden temp one: readers see an empty, valid dataset
    assert list((tmp_path / "run=r" / "worker=a").iterdir()) == []
    assert list((tmp_path / "run=r" / "_profiles" / "torch").iterdir()) == []
    assert read_table(tmp_path, "r").num_rows == 0
    assert w.stats() == {"rows": 0, "files": 0, "bytes": 0}


def test_rewriting_a_sequence_number_replaces_the_file(tmp_path):
    w = DatasetWriter(tmp_path, "r")
    w.write("a", "a-0", batch_of(range(3)), seq=0)
    w.write("a", "a-0", batch_of(range(3)), seq=0)  # a re-delivered batch
    w.write("a", "a-0", batch_of(range(3, 5)))  # next free number
    t = read_table(tmp_path, "r")
    assert sorted(t.column("step").to_pylist()) == [0, 1, 2, 3, 4]
    assert w.stats()["rows"] == 5 and w.stats()["files"] == 2


def test_paths_cannot_escape_the_root(tmp_path):
    w = DatasetWriter(tmp_path / "out", "r")
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(ValueError, match="unsafe"):
            w.write(bad, "a-0", batch_of(range(1)))
    with pytest.raises(ValueError, match="unsafe"):
        DatasetWriter(tmp_path, "../../etc")
    assert not (tmp_path / "x").exists()


def test_manifest_write_is_atomic(tmp_path):
    write_manifest(tmp_path, "r", {"a": 1})
    write_manifest(tmp_path, "r", {"a": 2})
    d = tmp_path / "run=r"
    assert json.loads((d / "_manifest.json").read_text()) == {"a": 2}
    assert [p.name for p in d.iterdir()] == ["_manifest.json"]


def test_a_file_uri_root_is_the_same_dataset(tmp_path):
    """Everything works through a URI root (pyarrow's filesystems), not only through paths."""
    uri = f"file://{tmp_path}/out"
    w = DatasetWriter(uri, "r")
    w.write("a", "a-0", batch_of(range(4)))
    w.write("a", "a-0", batch_of(range(4, 6)))
    art = w.put_file("torch", "a-0.pt.trace.json.gz", b"trace")
    write_manifest(uri, "r", {"status": "completed"})
    assert read_manifest(uri, "r") == {"status": "completed"}
    assert sorted(read_table(uri, "r").column("step").to_pylist()) == list(range(6))
    assert dataset_files(uri, "r") == dataset_files(tmp_path / "out", "r")  # one dataset, two spellings
    assert len(dataset_files(uri)) == 2
    assert dataset_stats(uri, "r") == w.stats() and w.stats()["rows"] == 6
    assert (tmp_path / "out" / "run=r" / "_profiles" / "torch" / "a-0.pt.trace.json.gz").read_bytes() == b"trace"
    assert art.endswith("run=r/_profiles/torch/a-0.pt.trace.json.gz")
    assert run_dir(uri, "r") == f"file://{tmp_path}/out/run=r"
    assert not is_remote(uri) and is_remote("s3://b/p") and not is_remote(str(tmp_path))


def test_stats_come_from_the_files_as_written(tmp_path):
    w = DatasetWriter(tmp_path, "r")
    w.write("a", "a-0", batch_of(range(3)))
    w.write("b", "b-0", batch_of(range(5), ident={**IDENT, "actor_id": "b-0"}))
    w.put_file("torch", "x.json", b"{}")  # not part of the dataset
    write_manifest(tmp_path, "r", {})
    assert dataset_stats(tmp_path, "r") == w.stats() == {"rows": 8, "files": 2, "bytes": w.bytes}
    assert dataset_stats(tmp_path, "missing") == {"rows": 0, "files": 0, "bytes": 0}


def test_uri_credentials_stay_masked_and_in_place():
    uri = "s3://AKIDEXAMPLE:wJalrSECRET@bucket/runs?endpoint_override=127.0.0.1:9000&secret_key=wJalrSECRET"
    d = run_dir(uri, "r1")
    assert d.startswith("s3://AKIDEXAMPLE:wJalrSECRET@bucket/runs/run=r1?endpoint_override=")  # usable
    assert "SECRET" not in mask_url(d) and "run=r1" in mask_url(d)
    assert resolve_root(uri) == uri and resolve_root("relative") == str(Path("relative").resolve())
    with pytest.raises(UserError, match="output") as e:
        DatasetWriter("nosuchfs://AKIDEXAMPLE:wJalrSECRET@bucket/x", "r")
    assert "SECRET" not in e.value.message


def test_a_probe_is_seen_only_where_the_folder_is_shared(tmp_path):
    shared, elsewhere = tmp_path / "shared", tmp_path / "elsewhere"
    name = write_probe(str(shared))
    assert answer_probe(str(shared), name) == {}  # a node that sees the folder: finds it, writes beside it
    assert answer_probe(str(elsewhere), name) == {"problem": f"cannot see {elsewhere}"}  # its path is another folder
    (elsewhere / name).mkdir(parents=True)  # there, but not the probe file
    assert answer_probe(str(elsewhere), name)["problem"].startswith(f"cannot use {elsewhere} (")
    assert [p.name for p in shared.iterdir()] == [name]  # the answer was cleaned up
    remove_probe(str(shared), name)
    assert list(shared.iterdir()) == []
    assert read_table(shared).num_rows == 0
