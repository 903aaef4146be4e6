"""The fleet on one shared local Ray: actors, the sink, the manifest, failures, exit codes."""

import json
import os
import signal
import socket
import threading
import time

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from rayprof import fleet  # noqa: E402
from rayprof.sink import read_manifest, read_table  # noqa: E402
from rayprof.spec import parse_fleet  # noqa: E402


def spec_for(video, output, workers, **top):
    defaults = {"source": {"uri": str(video), "loop": True}, "model": "mobilenet_v3_small",
                "prep": {"level": "simple", "size": 64}, "batch_size": 4, "max_steps": 6, "warmup_steps": 2,
                "device": "cpu"}
    return parse_fleet({"run": "t", "output": str(output), "flush_interval_s": 0.2, "defaults": defaults,
                        "workers": workers, **top})


def actor_pid(suffix: str) -> int:
    """The process id of the run's named actor whose name ends with ``suffix``."""
    (name,) = [n for n in ray.util.list_named_actors() if n.endswith(suffix)]
    return ray.get(ray.get_actor(name).__ray_call__.remote(lambda self: os.getpid()), timeout=60)


def only_run(root):
    (run_dir,) = [p for p in root.iterdir() if p.name.startswith("run=")]
    return run_dir.name.removeprefix("run=")


def test_fleet_writes_one_row_per_step_per_actor(local_ray, small_video, tmp_path):
    spec = spec_for(small_video, tmp_path, [
        {"name": "mnv3", "replicas": 2, "cores": "0"},
        {"name": "retrain", "mode": "retrain", "model": {"name": "mobilenet_v3_small", "num_classes": 3},
         "prep": "complex", "cores": "1", "max_steps": 5},
    ])
    assert fleet.submit(spec) == 0
    run_id = only_run(tmp_path)
    df = read_table(tmp_path, run_id).to_pandas()
    man = read_manifest(tmp_path, run_id)
    assert man["status"] == "completed" and man["exit_code"] == 0
    assert set(man["actors"]) == {"mnv3-0", "mnv3-1", "retrain-0"}
    for aid, actor in man["actors"].items():
        assert actor["status"] == "completed", actor
        rows = df[df.actor_id == aid]
        # exactly one row per executed step
        assert sorted(rows.step) == list(range(actor["steps"]))
        assert actor["steps"] == (5 if aid == "retrain-0" else 6)
        # pinned inside the actor process, not the driver's
        assert set(rows.pid) != {os.getpid()}
        assert rows.cores.iloc[0] == ("1" if aid == "retrain-0" else "0")
        assert actor["identity"]["cores"] == rows.cores.iloc[0]
    assert df[df.worker == "retrain"].loss.notna().all()
    assert df[df.worker == "mnv3"].loss.isna().all()
    assert df.warmup.sum() == 3 * 2
    # every column of the schema, no nulls where a value is always known
    for col in ("run_id", "worker", "node_id", "node_ip", "hostname", "t_start", "read_ms", "prep_ms", "exec_ms",
                "total_ms", "frames", "frame_age_ms"):
        assert df[col].notna().all(), col
    assert (df.frames == 4).all()
    assert man["nodes"] and all("cpu_model" in n for n in man["nodes"].values())
    # start-up, in seconds since submit; an actor's first step is its earliest row's t_start
    t = man["timings"]
    submitted = pd.Timestamp(t["submitted_at"]).timestamp()
    for aid, actor in man["actors"].items():
        assert actor["first_step_s"] == pytest.approx(df[df.actor_id == aid].t_start.min().timestamp() - submitted,
                                                      abs=2e-3)
    assert 0 <= t["ray_ready_s"] <= t["actors_created_s"] <= t["submit_to_first_step_s"]
    assert t["submit_to_first_step_s"] == min(a["first_step_s"] for a in man["actors"].values())


def test_a_failed_actor_is_named_and_the_others_finish(local_ray, small_video, tmp_path, capsys):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = spec_for(small_video, tmp_path, [
        {"name": "good", "max_steps": 4},
        {"name": "dead-stream", "source": {"uri": f"http://user:secret@127.0.0.1:{port}/live",
                                           "open_timeout_s": 1, "reconnect_s": 0}},
    ])
    assert fleet.submit(spec) == 1
    captured = capsys.readouterr()
    assert "dead-stream-0 failed:" in captured.err
    assert any(line.split()[:2] == ["dead-stream", "failed"] for line in captured.out.splitlines())  # in the table
    assert "secret" not in captured.out + captured.err
    run_id = only_run(tmp_path)
    man = read_manifest(tmp_path, run_id)
    assert man["status"] == "failed" and man["exit_code"] == 1
    assert man["actors"]["good-0"]["status"] == "completed"
    bad = man["actors"]["dead-stream-0"]
    assert bad["status"] == "failed" and bad["error"]
    assert "secret" not in (tmp_path / f"run={run_id}" / "_manifest.json").read_text()
    df = read_table(tmp_path, run_id).to_pandas()
    assert sorted(df[df.worker == "good"].step) == [0, 1, 2, 3]
    assert isinstance(df, pd.DataFrame) and (df.worker != "dead-stream").all()


