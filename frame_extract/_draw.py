"""Drawing detections on an image: a box per detection and a label (class name and score) in
dark or light text on a filled box of the class colour, sized to the image so it stays legible
from thumbnails to 4K. Pure numpy/cv2; the input image is not modified."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from frame_extract import _common  # noqa: F401  (quiet OpenCV logs before cv2 is imported)
from frame_extract._coco import Detection

# 20 well-separated colours (BGR), after matplotlib's tab20 order, dark ones first.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148),
    (75, 86, 140), (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23),
    (232, 199, 174), (120, 187, 255), (138, 223, 152), (150, 152, 255), (213, 176, 197),
    (148, 156, 196), (210, 182, 247), (199, 199, 199), (141, 219, 219), (229, 218, 158),
)
FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class Style:
    """Sizes for one image: the font scale and thickness, the box line width, the label padding."""

    font_scale: float
    text_thickness: int
    line: int
    pad: int


def style_for(height: int, width: int) -> Style:
    """Sizes that scale with the image's shorter side: text about 2.7 % of it (at least ~8 px
    tall), box lines about 0.5 % (at least 1 px)."""
    side = max(1, min(height, width))
    scale = max(0.35, side / 800)
    return Style(font_scale=scale, text_thickness=max(1, round(scale * 1.6)), line=max(1, round(side / 200)),
                 pad=max(1, round(scale * 4)))


def color_of(label: int) -> tuple[int, int, int]:
    return PALETTE[int(label) % len(PALETTE)]


def text_color(bgr: Sequence[int]) -> tuple[int, int, int]:
    """Black on light colours, white on dark ones (by perceived luminance)."""
    b, g, r = bgr
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def label_text(d: Detection, names: Sequence[str]) -> str:
    name = names[d.label] if 0 <= d.label < len(names) else f"class {d.label}"
    return f"{name} {d.score:.2f}"


def draw_detections(image: np.ndarray, detections: Sequence[Detection], names: Sequence[str]) -> np.ndarray:
    """A copy of ``image`` (BGR uint8) with ``detections`` drawn, the best scores on top."""
    import cv2

    out = image.copy()
    h, w = out.shape[:2]
    st = style_for(h, w)
    for d in sorted(detections, key=lambda d: (d.score, -d.label)):
        color = color_of(d.label)
        x1, y1, x2, y2 = (round(v) for v in d.box)
        x1, x2 = max(0, min(x1, w - 1)), max(0, min(x2, w - 1))
        y1, y2 = max(0, min(y1, h - 1)), max(0, min(y2, h - 1))
        cv2.rectangle(out, (x1, y1), (x2, y2), color, st.line, cv2.LINE_AA if st.line > 1 else cv2.LINE_8)
        text = label_text(d, names)
        (tw, th), base = cv2.getTextSize(text, FONT, st.font_scale, st.text_thickness)
        lw, lh = tw + 2 * st.pad, th + base + 2 * st.pad
        lx = max(0, min(x1, w - lw))
        ly = y1 - lh if y1 - lh >= 0 else min(y1, max(0, h - lh))  # above the box, else inside its top
        cv2.rectangle(out, (lx, ly), (lx + lw - 1, ly + lh - 1), color, -1)
        cv2.putText(out, text, (lx + st.pad, ly + st.pad + th), FONT, st.font_scale, text_color(color),
                    st.text_thickness, cv2.LINE_AA)
    return out
