"""The bundled sample: ``source: sample`` reads a real H.264/MPEG-4 video that rayprof writes
on first use (10 s, 640×360, 30 fps, moving shapes and a frame counter), so the demo and the
tests need no download. It is written per machine, atomically, so actors on any node find it.
"""

from __future__ import annotations

import os
from pathlib import Path

SAMPLE_URI = "sample"


def cache_dir() -> Path:
    """Where rayprof keeps what it makes once per machine (the sample video, torchvision's
    model list): ``$RAYPROF_CACHE``, else ``~/.cache/rayprof``."""
    return Path(os.environ.get("RAYPROF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rayprof"))


def sample_path() -> Path:
    return cache_dir() / "sample-640x360-30fps-10s.mp4"


def ensure_sample() -> Path:
    """The sample video's path, written first if it is not there yet."""
    path = sample_path()
    for candidate in (path, path.with_suffix(".avi")):  # .avi where the mp4v writer is missing
        if candidate.exists():
            return candidate
    from .synth import make_sample_video

    return Path(make_sample_video(path, seconds=10.0, fps=30.0, width=640, height=360))


def resolve_uri(uri: str) -> str:
    """``sample`` → the sample's path; anything else unchanged."""
    return str(ensure_sample()) if uri.strip().lower() == SAMPLE_URI else uri
