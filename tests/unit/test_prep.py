"""rayprof.prep on CPU: shapes, equality with independent references, determinism, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from rayprof.errors import UserError
from rayprof.prep import LEVELS, MEAN, STD, Preprocessor, check_prep, describe, resize_shorter

_MEAN = np.array(MEAN, dtype=np.float32)
_STD = np.array(STD, dtype=np.float32)


def _levels(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference between two normalized batches, in uint8 levels (1 level = 1/255)."""
    return float((np.abs(a - b) * _STD[None, :, None, None] * 255).max())


def _normalize(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → (3, H, W) float32 with ImageNet statistics, in plain numpy."""
    return ((img.astype(np.float32) / 255.0 - _MEAN) / _STD).transpose(2, 0, 1)


@pytest.fixture
def frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, 96, 128, 3), dtype=np.uint8)


@pytest.fixture
def smooth() -> np.ndarray:
    """Low-frequency content, where different downscaling filters agree closely."""
    yy, xx = np.mgrid[0:96, 0:128]
    chans = [127 + 100 * np.sin(xx / 9 + c) * np.cos(yy / 13) for c in range(3)]
    return np.stack(chans, -1).astype(np.uint8)[None]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("shape", [(3, 96, 128), (2, 128, 96), (1, 48, 48)])
def test_shape_dtype_device(level, shape):
    n, h, w = shape
    batch = np.random.default_rng(1).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    prep = Preprocessor(level, size=40)
    out = prep(batch)
    assert out.shape == (n, 3, 40, 40)
    assert out.dtype == torch.float32
    assert out.device.type == "cpu" and prep.device == torch.device("cpu")
    assert out.is_contiguous()
    assert torch.isfinite(out).all()


def test_simple_matches_pil_bilinear(frames):
    # torch's antialiased bilinear is PIL's BILINEAR resampling (triangle filter widened by the
    # scale); both are fixed-point on uint8, so they may differ by at most one rounding step.
    out = Preprocessor("simple", size=64)(frames).numpy()
    ref = np.stack([_normalize(np.asarray(Image.fromarray(f).resize((64, 64), Image.BILINEAR)))
                    for f in frames])
    assert _levels(out, ref) <= 1.0 + 1e-3


def test_simple_upscale_matches_cv2_linear():
    # Upscaling: antialiasing has no effect and both use half-pixel centers; cv2's 11-bit
    # fixed-point arithmetic rounds differently by at most one level.
    small = np.random.default_rng(2).integers(0, 256, (2, 24, 40, 3), dtype=np.uint8)
    out = Preprocessor("simple", size=64)(small).numpy()
    ref = np.stack([_normalize(cv2.resize(f, (64, 64), interpolation=cv2.INTER_LINEAR))
                    for f in small])
    assert _levels(out, ref) <= 1.0 + 1e-3


def test_simple_downscale_close_to_cv2_area_on_smooth_content(smooth):
    # A different filter (box vs. triangle): close only on smooth content; 4 levels is ~1.5%.
    out = Preprocessor("simple", size=64)(smooth).numpy()
    ref = _normalize(cv2.resize(smooth[0], (64, 64), interpolation=cv2.INTER_AREA))[None]
    assert _levels(out, ref) <= 4.0


def test_medium_matches_resize_shorter_then_center_crop(frames):
    size = 64
    short = resize_shorter(size)
    assert short == 73 and resize_shorter(224) == 256
    h, w = frames.shape[1:3]
    new_w = int(short * w / h)  # the long side keeps the aspect ratio (truncated)
    top, left = int(round((short - size) / 2)), int(round((new_w - size) / 2))

    def ref(f):
        r = np.asarray(Image.fromarray(f).resize((new_w, short), Image.BILINEAR))
        return _normalize(r[top : top + size, left : left + size])

    out = Preprocessor("medium", size=size)(frames).numpy()
    assert _levels(out, np.stack([ref(f) for f in frames])) <= 1.0 + 1e-3


def test_normalization_of_constant_frame():
    frame = np.full((1, 50, 70, 3), 128, dtype=np.uint8)
    for level in ("simple", "medium"):
        out = Preprocessor(level, size=32)(frame)
        expected = (128 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
        torch.testing.assert_close(out[0, :, 16, 16], expected, atol=1e-5, rtol=0)


def test_complex_is_deterministic_per_seed(frames):
    a, b, c = (Preprocessor("complex", size=48, seed=s) for s in (7, 7, 8))
    seq_a = [a(frames) for _ in range(3)]
    seq_b = [b(frames) for _ in range(3)]
    for x, y in zip(seq_a, seq_b):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
    seq_c = [c(frames) for _ in range(3)]
    assert any(not torch.equal(x, y) for x, y in zip(seq_a, seq_c))
    # the generator advances: successive batches get new parameters
    assert not all(torch.equal(seq_a[0], x) for x in seq_a[1:])


def test_complex_differs_from_medium(frames):
    medium = Preprocessor("medium", size=48)(frames)
    complex_ = Preprocessor("complex", size=48)(frames)
    assert medium.shape == complex_.shape
    assert not torch.allclose(medium, complex_)


def test_single_frame_and_tensor_input(frames):
    prep = Preprocessor("simple", size=32)
    one = prep(frames[0])
    assert one.shape == (1, 3, 32, 32)
    torch.testing.assert_close(prep(torch.from_numpy(frames))[0], one[0])


def test_bad_frames_are_programming_errors(frames):
    prep = Preprocessor("simple", size=32)
    with pytest.raises(ValueError, match="uint8"):
        prep(frames.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        prep(frames[..., :2])


@pytest.mark.parametrize("level", LEVELS)
def test_describe_lists_the_transforms(level):
    steps = describe(level)
    assert steps[-1].startswith("normalize") or "random parameters" in steps[-1]
    text = " | ".join(steps)
    if level == "simple":
        assert "resize to 224x224" in text and "crop" not in text
    if level in ("medium", "complex"):
        assert "shorter side to 256" in text and "center crop 224x224" in text
    if level == "complex":
        for word in ("gaussian blur", "horizontal flip", "color jitter", "rotation"):
            assert word in text
    assert Preprocessor(level, size=224).describe() == steps


def test_unknown_level_suggests():
    with pytest.raises(UserError) as err:
        Preprocessor("medum", field="workers[0].prep.level")
    assert err.value.field == "workers[0].prep.level"
    assert "'medium'" in err.value.message
    with pytest.raises(UserError):
        describe("fancy")


def test_bad_size():
    with pytest.raises(UserError) as err:
        Preprocessor("simple", size=0)
    assert err.value.field == "prep.size"


@pytest.mark.parametrize("field", ["workers[1].prep.level", "workers[1].prep"])
def test_field_names(field):
    with pytest.raises(UserError) as err:
        check_prep("compex", "cpu", field=field)
    assert err.value.field == "workers[1].prep.level" and "'complex'" in err.value.problem
    with pytest.raises(UserError) as err:
        check_prep("simple", "gpu", field=field)
    assert err.value.field == "workers[1].prep.device"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
@pytest.mark.parametrize("field", ["workers[1].prep.level", "workers[1].prep"])
def test_cuda_without_gpu_is_a_user_error(field):
    with pytest.raises(UserError) as err:
        check_prep("simple", "cuda", field=field)
    assert err.value.field == "workers[1].prep.device"
    assert "no CUDA GPU" in err.value.problem
    assert "prep.device: cpu" in err.value.fix and "--prep-on-gpu" in err.value.fix
    with pytest.raises(UserError):
        Preprocessor("simple", device="cuda")


def test_auto_device_and_bad_device():
    assert Preprocessor("simple", device="auto").device.type == (
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    with pytest.raises(UserError):
        check_prep("simple", "tpu")
