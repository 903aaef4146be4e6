"""Detection models: torchvision's registry, the weights (a torchvision name, a local file, the
hub cache, or none), building the model, and running it on BGR images.

Weights never download behind the user's back: ``auto`` (the default) uses the model's DEFAULT
torchvision weights only if their file is already in the torch hub cache
(``$TORCH_HOME/hub/checkpoints``), and otherwise random values, said loudly. Naming the weights
(``DEFAULT``, ``COCO_V1``) downloads them once, as torchvision does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch
import torchvision
from torch import nn

from frame_extract._coco import Detection, make_detection
from rayprof.errors import UserError, did_you_mean
from rayprof.model import is_local_path

#: The keyword that sets each family's own score cut-off, and its default. The model is built with
#: the lower of that default and --threshold, so a low --threshold can see low-scoring boxes.
_SCORE_KWARG = (("fasterrcnn", "box_score_thresh", 0.05), ("maskrcnn", "box_score_thresh", 0.05),
                ("keypointrcnn", "box_score_thresh", 0.05), ("retinanet", "score_thresh", 0.05),
                ("fcos", "score_thresh", 0.2), ("ssdlite", "score_thresh", 0.001), ("ssd", "score_thresh", 0.01))
#: Seed of the random values used with weights none (so runs repeat).
SEED = 0


@lru_cache(maxsize=1)
def detection_models() -> tuple[str, ...]:
    """torchvision's detection models (Faster R-CNN, RetinaNet, FCOS, SSD, SSDlite, Mask and
    Keypoint R-CNN, whose boxes are used)."""
    return tuple(torchvision.models.list_models(module=torchvision.models.detection))


@dataclass(frozen=True)
class DetectorSpec:
    """What to build: the model, its weights and the category names its labels index."""

    name: str
    kind: str                       # none | torchvision | file
    weights: str                    # none | the enum member (COCO_V1) | the file's path
    categories: tuple[str, ...]
    score_kwarg: tuple[str, float] | None
    cache_path: str | None = None   # torchvision weights: where the hub cache keeps the file
    cached: bool = False

    @property
    def weights_label(self) -> str:
        """``none``, ``COCO_V1`` or the file's name: for the summary and the COCO ``info``."""
        return Path(self.weights).name if self.kind == "file" else self.weights


