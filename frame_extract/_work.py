"""One batch of images through the model: read, detect, keep, draw, write the annotated copy.

The same function runs in the single process and inside every Ray actor, so ``--workers N``
computes exactly what one process does. No Ray here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from frame_extract import _common  # noqa: F401  (quiet OpenCV logs before cv2 is imported)
from frame_extract._coco import ImageRecord, category_ids, keep
from frame_extract._common import write_atomic
from frame_extract._draw import draw_detections

#: Image files the annotator reads (what OpenCV decodes and encodes).
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
JPEG_QUALITY = 95


@dataclass(frozen=True)
class ImageJob:
    """An image to annotate: where to read it, where its annotated copy goes, its COCO name and
    extra fields for its COCO ``images`` entry."""

    source: str
    target: str
    file_name: str
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Skipped:
    """An image that could not be read (not an image, damaged); it is left out of the JSON."""

    file_name: str
    reason: str


@dataclass(frozen=True)
class WorkSettings:
    threshold: float
    categories: tuple[str, ...]


def read_image(path: str) -> np.ndarray | None:
    """A BGR uint8 image (EXIF orientation applied, alpha dropped), or None if it cannot be decoded."""
    import cv2

    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return image if image is not None and image.size else None


def write_image(path: str, image: np.ndarray) -> None:
    """Encode ``image`` in the format its name says and write it atomically."""
    import cv2

    target = Path(path)
    ext = target.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, image, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {target.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, buf.tobytes())


def process_batch(model, jobs: Sequence[ImageJob], settings: WorkSettings, device) -> list[ImageRecord | Skipped]:
    """Annotate ``jobs`` in one forward pass; one outcome per job, in order."""
    from frame_extract._detect import detect

    valid = category_ids(settings.categories)
    images: list[np.ndarray] = []
    readable: list[int] = []
    outcomes: list[ImageRecord | Skipped | None] = [None] * len(jobs)
    for i, job in enumerate(jobs):
        image = read_image(job.source)
        if image is None:
            outcomes[i] = Skipped(job.file_name, "not an image OpenCV can decode")
        else:
            images.append(image)
            readable.append(i)
    for i, image, found in zip(readable, images, detect(model, images, device)):
        job = jobs[i]
        kept = keep(found, settings.threshold, valid)
        write_image(job.target, draw_detections(image, kept, settings.categories))
        outcomes[i] = ImageRecord(job.file_name, int(image.shape[1]), int(image.shape[0]), tuple(kept),
                                  dict(job.extra))
    return outcomes  # type: ignore[return-value]
