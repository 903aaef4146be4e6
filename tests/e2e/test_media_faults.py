"""Damaged videos, a full output disk and a stream server that dies, met through the real
``rayprof run`` and ``rayprof submit`` (subprocesses), as a user meets them.

- An MP4 with garbage over 20–50 % of its bytes (29 frames: more than
  ``MAX_CONSECUTIVE_DECODE_ERRORS`` in a row), then cut at 80 %: the run reads past the damage
  and ends cleanly at the last readable frame (exit 0). Every frame is either used or counted as
  damaged in the manifest's ``source_stats.decode_errors`` (and said in the end-of-run output);
  the missing tail is not counted.
- The same damage in other containers (in-process, no model): the frames after it are read
  everywhere; MP4 counts every lost frame, Matroska and AVI skip them uncounted.
- The output on a full disk (a 20 KiB tmpfs in a private mount namespace), in-process and with the
  sink actor of an embedded Ray: exit 1, one line per problem on stderr naming the file and ENOSPC
  with a fix, no traceback; every Parquet file written before is complete and no temporary file is
  left. There is no room even for the final manifest: the one written at the start (status
  ``running``) is kept, and stderr says so.
- An HTTP stream whose server dies, comes back, then goes for good: the worker reconnects once,
  goes on, and ends cleanly ``reconnect_s`` later; the manifest and the end-of-run output show the
  reconnect and the time without frames.

Every video is written here (OpenCV; ffmpeg from imageio-ffmpeg to remux, re-encode and serve).
No assertion depends on speed: waits poll the dataset under a generous hang guard.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from rayprof.source import MAX_CONSECUTIVE_DECODE_ERRORS, FileSource, SourceSettings
from tests.support.cli import rayprof_cmd
from tests.support.frames import cfr_video, faststart_copy, ffmpeg, ffmpeg_frames
from tests.support.media import HttpStreamServer, stop_process

pytestmark = pytest.mark.slow

FRAMES = 90  # 3 s at 30 fps
DAMAGE = (0.2, 0.5)  # the byte range overwritten with garbage, as fractions of the file
TRUNCATE_AT = 0.8  # after the damage: frames after it, then a missing tail
RUN = ("run", "--model-name", "mobilenet_v3_small", "--batch-size", "2", "--warmup-steps", "1", "--max-steps", "0")
ACTOR = "mobilenet_v3_small-0"  # the one actor of RUN and of write_spec


def user_env() -> dict:
    """The environment a user's ``rayprof`` runs in here: no Ray usage stats, no cluster address."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


