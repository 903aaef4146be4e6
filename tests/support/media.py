"""Media helpers for tests: the bundled ffmpeg, free ports, and an HTTP stream served by ffmpeg.

Everything listens on 127.0.0.1 only; every process started here is stopped by its owner.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path


def ffmpeg_exe() -> str:
    """The ffmpeg binary shipped by imageio-ffmpeg (never assumed on PATH)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Terminate ``proc``, then kill it if it has not exited within ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


class HttpStreamServer:
    """``ffmpeg -re -stream_loop -1 -i VIDEO ... -listen 1 http://127.0.0.1:PORT/stream``.

    ``fmt="mpjpeg"``: MJPEG over multipart HTTP, as IP cameras serve it; ``fmt="mpegts"``: MPEG-4
    video in MPEG-TS. ffmpeg's HTTP server takes one client and exits when it goes away, so a
    reconnecting reader needs :meth:`start` again (same port). The feed starts at connect time.
    """

    def __init__(self, video: Path, workdir: Path, *, fmt: str = "mpjpeg", port: int | None = None):
        self.video, self.workdir, self.fmt = Path(video), Path(workdir), fmt
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream"

    def start(self) -> HttpStreamServer:
        codec = ["-c:v", "mjpeg", "-q:v", "5"] if self.fmt == "mpjpeg" else ["-c:v", "mpeg4", "-q:v", "5", "-g", "10"]
        self.starts += 1
        with open(self.workdir / f"http-{self.port}-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-stream_loop", "-1",
                 "-i", str(self.video), "-an", *codec, "-f", self.fmt, "-listen", "1", self.url],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def __enter__(self) -> HttpStreamServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BlackHoleServer:
    """A TCP port that accepts connections (kernel backlog) and never answers: opens must time out."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> BlackHoleServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_until_end(src, n: int = 10, limit: int = 2000) -> list:
    """Every batch of ``src`` in batches of ``n``, failing (not hanging) if it never ends."""
    out = []
    for _ in range(limit):
        b = src.read(n)
        if b is None:
            return out
        out.append(b)
    raise AssertionError("source did not end")
