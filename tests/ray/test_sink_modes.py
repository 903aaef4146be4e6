"""Both sink modes on one shared local Ray: the same rows either way and a manifest that says
which mode ran; direct writes to a real S3 server on 127.0.0.1 (moto); the direct-mode probe;
the direct emitter's window and retry."""

import logging
import pickle
import threading

import pyarrow.fs as pafs
import pytest

ray = pytest.importorskip("ray")

from ray.exceptions import RayActorError, RayTaskError  # noqa: E402

from rayprof import fleet  # noqa: E402
from rayprof.errors import UserError  # noqa: E402
from rayprof.fleet import _sink as fleet_sink  # noqa: E402
from rayprof.fleet._sink import (DirectEmitter, SinkEmitter, check_direct_output, nodes_to_probe,  # noqa: E402
                                 probe_nodes, resolve_mode)
from rayprof.sink import DatasetWriter, dataset_files, dataset_stats, read_manifest, read_table  # noqa: E402
from rayprof.spec import parse_fleet  # noqa: E402

from ..unit.fakes import make_plan  # noqa: E402
from ..unit.test_metrics_sink import batch_of  # noqa: E402
from .test_fleet import only_run, spec_for  # noqa: E402

SECRET = "wJalrXUtnFEMI-SECRET"


@pytest.fixture(scope="module")
def s3_root():
    """A bucket on a moto S3 server on 127.0.0.1, as a URI with credentials and endpoint in it."""
    server = pytest.importorskip("moto.server", reason="moto[server] (the test extra) is not installed")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    srv = server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    _, port = srv.get_host_and_port()
    pafs.S3FileSystem(access_key="AKIDTEST", secret_key=SECRET, endpoint_override=f"127.0.0.1:{port}", scheme="http",
                      region="us-east-1", allow_bucket_creation=True).create_dir("rayprof")
    yield f"s3://AKIDTEST:{SECRET}@rayprof/runs?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    srv.stop()


def _rows_per_actor(root, run_id) -> dict[str, list[int]]:
    df = read_table(root, run_id).to_pandas()
    return {aid: sorted(g.step) for aid, g in df.groupby("actor_id")}


def test_driver_and_direct_modes_write_the_same_rows(local_ray, small_video, tmp_path):
    counts = {}
    for mode in ("driver", "direct"):
        out = tmp_path / mode
        spec = spec_for(small_video, out, [{"name": "a", "cores": "0"}, {"name": "b", "cores": "1", "max_steps": 5}],
                        sink=mode)
        assert fleet.submit(spec) == 0
        run_id = only_run(out)
        man = read_manifest(out, run_id)
        assert man["dataset"]["sink"] == mode and man["status"] == "completed"
        rows = _rows_per_actor(out, run_id)
        for aid, actor in man["actors"].items():  # exactly one row per executed step
            assert rows[aid] == list(range(actor["steps"])), (mode, aid)
        assert man["dataset_stats"]["rows"] == sum(map(len, rows.values())) == dataset_stats(out, run_id)["rows"]
        assert not [p for p in out.rglob(".*")], "a hidden temp file was left behind"
        counts[mode] = {aid: len(steps) for aid, steps in rows.items()}
    assert counts["driver"] == counts["direct"] == {"a-0": 6, "b-0": 5}


def test_direct_writes_to_s3_without_showing_the_secret(local_ray, small_video, s3_root, tmp_path, capsys):
    spec = spec_for(small_video, s3_root, [{"name": "cam", "cores": "0"}])
    assert resolve_mode(spec) == "direct"  # auto: an object store is written directly
    assert fleet.submit(spec) == 0
    (run_dir,) = {f.split("/run=")[1].split("/")[0] for f in dataset_files(s3_root)}
    man = read_manifest(s3_root, run_dir)
    assert man["dataset"]["sink"] == "direct" and man["status"] == "completed"
    assert _rows_per_actor(s3_root, run_dir) == {"cam-0": list(range(6))}
    assert man["dataset_stats"]["rows"] == 6
    fs, base = pafs.FileSystem.from_uri(s3_root)
    keys = [i.path for i in fs.get_file_info(pafs.FileSelector(base, recursive=True)) if i.type == pafs.FileType.File]
    assert not [k for k in keys if "/." in k], "object stores get the final key directly, no temp objects"
    manifest_text = fs.open_input_stream(f"{base}/run={run_dir}/_manifest.json").read().decode()
    captured = capsys.readouterr()
    assert SECRET not in manifest_text + captured.out + captured.err
    assert "AKIDTEST:***@rayprof/runs/run=" in man["dataset"]["path"]


def test_s3_writer_round_trip(s3_root):
    w = DatasetWriter(s3_root, "unit")
    w.write("a", "a-0", batch_of(range(3)), seq=0)
    w.write("a", "a-0", batch_of(range(3)), seq=0)  # a re-delivery replaces the object
    w.write("a", "a-0", batch_of(range(3, 7)))
    w.put_file("torch", "a-0.json", b"{}")
    assert sorted(read_table(s3_root, "unit").column("step").to_pylist()) == list(range(7))
    assert dataset_stats(s3_root, "unit") == w.stats() and w.stats()["files"] == 2


def test_direct_mode_needs_every_node_to_see_the_output(local_ray, tmp_path):
    shared = tmp_path / "shared"
    here = ray.get_runtime_context().get_node_id()
    check_direct_output(str(shared), {here: "10.0.0.9"})  # a real task on the node: it sees the folder
    assert list(shared.iterdir()) == []  # the probe is gone

    def elsewhere(root, name, node_ids):  # the node's path is another folder: nothing shared
        return probe_nodes(str(tmp_path / "elsewhere"), name, node_ids)

    with pytest.raises(UserError, match=r"sink = 'direct': node 10.0.0.9 cannot see .*elsewhere; use a shared path"):
        check_direct_output(str(shared), {here: "10.0.0.9"}, probe=elsewhere)
    assert list(shared.iterdir()) == []


