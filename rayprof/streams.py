"""Live sources (cameras, http(s)://, rtsp://): a background reader, a bounded buffer, reconnects.

A reader thread grabs frames as fast as the source delivers them, stamps each with the injected
clock, converts it to RGB and appends it to a buffer of ``buffer_frames``; when the buffer is full
the oldest frame is dropped and counted. ``read(n)`` takes the next ``n`` frames in order.

When a grab fails (EOF, timeout, reset) the reader reconnects with exponential backoff (0.5 s
doubling, capped at 5 s) for at most ``reconnect_s`` from the start of the outage; past that, the
stream ends: ``read`` returns what is buffered, then None. Frames missed during an outage cannot be
counted (the source does not say how many there were), so their time is reported as ``gap_s``.

Every wait is bounded: cv2's FFmpeg backend gets open/read timeouts, and ``read`` ends the stream
if the reader sits in one blocking call far longer than those timeouts allow.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from .source import (MAX_CONSECUTIVE_DECODE_ERRORS, FrameBatch, SourceOpenError, SourceSettings, VideoSource,
                     make_batch, mask_url, to_rgb)

Opener = Callable[[], Any]  # returns an opened cv2.VideoCapture-like object, or None

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 5.0

_FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_env_lock = threading.Lock()


def _ensure_rtsp_tcp() -> None:
    """Ask OpenCV's FFmpeg backend for RTSP over TCP (interleaved), keeping the user's own options.

    OpenCV reads ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` (``key;value|key;value``) at every open and asks
    for TCP itself only while that variable is unset; a user's options would otherwise bring back
    FFmpeg's UDP-first default. An ``rtsp_transport`` the user set there wins.
    """
    with _env_lock:
        current = os.environ.get(_FFMPEG_OPTIONS_ENV, "")
        if "rtsp_transport" not in current:
            os.environ[_FFMPEG_OPTIONS_ENV] = "|".join(x for x in (current, "rtsp_transport;tcp") if x)


def stream_opener(url: str, kind: str, settings: SourceSettings) -> Opener:
    """An opener for an http(s)/rtsp URL through cv2's FFmpeg backend with open/read timeouts."""

    def open_capture():
        import cv2

        if kind == "rtsp":
            _ensure_rtsp_tcp()
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, max(1, int(settings.open_timeout_s * 1000)),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, max(1, int(settings.read_timeout_s * 1000))]
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
        if cap.isOpened():
            return cap
        cap.release()
        return None

    return open_capture


def camera_opener(index: int) -> Opener:
    """An opener for camera ``index`` (cv2's default backend: V4L2 on Linux)."""

    def open_capture():
        import cv2

        cap = cv2.VideoCapture(index)
        if cap.isOpened():
            return cap
        cap.release()
        return None

    return open_capture


class LiveSource(VideoSource):
    """A camera or network stream read by a background thread (see the module docstring).

    Opening retries with the same backoff for up to ``reconnect_s``, then raises
    :class:`SourceOpenError`. ``opener`` is injectable so tests can drive it with a fake capture.
    """

    live = True

    def __init__(self, settings: SourceSettings, kind: str, opener: Opener,
                 clock: Callable[[], float] = time.time, *, backoff_start_s: float = BACKOFF_START_S,
                 backoff_max_s: float = BACKOFF_MAX_S, stall_grace_s: float = 5.0):
        self.settings = settings
        self.kind = kind
        self.display = mask_url(settings.uri.strip())
        self._opener, self._clock = opener, clock
        self._backoff = (backoff_start_s, backoff_max_s)
        # a reader stuck in one blocking call longer than this has hung: end the stream
        self._stall_s = 2 * max(settings.open_timeout_s, settings.read_timeout_s) + stall_grace_s
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._buf: deque = deque()
        self._next_index = 0
        self._pending_dropped = 0
        self._ended = False
        self._error: BaseException | None = None
        self._busy_since: float | None = None
        self._stats = {"frames": 0, "dropped": 0, "reconnects": 0, "decode_errors": 0, "gap_s": 0.0,
                       "captured": 0, "reconnect_attempts": 0, "stalled": 0}
        self._size: tuple[int, int] | None = None
        t0 = time.monotonic()
        cap = self._open_with_retries(t0 + settings.reconnect_s, first_now=True)
        if cap is None:
            if self._stop.is_set():
                raise SourceOpenError(settings.field, self.display, "was closed while opening", "open it again")
            tries = self._stats["reconnect_attempts"] + 1
            fix = ("check that the camera is connected and not in use by another program" if kind == "camera" else
                   "check that the stream is reachable from this node and serving video; for a slow source "
                   "raise open_timeout_s or reconnect_s")
            raise SourceOpenError(
                settings.field, self.display,
                f"could not be opened ({tries} {'try' if tries == 1 else 'tries'} in {time.monotonic() - t0:.1f} s, "
                f"open_timeout_s={settings.open_timeout_s:g}, reconnect_s={settings.reconnect_s:g})", fix)
        self._stats["reconnect_attempts"] = 0  # retries while opening are not reconnects
        self._thread = threading.Thread(target=self._run, args=(cap,), name=f"rayprof-{kind}-reader", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- reader thread

    def _blocking(self, fn: Callable[[], Any]) -> Any:
        self._busy_since = time.monotonic()
        try:
            return fn()
        finally:
            self._busy_since = None

    def _open_with_retries(self, deadline: float, first_now: bool) -> Any:
        """An opened capture, or None once ``deadline`` (monotonic) has passed or on close.

        Tries at once when ``first_now``, then after 0.5 s, 1 s, 2 s, 4 s, 5 s, 5 s, ...
        """
        delay = self._backoff[0]
        while not self._stop.is_set():
            if not first_now:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.wait(min(delay, remaining)):
                    return None
                delay = min(delay * 2, self._backoff[1])
                self._stats["reconnect_attempts"] += 1
            first_now = False
            cap = self._blocking(self._opener)
            if cap is not None:
                return cap
        return None

    def _push(self, frame: np.ndarray, ts: float) -> None:
        with self._cond:
            self._buf.append((frame, ts, self._next_index))
            self._next_index += 1
            self._stats["captured"] += 1
            while len(self._buf) > self.settings.buffer_frames:
                self._buf.popleft()
                self._pending_dropped += 1
                self._stats["dropped"] += 1
            self._cond.notify_all()

    def _run(self, cap: Any) -> None:
        outage_start: float | None = None  # when the current outage began; cleared by a good frame
        down_since: float | None = None    # when the connection was lost; cleared by a reconnect
        bad = 0
        try:
            while not self._stop.is_set():
                if cap is None:
                    cap = self._open_with_retries(outage_start + self.settings.reconnect_s, first_now=False)
                    if cap is None:
                        break
                    self._stats["gap_s"] += time.monotonic() - down_since
                    down_since = None
                    self._stats["reconnects"] += 1
                ok = self._blocking(cap.grab)
                ts = self._clock()
                frame = self._blocking(cap.retrieve)[1] if ok else None
                if frame is None:
                    bad += 1
                    if ok and bad <= MAX_CONSECUTIVE_DECODE_ERRORS:
                        self._stats["decode_errors"] += 1
                        continue
                    bad = 0
                    cap.release()
                    cap = None
                    down_since = time.monotonic()
                    outage_start = outage_start if outage_start is not None else down_since
                    continue
                bad = 0
                outage_start = None
                self._size = self._size or frame.shape[:2]
                self._push(to_rgb(frame, self._size), ts)
        except Exception as e:  # surfaced by read(); the thread must not die silently
            self._error = e
        finally:
            if down_since is not None:
                self._stats["gap_s"] += time.monotonic() - down_since
            if cap is not None:
                cap.release()
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    # ----------------------------------------------------------------- consumer side

    def _stalled(self) -> bool:
        busy = self._busy_since
        return busy is not None and time.monotonic() - busy > self._stall_s

    def read(self, n: int) -> FrameBatch | None:
        """The next ``n`` frames in capture order, blocking until they arrive; fewer when the stream
        ends; None once it has ended and nothing is left."""
        if n < 1:
            raise ValueError(f"read(n) needs n >= 1, got {n}")
        got: list = []
        with self._cond:
            while True:
                while self._buf and len(got) < n:
                    got.append(self._buf.popleft())
                if len(got) >= n or self._ended:
                    break
                if self._stalled():
                    self._stats["stalled"] = 1
                    self._ended = True
                    self._stop.set()
                    break
                self._cond.wait(timeout=0.25)
            dropped, self._pending_dropped = self._pending_dropped, 0
            self._stats["frames"] += len(got)
        if not got:
            if self._error is not None:
                err, self._error = self._error, None
                said = repr(err).replace(self.settings.uri.strip(), self.display)
                raise RuntimeError(f"{self.kind} reader for {self.display} failed: {said}") from None
            return None
        return make_batch([g[0] for g in got], [g[1] for g in got], [g[2] for g in got], dropped)

    def stats(self) -> dict:
        """frames delivered, dropped, reconnects (successful), decode_errors, gap_s (seconds without
        frames during outages), captured, reconnect_attempts, buffered, stalled (1 if the reader hung)."""
        with self._cond:
            return {**self._stats, "gap_s": round(self._stats["gap_s"], 3), "buffered": len(self._buf)}

    @property
    def ended(self) -> bool:
        """True once the reader has stopped (end of stream, gave up reconnecting, or closed)."""
        return self._ended

    def close(self) -> None:
        """Stop the reader and drop buffered frames; waits a bounded time for the thread."""
        self._stop.set()
        with self._cond:
            self._buf.clear()
            self._cond.notify_all()
        t = getattr(self, "_thread", None)
        if t is not None and t.is_alive() and t is not threading.current_thread():
            t.join(timeout=max(self.settings.open_timeout_s, self.settings.read_timeout_s) + 1.0)
        with self._cond:
            self._ended = True
