"""rayprof.model on CPU: registry, validation, weights, inference and retrain setup, AMP, compile.

Models are built with random weights (weights=None); nothing is downloaded. Inputs are tiny
(64x64) so the convolutional models run in well under a second each.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

import rayprof.model as model_mod
from rayprof.errors import UserError
from rayprof.model import (
    ModelInfo,
    ModelRunner,
    check_device,
    check_model,
    classification_models,
    find_head,
    replace_head,
    resolve_device,
)

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def resnet18_state(tmp_path_factory):
    """A resnet18 state dict saved from a seed-0 runner, and the runner's output on X."""
    runner = ModelRunner("resnet18", seed=0)
    runner.step(X)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(runner.module.state_dict(), path)
    return path, runner.last_output.clone()


# -- registry and validation -------------------------------------------------------------------


def test_classification_models_only():
    names = classification_models()
    assert {"resnet50", "vit_b_16", "resnet18", "mobilenet_v3_small", "squeezenet1_0"} <= set(names)
    others = set()
    for sub in ("detection", "segmentation", "video", "optical_flow", "quantization"):
        others |= set(torchvision.models.list_models(module=getattr(torchvision.models, sub)))
    assert "fasterrcnn_resnet50_fpn_v2" in others
    assert not (set(names) & others)
    assert names == sorted(names)


def test_unknown_model_suggests():
    with pytest.raises(UserError) as err:
        check_model("resnet5", None, field_prefix="workers[0].model")
    e = err.value
    assert e.field == "workers[0].model.name" and e.value == "resnet5"
    assert "'resnet50'" in e.problem
    assert "rayprof models" in e.fix
    with pytest.raises(UserError):
        ModelRunner("fasterrcnn_resnet50_fpn_v2")  # detection models are not classifiers


@pytest.mark.parametrize(
    "weights",
    [None, "none", "None", "IMAGENET1K_V2", "ResNet50_Weights.IMAGENET1K_V1", "DEFAULT"],
)
def test_weights_names_that_exist(weights):
    check_model("resnet50", weights)  # validated against the enum; nothing is downloaded


@pytest.mark.parametrize(
    "weights, problem",
    [
        ("IMAGENET1K_V3", "no such weights for resnet50 (did you mean"),
        ("imagenet", "no such weights"),
        ("ResNet18_Weights.IMAGENET1K_V1", "ResNet18_Weights are not weights for resnet50"),
        ("ResNet50_Weights.NOPE", "no such weights"),
    ],
)
def test_weights_names_that_do_not_exist(weights, problem):
    with pytest.raises(UserError) as err:
        check_model("resnet50", weights, field_prefix="m")
    assert err.value.field == "m.weights"
    assert problem in err.value.problem
    assert "IMAGENET1K_V2" in err.value.fix


@pytest.mark.parametrize("path", ["/nope/resnet.pt", "weights.pth", "w.safetensors", "./w"])
def test_missing_weights_file(path):
    with pytest.raises(UserError) as err:
        check_model("resnet18", path)
    assert err.value.field == "model.weights" and "no such weights file" in err.value.problem


def test_existing_weights_file_ok(resnet18_state):
    check_model("resnet18", str(resnet18_state[0]))


def test_check_device():
    check_device("cpu", "model.device")
    check_device("auto", "model.device")
    with pytest.raises(UserError) as err:
        check_device("tpu", "model.device")
    assert "cpu, cuda, cuda:N or auto" in err.value.fix
    with pytest.raises(UserError):
        check_device("cuda:99", "model.device")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_check_device_cuda_without_gpu():
    for dev in ("cuda", "cuda:0", "CUDA:1"):
        with pytest.raises(UserError) as err:
            check_device(dev, "workers[0].model.device")
        assert err.value.field == "workers[0].model.device"
        assert "no CUDA GPU" in err.value.problem and "cpu" in err.value.fix
    with pytest.raises(UserError):
        ModelRunner("resnet18", device="cuda")


def test_bad_mode_and_num_classes():
    with pytest.raises(UserError) as err:
        ModelRunner("resnet18", mode="retrian")
    assert "'retrain'" in err.value.problem and err.value.field == "mode"
    with pytest.raises(UserError) as err:
        check_model("resnet18", None, "workers[3].model", mode="train")
    assert err.value.field == "workers[3].mode"
    with pytest.raises(UserError) as err:  # the seed compiled in inference only
        check_model("resnet18", None, "workers[3].model", mode="retrain", compile=True)
    assert err.value.field == "workers[3].model.compile"
    check_model("resnet18", "IMAGENET1K_V1", mode="retrain", num_classes=10)  # new head: fine
    check_model("resnet18", None, num_classes=10)  # random weights: any class count
    with pytest.raises(UserError) as err:
        check_model("resnet18", None, num_classes=2.5)
    assert err.value.field == "model.num_classes"
    with pytest.raises(UserError):
        ModelRunner("resnet18", mode="retrain", num_classes=0)
    with pytest.raises(UserError) as err:  # pretrained 1000-class weights, 10-class inference
        ModelRunner("resnet18", weights="IMAGENET1K_V1", num_classes=10)
    assert err.value.field == "model.num_classes"