def test_only_nodes_other_than_the_drivers_are_probed():
    labels = {"n1": "10.0.0.1", "n2": "10.0.0.2", "n3": "10.0.0.3"}
    placed = [make_plan(node_id="n1"), make_plan(node_id="n2")]
    assert nodes_to_probe(placed, labels, here="n1") == {"n2": "10.0.0.2"}
    assert nodes_to_probe(placed + [make_plan(node_id=None)], labels, here="n1") == {"n2": "10.0.0.2", "n3": "10.0.0.3"}


def test_auto_mode_is_direct_only_for_object_stores(tmp_path):
    def mode(**top):
        worker = {"name": "w", "model": "resnet18", "source": "synthetic"}
        return resolve_mode(parse_fleet({"workers": [worker], **top}))

    assert mode(output=str(tmp_path)) == "driver"
    assert mode(output=f"file://{tmp_path}") == "driver"
    assert mode(output="s3://bucket/runs") == "direct"
    assert mode(output="s3://bucket/runs", sink="driver") == "driver"
    assert mode(output=str(tmp_path), sink="direct") == "direct"


class _GatedWriter:
    """A DatasetWriter whose writes wait for a gate, and whose first ack is lost once."""

    def __init__(self, inner: DatasetWriter, lose_first_ack: bool = False):
        self.inner, self.gate, self.lose = inner, threading.Event(), lose_first_ack
        self.calls: list[int] = []

    def write(self, worker, actor_id, batch, seq):
        self.gate.wait()
        self.calls.append(seq)
        path = self.inner.write(worker, actor_id, batch, seq)
        if self.lose:
            self.lose = False
            raise OSError("connection reset after the write")  # written, but not acknowledged
        return path


def test_direct_emitter_is_bounded_and_writes_each_row_once(tmp_path):
    e = pickle.loads(pickle.dumps(DirectEmitter(str(tmp_path), "r", "w", "w-0", window=2)))  # lazy: picklable
    writer = _GatedWriter(DatasetWriter(tmp_path, "r"), lose_first_ack=True)
    e._dataset = writer
    e(batch_of(range(0, 3)))
    e(batch_of(range(3, 6)))  # two unacknowledged: both calls return at once
    third = threading.Thread(target=e, args=(batch_of(range(6, 9)),))
    third.start()
    third.join(timeout=0.5)
    assert third.is_alive(), "a third batch must wait for the oldest (back-pressure)"
    writer.gate.set()
    third.join()
    e.drain()
    assert writer.calls == [0, 1, 2, 0]  # the unacknowledged seq 0 was sent again, not duplicated
    assert e.rows == 9 and writer.inner.stats()["rows"] == 9
    assert sorted(read_table(tmp_path, "r").column("step").to_pylist()) == list(range(9))


class _DyingSink:
    """Stands in for the sink actor's handle: each ``write`` fails with ``error`` while
    ``failures`` lasts, then writes to a real DatasetWriter (as Ray's restarted actor would)."""

    def __init__(self, writer: DatasetWriter, error: Exception, failures: int):
        self.writer, self.error, self.failures, self.calls = writer, error, failures, []

    def send(self, emitter, seq, batch):
        self.calls.append(seq)
        if self.failures:
            self.failures -= 1
            return self.error
        return self.writer.write(emitter.worker, emitter.actor_id, batch, seq)


def _emitter_on(sink: _DyingSink, monkeypatch) -> SinkEmitter:
    e = SinkEmitter(None, "w", "w-0", window=1)
    monkeypatch.setattr(e, "_send", lambda seq, batch: sink.send(e, seq, batch))
    monkeypatch.setattr(e, "_wait", lambda h: (_ for _ in ()).throw(h) if isinstance(h, Exception) else h)
    monkeypatch.setattr(fleet_sink.time, "sleep", lambda s: None)
    return e


def test_a_worker_resends_to_a_restarting_sink_until_it_takes_the_batch(tmp_path, monkeypatch):
    sink = _DyingSink(DatasetWriter(tmp_path, "r"), RayActorError(), failures=5)
    e = _emitter_on(sink, monkeypatch)
    e(batch_of(range(0, 3)))
    e(batch_of(range(3, 6)))
    e.drain()
    assert sink.calls == [0, 1, 0, 0, 0, 0, 1]  # both in flight when it died; each sent until taken
    assert e.resends == 5 and e.rows == 6
    assert sorted(read_table(tmp_path, "r").column("step").to_pylist()) == list(range(6))  # each row once


def test_a_worker_gives_up_on_a_sink_that_stays_down_or_keeps_failing(tmp_path, monkeypatch):
    down = _DyingSink(DatasetWriter(tmp_path, "r"), RayActorError(), failures=10**6)
    e = _emitter_on(down, monkeypatch)
    monkeypatch.setattr(fleet_sink, "SINK_RESTART_WAIT_S", 0.0)  # no patience left after the first resend
    e(batch_of(range(0, 3)))
    with pytest.raises(RayActorError):
        e.drain()
    assert down.calls == [0, 0]
    broken = _DyingSink(DatasetWriter(tmp_path, "q"), RayTaskError("write", "", OSError("disk full")), failures=10**6)
    e = _emitter_on(broken, monkeypatch)
    e(batch_of(range(0, 3)))
    with pytest.raises(RayTaskError):  # not a restart: resent once only
        e.drain()
    assert broken.calls == [0, 0] and e.rows == 0
