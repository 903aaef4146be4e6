"""Opening the extractor's input and reading it frame by frame, with timestamps.

The extractor reads with OpenCV directly rather than through :mod:`rayprof.source`: it needs each
frame's *timestamp* (``CAP_PROP_POS_MSEC``, the container's presentation time) and its exact
index, and it must decode every frame but convert only the few it writes (``grab()`` decodes,
``retrieve()`` converts). rayprof's sources hand out converted batches stamped with the capture
clock. The checks and openers for URLs, cameras and the ``sample`` video are rayprof's.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from frame_extract import _common  # noqa: F401  (quiet OpenCV logs before cv2 is imported)
from rayprof.errors import UserError
from rayprof.source import SourceSettings, mask_url, source_kind

#: Failed decodes in a row a file may have, short of its known length, before it is taken as ended.
MAX_CONSECUTIVE_DECODE_ERRORS = 25
_ANY_INPUT = "give a video file (e.g. .mp4, .mkv, .avi) or a stream URL (http(s)://, rtsp://)"

Opener = Callable[[], Any]  # returns an opened cv2.VideoCapture-like object, or None


@dataclass(frozen=True)
class InputInfo:
    """What the input is, for messages, the index and the progress bar."""

    display: str            # the input as given, credentials masked
    kind: str               # file | http | rtsp | camera
    live: bool
    fps: float              # the container's frame rate (0 if unknown)
    frame_count: int        # the container's frame count (0 if unknown)
    width: int
    height: int
    wall_clock: bool        # timestamps are arrival times (live MJPEG carries none)

    @property
    def duration_s(self) -> float:
        """The container's duration (frames / rate); 0 if unknown or live."""
        if self.live or self.fps <= 0 or self.frame_count <= 0:
            return 0.0
        return self.frame_count / self.fps


class FrameReader:
    """A capture read frame by frame: :meth:`next` decodes the next frame and returns its
    timestamp; :meth:`image` converts the current frame; :meth:`image_of` re-reads an earlier
    frame of a file (rarely needed: see the extractor).

    Timestamps are seconds on the container's clock (files), or since the first frame (live
    sources: the stream's clock, or arrival times where the stream has none).
    """

    def __init__(self, opener: Opener, info: InputInfo, *, cap: Any = None,
                 clock: Callable[[], float] = time.monotonic):
        self._opener, self.info, self._clock = opener, info, clock
        self._cap = cap if cap is not None else opener()  # a live source is opened once
        if self._cap is None:
            raise RuntimeError("the capture could not be opened")
        self.index = -1               # index of the current (last decoded) frame
        self.decode_errors = 0
        self.rereads = 0
        self._t0: float | None = None

    # -- reading ----------------------------------------------------------------------------

    def _timestamp(self) -> float:
        if self.info.wall_clock:
            now = self._clock()
            if self._t0 is None:
                self._t0 = now
            return now - self._t0
        t = float(self._cap.get(0)) / 1000.0  # cv2.CAP_PROP_POS_MSEC
        if not math.isfinite(t):
            t = 0.0
        if self.info.live:
            if self._t0 is None:
                self._t0 = t
            return t - self._t0
        return t

    def next(self) -> float | None:
        """Decode the next frame; its timestamp in seconds, or None at the end."""
        if self._cap is None:
            return None
        failures = 0
        while True:
            if self._cap.grab():
                self.decode_errors += failures
                self.index += 1
                return self._timestamp()
            failures += 1
            known = self.info.frame_count
            if self.info.live or failures > MAX_CONSECUTIVE_DECODE_ERRORS or not (self.index + 1 + failures < known):
                self.close()
                return None
            # short of the container's known length: a damaged packet, not the end

    def image(self) -> np.ndarray:
        """The current frame, BGR uint8 (converted now: call it before the next :meth:`next`)."""
        ok, frame = self._cap.retrieve()
        if not ok or frame is None:
            raise RuntimeError(f"frame {self.index} was decoded but could not be converted")
        return frame

    def image_of(self, index: int) -> np.ndarray:
        """Frame ``index`` (earlier than the current one) of a file: reopen, decode up to it,
        convert it, then decode forward to where reading was. Exact, and costly; the extractor
        needs it only when a variable-rate file leaves a gap much longer than its recent frames."""
        if self.info.live:
            raise RuntimeError("a live stream cannot be read again")
        current = self.index
        self.rereads += 1
        self.close()
        self._cap = self._opener()
        if self._cap is None:
            raise RuntimeError(f"{self.info.display} could not be reopened")
        self.index = -1
        frame = None
        while self.index < current:
            if self.next() is None:
                raise RuntimeError(f"{self.info.display} ended at frame {self.index} when read again")
            if self.index == index:
                frame = self.image()
        if frame is None:
            raise RuntimeError(f"frame {index} is not before frame {current}")
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