# -- heads -------------------------------------------------------------------------------------

# one model per torchvision family; the coverage test below fails when a new family appears
FAMILY_HEADS = {
    "alexnet": "classifier.6", "convnext_tiny": "classifier.2", "densenet121": "classifier",
    "efficientnet_b0": "classifier.1", "efficientnet_v2_s": "classifier.1", "googlenet": "fc",
    "inception_v3": "fc", "maxvit_t": "classifier.5", "mnasnet0_5": "classifier.1",
    "mobilenet_v2": "classifier.1", "mobilenet_v3_small": "classifier.3", "resnet18": "fc",
    "resnext50_32x4d": "fc", "shufflenet_v2_x0_5": "fc", "squeezenet1_0": "classifier.1",
    "swin_t": "head", "swin_v2_t": "head", "vgg11": "classifier.6", "vit_b_16": "heads.head",
    "wide_resnet50_2": "fc", "regnet_x_400mf": "fc",
}


def _family(name: str) -> str:
    return name.split("_")[0].rstrip("0123456789") if not name.startswith("wide") else "wide"


def test_family_coverage():
    covered = {_family(n) for n in FAMILY_HEADS}
    assert {_family(n) for n in classification_models()} <= covered


@pytest.mark.parametrize("name", sorted(FAMILY_HEADS))
def test_find_and_replace_head(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # googlenet/inception init warnings
        # regnet's builder computes widths with real tensors: it cannot be built on "meta"
        device = "cpu" if name.startswith("regnet") else "meta"
        with torch.device(device):
            model = torchvision.models.get_model(name, weights=None).eval()
            head_name, head = find_head(model)
            assert head_name == FAMILY_HEADS[name]
            assert (head.out_features if isinstance(head, nn.Linear) else head.out_channels) == 1000
            new = replace_head(model, head_name, 7)
            assert model.get_submodule(head_name) is new
            size = 299 if name == "inception_v3" else (224 if device == "meta" else 64)
            out = model(torch.empty(1, 3, size, size) if device == "meta" else torch.randn(1, 3, 64, 64))
    assert tuple(out.shape) == (1, 7)


# -- inference ---------------------------------------------------------------------------------


def test_inference_step():
    runner = ModelRunner("resnet18")
    assert runner.step(X, step=3) is None
    assert runner.last_output.shape == (2, 1000)
    assert not runner.module.training
    assert not any(p.requires_grad for p in runner.module.parameters())
    info = runner.info
    assert isinstance(info, ModelInfo)
    assert info.to_dict() == {
        "name": "resnet18", "params": 11_689_512, "trainable_params": 0, "head": "fc",
        "num_classes": 1000, "amp_dtype": None, "compiled": False, "device": "cpu",
    }
    runner.synchronize()  # no-op on CPU
    runner.warmup(batch_size=1, size=64)


def test_inference_num_classes_without_weights():
    runner = ModelRunner("mobilenet_v3_small", num_classes=4)
    runner.step(X)
    assert runner.last_output.shape == (2, 4) and runner.info.num_classes == 4


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = ModelRunner("resnet18", seed=5)
    assert torch.equal(torch.rand(3), expected)  # building forks the RNG
    b = ModelRunner("resnet18", seed=5)
    c = ModelRunner("resnet18", seed=6)
    sa, sb, sc = (r.module.state_dict() for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv1.weight"], sc["conv1.weight"])


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix"])
def test_local_state_dict_loads(resnet18_state, tmp_path, wrap):
    path, expected = resnet18_state
    state = torch.load(path, weights_only=True)
    if wrap == "state_dict":
        state = {"state_dict": state, "epoch": 3}
    elif wrap == "model":
        state = {"model": state}
    elif wrap == "module_prefix":
        state = {"module." + k: v for k, v in state.items()}
    target = tmp_path / f"{wrap}.pth"
    torch.save(state, target)
    runner = ModelRunner("resnet18", weights=str(target), seed=99)
    runner.step(X)
    torch.testing.assert_close(runner.last_output, expected, rtol=0, atol=0)


def test_local_state_dict_of_another_model(tmp_path):
    target = tmp_path / "mnet.pt"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), target)
    with pytest.raises(UserError) as err:
        ModelRunner("resnet18", weights=str(target))
    assert "not a state dict of resnet18" in err.value.problem
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError) as err:
        ModelRunner("resnet18", weights=str(junk))
    assert "cannot read a state dict" in err.value.problem


# -- retrain -----------------------------------------------------------------------------------


