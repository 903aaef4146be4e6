"""Models: the torchvision registry, weights, devices, and the inference/retrain step.

What the seed's ``models.py`` did, kept here:

- ``load_model``: any torchvision classification model by name (``torchvision.models.get_model``);
  weights by torchvision enum name (``IMAGENET1K_V2``), from a local file, or none (random values,
  same compute — what tests and benchmarks use).
- ``setup_model_for_inference``: ``eval()``, no gradients, optional ``torch.compile`` and a
  warm-up on a dummy input (:meth:`ModelRunner.warmup`).
- ``setup_retrain_components``: freeze the backbone, replace the classification head, Adam on
  the head, cross-entropy on dummy labels — a light "online fine-tuning" load.
- AMP (``torch.autocast``): float16 with a ``GradScaler`` on CUDA, bfloat16 on CPU.

:class:`ModelRunner` does not time anything: the worker times ``step`` and calls
:meth:`ModelRunner.synchronize` so CUDA latencies cover finished work.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass

import torch
import torchvision
from torch import nn

from .checks import MODES, check_device, check_model, check_weights_member, classification_models, is_local_path
from .errors import UserError
from .markers import mark

__all__ = ["MODES", "ModelInfo", "ModelRunner", "check_device", "check_model", "classification_models",
           "find_head", "is_local_path", "replace_head", "resolve_device"]


def weights_enum_member(name: str, weights: str, field: str, alternatives: str = "a local .pt/.pth file, or none"):
    """The torchvision weights enum member ``weights`` names for model ``name`` (``IMAGENET1K_V2``
    or ``ResNet50_Weights.IMAGENET1K_V2``), found without downloading; else a UserError."""
    member, _ = check_weights_member(name, weights, field, alternatives)
    return torchvision.models.get_model_weights(name)[member]


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` → ``cuda`` when available else ``cpu``; anything else → ``torch.device``."""
    if str(device).strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(str(device).strip().lower())
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


# -- heads ---------------------------------------------------------------------------------


def find_head(model: nn.Module) -> tuple[str, nn.Module]:
    """The classification head: the last ``nn.Linear`` in registration order (``fc``,
    ``heads.head``, ``classifier.1``, ``classifier.3`` ...); for models without one
    (SqueezeNet's 1×1 conv classifier) the last ``nn.Conv2d``."""
    linear = conv = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            linear = (name, module)
        elif isinstance(module, nn.Conv2d):
            conv = (name, module)
    head = linear or conv
    if head is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d head")
    return head


def replace_head(model: nn.Module, name: str, num_classes: int) -> nn.Module:
    """Put a freshly initialized layer with ``num_classes`` outputs at ``name``; return it."""
    old = model.get_submodule(name)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=old.kernel_size,
                        stride=old.stride, padding=old.padding, bias=old.bias is not None)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    if hasattr(model, "num_classes"):  # squeezenet reads it in forward
        model.num_classes = num_classes
    return new


