"""Generated frames: the synthetic source's base image and the sample video file.

:func:`make_sample_video` writes a real video with OpenCV (moving shapes, solid colour patches in
three corners, a frame counter); :data:`SAMPLE_PATCHES` and :func:`sample_patch_center` say where
the patches are, so a reader's colour order can be checked against known pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def synthetic_base(height: int, width: int, seed: int = 0) -> np.ndarray:
    """The seeded base image of synthetic frames: colour gradients plus random solid blocks."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[..., 0] = x.astype(np.uint8)
    img[..., 1] = y.astype(np.uint8)
    img[..., 2] = ((x + y) / 2).astype(np.uint8)
    for _ in range(12):
        bh, bw = max(1, height // rng.integers(4, 12)), max(1, width // rng.integers(4, 12))
        y0, x0 = rng.integers(0, max(1, height - bh)), rng.integers(0, max(1, width - bw))
        img[y0:y0 + bh, x0:x0 + bw] = rng.integers(0, 256, size=3, dtype=np.uint8)
    return img


#: Solid patches drawn on every frame of :func:`make_sample_video`: name -> (RGB colour, corner).
SAMPLE_PATCHES = {"red": ((255, 0, 0), "top-left"), "green": ((0, 255, 0), "top-right"),
                  "blue": ((0, 0, 255), "bottom-left")}


def sample_patch_center(name: str, width: int, height: int) -> tuple[int, int]:
    """(y, x) of the centre of a :data:`SAMPLE_PATCHES` patch in a ``width`` x ``height`` video."""
    s = max(8, min(width, height) // 6)
    corner = SAMPLE_PATCHES[name][1]
    y = s // 2 if corner.startswith("top") else height - s // 2 - 1
    x = s // 2 if corner.endswith("left") else width - s // 2 - 1
    return y, x


def sample_frame(i: int, width: int, height: int, background: np.ndarray | None = None) -> np.ndarray:
    """Frame ``i`` of the sample video (BGR, as OpenCV writes it)."""
    import cv2

    if background is None:
        background = synthetic_base(height, width, seed=7) // 2
    f = background.copy()
    s = max(8, min(width, height) // 6)
    for name, ((r, g, b), _) in SAMPLE_PATCHES.items():
        y, x = sample_patch_center(name, width, height)
        f[y - s // 2: y + s // 2, x - s // 2: x + s // 2] = (b, g, r)
    cx = s + (i * 4) % max(1, width - 2 * s)
    cv2.circle(f, (cx, height // 2), max(4, s // 2), (255, 255, 255), -1)
    ry = s + (i * 3) % max(1, height - 2 * s)
    cv2.rectangle(f, (width // 2 - s // 2, ry - s // 3), (width // 2 + s // 2, ry + s // 3), (0, 255, 255), -1)
    scale = max(0.4, height / 480)
    cv2.putText(f, f"frame {i:05d}", (s + 4, height - 8), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                max(1, int(2 * scale)), cv2.LINE_AA)
    return f


def make_sample_video(path: str | os.PathLike, *, seconds: float = 10.0, fps: float = 30.0,
                      width: int = 640, height: int = 360) -> Path:
    """Write a deterministic test video (moving shapes, coloured corner patches, a frame counter)
    of ``round(seconds * fps)`` frames and return its path: MPEG-4 (mp4v) in ``.mp4``, or MJPG in
    ``.avi`` (same name, new suffix) where the mp4v writer cannot open. Written to a hidden temp
    name in the same folder, then renamed."""
    import cv2

    if not (seconds > 0 and fps > 0 and width >= 16 and height >= 16):
        raise ValueError("make_sample_video needs seconds > 0, fps > 0, width and height >= 16")
    width, height = width // 2 * 2, height // 2 * 2
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    background = synthetic_base(height, width, seed=7) // 2
    for fourcc, suffix in (("mp4v", target.suffix or ".mp4"), ("MJPG", ".avi")):
        final = target.with_suffix(suffix)
        tmp = final.with_name(f".{final.stem}.{os.getpid()}.tmp{suffix}")
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
        if not writer.isOpened():
            writer.release()
            tmp.unlink(missing_ok=True)
            continue
        try:
            for i in range(max(1, round(seconds * fps))):
                writer.write(sample_frame(i, width, height, background))
        finally:
            writer.release()
        os.replace(tmp, final)
        return final
    raise RuntimeError(f"OpenCV could not write a video to {target.parent} (mp4v and MJPG both failed)")
