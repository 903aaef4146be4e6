"""Detections, the threshold, and the two COCO documents (pure: no torch, no cv2, no I/O).

Category ids are torchvision's label indices. For the COCO-trained detection weights these *are*
the COCO category ids (1 = person … 90 = toothbrush): torchvision's category list keeps the
background at 0 and ``N/A`` at the ids COCO left unused, so index == id. Index 0 (the background,
``__background__`` or Keypoint R-CNN's ``no person``) and the ``N/A`` placeholders are not
categories and are left out of ``categories``; a detection labelled with one (only an untrained
model makes them) is dropped with the ones under the threshold.

Values are rounded once, when a :class:`Detection` is made (boxes to 0.01 px, scores to 4
decimals), and the threshold applies to the rounded score, so what is drawn, what is kept and
what is written agree, and the JSON is the same however the work was split.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Entries of a category list that are not categories.
PLACEHOLDERS = frozenset({"__background__", "N/A", ""})
BOX_DECIMALS = 2
SCORE_DECIMALS = 4


@dataclass(frozen=True, order=True)
class Detection:
    """One box: corners ``(x1, y1, x2, y2)`` in pixels, a category id (label index), a score."""

    box: tuple[float, float, float, float]
    label: int
    score: float


def make_detection(box: Sequence[float], label: int, score: float) -> Detection:
    """A :class:`Detection` with the box rounded to 0.01 px and the score to 4 decimals."""
    x1, y1, x2, y2 = (round(float(v), BOX_DECIMALS) + 0.0 for v in box)  # + 0.0: no -0.0
    return Detection((x1, y1, x2, y2), int(label), round(float(score), SCORE_DECIMALS))


def category_ids(names: Sequence[str]) -> frozenset[int]:
    """The label indices of ``names`` that are real categories (not 0, the background, nor a placeholder)."""
    return frozenset(i for i, n in enumerate(names) if i > 0 and n not in PLACEHOLDERS)


def categories(names: Sequence[str]) -> list[dict]:
    """The COCO ``categories`` list: ``{"id", "name"}`` per real category, id = label index."""
    ids = category_ids(names)
    return [{"id": i, "name": n} for i, n in enumerate(names) if i in ids]


def keep(detections: Iterable[Detection], threshold: float, valid: frozenset[int]) -> list[Detection]:
    """Detections scoring at least ``threshold`` with a real category, best first (ties in a fixed
    order: label, then box), so the result does not depend on the model's output order."""
    kept = [d for d in detections if d.score >= threshold and d.label in valid]
    return sorted(kept, key=lambda d: (-d.score, d.label, d.box))


@dataclass(frozen=True)
class ImageRecord:
    """One annotated image: its name (relative, ``/``-separated), size and kept detections, and
    extra fields for its COCO ``images`` entry (the extractor index's frame index and timestamp)."""

    file_name: str
    width: int
    height: int
    detections: tuple[Detection, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)


def coco_bbox(box: Sequence[float]) -> list[float]:
    """``(x1, y1, x2, y2)`` → COCO ``[x, y, width, height]``."""
    x1, y1, x2, y2 = box
    return [x1, y1, round(x2 - x1, BOX_DECIMALS) + 0.0, round(y2 - y1, BOX_DECIMALS) + 0.0]


def coco_documents(records: Iterable[ImageRecord], names: Sequence[str],
                   info: Mapping[str, Any] | None = None) -> tuple[dict, list[dict]]:
    """The COCO dataset (``images``, ``annotations``, ``categories``) and the COCO results list
    (``image_id``, ``category_id``, ``bbox``, ``score``) for ``records``.

    Ids are deterministic: images are numbered from 1 in file-name order, annotations from 1 in
    image order, then in each image's (best-first) detection order. So the documents depend only
    on the records, not on the order they arrive in (one process or many Ray actors).
    """
    ordered = sorted(records, key=lambda r: r.file_name)
    names_seen = [r.file_name for r in ordered]
    if len(set(names_seen)) != len(names_seen):
        raise ValueError("two images have the same file name")
    images, annotations, results = [], [], []
    for image_id, rec in enumerate(ordered, start=1):
        images.append({"id": image_id, "file_name": rec.file_name, "width": int(rec.width),
                       "height": int(rec.height), **dict(rec.extra)})
        for d in rec.detections:
            bbox = coco_bbox(d.box)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": d.label,
                                "bbox": bbox, "area": round(bbox[2] * bbox[3], BOX_DECIMALS) + 0.0,
                                "iscrowd": 0, "score": d.score})
            results.append({"image_id": image_id, "category_id": d.label, "bbox": bbox, "score": d.score})
    dataset = {"info": dict(info or {}), "licenses": [], "images": images, "annotations": annotations,
               "categories": categories(names)}
    return dataset, results
