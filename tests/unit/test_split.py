"""Cutting a model: head then tail gives the unsplit model's output and the activation of the
named module, both halves hold the model's own parameters, only single-value cuts are offered,
and a wrong point is one line that lists the valid ones."""

import pytest
import torch
import torchvision
from click.testing import CliRunner
from torch import nn

from rayprof.cli import main
from rayprof.errors import UserError
from rayprof.split import cut, parse_split, point_shapes, split_points

#: model → input size (as small as the model allows; ViT is built for 224) and batch
INPUTS = {"resnet18": (64, 2), "mobilenet_v3_small": (64, 2), "efficientnet_b0": (64, 2),
          "convnext_tiny": (64, 2), "vit_b_16": (224, 1)}

RESNET18_POINTS = ["conv1", "bn1", "relu", "maxpool", "layer1.0", "layer1", "layer2.0", "layer2",
                   "layer3.0", "layer3", "layer4.0", "layer4", "avgpool"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared, busy machine two spinning threads make these forwards
    ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    """Builds each torchvision model once per module: random weights (seed 0), eval mode."""
    built: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in built:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                built[name] = torchvision.models.get_model(name, weights=None).eval()
        return built[name]

    return get


def image(name: str) -> torch.Tensor:
    size, batch = INPUTS[name]
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def module_output(model: nn.Module, point: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The unsplit model's logits and the output of its module ``point`` on ``x``."""
    seen = {}
    hook = model.get_submodule(point).register_forward_hook(lambda _m, _a, out: seen.setdefault("out", out))
    try:
        logits = model(x)
    finally:
        hook.remove()
    return logits, seen["out"]


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_head_then_tail_is_the_unsplit_model(name, model):
    m = model(name)
    points = split_points(m)
    x = image(name)
    with torch.no_grad():
        for point in (points[0], points[len(points) // 2], points[-1]):  # first, middle, last
            head, tail = cut(m, point)
            logits, expected_activation = module_output(m, point, x)
            activation = head(x)
            assert isinstance(activation, torch.Tensor), point
            torch.testing.assert_close(activation, expected_activation, rtol=1e-4, atol=1e-5, msg=point)
            torch.testing.assert_close(tail(activation), logits, rtol=1e-4, atol=1e-5, msg=point)


@pytest.mark.parametrize("name", ["resnet18", "vit_b_16"])
def test_halves_hold_the_models_own_parameters(name, model):
    m = model(name)
    point = split_points(m)[len(split_points(m)) // 2]
    head, tail = cut(m, point)
    for half in (head, tail):
        for pname, p in half.named_parameters():
            assert p is m.get_parameter(pname), pname
    head_ptrs = {p.data_ptr() for p in head.parameters()}
    tail_ptrs = {p.data_ptr() for p in tail.parameters()}
    assert head_ptrs and tail_ptrs and not head_ptrs & tail_ptrs
    assert head_ptrs | tail_ptrs == {p.data_ptr() for p in m.parameters()}


def test_resnet_points_are_its_stages_and_blocks(model):
    points = split_points(model("resnet18"))
    assert points == RESNET18_POINTS  # no point inside a residual block; fc (the last) is no point
    assert split_points("resnet18") == RESNET18_POINTS  # by name: the same graph


def test_vit_cuts_at_encoder_blocks(model):
    points = split_points(model("vit_b_16"))
    assert points == [f"encoder.layers.encoder_layer_{i}" for i in range(12)] + ["encoder"]
    # conv_proj is a child, but its tail would still read the input's shape: two values cross
    with pytest.raises(UserError, match="is not a split point"):
        cut(model("vit_b_16"), "conv_proj")


class Skip(nn.Module):
    """a → relu(b) + a → c: the cut after `b` crosses the skip connection."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Flatten()

    def forward(self, x):
        y = self.a(x)
        return self.d(self.c(self.b(y) + y))


def test_a_cut_across_a_skip_connection_is_not_offered():
    m = Skip().eval()
    assert split_points(m) == ["a", "c"]  # not b (its output and a's cross), not d (the last)
    with pytest.raises(UserError, match="use one of: a, c$"):
        cut(m, "b")


def test_an_inner_name_of_the_same_cut_is_accepted(model):
    m = model("resnet18")
    x = image("resnet18")
    with torch.no_grad():
        head, tail = cut(m, "layer1.1")  # ends where layer1 ends; listed as layer1
        torch.testing.assert_close(tail(head(x)), m(x))


def test_a_wrong_point_lists_the_valid_ones(model):
    with pytest.raises(UserError) as info:
        cut(model("resnet18"), "layer5", name="resnet18")
    message = info.value.message
    assert "\n" not in message
    assert message.startswith("model.split = 'layer5': is not a split point of resnet18")
    assert "did you mean 'layer4'" in message
    assert message.endswith("use one of: " + ", ".join(RESNET18_POINTS))


@pytest.mark.parametrize("value, expected", [("resnet50:layer3", ("resnet50", "layer3")),
                                             ("layer3", (None, "layer3")),
                                             ("vit_b_16:encoder.layers.encoder_layer_5",
                                              ("vit_b_16", "encoder.layers.encoder_layer_5"))])
def test_parse_split(value, expected):
    assert parse_split(value) == expected


@pytest.mark.parametrize("value", ["resnet50:", ":layer3", ""])
def test_parse_split_rejects_a_missing_part(value):
    with pytest.raises(UserError, match="is not MODEL:POINT or POINT"):
        parse_split(value)


def test_point_shapes_are_the_activations_at_224(model):
    shapes = dict(point_shapes(model("resnet18")))
    assert list(shapes) == RESNET18_POINTS
    assert shapes["layer3"] == (1, 256, 14, 14) and shapes["avgpool"] == (1, 512, 1, 1)


def test_cli_lists_points_with_shapes():
    result = CliRunner().invoke(main, ["split-points", "resnet18"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == RESNET18_POINTS
    assert "layer3    (1, 256, 14, 14)" in lines


@pytest.mark.parametrize("args, needle", [(["resnet51"], "MODEL = 'resnet51'"),
                                          (["vit_b_16", "--size", "64"], "--size = 64")])
def test_cli_bad_input_is_one_line(args, needle):
    result = CliRunner().invoke(main, ["split-points", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output