def test_an_actor_killed_mid_run_keeps_its_flushed_rows(local_ray, small_video, tmp_path):
    """A worker process that dies: named with the cause, its rows up to its last flush kept,
    the others complete, exit 1."""
    spec = spec_for(small_video, tmp_path, [
        {"name": "victim", "max_steps": 0, "cores": "0"},  # loops the video until killed
        {"name": "bystander", "max_steps": 8, "cores": "1"},
    ])
    out = {}
    t = threading.Thread(target=lambda: out.update(code=fleet.submit(spec)))
    t.start()
    deadline = time.monotonic() + 180
    while not list(tmp_path.glob("run=*/worker=victim/part-*.parquet")):  # it has flushed rows
        assert time.monotonic() < deadline and t.is_alive()
        time.sleep(0.2)
    os.kill(actor_pid(":victim-0"), signal.SIGKILL)  # the process dies, as with the OOM killer
    t.join(timeout=180)
    assert out["code"] == 1
    run_id = only_run(tmp_path)
    man = read_manifest(tmp_path, run_id)
    victim = man["actors"]["victim-0"]
    assert victim["status"] == "failed" and victim["error"].startswith("actor died")
    assert man["actors"]["bystander-0"]["status"] == "completed"
    df = read_table(tmp_path, run_id).to_pandas()
    kept = sorted(df[df.worker == "victim"].step)
    assert kept and kept == list(range(len(kept)))  # a prefix of its steps, each once
    assert sorted(df[df.worker == "bystander"].step) == list(range(8))


RESTART_STEPS = 60


def test_a_sink_killed_mid_run_is_restarted_and_no_row_is_lost_or_doubled(local_ray, tmp_path, capsys):
    """The sink actor's process dies while two workers emit: Ray restarts it, the workers resend
    what it had not acknowledged, and every (actor, step) is in the dataset exactly once."""
    paced = {"uri": "synthetic", "fps": 20, "width": 64, "height": 64}  # 10 steps/s: the run lasts seconds
    spec = spec_for("-", tmp_path, [{"name": f"w{k}", "cores": str(k), "source": paced, "batch_size": 2,
                                     "max_steps": RESTART_STEPS} for k in range(2)])
    out = {}
    t = threading.Thread(target=lambda: out.update(code=fleet.submit(spec)))
    t.start()
    deadline = time.monotonic() + 180
    while len(list(tmp_path.glob("run=*/worker=*/part-*.parquet"))) < 2:  # the sink has written
        assert time.monotonic() < deadline and t.is_alive(), "no rows within 180 s"
        time.sleep(0.1)
    os.kill(actor_pid(":sink"), signal.SIGKILL)
    t.join(timeout=240)
    assert out["code"] == 0
    run_id = only_run(tmp_path)
    man = read_manifest(tmp_path, run_id)
    assert man["status"] == "completed"
    df = read_table(tmp_path, run_id).to_pandas()
    for k in range(2):
        actor = man["actors"][f"w{k}-0"]
        assert actor["status"] == "completed" and actor["steps"] == RESTART_STEPS
        assert sorted(df[df.actor_id == f"w{k}-0"].step) == list(range(RESTART_STEPS))  # each step, once
    assert sum(a["resends"] for a in man["actors"].values()) > 0  # the workers did resend
    stats = man["dataset_stats"]
    assert stats["sink_restarted"] and stats["rows"] == len(df) == 2 * RESTART_STEPS
    assert "sent to the sink again after it restarted" in capsys.readouterr().out


def test_a_sweep_runs_its_points_in_turn_and_resumes_where_it_stopped(local_ray, small_video, tmp_path, capsys):
    spec = spec_for(small_video, tmp_path, [{"name": "mnv3", "max_steps": 4}], sweep={"batch_size": [2, 4]})
    assert fleet.submit(spec) == 0
    run_id = only_run(tmp_path)
    df = read_table(tmp_path, run_id).to_pandas()
    assert sorted(df.sweep_point.unique()) == ["batch_size=2", "batch_size=4"]
    assert df.groupby("sweep_point").frames.max().to_dict() == {"batch_size=2": 2, "batch_size=4": 4}
    first, second = (df[df.sweep_point == f"batch_size={b}"] for b in (2, 4))
    assert first.t_start.max() < second.t_start.min(), "the points ran one after another"
    out = capsys.readouterr().out
    assert "sweep points (FPS: all actors running)" in out and "batch_size=4" in out
    man = read_manifest(tmp_path, run_id)
    assert [p["sweep_point"] for p in man["sweep"]] == ["batch_size=2", "batch_size=4"]

    # as if the run had been stopped during its second point: resume runs that point only
    path = tmp_path / f"run={run_id}" / "_manifest.json"
    data = json.loads(path.read_text())
    data["actors"]["mnv3-p1-0"]["status"] = "stopped"
    path.write_text(json.dumps(data))
    kept = {p: p.stat().st_mtime_ns for p in (tmp_path / f"run={run_id}").glob("worker=mnv3/part-mnv3-p0-0-*")}
    assert fleet.submit(spec, resume="latest") == 0
    df = read_table(tmp_path, run_id).to_pandas()
    assert sorted(df[df.sweep_point == "batch_size=4"].step) == list(range(4)), "one row per step, rerun once"
    assert {p: p.stat().st_mtime_ns for p in kept} == kept, "the completed point was left alone"
    man = read_manifest(tmp_path, run_id)
    assert man["resumed"] and man["status"] == "completed"
    assert all(a["status"] == "completed" for a in man["actors"].values())
    assert man["dataset_stats"]["rows"] == 8
    assert len(list(tmp_path.glob("run=*"))) == 1