# -- opening -----------------------------------------------------------------------------------


def _file_opener(path: Path) -> Opener:
    def open_capture():
        import cv2

        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if cap.isOpened():
            return cap
        cap.release()
        return None

    return open_capture


def _check_file(field: str, text: str, path: Path) -> None:
    where = "" if path.is_absolute() else f" (relative to {os.getcwd()})"
    if not path.exists():
        raise UserError(field, text, f"no such file{where}", _ANY_INPUT)
    if path.is_dir():
        raise UserError(field, text, "is a folder, not a video file", _ANY_INPUT)
    try:
        with open(path, "rb") as fh:
            empty = not fh.read(1)
    except OSError as e:
        raise UserError(field, text, f"cannot be read ({e.strerror or e})",
                        "fix the file's permissions or run as a user who may read it") from None
    if empty:
        raise UserError(field, text, "is an empty file", _ANY_INPUT)


def _info(cap: Any, display: str, kind: str, live: bool) -> InputInfo:
    import cv2

    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    count = float(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC) or 0)
    codec = fourcc.to_bytes(4, "little", signed=False).decode("latin-1") if 0 < fourcc < 2**32 else ""
    return InputInfo(display=display, kind=kind, live=live,
                     fps=fps if math.isfinite(fps) and 0 < fps < 10_000 else 0.0,
                     frame_count=int(count) if math.isfinite(count) and count > 0 and not live else 0,
                     width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
                     height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
                     # multipart MJPEG over HTTP (IP cameras) has no timestamps: FFmpeg invents 25 fps
                     wall_clock=live and (kind == "camera" or codec.upper() == "MJPG"))


def open_input(text: str, *, field: str = "input", open_timeout_s: float = 10.0,
               read_timeout_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> tuple[FrameReader, float]:
    """Open ``text`` (a video file, ``sample``, an http(s)/rtsp URL or a camera index) and decode
    its first frame. Returns the reader, positioned on that frame, and the frame's timestamp.
    Every problem a user can cause is a :class:`UserError` naming ``field``; nothing is written."""
    from rayprof.samples import resolve_uri
    from rayprof.source import check_source

    raw = str(text).strip()
    display = mask_url(raw)
    if not raw:
        raise UserError(field, text, "is empty", _ANY_INPUT)
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", raw)
    if scheme and scheme.group(1).lower() not in ("http", "https", "rtsp", "rtsps", "file"):
        raise UserError(field, display, f"URL scheme '{scheme.group(1)}://' is not supported",
                        "use a file path, http(s)://, rtsp(s):// or a camera index like 0")
    kind = source_kind(raw, field)
    if kind == "synthetic":
        raise UserError(field, text, "is rayprof's generated test pattern, not a video", _ANY_INPUT)
    if kind == "file":
        uri = resolve_uri(raw)
        path = Path(uri[len("file://"):] if uri.lower().startswith("file://") else uri).expanduser()
        _check_file(field, display, path)
        opener, live = _file_opener(path), False
    else:
        settings = SourceSettings(uri=raw, field=field, open_timeout_s=open_timeout_s, read_timeout_s=read_timeout_s)
        check_source(settings)  # URL shape, camera index; no network
        from rayprof.streams import camera_opener, stream_opener

        if kind == "camera":
            opener = camera_opener(int(raw.removeprefix("/dev/video")))
        else:
            opener = stream_opener(raw, kind, settings)
        live = True
    cap = opener()
    if cap is None:
        if live:
            what = "camera could not be opened" if kind == "camera" else \
                f"could not be opened (refused, no answer within {open_timeout_s:g} s, or not a video stream)"
            raise UserError(field, display, what,
                            "check the address, that the server is up and reachable from here, and the "
                            "credentials; --open-timeout waits longer")
        raise UserError(field, display, "is not a video OpenCV/FFmpeg can read",
                        "give a video file such as .mp4 (H.264/MPEG-4), .mkv or .avi")
    reader = FrameReader(opener, _info(cap, display, kind, live), cap=cap, clock=clock)
    t = reader.next()
    if t is None:
        reader.close()
        if live:
            raise UserError(field, display, f"connected, but no frame arrived within {read_timeout_s:g} s",
                            "check that the stream is live and sends video")
        raise UserError(field, display, "has no frame that could be decoded",
                        "give a video file such as .mp4 (H.264/MPEG-4), .mkv or .avi")
    return reader, t
