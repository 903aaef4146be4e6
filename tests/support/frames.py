"""Helpers for the frame_extract tests: generated videos (constant, 29.97 and variable frame
rate), generated images, and what ffmpeg's own ``fps`` filter chooses on the same video.

Every video is written here, with OpenCV or the ffmpeg binary from imageio-ffmpeg; nothing is
downloaded. Every frame of a generated video differs from the others (a frame counter, moving
shapes), which is what lets :func:`ffmpeg_fps_choice` tell which source frame ffmpeg chose.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.media import ffmpeg_exe

REPO = Path(__file__).resolve().parents[2]


def ffmpeg(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def cfr_video(path: Path, *, seconds: float = 10.0, fps: float = 30.0, width: int = 96, height: int = 64) -> Path:
    """A constant-rate MPEG-4 video written with OpenCV (rayprof's sample generator)."""
    from rayprof.source import make_sample_video

    return make_sample_video(path, seconds=seconds, fps=fps, width=width, height=height)


def ntsc_video(src: Path, path: Path) -> Path:
    """``src`` re-timed to exactly 30000/1001 fps (29.97), MPEG-4 in MP4."""
    res = ffmpeg("-loglevel", "error", "-r", "30000/1001", "-i", str(src), "-c:v", "mpeg4", "-q:v", "2", str(path))
    assert res.returncode == 0, res.stderr
    return path


def vfr_video(src: Path, path: Path, expr: str = "(N*40+15*sin(N))/1000/TB") -> Path:
    """``src`` with variable frame intervals (10–70 ms with the default expression, in a
    millisecond time base), lossless FFV1 in Matroska, every frame kept."""
    res = ffmpeg("-loglevel", "error", "-i", str(src), "-vf", f"settb=1/1000,setpts={expr}",
                 "-fps_mode", "passthrough", "-enc_time_base", "1:1000", "-c:v", "ffv1", str(path))
    assert res.returncode == 0, res.stderr
    return path


def faststart_copy(src: Path, path: Path) -> Path:
    """``src`` remuxed with its index first (``-movflags +faststart``), so a truncated copy still opens."""
    res = ffmpeg("-loglevel", "error", "-i", str(src), "-c", "copy", "-movflags", "+faststart", str(path))
    assert res.returncode == 0, res.stderr
    return path


@dataclass(frozen=True)
class Chosen:
    """One output frame of ffmpeg's fps filter: the input frame it shows."""

    n: int          # the input frame's number, counting the frames that reached the filter
    pts_time: float  # the input frame's timestamp (s), as the filter saw it


_SHOWINFO = re.compile(r"\[Parsed_showinfo_(\d+) @ [^\]]+\] n:\s*(\d+) pts:\s*(-?\d+) pts_time:(\S+)"
                       r".*? checksum:([0-9A-Fa-f]+)")


def ffmpeg_frames(video: Path, *, input_opts: tuple[str, ...] = ()) -> list[Chosen]:
    """Every frame ffmpeg decodes from ``video`` (with ``input_opts`` such as ``-ss 2``), in order."""
    res = ffmpeg("-loglevel", "info", *input_opts, "-i", str(video), "-vf", "showinfo", "-f", "null", "-")
    assert res.returncode == 0, res.stderr[-2000:]
    return [Chosen(int(m.group(2)), float(m.group(4))) for m in _SHOWINFO.finditer(res.stderr)]


def ffmpeg_fps_choice(video: Path, fps: str, *, input_opts: tuple[str, ...] = ()) -> list[Chosen]:
    """The frames ``ffmpeg [input_opts] -i video -vf fps=<fps>`` outputs, as the input frames they
    show: ``showinfo`` before and after the filter, matched by the frames' checksums."""
    res = ffmpeg("-loglevel", "info", *input_opts, "-i", str(video), "-vf", f"showinfo,fps={fps},showinfo",
                 "-fps_mode", "passthrough", "-f", "null", "-")
    assert res.returncode == 0, res.stderr[-2000:]
    inputs: dict[str, Chosen] = {}
    outputs: list[str] = []
    for m in _SHOWINFO.finditer(res.stderr):
        which, n, t, checksum = int(m.group(1)), int(m.group(2)), float(m.group(4)), m.group(5)
        if which == 0:
            assert checksum not in inputs, "two input frames are identical: the test video must differ per frame"
            inputs[checksum] = Chosen(n, t)
        else:
            outputs.append(checksum)
    assert inputs and outputs, res.stderr[-2000:]
    return [inputs[c] for c in outputs]


def tool(module: str, *args: str, env: dict | None = None, timeout: float = 300,
         cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``python -m frame_extract.<module> ARGS`` in a subprocess, as a user runs it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), full_env.get("PYTHONPATH", "")) if p)
    full_env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", f"frame_extract.{module}", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def write_images(folder: Path, n: int, *, width: int = 96, height: int = 64, ext: str = "png") -> list[Path]:
    """``n`` small distinct images (shapes on a gradient) named img_000.png, …"""
    import cv2
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(n):
        img = np.zeros((height, width, 3), np.uint8)
        img[..., 0] = (xx * 255 // max(1, width - 1)).astype(np.uint8)
        img[..., 1] = (yy * 255 // max(1, height - 1)).astype(np.uint8)
        img[..., 2] = (37 * i) % 256
        cv2.circle(img, ((7 * i) % width, height // 2), max(3, height // 5), (255, 255, 255), -1)
        cv2.rectangle(img, (width // 2, (5 * i) % height), (width // 2 + width // 6, (5 * i) % height + height // 6),
                      (0, 0, 255), -1)
        p = folder / f"img_{i:03d}.{ext}"
        assert cv2.imwrite(str(p), img)
        paths.append(p)
    return paths
