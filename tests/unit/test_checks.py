"""The driver's checks without torch: torchvision's model list kept per version in the cache
folder, and CUDA known absent without importing torch where there is no GPU driver. What a
driver sees runs in a fresh interpreter, where nothing has imported torch yet; the cache file's
own cases (damaged, foreign, unwritable) run here, with torchvision's answer counted."""

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
import torchvision

from rayprof import checks
from rayprof.checks import _catalog_path, check_model
from rayprof.errors import UserError

REPO = Path(__file__).resolve().parents[2]
TV = metadata.version("torchvision")  # the installed distribution's version names the file

PROBE = """
import json, sys
from rayprof import checks
out = {"models": checks.classification_models(), "weights": checks.model_weights("resnet50"),
       "cuda": checks.torch_version_attr("cuda"), "hip": checks.torch_version_attr("hip")}
for name, weights in [("resnet50", "IMAGENET1K_V3"), ("resnet50", "ViT_B_16_Weights.IMAGENET1K_V1"),
                      ("resnet5", None)]:
    try:
        checks.check_model(name, weights)
    except Exception as e:
        out.setdefault("errors", []).append(str(e))
out["imported"] = sorted(m for m in ("torch", "torchvision") if m in sys.modules)
print(json.dumps(out))
"""


def probe(cache: Path, code: str = PROBE) -> dict:
    env = {**os.environ, "RAYPROF_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def errors_here() -> list[str]:
    out = []
    for name, weights in [("resnet50", "IMAGENET1K_V3"), ("resnet50", "ViT_B_16_Weights.IMAGENET1K_V1"),
                          ("resnet5", None)]:
        with pytest.raises(UserError) as e:
            check_model(name, weights)
        out.append(str(e.value))
    return out


def test_the_model_list_is_read_from_torchvision_once_then_from_the_cache(tmp_path):
    first = probe(tmp_path)
    assert first["imported"] == ["torch", "torchvision"]  # built by asking torchvision
    path = _catalog_path(TV).name
    assert (tmp_path / path).is_file()
    again = probe(tmp_path)
    assert again["imported"] == []  # read back: no torch in the process
    expected = torchvision.models.list_models(module=torchvision.models)
    assert first["models"] == again["models"] == expected
    enum = torchvision.models.ResNet50_Weights
    assert again["weights"] == [enum.__name__, {m: len(enum[m].meta["categories"]) for m in enum.__members__}]
    assert first["errors"] == again["errors"] == errors_here()  # the same one-line errors
    assert "did you mean" in again["errors"][0] and "are not weights for resnet50" in again["errors"][1]
    assert again["cuda"] == torch.version.cuda and again["hip"] == torch.version.hip  # read from torch's version.py


@pytest.fixture
def built(monkeypatch):
    """:func:`checks._registry` counted (its answer: torchvision's, asked once here)."""
    calls = []
    answer = checks._registry()

    def registry():
        calls.append(1)
        return answer

    monkeypatch.setattr(checks, "_registry", registry)
    return calls, answer


@pytest.mark.parametrize("content", ["{not json", "[]", json.dumps({"format": 99, "models": {"x": {}}}),
                                     json.dumps({"format": 1, "torchvision": "0.0.1", "models": {"x": {}}})])
def test_a_damaged_or_foreign_cache_file_is_rebuilt(tmp_path, built, content):
    calls, answer = built
    path = tmp_path / "torchvision-9.9.json"
    path.write_text(content)
    assert checks.cached_registry(path, "9.9") == answer and calls == [1]
    assert json.loads(path.read_text()) == {"format": 1, "torchvision": "9.9", "models": answer}
    assert checks.cached_registry(path, "9.9") == answer and calls == [1]  # read back, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_an_unwritable_cache_folder_still_answers(tmp_path, built):
    calls, answer = built
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder should be")
    path = blocked / "torchvision-9.9.json"
    assert checks.cached_registry(path, "9.9") == answer
    assert checks.cached_registry(path, "9.9") == answer and calls == [1, 1]  # asked each time
    assert blocked.read_text().startswith("a file")


@pytest.mark.skipif(os.path.exists("/proc/driver/nvidia") or not sys.platform.startswith("linux"),
                    reason="an NVIDIA driver is here: torch is asked, as it must be")
def test_no_gpu_driver_means_no_cuda_without_importing_torch(tmp_path):
    code = """
import json, sys
from rayprof import checks
from rayprof.sysinfo import host_info
errors = []
for device in ("cuda", "cuda:1", "cpu", "auto", "mps"):
    try:
        checks.check_device(device, "device")
    except Exception as e:
        errors.append(str(e))
info = host_info()
print(json.dumps({"count": checks.gpu_count(), "errors": errors, "gpus": info["gpus"], "cuda": info["cuda"],
                  "torch": "torch" in sys.modules}))
"""
    out = probe(tmp_path, code)
    assert out["count"] == 0 and out["gpus"] == [] and out["cuda"] == torch.version.cuda
    assert out["torch"] is False
    assert out["errors"] == [
        "device = 'cuda': no CUDA GPU is available on this machine; run on the CPU instead (device: cpu; drop --infer-on-gpu)",
        "device = 'cuda:1': no CUDA GPU is available on this machine; run on the CPU instead (device: cpu; drop --infer-on-gpu)",
        "device = 'mps': not a device; use cpu, cuda, cuda:N or auto",
    ]
