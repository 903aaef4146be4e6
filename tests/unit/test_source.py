"""rayprof.source and rayprof.streams without network: real files, synthetic frames, fake captures."""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest

from rayprof.errors import UserError
from rayprof.source import (
    BatchArrays,
    FileSource,
    SourceOpenError,
    SourceSettings,
    SyntheticSource,
    check_source,
    make_sample_video,
    mask_url,
    open_source,
    sample_patch_center,
    source_kind,
)
from rayprof.streams import LiveSource
from tests.support.media import read_until_end

W, H, FPS, SECONDS = 160, 120, 10.0, 2.0
N_FRAMES = 20


class FakeClock:
    """Returns start, start+step, start+2*step, ... ; ``sleep`` advances it exactly."""

    def __init__(self, start: float = 1_700_000_000.0, step: float = 0.001):
        self.t, self.step, self.calls, self.slept = start, step, 0, []

    def __call__(self) -> float:
        self.calls += 1
        self.t += self.step
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


@pytest.fixture(scope="module")
def sample_video(tmp_path_factory) -> Path:
    return make_sample_video(tmp_path_factory.mktemp("media") / "sample.mp4",
                             seconds=SECONDS, fps=FPS, width=W, height=H)


def read_all(src, n: int) -> list:
    return read_until_end(src, n, limit=1000)


# --------------------------------------------------------------------------- files


def test_sample_video_is_written_atomically(sample_video):
    assert sample_video.exists() and sample_video.stat().st_size > 0
    assert sorted(p.name for p in sample_video.parent.iterdir()) == [sample_video.name]  # no temp left


def test_file_reads_in_batches_with_short_last_batch(sample_video):
    clock = FakeClock()
    with open_source(SourceSettings(str(sample_video)), clock=clock) as src:
        assert (src.kind, src.live, src.display) == ("file", False, str(sample_video))
        batches = read_all(src, 7)
        assert src.read(7) is None  # stays ended
        stats = src.stats()
    assert [b.n for b in batches] == [7, 7, 6]
    assert sum(b.n for b in batches) == N_FRAMES == stats["frames"]
    assert stats["dropped"] == stats["decode_errors"] == 0
    for b in batches:
        assert b.frames.shape == (b.n, H, W, 3) and b.frames.dtype == np.uint8
        assert b.frames.flags["C_CONTIGUOUS"]
        assert b.capture_ts.dtype == np.float64 and b.indices.dtype == np.int64
        assert b.dropped == 0
    idx = np.concatenate([b.indices for b in batches])
    assert idx.tolist() == list(range(N_FRAMES))
    ts = np.concatenate([b.capture_ts for b in batches])
    assert np.all(np.diff(ts) > 0)
    assert ts[0] > 1_700_000_000.0 and ts[-1] <= clock.t  # stamped by the injected clock


def test_file_frames_are_rgb(sample_video):
    with open_source(SourceSettings(str(sample_video))) as src:
        frame = src.read(1).frames[0].astype(int)
    red = frame[sample_patch_center("red", W, H)]
    green = frame[sample_patch_center("green", W, H)]
    blue = frame[sample_patch_center("blue", W, H)]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60, red
    assert green[1] > 200 and green[0] < 60 and green[2] < 60, green
    assert blue[2] > 200 and blue[0] < 60 and blue[1] < 60, blue


def test_sample_video_is_deterministic(sample_video, tmp_path):
    again = make_sample_video(tmp_path / "again.mp4", seconds=SECONDS, fps=FPS, width=W, height=H)
    with open_source(SourceSettings(str(sample_video))) as a, open_source(SourceSettings(str(again))) as b:
        fa, fb = a.read(N_FRAMES).frames, b.read(N_FRAMES).frames
    assert np.array_equal(fa, fb)
    assert not np.array_equal(fa[0], fa[5])  # things move


def test_file_loop_starts_again(sample_video):
    with open_source(SourceSettings(str(sample_video), loop=True)) as src:
        batches = [src.read(8) for _ in range(6)]  # 48 frames from a 20-frame file
        stats = src.stats()
    frames = np.concatenate([b.frames for b in batches])
    idx = np.concatenate([b.indices for b in batches])
    assert all(b.n == 8 for b in batches)
    assert idx.tolist() == list(range(48))
    assert np.array_equal(frames[0], frames[N_FRAMES]) and np.array_equal(frames[3], frames[2 * N_FRAMES + 3])
    assert stats["loops"] == 2 and stats["frames"] == 48