def test_retrain_replaces_head_and_trains_only_it():
    runner = ModelRunner("resnet18", mode="retrain", num_classes=5, lr=1e-2)
    fc = runner.module.fc
    assert isinstance(fc, nn.Linear) and fc.out_features == 5 and fc.training
    assert not runner.module.layer1.training  # frozen backbone keeps eval() (BN stats fixed)
    trainable = {n for n, p in runner.module.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    assert runner.info.trainable_params == 512 * 5 + 5 and runner.info.num_classes == 5
    head_before = fc.weight.detach().clone()
    conv_before = runner.module.conv1.weight.detach().clone()
    bn_before = runner.module.bn1.running_mean.clone()
    labels = runner.make_labels(2, torch.Generator().manual_seed(0))
    loss = runner.step(X, labels, step=1)
    assert isinstance(loss, float) and loss == loss and abs(loss) != float("inf")
    assert not torch.equal(fc.weight, head_before)
    assert torch.equal(runner.module.conv1.weight, conv_before)
    assert torch.equal(runner.module.bn1.running_mean, bn_before)
    assert runner.last_output.shape == (2, 5)
    assert isinstance(runner.step(X), float)  # labels drawn by the runner when omitted


def test_retrain_keeps_class_count_by_default_and_other_heads():
    runner = ModelRunner("mobilenet_v3_small", mode="retrain")
    assert runner.info.head == "classifier.3" and runner.info.num_classes == 1000
    squeeze = ModelRunner("squeezenet1_1", mode="retrain", num_classes=3)
    assert squeeze.info.head == "classifier.1"
    assert isinstance(squeeze.module.classifier[1], nn.Conv2d)
    assert isinstance(squeeze.step(X), float) and squeeze.last_output.shape == (2, 3)


def test_retrain_from_a_1000_class_checkpoint(resnet18_state):
    path, _ = resnet18_state
    runner = ModelRunner("resnet18", mode="retrain", weights=str(path), num_classes=4, seed=9)
    reference = torch.load(path, weights_only=True)
    assert torch.equal(runner.module.conv1.weight, reference["conv1.weight"])
    assert runner.module.fc.out_features == 4


def test_replicas_retrain_identically():
    a, b = (ModelRunner("resnet18", mode="retrain", num_classes=3, seed=2) for _ in range(2))
    assert a.step(X) == b.step(X)
    assert torch.equal(a.module.fc.weight, b.module.fc.weight)


def test_make_labels():
    runner = ModelRunner("resnet18", mode="retrain", num_classes=3)
    labels = runner.make_labels(100, torch.Generator().manual_seed(1))
    assert labels.dtype == torch.long and labels.shape == (100,)
    assert int(labels.min()) >= 0 and int(labels.max()) <= 2
    assert torch.equal(labels, runner.make_labels(100, torch.Generator().manual_seed(1)))


def test_markers_per_phase(monkeypatch):
    seen = []

    class _Mark:
        def __init__(self, name, step):
            seen.append((name, step))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(model_mod, "mark", _Mark)
    ModelRunner("resnet18").step(X, step=4)
    ModelRunner("resnet18", mode="retrain").step(X, step=5)
    assert seen == [("forward", 4), ("forward", 5), ("backward", 5), ("optimizer", 5)]


# -- AMP and compile ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["inference", "retrain"])
def test_amp_on_cpu_is_bfloat16(mode):
    runner = ModelRunner("resnet18", mode=mode, amp=True)
    dtypes = []
    runner.module.layer1.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    runner.module.fc.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    result = runner.step(X)
    assert dtypes == [torch.bfloat16, torch.bfloat16]
    assert runner.info.amp_dtype == "bfloat16" and runner.scaler is None
    if mode == "retrain":
        assert isinstance(result, float) and result == result


def test_compile_wiring(monkeypatch):
    calls = []

    def fake_compile(module):
        calls.append(module)
        return lambda x: module(x) * 0  # recognisable output: proves step uses the compiled fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    runner = ModelRunner("resnet18", compile=True)
    assert calls == [runner.module] and runner.info.compiled
    runner.step(X)
    assert torch.count_nonzero(runner.last_output) == 0
    with pytest.raises(UserError) as err:
        ModelRunner("resnet18", mode="retrain", compile=True)
    assert err.value.field == "model.compile" and "inference only" in err.value.problem
    assert calls == [runner.module]


@pytest.mark.slow
def test_compile_on_cpu_for_real():
    # torch.compile (inductor, C++ codegen) of resnet18 on a 2-core box: ~30-45 s cold, ~6 s
    # with a warm inductor cache.
    compiled = ModelRunner("resnet18", compile=True)
    eager = ModelRunner("resnet18")
    x = X[:1]
    compiled.step(x)
    eager.step(x)
    torch.testing.assert_close(compiled.last_output, eager.last_output, rtol=1e-3, atol=1e-3)
