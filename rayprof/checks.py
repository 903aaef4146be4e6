"""Checks of a spec's models, devices and preprocessing levels that do not import torch.

The driver (``rayprof submit``) runs these before anything starts, while an embedded Ray starts
its processes; importing torch and torchvision there cost 6 CPU-seconds of the start-up's
20 on a 2-core machine (see ``benchmarks/RESULTS.md``, Start-up). So:

- **model names and weights** come from torchvision's own registry (``list_models``,
  ``get_model_weights``) read once per installed torchvision version and kept in the cache
  folder (``$RAYPROF_CACHE``, else ``~/.cache/rayprof``) as ``torchvision-<version>.json``; a
  missing, unreadable or foreign file is rebuilt by importing torchvision, as every check did
  before;
- **CUDA**: without an NVIDIA driver (Linux: no ``/proc/driver/nvidia``, no WSL ``/dev/dxg``)
  and with a torch built without ROCm, there is no CUDA GPU, which is known without importing
  torch; anywhere else torch answers.

The error messages are the ones :mod:`rayprof.model` and :mod:`rayprof.prep` always gave; both
re-export these functions.
"""

from __future__ import annotations

import json
import os
import re
import sys
from functools import lru_cache
from importlib import metadata, util
from pathlib import Path

from .errors import UserError, did_you_mean
from .samples import cache_dir

__all__ = ["MODES", "PREP_LEVELS", "check_device", "check_model", "check_prep", "check_prep_level",
           "classification_models", "gpu_count", "is_local_path", "model_weights", "torch_version_attr"]

MODES = ("inference", "retrain")
PREP_LEVELS = ("simple", "medium", "complex")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors")
_CPU_FIX = "run on the CPU instead (device: cpu; drop --infer-on-gpu)"
_PREP_DEVICE_FIX = "run preprocessing on the CPU: set prep.device: cpu (or drop --prep-on-gpu)"
_CUDA = re.compile(r"^cuda(?::(\d+))?$")
_CATALOG_FORMAT = 1


# -- torchvision's classification models and their weights ------------------------------------


def _weights_entry(name: str) -> dict:
    """{"enum": model ``name``'s weights enum class name or None, "weights": {member: category
    count}}, from torchvision."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        return {"enum": None, "weights": {}}
    return {"enum": enum.__name__,
            "weights": {m: len(enum[m].meta.get("categories") or []) for m in enum.__members__}}


def _registry() -> dict[str, dict]:
    """Every classification model's weights entry, from torchvision itself.
    ``list_models(module=torchvision.models)`` keeps only the top-level module, which excludes
    the detection, segmentation, video, optical-flow and quantized families."""
    import torchvision

    return {name: _weights_entry(name) for name in torchvision.models.list_models(module=torchvision.models)}


def _catalog_path(version: str) -> Path:
    return cache_dir() / f"torchvision-{re.sub(r'[^A-Za-z0-9._+-]', '_', version)}.json"


@lru_cache(maxsize=1)
def _catalog() -> dict[str, dict]:
    try:
        version = metadata.version("torchvision")
    except metadata.PackageNotFoundError:
        version = None
    if version is None or "torchvision" in sys.modules:  # imported already: asking it costs nothing
        return _registry()
    return cached_registry(_catalog_path(version), version)


def cached_registry(path: Path, version: str) -> dict[str, dict]:
    """:func:`_registry` kept in ``path`` for torchvision ``version``: read back when the file is
    valid and of that version, else built and written (atomically; not at all where it cannot be)."""
    try:
        data = json.loads(path.read_text())
        if data.get("format") == _CATALOG_FORMAT and data.get("torchvision") == version and data.get("models"):
            return data["models"]
    except (OSError, ValueError, AttributeError):
        pass
    models = _registry()
    try:  # atomically: actors and drivers on one machine may write it at once
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": _CATALOG_FORMAT, "torchvision": version, "models": models}))
        os.replace(tmp, path)
    except OSError:  # a read-only home: checks import torchvision every time, as they always did
        pass
    return models


def classification_models() -> list[str]:
    """Names of torchvision's classification models (``rayprof models`` lists them)."""
    return list(_catalog())


def model_weights(name: str) -> tuple[str | None, dict[str, int]]:
    """The weights enum class name of model ``name`` and its members' category counts."""
    entry = _catalog().get(name) or _weights_entry(name)  # other families (frame_extract's detectors)
    return entry["enum"], entry["weights"]


def is_local_path(weights: str) -> bool:
    """True for a weights value that names a file rather than a torchvision enum member."""
    return "/" in weights or os.sep in weights or weights.lower().endswith(_WEIGHT_SUFFIXES)


def check_weights_member(name: str, weights: str, field: str,
                         alternatives: str = "a local .pt/.pth file, or none") -> tuple[str, int]:
    """The member of model ``name``'s weights enum that ``weights`` names (``IMAGENET1K_V2`` or
    ``ResNet50_Weights.IMAGENET1K_V2``) and its category count; else a UserError."""
    enum, members = model_weights(name)
    fix = f"use one of {', '.join(members)} (or {alternatives})"
    member = weights
    if "." in weights:
        cls_name, member = weights.split(".", 1)
        if cls_name != enum:
            raise UserError(field, weights, f"{cls_name} are not weights for {name}", fix)
    if member not in members:
        raise UserError(field, weights, f"no such weights for {name}" + did_you_mean(member, list(members)), fix)
    return member, members[member]