class FakeCapture:
    """A cv2.VideoCapture stand-in: plays ``script`` (frame or None = a frame that fails to decode)."""

    def __init__(self, script, frame_count=None, raise_at=None):
        self.script, self.pos, self.released = list(script), 0, False
        self.frame_count = len(self.script) if frame_count is None else frame_count
        self.raise_at = raise_at

    def isOpened(self):
        return True

    def grab(self):
        if self.raise_at is not None and self.pos == self.raise_at:
            raise RuntimeError("boom")
        self.pos += 1
        return self.pos <= len(self.script)

    def retrieve(self):
        f = self.script[self.pos - 1]
        return (f is not None), f

    def get(self, prop):
        return float(self.frame_count)

    def release(self):
        self.released = True


def bgr(value: int, h: int = 4, w: int = 6) -> np.ndarray:
    """A BGR frame whose blue channel is ``value`` (so RGB has it last)."""
    f = np.zeros((h, w, 3), np.uint8)
    f[..., 0] = value
    return f


def test_file_decode_errors_are_counted_and_skipped():
    script = [bgr(1), bgr(2), None, bgr(3), None, None, bgr(4), None]  # trailing failure = the end
    cap = FakeCapture(script)
    src = FileSource(SourceSettings("fake.mp4"), open_capture=lambda: cap)
    b = src.read(10)
    assert src.read(10) is None
    assert b.frames[:, 0, 0, 2].tolist() == [1, 2, 3, 4]
    assert src.stats()["decode_errors"] == 3
    assert cap.released


def test_file_batch_arrays_are_reused_only_once_nothing_refers_to_them():
    torch = pytest.importorskip("torch")
    src = FileSource(SourceSettings("fake.mp4"), open_capture=lambda: FakeCapture([bgr(v) for v in range(1, 13)]))
    first = src.read(2)
    first_array = weakref.ref(first.frames.base)  # no reference: only the source's pool keeps it
    held = torch.from_numpy(src.read(2).frames[1:])  # a tensor of a view of the second batch
    third = src.read(2)
    assert third.frames.base is not first_array()  # the first batch is still alive: not reused
    del first
    fourth = src.read(2)
    assert fourth.frames.base is first_array()  # released: its array is written again
    rest = [src.read(2) for _ in range(2)]
    assert held[0, 0, 0, 2] == 4 and third.frames[:, 0, 0, 2].tolist() == [5, 6]  # never overwritten
    assert [v for b in (fourth, *rest) for v in b.frames[:, 0, 0, 2].tolist()] == list(range(7, 13))


def test_batch_arrays_keep_a_bounded_set_and_make_room_for_a_new_shape():
    arrays = BatchArrays(keep=2)
    a, b, c = arrays.take((2, 3)), arrays.take((2, 3)), arrays.take((2, 3))  # all alive: three arrays
    assert len({id(a), id(b), id(c)}) == 3
    kept = weakref.ref(a)
    del a, b, c
    assert arrays.take((2, 3)) is kept()  # the first two were kept, the third was not
    wide = arrays.take((4, 3))
    assert wide.shape == (4, 3) and kept() is None  # a free array of the old shape gave up its place


def test_file_that_cannot_be_opened_raises():
    with pytest.raises(SourceOpenError) as e:
        FileSource(SourceSettings("x.mp4", field="workers[0].source.uri"), open_capture=lambda: None)
    assert "workers[0].source.uri" in str(e.value)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_frames_shape_and_determinism():
    s = SourceSettings("synthetic", width=64, height=48, fps=0)
    clock = FakeClock()
    a, b = open_source(s, clock=clock, sleep=clock.sleep), open_source(s)
    ba, bb = a.read(5), b.read(5)
    assert (a.kind, a.live, a.display) == ("synthetic", False, "synthetic")
    assert ba.frames.shape == (5, 48, 64, 3) and ba.frames.dtype == np.uint8 and ba.frames.flags["C_CONTIGUOUS"]
    assert np.array_equal(ba.frames, bb.frames)
    assert not np.array_equal(ba.frames[0], ba.frames[1])
    assert ba.indices.tolist() == [0, 1, 2, 3, 4] and a.read(3).indices.tolist() == [5, 6, 7]
    assert clock.slept == []  # fps=0: unpaced
    assert np.array_equal(a.frame(7), SyntheticSource(s).frame(7))
    assert a.stats()["frames"] == 8


