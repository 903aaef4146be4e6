"""rayprof.model on CUDA: device checks, inference, fp16 AMP retrain with a GradScaler, compile."""

from __future__ import annotations

import pytest
import torch

from rayprof.errors import UserError
from rayprof.model import ModelRunner, check_device, resolve_device

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

X = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def test_devices():
    check_device("cuda", "model.device")
    check_device("cuda:0", "model.device")
    n = torch.cuda.device_count()
    with pytest.raises(UserError) as err:
        check_device(f"cuda:{n}", "model.device")
    assert f"{n} GPU(s)" in err.value.problem
    assert resolve_device("cuda") == torch.device("cuda", torch.cuda.current_device())
    assert resolve_device("auto").type == "cuda"


def test_inference_on_gpu_matches_cpu():
    gpu = ModelRunner("resnet18", device="cuda", seed=1)
    cpu = ModelRunner("resnet18", device="cpu", seed=1)
    assert gpu.info.device.startswith("cuda")
    assert gpu.step(X.pin_memory()) is None
    gpu.synchronize()
    cpu.step(X)
    assert gpu.last_output.is_cuda
    # cuDNN convolutions may use TF32 (10-bit mantissa); logits of a random resnet18 are O(5)
    torch.testing.assert_close(gpu.last_output.cpu(), cpu.last_output, rtol=1e-2, atol=5e-2)


def test_inference_amp_fp16():
    runner = ModelRunner("resnet50", device="cuda", amp=True)
    dtypes = []
    runner.module.fc.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    runner.step(X)
    runner.synchronize()
    assert dtypes == [torch.float16] and runner.info.amp_dtype == "float16"


def test_retrain_amp_fp16_with_grad_scaler():
    runner = ModelRunner("resnet50", mode="retrain", device="cuda", amp=True, num_classes=10)
    assert isinstance(runner.scaler, torch.amp.GradScaler) and runner.scaler.is_enabled()
    head = runner.module.fc.weight.detach().clone()
    backbone = runner.module.conv1.weight.detach().clone()
    # Random-init resnet50 features reach O(100): at the scaler's initial scale (65536) the fp16
    # head gradients overflow, the scaler skips the step and halves the scale. Within ~10 steps
    # a step is applied.
    losses = []
    for i in range(24):
        losses.append(runner.step(X, step=i))
        if not torch.equal(runner.module.fc.weight, head):
            break
    runner.synchronize()
    assert runner.scaler.get_scale() < 65536.0 or len(losses) == 1
    assert all(isinstance(v, float) and v == v for v in losses)
    assert runner.module.fc.weight.dtype == torch.float32  # master weights stay fp32
    assert not torch.equal(runner.module.fc.weight, head)
    assert torch.equal(runner.module.conv1.weight, backbone)
    assert runner.info.amp_dtype == "float16"


def test_retrain_vit_head_on_gpu():
    runner = ModelRunner("vit_b_16", mode="retrain", device="cuda", num_classes=7)
    assert runner.info.head == "heads.head"
    assert isinstance(runner.step(X[:2]), float)
    assert runner.last_output.shape == (2, 7)


def test_compile_on_gpu():
    compiled = ModelRunner("resnet18", device="cuda", compile=True)
    eager = ModelRunner("resnet18", device="cuda")
    compiled.step(X)
    eager.step(X)
    compiled.synchronize()
    assert compiled.info.compiled
    torch.testing.assert_close(compiled.last_output, eager.last_output, rtol=1e-2, atol=5e-2)