def rayprof(*args: str, cwd: Path, wrap: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``rayprof ARGS`` as a user runs it, optionally under a wrapper command (``unshare …``)."""
    return subprocess.run([*wrap, *rayprof_cmd(), *args], cwd=cwd, env=user_env(), capture_output=True, text=True,
                          timeout=600)


def damaged(src: Path, dst: Path) -> Path:
    """``src`` with seeded random bytes over the ``DAMAGE`` range."""
    data = bytearray(src.read_bytes())
    a, b = (int(len(data) * f) for f in DAMAGE)
    data[a:b] = np.random.default_rng(7).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def cut(src: Path, dst: Path, fraction: float) -> Path:
    """The first ``fraction`` of ``src``'s bytes."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def read_all(path: Path) -> tuple[int, int]:
    """Frames rayprof's file source reads from ``path``, and the decode errors it counts."""
    with FileSource(SourceSettings(str(path))) as src:
        frames = 0
        while (batch := src.read(16)) is not None:
            frames += batch.n
        return frames, src.stats()["decode_errors"]


@pytest.fixture(scope="module")
def mp4(tmp_path_factory) -> Path:
    """A 90-frame MPEG-4 video from OpenCV's writer, its index first (a cut copy still opens)."""
    folder = tmp_path_factory.mktemp("media-faults")
    return faststart_copy(cfr_video(folder / "written.mp4", seconds=FRAMES / 30), folder / "video.mp4")


def only_run(out: Path) -> Path:
    (run,) = out.glob("run=*")
    return run


def test_a_damaged_and_truncated_mp4_is_read_past_the_damage_to_its_last_readable_frame(mp4, tmp_path):
    video = cut(damaged(mp4, tmp_path / "damaged.mp4"), tmp_path / "video.mp4", TRUNCATE_AT)
    # what ffmpeg itself decodes of the undamaged file cut there, and of its part before the damage
    intact = len(ffmpeg_frames(cut(mp4, tmp_path / "intact.mp4", TRUNCATE_AT)))
    before_damage = len(ffmpeg_frames(cut(mp4, tmp_path / "before-damage.mp4", DAMAGE[0])))
    res = rayprof(*RUN, "--input_path", str(video), "--output", str(tmp_path / "runs"), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr  # the run completes at the readable end
    assert "Traceback" not in res.stderr, res.stderr
    run = only_run(tmp_path / "runs")
    manifest = json.loads((run / "_manifest.json").read_text())
    (actor,) = manifest["actors"].values()
    stats = actor["source_stats"]
    assert (manifest["status"], actor["ended_by"]) == ("completed", "end_of_stream")
    assert pd.read_parquet(run)["frames"].sum() == stats["frames"] == actor["frames"]  # every frame read is used
    assert stats["frames"] > before_damage  # including those after the damage
    damage = intact - stats["frames"]
    assert damage > MAX_CONSECUTIVE_DECODE_ERRORS  # one long damaged region, read past
    # each damaged frame counted, the missing tail not (ffmpeg's own count of the cut file's last,
    # half-written frames varies by a few from run to run: 71-73 frames here)
    assert intact < FRAMES and abs(stats["decode_errors"] - damage) <= 3
    assert f"source: {stats['decode_errors']} frame(s) failed to decode (skipped)" in res.stdout


CONTAINERS = {  # name: ffmpeg output options (None: the OpenCV-written MP4 itself)
    "mpeg4.mp4": None,
    "h264.mp4": ("-c:v", "libx264", "-g", "15", "-movflags", "+faststart"),
    "h264.mkv": ("-c:v", "libx264", "-g", "15"),
    "mjpeg.avi": ("-c:v", "mjpeg", "-q:v", "5"),
}


@pytest.mark.parametrize("name", CONTAINERS)
def test_damage_in_each_container_is_read_past(mp4, tmp_path, name):
    video = mp4
    if CONTAINERS[name] is not None:
        video = tmp_path / name
        res = ffmpeg("-loglevel", "error", "-i", str(mp4), *CONTAINERS[name], str(video))
        assert res.returncode == 0, res.stderr
    assert read_all(video) == (FRAMES, 0)
    before_damage, _ = read_all(cut(video, tmp_path / f"before-damage-{name}", DAMAGE[0]))
    frames, decode_errors = read_all(damaged(video, tmp_path / f"damaged-{name}"))
    assert before_damage < frames < FRAMES  # the damage cost frames, and the frames after it are read
    if name.endswith(".mp4"):  # the index hands every frame to the decoder: each lost one is counted
        assert frames + decode_errors == FRAMES
    else:  # the demuxer resynchronises past the damage: what it skips is never seen
        assert decode_errors == 0


# --------------------------------------------------------------------------- a full disk

TMPFS_SIZE = "20k"  # the start manifest and a Parquet file or two, then full


def private_tmpfs(mount_point: Path, keep: Path) -> tuple[str, ...]:
    """A wrapper command: run the command with a ``TMPFS_SIZE`` tmpfs on ``mount_point`` (a private
    mount namespace, so nobody else sees it), then copy what it holds to ``keep``, hidden files
    included, and exit with the command's code."""
    script = ('mnt=$1; keep=$2; shift 2; mount -t tmpfs -o size=' + TMPFS_SIZE + ' tmpfs "$mnt" || exit 97; '
              '"$@"; rc=$?; cp -a "$mnt/." "$keep/"; exit $rc')
    return ("unshare", "-rm", "sh", "-c", script, "sh", str(mount_point), str(keep))


@pytest.fixture(scope="module")
def tmpfs_or_skip(tmp_path_factory) -> None:
    """Skip unless this machine lets us mount a tmpfs in a private namespace (root or user namespaces)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small tmpfs")
    probe = tmp_path_factory.mktemp("tmpfs-probe")
    res = subprocess.run(private_tmpfs(probe, probe.parent) + ("true",), capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace: {res.stderr.strip() or res.returncode}")


def write_spec(path: Path, worker: dict, **top) -> Path:
    """A job spec with one worker (JSON is YAML) running ``RUN``'s model and settings on the CPU."""
    worker = {"name": ACTOR.removesuffix("-0"), "model": "mobilenet_v3_small", "batch_size": 2, "device": "cpu",
              "cores": "all", "warmup_steps": 1, "max_steps": 0, **worker}
    path.write_text(json.dumps({"run": "faults", **top, "workers": [worker]}))
    return path


@pytest.mark.parametrize("command", ["run", "submit"])
def test_a_full_output_disk_fails_cleanly_and_keeps_what_was_written(tmpfs_or_skip, tmp_path, command):
    """``submit``: the sink actor writes, on an embedded Ray started inside the private namespace."""
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    kept.mkdir()
    out = disk / "runs"
    args = ((*RUN, "--input_path", "synthetic") if command == "run"
            else ("submit", str(write_spec(tmp_path / "spec.yaml", {"source": "synthetic"}))))
    res = rayprof(*args, "--output", str(out), cwd=tmp_path, wrap=private_tmpfs(disk, kept))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    problems = [line for line in res.stderr.splitlines() if "No space left on device (ENOSPC)" in line]
    parquet_line = next(line for line in problems if line.startswith(f"{ACTOR} failed: "))
    manifest_line = next(line for line in problems if line.startswith("error: output file = "))
    for line in (parquet_line, manifest_line):  # the file, the cause and the fix, in one line
        assert f"'{out}/run=" in line and line.endswith("free space there or choose another output (--output)")
    assert ".parquet': cannot be written" in parquet_line
    assert "_manifest.json': cannot be written" in manifest_line
    assert "the manifest written before is kept (status 'running')" in manifest_line

    run = only_run(kept / "runs")
    files = [p for p in run.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.startswith(".")]  # no temporary file left behind
    assert not (run / "_index").exists()  # nor a half-built index
    parts = sorted(p for p in files if p.suffix == ".parquet" and p.parent.name.startswith("worker="))
    assert parts and all(pq.read_table(p).num_rows > 0 for p in parts)  # each complete
    df = pd.read_parquet(run)
    assert sorted(df["step"]) == list(range(len(df)))  # the steps written, in order, once
    manifest = json.loads((run / "_manifest.json").read_text())
    assert manifest["status"] == "running" and manifest["run_id"] == run.name.removeprefix("run=")


# --------------------------------------------------------------------------- a stream server that dies

HANG_GUARD_S = 180.0  # far above any expected wait: only catches a hang


def frames_written(run_root: Path) -> int:
    """Frames in the rows the run has written so far (0 before its first file)."""
    files = list(run_root.glob("run=*/worker=*/*.parquet"))
    return int(pd.read_parquet(files, columns=["frames"])["frames"].sum()) if files else 0


def wait_for(pred, what: str, proc: subprocess.Popen) -> None:
    deadline, ev = time.monotonic() + HANG_GUARD_S, threading.Event()
    while not pred():
        assert proc.poll() is None, f"rayprof ended while waiting for {what}"
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        ev.wait(0.2)


def test_a_stream_server_that_dies_comes_back_then_goes_for_good(tmp_path):
    """Through ``rayprof submit``: the worker reconnects once, goes on, and ends cleanly
    ``reconnect_s`` after the server is gone for good; the manifest and the end-of-run output
    show the reconnect and the time without frames."""
    video = cfr_video(tmp_path / "feed.mp4", seconds=2.0, width=160, height=120)
    buffer_frames = 8
    out = tmp_path / "runs"
    with HttpStreamServer(video, tmp_path) as server:
        spec = write_spec(tmp_path / "spec.yaml", {"source": {"uri": server.url, "reconnect_s": 2.0,
                                                              "buffer_frames": buffer_frames}},
                          flush_interval_s=0.5)
        with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
            proc = subprocess.Popen([*rayprof_cmd(), "submit", str(spec), "--output", str(out)], cwd=tmp_path,
                                    env=user_env(), stdout=stdout, stderr=stderr)
        try:
            wait_for(lambda: frames_written(out) > 0, "the first rows", proc)
            server.stop()
            at_outage = frames_written(out)
            server.start()  # the same port
            # 2 s of the feed: more than the worker can have read, but not yet written, before the outage
            wait_for(lambda: frames_written(out) > at_outage + 60, "rows after the reconnect", proc)
            server.stop()  # for good: the worker ends reconnect_s later
            proc.wait(timeout=HANG_GUARD_S)
        finally:
            stop_process(proc, timeout=60)  # a hang: SIGTERM first, so that it ends its own Ray
    said = (tmp_path / "stdout").read_text()
    assert proc.returncode == 0, said + (tmp_path / "stderr").read_text()
    manifest = json.loads((only_run(out) / "_manifest.json").read_text())
    (actor,) = manifest["actors"].values()
    stats = actor["source_stats"]
    assert (manifest["status"], actor["status"], actor["ended_by"]) == ("completed", "completed", "end_of_stream")
    assert stats["reconnects"] == 1 and stats["gap_s"] >= 2.0  # the last outage alone lasts reconnect_s
    assert stats["frames"] == frames_written(out) == actor["frames"]
    assert f"{ACTOR} source: " in said and "reconnected 1 time(s)" in said and "s without frames (outages)" in said