def test_synthetic_is_paced_by_the_clock():
    clock = FakeClock(start=100.0, step=0.0)
    src = open_source(SourceSettings("synthetic", width=32, height=16, fps=10), clock=clock, sleep=clock.sleep)
    ts = np.concatenate([src.read(4).capture_ts for _ in range(3)])
    assert np.allclose(ts, 100.0 + np.arange(12) / 10)
    assert len(clock.slept) == 11 and all(s == pytest.approx(0.1) for s in clock.slept)
    src.close()
    assert src.read(1) is None


# --------------------------------------------------------------------------- URIs


@pytest.mark.parametrize("uri, masked", [
    ("rtsp://user:pass@host/x", "rtsp://user:***@host/x"),
    ("rtsp://admin:p@ss:w0rd@10.0.0.5:554/Streaming/101", "rtsp://admin:***@10.0.0.5:554/Streaming/101"),
    ("http://bob:secret@cam.local:8080/video.mjpg", "http://bob:***@cam.local:8080/video.mjpg"),
    ("https://cdn.example/live.ts?token=abc123&quality=hd", "https://cdn.example/live.ts?token=***&quality=hd"),
    ("http://h/s?user=a&password=b&key=c&api_key=d&x=1", "http://h/s?user=a&password=***&key=***&api_key=***&x=1"),
    ("rtsp://host:554/stream", "rtsp://host:554/stream"),
    ("http://viewer@host/x", "http://viewer@host/x"),
    ("/videos/a b.mp4", "/videos/a b.mp4"),
    ("0", "0"),
    ("synthetic", "synthetic"),
])
def test_mask_url(uri, masked):
    assert mask_url(uri) == masked


@pytest.mark.parametrize("uri, kind", [
    ("video.mp4", "file"), ("/abs/path/v.avi", "file"), ("file:///tmp/v.mp4", "file"), ("C:\\v.mp4", "file"),
    ("0", "camera"), ("3", "camera"), (" 1 ", "camera"), ("/dev/video2", "camera"),
    ("http://h/x", "http"), ("HTTPS://h/x", "http"), ("rtsp://h/x", "rtsp"), ("rtsps://h/x", "rtsp"),
    ("synthetic", "synthetic"), ("Synthetic", "synthetic"),
])
def test_source_kind(uri, kind):
    assert source_kind(uri) == kind


def test_source_kind_rejects_unsupported_scheme_without_leaking_credentials():
    with pytest.raises(UserError) as e:
        source_kind("udp://u:hunter2@239.0.0.1:1234", field="workers[0].source.uri")
    assert "workers[0].source.uri" in str(e.value) and "udp://" in str(e.value)
    assert "hunter2" not in str(e.value)


# --------------------------------------------------------------------------- check_source


def _error(uri: str, **kw) -> UserError:
    with pytest.raises(UserError) as e:
        check_source(SourceSettings(uri, field="workers[1].source.uri", **kw))
    return e.value


def test_check_source_accepts_good_sources(sample_video):
    for uri in (str(sample_video), "synthetic", "0", "http://127.0.0.1:8080/stream", "rtsp://u:p@cam:554/x"):
        check_source(SourceSettings(uri))


def test_check_missing_file(tmp_path):
    uri = str(tmp_path / "nope.mp4")
    e = _error(uri)
    assert e.field == "workers[1].source.uri" and e.value == uri
    assert "no such file" in str(e) and "workers[1].source.uri" in str(e) and uri in str(e)


def test_check_text_file_named_mp4(tmp_path):
    p = tmp_path / "notes.mp4"
    p.write_text("this is not a video\n" * 50)
    e = _error(str(p))
    assert "not a video" in str(e) and str(p) in str(e) and "workers[1].source.uri" in str(e)


