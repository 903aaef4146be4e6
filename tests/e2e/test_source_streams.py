"""Live sources against real servers on 127.0.0.1: ffmpeg's HTTP server (MJPEG and MPEG-TS) and a
small RTSP server relaying ffmpeg's RTP (tests/support/rtsp_server.py).

No assertion depends on speed: waits poll the source's own counters under a generous deadline
(a hang guard, never a measurement), and every server is stopped in teardown.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rayprof.source import SourceOpenError, SourceSettings, make_sample_video, open_source, sample_patch_center
from tests.support.media import BlackHoleServer, HttpStreamServer, free_port, read_until_end
from tests.support.rtsp_server import RtspTestServer

W, H = 320, 240
HANG_GUARD_S = 60.0  # far above any expected wait: only catches a hang


@pytest.fixture(scope="module")
def stream_video(tmp_path_factory) -> Path:
    return make_sample_video(tmp_path_factory.mktemp("stream-media") / "sample.mp4",
                             seconds=2.0, fps=30.0, width=W, height=H)


@pytest.fixture
def stream_http(stream_video, tmp_path, request):
    srv = HttpStreamServer(stream_video, tmp_path, fmt=getattr(request, "param", "mpjpeg")).start()
    yield srv
    srv.stop()


@pytest.fixture
def stream_rtsp(stream_video, tmp_path):
    with RtspTestServer(stream_video, tmp_path, user="viewer", password="hunter2") as srv:
        yield srv


def settings(url: str, **kw) -> SourceSettings:
    kw = {"open_timeout_s": 5.0, "read_timeout_s": 3.0, "reconnect_s": 15.0, **kw}
    return SourceSettings(url, field="workers[0].source.uri", **kw)


def wait_for(pred, what: str) -> None:
    deadline, ev = time.monotonic() + HANG_GUARD_S, threading.Event()
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        ev.wait(0.05)


drain = read_until_end


def check_batches(batches) -> None:
    """Shapes, RGB, capture order, and index gaps that add up to the reported drops."""
    prev = -1
    for b in batches:
        assert b.frames.shape == (b.n, H, W, 3) and b.frames.dtype == np.uint8 and b.frames.flags["C_CONTIGUOUS"]
        assert np.all(np.diff(b.indices) >= 1) and np.all(np.diff(b.capture_ts) >= 0)
        assert int(b.indices[-1]) - prev - b.n == b.dropped  # every skipped index is a counted drop
        prev = int(b.indices[-1])


def assert_red_patch(frame: np.ndarray) -> None:
    r, g, b = frame[sample_patch_center("red", W, H)].astype(int)
    assert r > 180 and g < 80 and b < 80, (r, g, b)


# --------------------------------------------------------------------------- HTTP


@pytest.mark.parametrize("stream_http", ["mpjpeg", "mpegts"], indirect=True)
def test_http_stream_reads_frames(stream_http):
    with open_source(settings(stream_http.url)) as src:
        assert (src.kind, src.live) == ("http", True)
        batches = [src.read(10) for _ in range(4)]
        stats = src.stats()
    check_batches(batches)
    assert all(b.n == 10 for b in batches)
    assert_red_patch(batches[-1].frames[-1])
    assert stats["frames"] == 40 and stats["reconnects"] == 0


def test_http_server_stops_stream_ends_cleanly(stream_http):
    src = open_source(settings(stream_http.url, reconnect_s=1.5))
    first = src.read(10)
    stream_http.stop()
    rest = drain(src)
    assert src.read(10) is None  # stays ended
    stats = src.stats()
    src.close()
    check_batches([first, *rest])
    assert stats["reconnects"] == 0 and stats["reconnect_attempts"] >= 1 and stats["gap_s"] > 0
    assert stats["frames"] == first.n + sum(b.n for b in rest)


def test_http_server_comes_back_and_reader_reconnects(stream_http):
    with open_source(settings(stream_http.url, reconnect_s=30.0)) as src:
        src.read(10)
        stream_http.stop()
        wait_for(lambda: src.stats()["reconnect_attempts"] >= 1, "a reconnect attempt")
        stream_http.start()  # same port
        wait_for(lambda: src.stats()["reconnects"] >= 1, "the reconnect")
        b = src.read(10)
        stats = src.stats()
    assert b.n == 10
    assert_red_patch(b.frames[-1])
    assert stats["reconnects"] == 1 and stats["gap_s"] > 0


def test_slow_consumer_sees_dropped_frames(stream_http):
    with open_source(settings(stream_http.url, buffer_frames=4)) as src:
        first = src.read(2)
        # let the reader run 15 frames past what the buffer can hold
        target = int(first.indices[-1]) + 1 + 4 + 15
        wait_for(lambda: src.stats()["captured"] >= target, "frames to arrive")
        second = src.read(4)
        stats = src.stats()
    check_batches([first, second])
    assert second.dropped >= 15 and stats["dropped"] >= 15
    assert int(second.indices[0]) > int(first.indices[-1]) + 1  # the gap shows the drop


def test_unreachable_url_raises_source_open_error():
    url = f"http://admin:hunter2@127.0.0.1:{free_port()}/stream?token=s3cret"
    t0 = time.monotonic()
    with pytest.raises(SourceOpenError) as e:
        open_source(settings(url, open_timeout_s=1.0, reconnect_s=1.0))
    assert time.monotonic() - t0 < HANG_GUARD_S
    msg = str(e.value)
    assert msg.startswith("workers[0].source.uri = 'http://admin:***@127.0.0.1:")
    assert "hunter2" not in msg and "s3cret" not in msg and "token=***" in msg


@pytest.mark.parametrize("scheme", ["http", "rtsp"])
def test_silent_server_times_out_on_open(scheme):
    with BlackHoleServer() as bh:
        t0 = time.monotonic()
        with pytest.raises(SourceOpenError):
            open_source(settings(f"{scheme}://127.0.0.1:{bh.port}/x", open_timeout_s=1.0, reconnect_s=0))
        assert time.monotonic() - t0 < HANG_GUARD_S


def test_missing_camera_raises_source_open_error():
    index = next((i for i in range(40, 64) if not Path(f"/dev/video{i}").exists()), None)
    if index is None:
        pytest.skip("no free camera index")
    with pytest.raises(SourceOpenError) as e:
        open_source(settings(str(index), open_timeout_s=1.0, reconnect_s=0))
    assert "camera" in str(e.value)


# --------------------------------------------------------------------------- RTSP


def test_rtsp_stream_over_tcp_with_credentials(stream_rtsp):
    with open_source(settings(stream_rtsp.url)) as src:
        assert (src.kind, src.live) == ("rtsp", True)
        assert src.display == f"rtsp://viewer:***@127.0.0.1:{stream_rtsp.port}/live"
        batches = [src.read(10) for _ in range(3)]
        stats = src.stats()
        shown = f"{src!r} {src.display} {stats}"
    check_batches(batches)
    assert all(b.n == 10 for b in batches)
    assert_red_patch(batches[-1].frames[-1])
    assert stream_rtsp.transports and all("RTP/AVP/TCP" in t for t in stream_rtsp.transports)  # never tried UDP
    assert "hunter2" not in shown


def test_rtsp_forces_tcp_even_with_user_ffmpeg_options(stream_rtsp, monkeypatch):
    # OpenCV asks for TCP only while OPENCV_FFMPEG_CAPTURE_OPTIONS is unset; rayprof adds it to the user's
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "probesize;500000")
    with open_source(settings(stream_rtsp.url)) as src:
        assert src.read(5).n == 5
    assert stream_rtsp.transports and all("RTP/AVP/TCP" in t for t in stream_rtsp.transports)


def test_rtsp_wrong_password_is_an_open_error(stream_rtsp):
    url = stream_rtsp.url.replace("hunter2", "wrong-pw")
    with pytest.raises(SourceOpenError) as e:
        open_source(settings(url, reconnect_s=0))
    assert stream_rtsp.auth_failures >= 1
    assert "wrong-pw" not in str(e.value) and "viewer:***@" in str(e.value)


def test_rtsp_outage_and_recovery(stream_rtsp):
    # a small buffer bounds the frames left from before the outage; the rest of the last batch is new
    with open_source(settings(stream_rtsp.url, reconnect_s=30.0, buffer_frames=8)) as src:
        src.read(10)
        stream_rtsp.pause()
        wait_for(lambda: src.stats()["reconnect_attempts"] >= 1, "a reconnect attempt")
        stream_rtsp.resume()
        wait_for(lambda: src.stats()["reconnects"] >= 1, "the reconnect")
        wait_for(lambda: stream_rtsp.playing >= 1, "the client playing again")
        b = src.read(30)
        stats = src.stats()
    assert b.n == 30 and stats["reconnects"] == 1 and stats["gap_s"] > 0
    assert_red_patch(b.frames[-1])


def test_rtsp_server_gone_ends_stream(stream_rtsp):
    src = open_source(settings(stream_rtsp.url, reconnect_s=1.0))
    first = src.read(5)
    stream_rtsp.pause()
    rest = drain(src)
    stats = src.stats()
    src.close()
    check_batches([first, *rest])
    assert stats["reconnects"] == 0 and stats["reconnect_attempts"] >= 1
