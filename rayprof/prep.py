"""Preprocessing pipelines per level (``simple``, ``medium``, ``complex``), on CPU or GPU.

The seed's ``data_pipeline.build_preprocessing_pipelines``/``preprocess_batch`` either ran a CPU
``torchvision.transforms`` pipeline or copied the raw uint8 batch to the GPU and ran the ops
there. Here one code path does both: every level is written with
``torchvision.transforms.v2.functional`` on a batched ``(n, 3, H, W)`` tensor, so the *same*
kernels run wherever the tensor lives.

- CPU: ``torch.from_numpy`` (no copy) → the transforms on CPU.
- GPU: the raw uint8 frames go to pinned host memory and are copied ``non_blocking`` to the GPU
  (uint8 is 4× smaller than float32 on the bus); every transform then runs on the GPU.

Random transforms (``complex``) draw their parameters from a CPU :class:`torch.Generator` seeded
per :class:`Preprocessor`, one draw per batch (like a ``torchvision.transforms`` v2 transform
applied to a batched tensor): a given seed gives the same sequence of flips, jitter factors and
angles on every device, and the draw needs no GPU synchronization.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from .checks import PREP_LEVELS, check_prep
from .checks import check_prep_level as _check_level
from .checks import prep_fields as _fields
from .errors import UserError

__all__ = ["LEVELS", "MEAN", "STD", "describe", "check_prep", "Preprocessor"]

LEVELS = PREP_LEVELS

#: ImageNet channel statistics (RGB), applied after scaling to [0, 1].
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# complex-level augmentation parameters
BLUR_KERNEL = 5
BLUR_SIGMA = 1.0
FLIP_P = 0.5
JITTER = 0.2  # brightness, contrast and saturation factors uniform in [1 - 0.2, 1 + 0.2]
ROTATION_DEG = 10.0


def resize_shorter(size: int) -> int:
    """Shorter-side length before the center crop: 256 for 224, scaled for other sizes."""
    return int(round(256 * size / 224))


def describe(level: str, size: int = 224) -> list[str]:
    """The exact transform list of ``level``, one human-readable step per item."""
    _check_level(level, "prep.level")
    common_tail = [
        "to float32, scaled to [0, 1]",
        f"normalize with ImageNet mean={list(MEAN)} std={list(STD)}",
    ]
    if level == "simple":
        return [f"resize to {size}x{size} (bilinear, antialias)", *common_tail]
    medium = [
        f"resize shorter side to {resize_shorter(size)} (bilinear, antialias, aspect kept)",
        f"center crop {size}x{size}",
    ]
    if level == "medium":
        return [*medium, *common_tail]
    lo, hi = 1 - JITTER, 1 + JITTER
    return [
        *medium,
        common_tail[0],
        f"gaussian blur (kernel {BLUR_KERNEL}x{BLUR_KERNEL}, sigma {BLUR_SIGMA})",
        f"random horizontal flip (p={FLIP_P})",
        f"color jitter: brightness, contrast, saturation factors uniform in [{lo:g}, {hi:g}], "
        "applied in random order",
        f"random rotation uniform in [-{ROTATION_DEG:g}, {ROTATION_DEG:g}] degrees "
        "(nearest, fill 0)",
        common_tail[1],
        "random parameters: one draw per batch from a torch.Generator seeded with prep seed",
    ]


class Preprocessor:
    """Callable that turns a batch of RGB uint8 frames into a normalized model input.

    >>> prep = Preprocessor("medium", device="cpu", size=224)
    >>> x = prep(frames)            # frames: (n, H, W, 3) uint8 → (n, 3, 224, 224) float32
    """

    def __init__(
        self,
        level: str,
        device: str | torch.device = "cpu",
        size: int = 224,
        seed: int = 0,
        field: str = "prep.level",
    ):
        check_prep(level, device, field)
        from .model import resolve_device

        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise UserError(
                _fields(field)[2],
                size,
                "not a positive integer",
                "use the model's input size, e.g. 224",
            )
        self.level = level
        self.size = size
        self.seed = seed
        self.device = resolve_device(str(device))
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)
        self._mean = torch.tensor(MEAN, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(STD, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def __repr__(self) -> str:
        return f"Preprocessor(level={self.level!r}, device='{self.device}', size={self.size})"

    def describe(self) -> list[str]:
        return describe(self.level, self.size)

    # -- stages ------------------------------------------------------------------------------

    def to_device(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The raw batch as an ``(n, 3, H, W)`` uint8 tensor on ``self.device`` (a view of the
        NHWC frames, channels-last in memory; no float conversion yet)."""
        t = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
        if t.ndim == 3:  # a single frame
            t = t.unsqueeze(0)
        if t.ndim != 4 or t.shape[-1] != 3:
            raise ValueError(f"expected frames of shape (n, H, W, 3), got {tuple(t.shape)}")
        if t.dtype != torch.uint8:
            raise ValueError(f"expected uint8 frames, got {t.dtype}")
        if self.device.type == "cuda" and t.device.type == "cpu":
            t = t.pin_memory().to(self.device, non_blocking=True)
        elif t.device != self.device:
            t = t.to(self.device)
        return t.permute(0, 3, 1, 2)

    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        if self.level == "simple":
            return F.resize(
                x, [self.size, self.size], interpolation=InterpolationMode.BILINEAR, antialias=True
            )
        x = F.resize(
            x, [resize_shorter(self.size)], interpolation=InterpolationMode.BILINEAR, antialias=True
        )
        return F.center_crop(x, [self.size, self.size])

    def _uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.generator))

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """complex level: blur, flip, color jitter, rotation on a float [0, 1] batch."""
        x = F.gaussian_blur(x, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA])
        if float(torch.rand((), generator=self.generator)) < FLIP_P:
            x = F.horizontal_flip(x)
        factors = [self._uniform(1 - JITTER, 1 + JITTER) for _ in range(3)]
        order = torch.randperm(3, generator=self.generator).tolist()
        adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
        for i in order:
            x = adjust[i](x, factors[i])
        angle = self._uniform(-ROTATION_DEG, ROTATION_DEG)
        return F.rotate(x, angle, interpolation=InterpolationMode.NEAREST, fill=0.0)

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(n, H, W, 3)`` uint8 RGB frames → ``(n, 3, size, size)`` float32 on ``self.device``."""
        x = self.to_device(frames)
        x = self._geometry(x)  # on uint8, like the classic PIL pipeline (resize, then ToTensor)
        x = F.to_dtype(x, torch.float32, scale=True)
        if self.level == "complex":
            x = self._augment(x)
        x = x.sub_(self._mean).div_(self._std)  # x is a fresh tensor here: in place is safe
        return x.contiguous()