def test_check_empty_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert "empty" in str(_error(str(tmp_path / "empty.mp4")))


def test_check_directory(tmp_path):
    e = _error(str(tmp_path))
    assert "directory" in str(e) and str(tmp_path) in str(e)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_check_unreadable_file(sample_video, tmp_path):
    p = tmp_path / "locked.mp4"
    p.write_bytes(sample_video.read_bytes())
    p.chmod(0)
    try:
        assert "cannot be read" in str(_error(str(p)))
    finally:
        p.chmod(0o644)


def test_check_unreadable_file_reported(sample_video, monkeypatch):
    import rayprof.source as source_module

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(source_module, "open", denied, raising=False)
    e = _error(str(sample_video))
    assert "cannot be read (Permission denied)" in str(e) and str(sample_video) in str(e)


def test_check_bad_camera_index():
    e = _error("-1")
    assert "camera index" in str(e) and "'-1'" in str(e) and "workers[1].source.uri" in str(e)


@pytest.mark.parametrize("uri, shown", [
    ("http://", "http://"),
    ("rtsp://:554/x", "rtsp://:554/x"),
    ("rtsp://cam:99999/x", "rtsp://cam:99999/x"),
    ("http://my cam/x", "http://my cam/x"),
    ("rtsp://admin:hunter2@cam:notaport/x", "rtsp://admin:***@cam:notaport/x"),
    ("ftp://host/v.mp4", "ftp://host/v.mp4"),
])
def test_check_bad_url(uri, shown):
    e = _error(uri)
    assert "workers[1].source.uri" in str(e) and repr(shown) in str(e)
    assert "hunter2" not in str(e) and "hunter2" not in repr(e.value)


@pytest.mark.parametrize("kw, field", [
    ({"width": 0}, "workers[1].source.width"),
    ({"height": -5}, "workers[1].source.height"),
    ({"fps": -1.0}, "workers[1].source.fps"),
    ({"buffer_frames": 0}, "workers[1].source.buffer_frames"),
])
def test_check_synthetic_settings(kw, field):
    e = _error("synthetic", **kw)
    assert e.field == field and field in str(e)


# --------------------------------------------------------------------------- live reader (fake capture)


class LiveFake:
    """Opener for LiveSource: each call hands out the next capture from ``caps`` (None = refused)."""

    def __init__(self, caps):
        self.caps, self.calls = list(caps), 0

    def __call__(self):
        self.calls += 1
        return self.caps.pop(0) if self.caps else None


def live(opener, clock=None, **kw) -> LiveSource:
    s = SourceSettings(kw.pop("uri", "rtsp://u:pw@cam/x"), **kw)
    return LiveSource(s, "rtsp", opener, clock or FakeClock(), backoff_start_s=0.01, backoff_max_s=0.02)


def wait_until(pred, what: str, limit: int = 2000) -> None:
    ev = threading.Event()
    for _ in range(limit):
        if pred():
            return
        ev.wait(0.005)
    raise AssertionError(f"never happened: {what}")


def test_live_reads_in_order_with_injected_clock():
    clock = FakeClock(start=5000.0, step=1.0)
    src = live(LiveFake([FakeCapture([bgr(i) for i in range(30)])]), clock=clock, reconnect_s=0)
    assert (src.kind, src.live, src.display) == ("rtsp", True, "rtsp://u:***@cam/x")
    batches = read_all(src, 8)
    assert [b.n for b in batches] == [8, 8, 8, 6]
    frames = np.concatenate([b.frames for b in batches])
    assert frames[:, 0, 0, 2].tolist() == list(range(30))  # BGR blue -> RGB last channel
    assert np.concatenate([b.indices for b in batches]).tolist() == list(range(30))
    assert np.all(np.diff(np.concatenate([b.capture_ts for b in batches])) == 1.0)
    assert src.stats()["frames"] == 30 and src.stats()["dropped"] == 0
    src.close()
    src.close()