def hub_checkpoint(url: str) -> Path:
    """Where ``torch.hub`` keeps (or will keep) the file downloaded from ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlsplit(url).path)


def _score_kwarg(name: str, threshold: float) -> tuple[str, float] | None:
    for prefix, kwarg, default in _SCORE_KWARG:
        if name.startswith(prefix):
            return kwarg, min(default, threshold)
    return None


def _enum_member(name: str, weights: str, field: str):
    from rayprof.model import weights_enum_member

    return weights_enum_member(name, weights, field, alternatives="a local weights file (.pth), none, or auto")


def resolve_detector(name: str, weights: str, threshold: float, *, model_field: str = "model_name",
                     weights_field: str = "weights") -> DetectorSpec:
    """Check the model name and the weights (nothing is downloaded or loaded) → a spec."""
    models = detection_models()
    if name not in models:
        from rayprof.model import classification_models

        problem = ("is a classification model, not a detection model" if name in classification_models()
                   else "not a torchvision detection model" + did_you_mean(str(name), models))
        raise UserError(model_field, name, problem, "use one of " + ", ".join(models))
    default = torchvision.models.get_model_weights(name).DEFAULT
    kwarg = _score_kwarg(name, threshold)
    w = str(weights).strip()
    if w.lower() == "none":
        return DetectorSpec(name, "none", "none", tuple(default.meta["categories"]), kwarg)
    if w.lower() == "auto":
        path = hub_checkpoint(default.url)
        if path.is_file():
            return DetectorSpec(name, "torchvision", default.name, tuple(default.meta["categories"]), kwarg,
                                str(path), True)
        return DetectorSpec(name, "none", "none", tuple(default.meta["categories"]), kwarg, str(path))
    if is_local_path(w) or os.path.exists(os.path.expanduser(w)):
        path = Path(w).expanduser()
        if not path.is_file():
            raise UserError(weights_field, weights, "no such weights file" if not path.exists() else "is not a file",
                            f"give the path of a state dict saved from {name} (.pth/.pt/.safetensors), "
                            "a torchvision weights name such as DEFAULT, or none")
        return DetectorSpec(name, "file", str(path), tuple(default.meta["categories"]), kwarg)
    member = _enum_member(name, w, weights_field)
    path = hub_checkpoint(member.url)
    return DetectorSpec(name, "torchvision", member.name, tuple(member.meta["categories"]), kwarg, str(path),
                        path.is_file())


def _skeleton(spec: DetectorSpec) -> nn.Module:
    kwargs = dict([spec.score_kwarg]) if spec.score_kwarg else {}
    torch.manual_seed(SEED)
    return torchvision.models.get_model(spec.name, weights=None, weights_backbone=None,
                                        num_classes=len(spec.categories), **kwargs)


def build_detector(spec: DetectorSpec, *, weights_field: str = "weights") -> nn.Module:
    """The model in eval mode on the CPU. Loads the weights; a file that does not fit the model,
    or torchvision weights that cannot be downloaded, are a :class:`UserError`."""
    if spec.kind == "none":
        return _skeleton(spec).eval()
    if spec.kind == "file":
        from rayprof.model import load_state_dict_file  # plain, {"state_dict": …} or {"model": …}; DDP prefixes

        try:
            state = load_state_dict_file(spec.weights)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise UserError(weights_field, spec.weights, f"is not a state dict torch can load ({type(e).__name__})",
                            f"give a file saved with torch.save(model.state_dict(), path) from {spec.name}") from None
        model = _skeleton(spec)
        result = _fit(model, state)
        if result:
            raise UserError(weights_field, spec.weights, f"does not fit {spec.name} ({result})",
                            f"give weights saved from {spec.name} with {len(spec.categories)} classes "
                            "(torchvision's COCO weights fit), or another --model_name")
        return model.eval()
    member = _enum_member(spec.name, spec.weights, weights_field)
    kwargs = dict([spec.score_kwarg]) if spec.score_kwarg else {}
    try:
        return torchvision.models.get_model(spec.name, weights=member, **kwargs).eval()
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
        where = spec.cache_path or "$TORCH_HOME/hub/checkpoints/"
        raise UserError(weights_field, spec.weights,
                        f"could not be loaded or downloaded ({type(e).__name__}: {' '.join(str(e).split())[:120]})",
                        f"download {member.url} on a machine with internet and copy it to {where}, "
                        "or pass --weights /path/to/file.pth") from None


def _fit(model: nn.Module, state: dict) -> str:
    """'' if ``state`` loads into ``model`` strictly, else a short reason."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        model.load_state_dict(state, strict=True)
        return ""
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)):
        if keys:
            parts.append(f"{len(keys)} key(s) {what}, e.g. {keys[0]!r}")
    return "; ".join(parts)


def to_tensor(image_bgr: np.ndarray) -> torch.Tensor:
    """A BGR uint8 image → the RGB float tensor in [0, 1], (3, H, W), detection models take."""
    rgb = np.ascontiguousarray(image_bgr[..., ::-1])
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)


@torch.inference_mode()
def detect(model: nn.Module, images: Sequence[np.ndarray], device: torch.device) -> list[list[Detection]]:
    """Run ``model`` on BGR images (any sizes, one batch); every box it returns, rounded."""
    if not images:
        return []
    outputs = model([to_tensor(im).to(device) for im in images])
    results = []
    for out in outputs:
        boxes = out["boxes"].float().cpu().tolist()
        labels = out["labels"].cpu().tolist()
        scores = out["scores"].float().cpu().tolist()
        results.append([make_detection(b, lab, s) for b, lab, s in zip(boxes, labels, scores)])
    return results
