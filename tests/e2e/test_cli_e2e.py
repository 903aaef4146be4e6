"""The real commands, as a user types them, in a subprocess, on real videos."""

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.support.cli import rayprof_cmd

REPO = Path(__file__).resolve().parents[2]


def rayprof(*args, cwd=REPO, timeout=600, cmd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    if cmd is not None:  # a module of this checkout
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run((cmd or rayprof_cmd()) + list(args), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def runs_in(root: Path) -> list[str]:
    return sorted(p.name.removeprefix("run=") for p in root.glob("run=*"))


def test_run_one_worker_with_the_original_flags(small_video, tmp_path):
    out = tmp_path / "runs"
    res = rayprof("run", "--model-name", "mobilenet_v3_small", "--input_path", str(small_video), "--mode",
                  "inference", "--batch-size", "4", "--prep-level", "medium", "--core-bind", "0",
                  "--max-steps", "6", "--warmup-steps", "2", "--output", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    for col in ("worker", "steps", "frames", "FPS", "stage", "mean ms", "p50", "p90", "p99"):
        assert col in res.stdout
    for stage in ("read", "prep", "exec", "total"):
        assert f" {stage} " in res.stdout
    (run_id,) = runs_in(out)
    df = pd.read_parquet(out / f"run={run_id}")
    assert sorted(df.step) == list(range(6)) and (df.cores == "0").all()
    man = json.loads((out / f"run={run_id}" / "_manifest.json").read_text())
    assert man["status"] == "completed" and man["launcher"] == "in-process"
    actor = next(iter(man["actors"].values()))
    assert actor["steps"] == 6 and actor["ended_by"] == "max_steps"


def test_run_to_the_end_of_a_file(small_video, tmp_path):
    # 64 frames in batches of 10: six full batches and a short one of 4, then the worker ends
    res = rayprof("run", "--model-name", "mobilenet_v3_small", "--input_path", str(small_video),
                  "--batch-size", "10", "--max-steps", "0", "--output", str(tmp_path))
    assert res.returncode == 0, res.stderr
    (run_id,) = runs_in(tmp_path)
    df = pd.read_parquet(tmp_path / f"run={run_id}").sort_values("step")
    assert list(df.frames) == [10] * 6 + [4]


def test_validate_the_main_job():
    res = rayprof("validate", "jobs/fleet.yaml")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("sample (loop)") == 5 and "retrain" in res.stdout and "spec OK" in res.stdout


def test_validate_the_split_job():
    res = rayprof("validate", "jobs/split.yaml")
    assert res.returncode == 0, res.stderr
    for actor in ("resnet50-split-p0-0", "resnet50-split-p1-0-head", "resnet50-split-p2-0-tail"):
        assert actor in res.stdout
    assert "layer2 head" in res.stdout and "layer3 tail" in res.stdout and "spec OK" in res.stdout


def test_run_with_the_original_split_point_flag(small_video, tmp_path):
    res = rayprof("run", "--model-name", "mobilenet_v3_small", "--input_path", str(small_video), "--batch-size", "4",
                  "--split-point", "mobilenet_v3_small:features.6", "--max-steps", "5", "--warmup-steps", "1",
                  "--output", str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "split after features.6 (head on cpu)" in res.stdout
    for stage in (" transfer ", " e2e "):
        assert stage in res.stdout
    (run_id,) = runs_in(tmp_path)
    df = pd.read_parquet(tmp_path / f"run={run_id}")
    assert set(df.role) == {"split"} and set(df.split_point) == {"features.6"} and df.transfer_ms.notna().all()


@pytest.mark.slow
def test_submit_the_main_job(tmp_path):
    """`rayprof submit jobs/fleet.yaml` on an embedded local Ray, shortened with --set; the CLI's
    main runs under a wrapper that tells which of torch and torchvision the driver imported."""
    out = tmp_path / "runs"
    res = rayprof("submit", "jobs/fleet.yaml", "--set", "defaults.max_steps=4", "--set", "defaults.warmup_steps=1",
                  "--output", str(out), cmd=[sys.executable, "-m", "tests.support.driver_imports"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # the checks, the plan, the actors' classes and their results: none needs torch on the driver
    # where there is no GPU (start-up: the actors import it, the driver need not)
    gpu = os.path.exists("/proc/driver/nvidia") or not sys.platform.startswith("linux")
    assert res.stderr.splitlines()[-1] == "driver imported: -" or gpu, res.stderr[-2000:]
    for worker in ("resnet18-b8", "mobilenet-b16", "mobilenet-b4-x2", "resnet18-retrain"):
        assert worker in res.stdout
    (run_id,) = runs_in(out)
    run_dir = out / f"run={run_id}"
    man = json.loads((run_dir / "_manifest.json").read_text())
    assert man["status"] == "completed" and len(man["actors"]) == 5
    t = man["timings"]  # start-up, in seconds since submit
    assert 0 < t["ray_ready_s"] <= t["actors_created_s"] <= t["submit_to_first_step_s"]
    assert "built_s" in man["index"] and (run_dir / "_index" / "batches.arrow").exists()  # the summary index
    # the same rows through pandas, pyarrow and DuckDB: exactly one per executed step
    df = pd.read_parquet(run_dir)
    assert len(df) == pq.read_table(run_dir).num_rows == 5 * 4
    n, = duckdb.connect().execute(f"SELECT count(DISTINCT (actor_id, step)) FROM read_parquet('{run_dir}/**/*.parquet')").fetchone()
    assert n == 20
    for aid, actor in man["actors"].items():
        assert actor["status"] == "completed" and actor["steps"] == 4
    assert df[df["mode"] == "retrain"].loss.notna().all()


def signal_once(proc, ready, sig, *, wait_s: float, what: str, end_s: float = 120) -> tuple[str, str]:
    """Send ``sig`` to ``proc`` once ``ready()`` holds (the process must still run), then collect
    its output; the process is killed if anything fails on the way."""
    import time

    try:
        deadline = time.monotonic() + wait_s
        while not ready():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, what
            time.sleep(0.2)
        proc.send_signal(sig)
        return proc.communicate(timeout=end_s)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_gracefully(sig, tmp_path):
    """Ctrl-C / SIGTERM: the worker stops after its step, flushes, and the manifest says stopped."""
    import signal

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(rayprof_cmd() + ["run", "--model-name", "mobilenet_v3_small", "--input_path", "synthetic",
                                             "--batch-size", "2", "--max-steps", "0", "--output", str(tmp_path)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = signal_once(proc, lambda: list(tmp_path.glob("run=*/worker=*/part-*.parquet")),  # rows are written
                           getattr(signal, sig), wait_s=120, what="no rows within 120 s")
    assert proc.returncode == 1, out + err
    assert "stopping every worker" in err and "Traceback" not in err
    (run_id,) = runs_in(tmp_path)
    man = json.loads((tmp_path / f"run={run_id}" / "_manifest.json").read_text())
    assert man["status"] == "stopped"
    actor = next(iter(man["actors"].values()))
    assert actor["status"] == "stopped" and actor["ended_by"] == "stop"
    df = pd.read_parquet(tmp_path / f"run={run_id}")
    assert sorted(df.step) == list(range(actor["steps"]))  # every executed step, once


def test_sigterm_stops_every_actor_of_a_submitted_fleet(tmp_path):
    """`rayprof submit` on an embedded Ray, SIGTERM mid-run: every actor stops after its step and
    flushes, the manifest says stopped, exit 1, and the dataset holds every executed step once."""
    import signal

    spec = tmp_path / "endless.yaml"
    spec.write_text("flush_interval_s: 0.2\n"
                    "defaults: {source: synthetic, model: mobilenet_v3_small, batch_size: 2, max_steps: 0,\n"
                    "           prep: {size: 64}, device: cpu, warmup_steps: 1}\n"
                    "workers: [{name: a}, {name: b}]\n")
    out_dir = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(rayprof_cmd() + ["submit", str(spec), "--output", str(out_dir)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = signal_once(
        proc, lambda: {p.parent.name for p in out_dir.glob("run=*/worker=*/part-*.parquet")} == {"worker=a", "worker=b"},
        signal.SIGTERM, wait_s=240, what="no rows from both actors within 240 s", end_s=180)
    assert proc.returncode == 1, out + err
    assert "SIGTERM: stopping every worker" in err and "Traceback" not in err
    (run_id,) = runs_in(out_dir)
    man = json.loads((out_dir / f"run={run_id}" / "_manifest.json").read_text())
    assert man["status"] == "stopped" and man["exit_code"] == 1
    df = pd.read_parquet(out_dir / f"run={run_id}")
    for aid, actor in man["actors"].items():
        assert actor["status"] == "stopped" and actor["ended_by"] == "stop", actor
        assert sorted(df[df.actor_id == aid].step) == list(range(actor["steps"]))


def signalled_at(moment: str, sig: str, *args: str) -> subprocess.CompletedProcess:
    """``rayprof ARGS`` sending itself ``sig`` at ``moment`` (tests/support/signal_at.py)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "tests.support.signal_at", moment, sig, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def assert_stopped_cleanly(res: subprocess.CompletedProcess, sig: str, root: Path, moment: str) -> dict:
    """Exit 1, the stop said once, no traceback; a valid dataset and a manifest that says stopped:
    no step at start-up, every step once during the final flush (whose index is left for later)."""
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"{sig}: stopping every worker" in res.stderr and "Traceback" not in res.stderr + res.stdout
    (run_id,) = runs_in(root)
    run = root / f"run={run_id}"
    man = json.loads((run / "_manifest.json").read_text())
    assert man["status"] == "stopped" and man["exit_code"] == 1
    files = list(run.glob("worker=*/*.parquet"))
    df = pd.read_parquet(run) if files else pd.DataFrame(columns=["actor_id", "step"])
    for aid, actor in man["actors"].items():
        if moment == "startup":
            assert actor["status"] == "stopped" and not actor.get("steps"), actor
        else:
            assert actor["status"] == "completed" and actor["steps"] == 3, actor
        assert sorted(df[df.actor_id == aid].step) == list(range(actor.get("steps") or 0))
    if moment == "finish":
        assert "skipped" in man["index"] and not (run / "_index" / "batches.arrow").exists()
    assert not list(run.rglob(".*.tmp"))
    return man


@pytest.mark.parametrize("moment, sig", [("startup", "SIGTERM"), ("finish", "SIGINT")])
def test_a_signal_at_start_up_or_in_the_final_flush_stops_a_run_cleanly(moment, sig, tmp_path):
    res = signalled_at(moment, sig, "run", "--model-name", "mobilenet_v3_small", "--input_path", "synthetic",
                       "--batch-size", "2", "--max-steps", "3", "--warmup-steps", "1", "--output", str(tmp_path))
    assert_stopped_cleanly(res, sig, tmp_path, moment)


def test_a_second_ctrl_c_aborts_in_one_line(tmp_path):
    res = signalled_at("startup", "SIGINT+SIGINT", "run", "--model-name", "mobilenet_v3_small", "--input_path",
                       "synthetic", "--max-steps", "3", "--warmup-steps", "1", "--output", str(tmp_path))
    assert res.returncode == 1 and "Traceback" not in res.stderr + res.stdout
    assert res.stderr.strip().splitlines()[-1].startswith("error: aborted; the dataset keeps what was flushed")


@pytest.mark.slow
@pytest.mark.parametrize("moment, sig", [("startup", "SIGINT"), ("finish", "SIGTERM")])
def test_a_signal_at_start_up_or_in_the_final_flush_stops_a_fleet_cleanly(moment, sig, tmp_path):
    """`rayprof submit` on an embedded Ray: at start-up (while Ray starts) no actor starts; in the
    final flush every actor has completed, yet the run is stopped and its index left for later."""
    spec = tmp_path / "job.yaml"
    spec.write_text("defaults: {source: synthetic, model: mobilenet_v3_small, batch_size: 2, max_steps: 3,\n"
                    "           prep: {size: 64}, device: cpu, warmup_steps: 1}\n"
                    "workers: [{name: a}, {name: b}]\n")
    res = signalled_at(moment, sig, "submit", str(spec), "--output", str(tmp_path / "out"))
    man = assert_stopped_cleanly(res, sig, tmp_path / "out", moment)
    assert len(man["actors"]) == 2