def test_live_slow_consumer_drops_oldest_and_counts_them():
    src = live(LiveFake([FakeCapture([bgr(i) for i in range(50)])]), buffer_frames=8, reconnect_s=0)
    wait_until(lambda: src.ended, "reader finished")
    b = src.read(100)
    assert b.n == 8 and b.indices.tolist() == list(range(42, 50)) and b.dropped == 42
    assert src.read(1) is None
    st = src.stats()
    assert (st["captured"], st["dropped"], st["frames"]) == (50, 42, 8)


def test_live_reconnects_then_ends_after_reconnect_window():
    opener = LiveFake([FakeCapture([bgr(i) for i in range(10)]), None, FakeCapture([bgr(i) for i in range(10, 15)])])
    src = live(opener, reconnect_s=0.5)
    batches = read_all(src, 4)
    frames = np.concatenate([b.frames for b in batches])
    assert frames[:, 0, 0, 2].tolist() == list(range(15))
    st = src.stats()
    assert st["reconnects"] == 1 and st["reconnect_attempts"] >= 3 and st["gap_s"] > 0
    assert sum(b.dropped for b in batches) == 0


def test_live_open_failure_raises_masked_source_open_error():
    opener = LiveFake([])
    with pytest.raises(SourceOpenError) as e:
        live(opener, uri="rtsp://admin:hunter2@cam/x?token=t0k", reconnect_s=0.05, field="workers[2].source.uri")
    msg = str(e.value)
    assert "workers[2].source.uri" in msg and "rtsp://admin:***@cam/x?token=***" in msg
    assert "hunter2" not in msg and "t0k" not in msg
    assert opener.calls >= 2  # retried within reconnect_s
    assert isinstance(e.value, UserError)


def test_live_reader_error_is_raised_by_read():
    src = live(LiveFake([FakeCapture([bgr(1), bgr(2)], raise_at=2)]), reconnect_s=0)
    assert src.read(2).n == 2
    with pytest.raises(RuntimeError, match="boom"):
        src.read(1)
    src.close()


def test_live_hung_reader_ends_the_stream():
    release = threading.Event()

    class Hung(FakeCapture):
        def grab(self):
            release.wait(10)
            return False

    s = SourceSettings("rtsp://cam/x", open_timeout_s=0.05, read_timeout_s=0.05, reconnect_s=0)
    src = LiveSource(s, "rtsp", LiveFake([Hung([])]), FakeClock(), stall_grace_s=0.1)
    try:
        assert src.read(1) is None
        assert src.stats()["stalled"] == 1
    finally:
        release.set()
        src.close()


def test_live_close_unblocks_a_waiting_reader():
    gate = threading.Event()

    class Slow(FakeCapture):
        def grab(self):
            gate.wait(0.02)
            return True

    src = live(LiveFake([Slow([bgr(0)] * 10**6)]), reconnect_s=0)
    out = []
    t = threading.Thread(target=lambda: out.append(src.read(10**6)))
    t.start()
    wait_until(lambda: src.stats()["captured"] >= 2, "frames arrive")
    src.close()
    t.join(5)
    assert not t.is_alive()
    assert out and (out[0] is None or out[0].n >= 1)


def test_synthetic_at_a_rate_is_live_and_counts_what_a_slow_reader_misses():
    """Frame i is captured at t0 + i/fps whether or not it is read; a reader that falls more
    than buffer_frames behind loses the oldest, counted, like a real camera."""
    from rayprof.source import SourceSettings, open_source

    t = [1000.0]
    src = open_source(SourceSettings(uri="synthetic", width=32, height=24, fps=10.0, buffer_frames=8),
                      clock=lambda: t[0], sleep=lambda s: t.__setitem__(0, t[0] + s))
    assert src.live
    b = src.read(4)  # paced: waits for frames 0..3 (0.3 s)
    assert list(b.indices) == [0, 1, 2, 3] and b.dropped == 0
    assert list(b.capture_ts) == [1000.0 + i / 10 for i in range(4)]
    t[0] += 5.0  # the model took 5 s: frames up to 53 were captured meanwhile, the buffer keeps 8
    b = src.read(4)
    assert b.dropped == 46 - 4 and list(b.indices) == [46, 47, 48, 49]
    assert src.stats()["dropped"] == 42 and src.stats()["frames"] == 8
