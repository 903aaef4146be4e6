"""Video sources: files, cameras, HTTP/RTSP streams and synthetic frames, read in batches.

Every source yields :class:`FrameBatch` objects of RGB ``uint8`` frames with a capture time
taken from an injected clock. Files and synthetic frames are read on demand; live sources
(cameras, ``http(s)://``, ``rtsp://``) are read by a background thread into a bounded buffer
(see :mod:`rayprof.streams`), so a slow consumer loses the oldest frames, and counts them,
instead of falling behind the live edge.

This is the package's only ``cv2`` reader. Credentials in URLs never leave it unmasked.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from .affinity import available_cores
from .errors import UserError
from .synth import SAMPLE_PATCHES, make_sample_video, sample_patch_center, synthetic_base  # noqa: F401

Clock = Callable[[], float]

#: How many failed decodes in a row a file may have before it is taken as ended.
MAX_CONSECUTIVE_DECODE_ERRORS = 25
_CAP_PROP_FRAME_COUNT = 7  # cv2.CAP_PROP_FRAME_COUNT, without importing cv2 at module load
#: Batch arrays a FileSource keeps for reuse: the batches alive at once when the worker reads the
#: next while it still holds the last (serial: 2; overlap: the one the model runs, the one queued
#: and the one being read), and one to spare.
BATCH_ARRAYS_KEPT = 4


@dataclass(frozen=True)
class SourceSettings:
    """How to open one source. ``field`` is the YAML path of ``uri``, used in error messages."""

    uri: str
    loop: bool = False
    width: int = 640
    height: int = 480
    fps: float = 30.0
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    reconnect_s: float = 30.0
    buffer_frames: int = 64
    field: str = "source"

    def field_of(self, name: str) -> str:
        """The YAML path of setting ``name`` (``workers[1].source.uri`` -> ``workers[1].source.fps``)."""
        if name == "uri":
            return self.field
        return f"{self.field.removesuffix('.uri')}.{name}"


@dataclass
class FrameBatch:
    """Frames ``(n, H, W, 3)`` uint8 RGB with their capture times, source indices and drops."""

    frames: np.ndarray
    capture_ts: np.ndarray
    indices: np.ndarray
    dropped: int = 0

    @property
    def n(self) -> int:
        return int(self.frames.shape[0])


class SourceOpenError(UserError):
    """The source could not be opened (the message names the masked URI, never credentials)."""


class VideoSource:
    """Base class: ``read(n)`` until it returns None, then ``close()`` (also a context manager)."""

    kind: str = ""
    display: str = ""
    live: bool = False

    def read(self, n: int) -> FrameBatch | None:
        raise NotImplementedError

    def stats(self) -> dict:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.display}>"


def describe_losses(stats: dict) -> str:
    """What a source's ``stats()`` say was lost, in words; ``''`` when nothing was: frames that
    failed to decode, frames dropped behind a live source, reconnects and the time without frames."""
    said = []
    if n := stats.get("decode_errors"):
        said.append(f"{n} frame(s) failed to decode (skipped)")
    if n := stats.get("dropped"):
        said.append(f"{n} frame(s) dropped (the worker fell behind the live source)")
    if n := stats.get("reconnects"):
        said.append(f"reconnected {n} time(s)")
    if gap := stats.get("gap_s"):
        said.append(f"{gap:.1f} s without frames (outages)")
    if stats.get("stalled"):
        said.append("the reader hung and was stopped")
    return ", ".join(said)


# --------------------------------------------------------------------------- URIs

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CAMERA = re.compile(r"^[+-]?\d+$")
_V4L_DEVICE = re.compile(r"^/dev/video(\d+)$")
_SECRET_PARAM = re.compile(r"([?&;])([^=&;#]*)=([^&;#]*)")
_SECRET_NAMES = ("password", "passwd", "pwd", "token", "key", "secret", "signature", "sig", "auth")
SCHEMES = {"http": "http", "https": "http", "rtsp": "rtsp", "rtsps": "rtsp", "file": "file"}


def source_kind(uri: str, field: str = "source") -> str:
    """``"file" | "camera" | "http" | "rtsp" | "synthetic"`` from the URI's shape; nothing is opened.

    Raises :class:`UserError` for a URL scheme rayprof cannot read (``udp://``, ``s3://``...).
    """
    u = str(uri).strip()
    if u.lower() == "synthetic":
        return "synthetic"
    if _CAMERA.match(u) or _V4L_DEVICE.match(u):
        return "camera"
    m = _SCHEME.match(u)
    if m:
        kind = SCHEMES.get(m.group(1).lower())
        if kind is None:
            raise UserError(field, mask_url(u), f"URL scheme '{m.group(1)}://' is not supported",
                            "use a file path, a camera index like '0', http(s)://, rtsp:// or 'synthetic'")
        return kind
    return "file"


def _is_secret(name: str) -> bool:
    n = name.lower().replace("-", "_")
    return n in _SECRET_NAMES or n.endswith(
        ("_key", "_token", "_password", "_secret", "apikey", "signature", "credential", "_auth"))


def mask_url(uri: str) -> str:
    """The URI with credentials replaced by ``***``: the password of ``user:pass@`` and the values
    of query parameters named like password/token/key/secret. Other text is kept as it was."""
    s = str(uri)
    m = _SCHEME.match(s)
    if not m:
        return s
    start = m.end()
    end = len(s)
    for ch in "/?#":
        i = s.find(ch, start)
        if i != -1:
            end = min(end, i)
    netloc, rest = s[start:end], s[end:]
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    q = rest.find("?")
    if q != -1:
        h = rest.find("#", q)
        query, frag = (rest[q:], "") if h == -1 else (rest[q:h], rest[h:])
        query = _SECRET_PARAM.sub(
            lambda p: f"{p.group(1)}{p.group(2)}=***" if _is_secret(p.group(2)) else p.group(0), query)
        rest = rest[:q] + query + frag
    return s[:start] + netloc + rest


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


def mask_text(text: str) -> str:
    """``text`` with every URL in it masked by :func:`mask_url` (for command lines, messages)."""
    return _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), str(text))


def _file_path(uri: str) -> Path:
    u = uri.strip()
    if u.lower().startswith("file://"):
        u = u[len("file://"):]
    return Path(u).expanduser()


def _camera_index(uri: str) -> int:
    u = uri.strip()
    m = _V4L_DEVICE.match(u)
    return int(m.group(1)) if m else int(u)


# --------------------------------------------------------------------------- checks


def _check_settings(s: SourceSettings, kind: str) -> None:
    positive = {"open_timeout_s": s.open_timeout_s, "read_timeout_s": s.read_timeout_s,
                "buffer_frames": s.buffer_frames}
    if kind == "synthetic":
        positive.update(width=s.width, height=s.height)
    for name, value in positive.items():
        if not value > 0:
            raise UserError(s.field_of(name), value, "must be greater than 0", f"set {name} to a positive number")
    for name, value in (("reconnect_s", s.reconnect_s), ("fps", s.fps)):
        if not value >= 0:
            raise UserError(s.field_of(name), value, "must be 0 or more", f"set {name} to 0 or a positive number")


def _check_url(s: SourceSettings, kind: str) -> None:
    shown = mask_url(s.uri.strip())
    try:
        parts = urlsplit(s.uri.strip())
        port = parts.port
    except ValueError:
        raise UserError(s.field, shown, "is not a valid URL (bad port or brackets)",
                        f"write it as {kind}://host[:port]/path") from None
    if not parts.hostname or any(c.isspace() for c in s.uri.strip()):
        raise UserError(s.field, shown, "is not a valid URL (no host, or spaces in it)",
                        f"write it as {kind}://host[:port]/path; percent-encode spaces as %20")
    if port == 0:
        raise UserError(s.field, shown, "has port 0", "use the port the stream is served on")


def _check_file(s: SourceSettings) -> None:
    path = _file_path(s.uri)
    where = "" if path.is_absolute() else f" (relative to {os.getcwd()})"
    if not path.exists():
        raise UserError(s.field, s.uri, f"no such file{where}",
                        "give the path of a video file, a camera index like '0', a URL or 'synthetic'")
    if path.is_dir():
        raise UserError(s.field, s.uri, "is a directory, not a video file", "give the path of one video file")
    try:
        with open(path, "rb") as fh:
            empty = not fh.read(1)
    except OSError as e:
        raise UserError(s.field, s.uri, f"cannot be read ({e.strerror or e})",
                        "fix the file's permissions or run as a user who may read it") from None
    if empty:
        raise UserError(s.field, s.uri, "is an empty file", "give a video file with frames in it")
    import cv2

    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        ok = cap.isOpened() and cap.read()[0]
    finally:
        cap.release()
    if not ok:
        raise UserError(s.field, s.uri, "is not a video OpenCV can decode (no first frame)",
                        "give a video file such as .mp4 (H.264/MPEG-4) or .avi (MJPG)")


def check_source(settings: SourceSettings) -> None:
    """Pre-flight checks that raise :class:`UserError`; files are opened and one frame decoded,
    streams are checked for URL shape only (no network)."""
    s = settings
    if not str(s.uri).strip():
        raise UserError(s.field, s.uri, "is empty", "give a video file, a camera index like '0', a URL or 'synthetic'")
    kind = source_kind(s.uri, s.field)
    _check_settings(s, kind)
    if kind == "file":
        _check_file(s)
    elif kind == "camera" and _camera_index(s.uri) < 0:
        raise UserError(s.field, s.uri, "is not a camera index", "use 0 for the first camera, 1 for the next, ...")
    elif kind in ("http", "rtsp"):
        _check_url(s, kind)


def open_source(settings: SourceSettings, clock: Clock = time.time,
                sleep: Callable[[float], None] = time.sleep) -> VideoSource:
    """Open the source ``settings.uri`` names. ``clock`` stamps frames (seconds since the epoch);
    ``sleep`` paces synthetic frames. Raises :class:`UserError` / :class:`SourceOpenError`."""
    s = settings
    kind = source_kind(s.uri, s.field)
    _check_settings(s, kind)
    if kind == "synthetic":
        return SyntheticSource(s, clock, sleep)
    if kind == "file":
        _check_file(s)
        return FileSource(s, clock)
    from .streams import LiveSource, camera_opener, stream_opener

    if kind == "camera":
        check_source(s)
        return LiveSource(s, kind, camera_opener(_camera_index(s.uri)), clock)
    _check_url(s, kind)
    return LiveSource(s, kind, stream_opener(s.uri.strip(), kind, s), clock)


# --------------------------------------------------------------------------- frames


def to_rgb(frame: np.ndarray, size: tuple[int, int] | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """An OpenCV frame (BGR, BGRA or gray) as RGB, resized to ``size`` (H, W) if it differs."""
    import cv2

    if size is not None and frame.shape[:2] != size:
        frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    if frame.ndim == 2 or frame.shape[2] == 1:
        code = cv2.COLOR_GRAY2RGB
    elif frame.shape[2] == 4:
        code = cv2.COLOR_BGRA2RGB
    else:
        code = cv2.COLOR_BGR2RGB
    if out is None:
        return cv2.cvtColor(frame, code)
    res = cv2.cvtColor(frame, code, dst=out)
    if res is not out:  # cv2 allocated instead of writing in place
        out[...] = res
    return out


class BatchArrays:
    """Batch arrays for one reading thread, each handed out again once nothing else refers to it.

    A :class:`FrameBatch`'s frames are a view of one of these arrays, and every NumPy view of
    them, array or tensor sharing their memory (``torch.from_numpy``, a memoryview) keeps a
    reference to it. So while anything can still see a batch's frames, the array's reference
    count (CPython's) is above the pool's own and it is not reused; once nothing can, the next
    batch is written into pages already mapped, instead of a new array's, which the kernel zeroes
    on first touch (8 × 6 MB for a batch of 8 frames at 1080p).
    """

    def __init__(self, keep: int = BATCH_ARRAYS_KEPT):
        self._arrays: list[np.ndarray] = []
        self._keep = keep

    def _free(self, i: int) -> bool:
        return sys.getrefcount(self._arrays[i]) == 2  # the list's reference and the argument's

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialized uint8 array of ``shape`` that nothing else refers to."""
        free = [i for i in range(len(self._arrays)) if self._free(i)]
        for i in free:
            if self._arrays[i].shape == shape:
                return self._arrays[i]
        array = np.empty(shape, dtype=np.uint8)
        if free:  # a free array of another shape makes room
            self._arrays[free[0]] = array
        elif len(self._arrays) < self._keep:
            self._arrays.append(array)
        return array


def make_batch(frames: list[np.ndarray], ts: list[float], idx: list[int], dropped: int) -> FrameBatch:
    """A FrameBatch from per-frame lists (frames already RGB and of one size)."""
    return FrameBatch(frames=np.ascontiguousarray(np.stack(frames)),
                      capture_ts=np.asarray(ts, dtype=np.float64),
                      indices=np.asarray(idx, dtype=np.int64), dropped=int(dropped))


class FileSource(VideoSource):
    """A video file read with OpenCV's FFmpeg backend; ``loop`` reopens it at the end.

    Damaged and truncated files are read as far as they can be:

    - A damaged region is skipped and every frame in it that fails to decode counts once in
      ``decode_errors``; the frames after it are read. This is what MP4/MOV files do (their index
      hands every frame to the decoder, however long the damage). Matroska and AVI demuxers
      resynchronise past damage without handing on what they skip: those frames are neither
      read nor counted (the file just has fewer frames).
    - A truncated file ends cleanly at its last readable frame, and the missing tail is not
      counted (a frame cut in half may count once): only the container's frame count would
      tell, and it is an estimate for many formats (144 for a 120-frame variable-rate MKV), so
      counting from it would report losses in intact files.

    A failed read short of the container's frame count is taken as damage (the count bounds
    how far it is skipped, at about 15 us a read); past the count, or where the container gives
    none, a packet that does not decode is damage (up to ``MAX_CONSECUTIVE_DECODE_ERRORS`` in a
    row) and a failed read is the end.

    ``open_capture`` (for tests) returns a cv2.VideoCapture-like object or None.
    """

    kind = "file"
    live = False

    def __init__(self, settings: SourceSettings, clock: Clock = time.time,
                 open_capture: Callable[[], Any] | None = None):
        self.settings = settings
        self.display = mask_url(settings.uri)
        self._clock = clock
        self._open = open_capture or self._open_cv
        self._cap = self._open()
        if self._cap is None:
            raise SourceOpenError(settings.field, self.display, "OpenCV could not open the file",
                                  "check that it is a video file OpenCV/FFmpeg can read")
        self._size: tuple[int, int] | None = None
        self._next = 0              # index of the next frame delivered (counts across loops)
        self._pass_frames = 0       # frames delivered in the current pass over the file
        self._pending_errors = 0    # failed decodes not yet known to be mid-file
        self._stats = {"frames": 0, "dropped": 0, "reconnects": 0, "decode_errors": 0, "gap_s": 0.0, "loops": 0}
        self._done = False
        self._arrays = BatchArrays()

    def _open_cv(self):
        import cv2

        # one decoder thread per core this process may use now, after the worker pinned its cores:
        # said explicitly, as OpenCV's own count depends on its build and on when it counted
        # (some builds count once per process, before the pin, e.g. at the pre-flight check)
        cap = cv2.VideoCapture(str(_file_path(self.settings.uri)), cv2.CAP_FFMPEG,
                               [cv2.CAP_PROP_N_THREADS, len(available_cores())])
        return cap if cap.isOpened() else None

    def _grab(self) -> np.ndarray | None:
        """The next decoded frame (BGR), or None at the end of the file (looping if asked).

        Failures followed by a good frame count in ``decode_errors``; failures with no good
        frame after them are the end (see the class docstring).
        """
        while self._cap is not None:
            ok = self._cap.grab()
            frame = self._cap.retrieve()[1] if ok else None
            if frame is not None:
                self._stats["decode_errors"] += self._pending_errors
                self._pending_errors = 0
                return frame
            self._pending_errors += 1
            if self._damaged(ok):
                continue
            self._pending_errors = 0
            self._cap.release()
            self._cap = None
            if self.settings.loop and self._pass_frames > 0:
                self._stats["loops"] += 1
                self._pass_frames = 0
                self._cap = self._open()
        return None

    def _damaged(self, ok: bool) -> bool:
        """After a grab that gave no frame (``ok``: a packet was read): True if it is damage to
        skip, False if the file has ended."""
        total = self._cap.get(_CAP_PROP_FRAME_COUNT)  # 0 when unknown
        if self._pass_frames + self._pending_errors < total:
            return True  # short of the container's count: a bad frame, not the end
        return ok and self._pending_errors <= MAX_CONSECUTIVE_DECODE_ERRORS

    def read(self, n: int) -> FrameBatch | None:
        if n < 1:
            raise ValueError(f"read(n) needs n >= 1, got {n}")
        if self._done:
            return None
        out: np.ndarray | None = None
        ts = np.empty(n, dtype=np.float64)
        k = 0
        while k < n:
            frame = self._grab()
            if frame is None:
                self._done = True
                break
            if out is None:
                self._size = self._size or frame.shape[:2]
                out = self._arrays.take((n, *self._size, 3))
            to_rgb(frame, self._size, out[k])
            ts[k] = self._clock()
            self._pass_frames += 1
            k += 1
        if k == 0:
            return None
        idx = np.arange(self._next, self._next + k, dtype=np.int64)
        self._next += k
        self._stats["frames"] += k
        return FrameBatch(frames=out[:k], capture_ts=ts[:k], indices=idx, dropped=0)

    def stats(self) -> dict:
        return dict(self._stats)

    def close(self) -> None:
        self._done = True
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class SyntheticSource(VideoSource):
    """Deterministic moving frames: a seeded base image rolled a few pixels per frame index.

    With ``fps > 0`` it behaves like a live camera: frame ``i`` is captured at ``t0 + i/fps``
    (its ``capture_ts``), whether or not anyone reads it, and a reader that falls more than
    ``buffer_frames`` behind loses the oldest frames, counted in ``dropped``. So a model slower
    than the rate shows it in ``dropped_frames`` and ``frame_age_ms``. ``fps: 0`` generates as
    fast as the reader asks (no pacing, nothing dropped). Never ends.
    """

    kind = "synthetic"
    display = "synthetic"

    def __init__(self, settings: SourceSettings, clock: Clock = time.time,
                 sleep: Callable[[float], None] = time.sleep, seed: int = 0):
        self.settings = settings
        self.live = settings.fps > 0
        self._clock, self._sleep = clock, sleep
        self.base = synthetic_base(settings.height, settings.width, seed)
        self._next = 0
        self._dropped = 0
        self._t0: float | None = None
        self._closed = False

    def frame(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """Frame ``index``: the base image shifted down 2 and right 3 pixels per index (wrapping)."""
        h, w = self.base.shape[:2]
        dy, dx = (2 * index) % h, (3 * index) % w
        out = np.empty_like(self.base) if out is None else out
        b = self.base
        out[dy:, dx:] = b[: h - dy, : w - dx]
        out[dy:, :dx] = b[: h - dy, w - dx:]
        out[:dy, dx:] = b[h - dy:, : w - dx]
        out[:dy, :dx] = b[h - dy:, w - dx:]
        return out

    def read(self, n: int) -> FrameBatch | None:
        if n < 1:
            raise ValueError(f"read(n) needs n >= 1, got {n}")
        if self._closed:
            return None
        h, w = self.base.shape[:2]
        frames = np.empty((n, h, w, 3), dtype=np.uint8)
        ts = np.empty(n, dtype=np.float64)
        fps = self.settings.fps
        dropped = 0
        if fps > 0:
            if self._t0 is None:
                self._t0 = self._clock()
            newest = int((self._clock() - self._t0) * fps + 1e-9)  # frames captured so far: 0..newest
            oldest_kept = newest - self.settings.buffer_frames + 1
            if self._next < oldest_kept:  # the reader fell behind: the buffer lost the oldest
                dropped = oldest_kept - self._next
                self._next = oldest_kept
        start = self._next
        for k in range(n):
            i = start + k
            if fps > 0:
                due = self._t0 + i / fps
                wait = due - self._clock()
                if wait > 0:
                    self._sleep(wait)
                ts[k] = due
            else:
                ts[k] = self._clock()
            self.frame(i, frames[k])
        idx = np.arange(start, start + n, dtype=np.int64)
        self._next = start + n
        self._dropped += dropped
        return FrameBatch(frames=frames, capture_ts=ts, indices=idx, dropped=dropped)

    def stats(self) -> dict:
        return {"frames": self._next - self._dropped, "dropped": self._dropped, "reconnects": 0,
                "decode_errors": 0, "gap_s": 0.0}

    def close(self) -> None:
        self._closed = True