def check_model(
    name: str,
    weights: str | None,
    field_prefix: str = "model",
    *,
    mode: str = "inference",
    compile: bool = False,
    num_classes: int | None = None,
) -> None:
    """Raise :class:`UserError` for an unknown model name or weights that cannot be used.

    ``weights`` may be ``None``/``"none"`` (random values), a torchvision weights enum member
    (``IMAGENET1K_V2`` or ``ResNet50_Weights.IMAGENET1K_V2``; checked without downloading) or a
    local file (anything with a path separator or a .pt/.pth/.safetensors suffix; must exist).
    The keyword options check the rest of a model block the way :class:`ModelRunner` will:
    an unknown ``mode``, ``compile`` outside inference, a bad ``num_classes``, and pretrained
    enum weights asked to infer with a class count they do not have.
    """
    if mode not in MODES:  # mode sits beside the model block: workers[0].mode
        base = field_prefix[: -len("model")].rstrip(".") if field_prefix.endswith("model") else field_prefix
        raise UserError(f"{base}.mode" if base else "mode", mode,
                        "unknown mode" + did_you_mean(str(mode), MODES), "use inference or retrain")
    if compile and mode != "inference":
        raise UserError(f"{field_prefix}.compile", compile, "torch.compile applies to inference only",
                        "set compile: false (drop --enable-compile) for retrain")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise UserError(f"{field_prefix}.num_classes", num_classes, "not a positive integer",
                        "use the number of classes to fine-tune for, e.g. 10")
    models = classification_models()
    if name not in models:
        raise UserError(
            f"{field_prefix}.name",
            name,
            "not a torchvision classification model" + did_you_mean(str(name), models),
            "`rayprof models` lists the names",
        )
    if weights is None or str(weights).lower() == "none":
        return
    field = f"{field_prefix}.weights"
    weights = str(weights)
    if is_local_path(weights):
        path = os.path.expanduser(weights)
        if not os.path.isfile(path):
            raise UserError(
                field,
                weights,
                "no such weights file",
                "point it at a local state dict (.pt/.pth/.safetensors) or use none",
            )
        if path.endswith(".safetensors") and util.find_spec("safetensors") is None:
            raise UserError(
                field, weights, "loading .safetensors needs the safetensors package",
                "pip install safetensors, or save the state dict with torch.save as .pt",
            )
        return
    _, classes = check_weights_member(name, weights, field)
    if mode == "inference" and num_classes is not None and classes and num_classes != classes:
        raise UserError(f"{field_prefix}.num_classes", num_classes, f"{weights} weights have {classes} classes",
                        "drop num_classes, use weights: none or a local file, or mode: retrain")


# -- devices -----------------------------------------------------------------------------------


def torch_version_attr(name: str) -> str | None:
    """An attribute of ``torch.version`` (``cuda``, ``hip``), read from the installed torch's
    ``version.py`` without importing torch (a file of plain assignments)."""
    if "torch" in sys.modules:
        return getattr(sys.modules["torch"].version, name, None)
    spec = util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        text = path.read_text()
    except OSError:
        return None
    m = re.search(rf"^{name}\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
    return m.group(1) if m else None


@lru_cache(maxsize=1)
def _no_gpu_driver() -> bool:
    """True where no CUDA GPU can exist: Linux without the NVIDIA driver, and a torch built for
    CUDA (not ROCm, whose GPUs torch.cuda also counts)."""
    return (sys.platform.startswith("linux") and not os.path.exists("/proc/driver/nvidia")
            and not os.path.exists("/dev/dxg") and torch_version_attr("hip") is None)


def gpu_count() -> int:
    """How many CUDA GPUs this process can use (0 without importing torch where there can be none)."""
    if "torch" not in sys.modules and _no_gpu_driver():
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_device(device: str, field: str, fix: str | None = None) -> None:
    """Raise :class:`UserError` unless ``device`` (cpu, cuda, cuda:N, auto) is usable here."""
    text = str(device).strip().lower()
    if text in ("cpu", "auto"):
        return
    fix = fix or _CPU_FIX
    m = _CUDA.match(text)
    if m is None:
        raise UserError(field, device, "not a device", "use cpu, cuda, cuda:N or auto")
    count = gpu_count()
    if count == 0:
        raise UserError(field, device, "no CUDA GPU is available on this machine", fix)
    if m.group(1) is not None and int(m.group(1)) >= count:
        raise UserError(
            field, device, f"this machine has {count} GPU(s) (cuda:0..cuda:{count - 1})",
            f"use cuda:0..cuda:{count - 1}, or {fix}",
        )


# -- preprocessing -----------------------------------------------------------------------------


def check_prep_level(level: object, field: str) -> None:
    if level not in PREP_LEVELS:
        raise UserError(
            field,
            level,
            "unknown preprocessing level" + did_you_mean(str(level), PREP_LEVELS),
            "use one of " + ", ".join(PREP_LEVELS),
        )


def prep_fields(field: str) -> tuple[str, str, str]:
    """(level, device, size) field names from ``"….prep.level"`` or the prefix ``"….prep"``."""
    base = field[: -len(".level")] if field.endswith(".level") else field
    return f"{base}.level", f"{base}.device", f"{base}.size"


def check_prep(level: str, device: str = "cpu", field: str = "prep.level") -> None:
    """Raise :class:`UserError` for an unknown level or an unusable device.

    ``field`` names the level (``workers[0].prep.level``) or the prep block (``workers[0].prep``);
    errors are reported under ``….prep.level`` and ``….prep.device``.
    """
    level_field, device_field, _ = prep_fields(field)
    check_prep_level(level, level_field)
    check_device(str(device), device_field, fix=_PREP_DEVICE_FIX)