def _out_features(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


# -- weights files -------------------------------------------------------------------------


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    path = os.path.expanduser(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path, device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise TypeError(f"{type(state).__name__} is not a state dict")
    for prefix in ("module.", "_orig_mod."):  # DataParallel/DDP and torch.compile wrappers
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _load(name: str, mode: str, weights: str | None, num_classes: int | None, field_prefix: str) -> nn.Module:
    """The torchvision model with ``weights`` (None: random values) loaded; errors name the field."""
    field = f"{field_prefix}.weights"
    local = weights is not None and is_local_path(weights)
    if weights is not None and not local:  # may download into the torch hub cache
        return torchvision.models.get_model(name, weights=weights_enum_member(name, weights, field))
    kwargs = {"num_classes": num_classes} if num_classes and mode == "inference" else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    if weights is None:
        return model
    try:
        state = load_state_dict_file(weights)
    except Exception as exc:  # unreadable file: the user's mistake, said in one line
        raise UserError(field, weights, f"cannot read a state dict ({exc})",
                        "save one with torch.save(model.state_dict(), path)") from None
    if mode == "retrain":  # the head is replaced: a checkpoint's head may have any size
        head_name = find_head(model)[0]
        own = model.state_dict()
        state = {k: v for k, v in state.items()
                 if not (k.startswith(head_name + ".") and k in own and own[k].shape != v.shape)}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # same keys, other shapes: another variant of the model
        detail = " ".join(str(exc).split())[:160]
        raise UserError(field, weights, f"does not fit {name} ({detail})",
                        f"save it from torchvision's {name} with torch.save(model.state_dict(), path)") from None
    head = find_head(model)[0] + "." if mode == "retrain" else None
    missing = [k for k in result.missing_keys if not (head and k.startswith(head))]
    if missing or result.unexpected_keys:
        bad = (missing or result.unexpected_keys)[:3]
        raise UserError(field, weights,
                        f"not a state dict of {name} ({'missing' if missing else 'unexpected'} "
                        f"keys {', '.join(bad)}...)",
                        f"save it from torchvision's {name} with torch.save(model.state_dict(), path)")
    return model


def build_model(name: str, *, mode: str = "inference", weights: str | None = None, num_classes: int | None = None,
                compile: bool = False, seed: int = 0, field_prefix: str = "model") -> nn.Module:
    """Model ``name`` as :class:`ModelRunner` runs it, on the CPU in ``eval()`` mode: weights
    loaded, and in retrain a fresh ``num_classes`` head in place of the old one. Random values
    are drawn under ``torch.manual_seed(seed)`` in a forked RNG state: the same seed gives the
    same weights, and the caller's global RNG is untouched."""
    check_model(name, weights, field_prefix, mode=mode, compile=compile, num_classes=num_classes)
    weights = None if weights is None or str(weights).lower() == "none" else str(weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _load(name, mode, weights, num_classes, field_prefix)
        if mode == "retrain":
            head_name, head = find_head(model)
            replace_head(model, head_name, num_classes or _out_features(head))
    return model.eval()


def _head_of(module: nn.Module) -> tuple[str | None, nn.Module | None]:
    """The classification head of a model or of a split half (a head half may have none)."""
    try:
        return find_head(module)
    except ValueError:
        return None, None


# -- the runner ------------------------------------------------------------------------------


@dataclass
class ModelInfo:
    """What was built, for logs, the manifest and every metrics row."""

    name: str
    params: int
    trainable_params: int
    head: str | None  # None: a split's head half, which has no classifier
    num_classes: int
    amp_dtype: str | None
    compiled: bool
    device: str

    def to_dict(self) -> dict:
        return asdict(self)


class ModelRunner:
    """One model set up for ``inference`` or ``retrain``; :meth:`step` runs one batch.

    Weights are built by :func:`build_model`: replicas with the same seed hold identical weights.
    """

    def __init__(
        self,
        name: str,
        *,
        mode: str = "inference",
        device: str | torch.device = "cpu",
        weights: str | None = None,
        num_classes: int | None = None,
        compile: bool = False,
        amp: bool = False,
        lr: float = 1e-3,
        seed: int = 0,
        field_prefix: str = "model",
        module: nn.Module | None = None,
    ):
        """``module``: run this already built module (a split half, see :mod:`rayprof.split`)
        instead of building ``name``; in retrain its last layer is the head that trains."""
        if module is None:
            check_model(name, weights, field_prefix, mode=mode, compile=compile, num_classes=num_classes)
        check_device(str(device), f"{field_prefix}.device")
        self.name, self.mode, self.seed = name, mode, seed
        self.device = resolve_device(device)
        if module is None:
            module = build_model(name, mode=mode, weights=weights, num_classes=num_classes, compile=compile,
                                 seed=seed, field_prefix=field_prefix)
        self.module = module
        head_name, head = _head_of(module)
        if mode == "retrain":
            self.module.requires_grad_(False)
            head.requires_grad_(True)
        self.module.to(self.device)
        self.module.eval()
        self.head = head
        self.num_classes = _out_features(head) if head is not None else 0

        self.amp_dtype: torch.dtype | None = None
        if amp:  # fp16 (+ GradScaler in retrain) on CUDA; CPU autocast supports bfloat16
            self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.scaler = self.optimizer = self.criterion = None
        if mode == "inference":
            self.module.requires_grad_(False)
            self.model = torch.compile(self.module) if compile else self.module
        else:
            head.train()
            self.model = self.module
            trainable = [p for p in self.module.parameters() if p.requires_grad]
            self.optimizer = torch.optim.Adam(trainable, lr=lr)
            self.criterion = nn.CrossEntropyLoss()
            if self.amp_dtype == torch.float16:
                self.scaler = torch.amp.GradScaler("cuda")
        self._labels = torch.Generator(device="cpu")
        self._labels.manual_seed(seed)
        self.last_output: torch.Tensor | None = None
        params = list(self.module.parameters())
        self.info = ModelInfo(
            name=name, params=sum(p.numel() for p in params),
            trainable_params=sum(p.numel() for p in params if p.requires_grad),
            head=head_name, num_classes=self.num_classes,
            amp_dtype=str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None,
            compiled=bool(compile), device=str(self.device),
        )

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def make_labels(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` random class labels (CPU int64), like the seed's dummy retrain labels."""
        gen = generator if generator is not None else self._labels
        return torch.randint(0, self.num_classes, (n,), generator=gen, dtype=torch.long)

    def step(self, x: torch.Tensor, labels: torch.Tensor | None = None, step: int = 0) -> float | None:
        """One batch: forward (inference) or forward + backward + optimizer (retrain).

        Each phase is an NVTX range (``forward``/``backward``/``optimizer``). Returns the loss in
        retrain (``loss.item()``, which waits for the device), ``None`` in inference (the kernels
        may still be running: call :meth:`synchronize` before reading a clock).
        """
        x = x.to(self.device, non_blocking=True)
        if self.mode == "inference":
            with torch.inference_mode(), self._autocast(), mark("forward", step):
                self.last_output = self.model(x)
            return None
        if labels is None:
            labels = self.make_labels(x.shape[0])
        labels = labels.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with mark("forward", step):
            with self._autocast():
                logits = self.model(x)
            loss = self.criterion(logits.float(), labels)
        with mark("backward", step):
            (self.scaler.scale(loss) if self.scaler else loss).backward()
        with mark("optimizer", step):
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        self.last_output = logits.detach()
        return float(loss.item())

    def synchronize(self) -> None:
        """Wait for queued device work (CUDA); a no-op on CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def warmup(self, batch_size: int = 1, size: int = 224, steps: int = 1) -> None:
        """Run ``steps`` batches of zeros (the seed's dummy-input warm-up; triggers compilation).

        In retrain the warm-up also updates the head, as the seed's did.
        """
        x = torch.zeros(batch_size, 3, size, size)
        for _ in range(steps):
            self.step(x, step=-1)
        self.synchronize()
