"""Layers tapped by module path (pipeline/taps.py) and the adapters built from their traced shapes
(pipeline/adapters.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import adapters, models, taps
from pipeline.models import ModelError
from pipeline.taps import Tapped


class Recording(nn.Module):
    """A layer that keeps the very tensor it returned."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.returned = None

    def forward(self, x):
        self.returned = self.inner(x)
        return self.returned


def hooks_left(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())


def test_tapped_returns_the_modules_own_output_and_the_nets_logits():
    torch.manual_seed(0)
    net = models.LightNN().eval()  # no dropout: the same logits on every call
    net.features[3] = Recording(net.features[3])  # the second conv
    x = torch.randn(2, 3, 32, 32)
    out = Tapped(net, ["features.3", "features"])(x)
    assert isinstance(out, models.Outputs) and list(out.features) == ["features.3", "features"]
    # A copy of the module's output (an in-place op after it must not change what was tapped)
    assert torch.equal(out.features["features.3"], net.features[3].returned)
    assert out.features["features.3"] is not net.features[3].returned
    assert torch.equal(out.features["features"], net.features(x))
    assert torch.equal(out.logits, net(x))
    assert Tapped(net)(x).features == {}  # nothing tapped: logits only


def test_a_layer_followed_by_an_in_place_op_is_tapped_as_it_was():
    net = models.build("resnet18", {}, 10, 0, "teacher").eval()
    x = torch.randn(2, 3, 32, 32)
    tapped = Tapped(net, ["bn1"])(x).features["bn1"]
    assert torch.equal(tapped, net.bn1(net.conv1(x))) and tapped.min() < 0  # before the ReLU


def test_a_layer_that_does_not_run_is_one_line():
    net = models.build("googlenet", {"aux_logits": True, "init_weights": True}, 10, 0, "t")
    with pytest.raises(models.ModelError, match="layer aux1 does not run in the forward pass "
                                               r"\(in eval mode\); tap another"):  # fmt: skip
        taps.trace(net, ["aux1"], (3, 64, 64), 10, "teacher.model googlenet")


def test_tapped_leaves_no_hooks_behind_even_when_the_forward_fails():
    net = models.LightNN()
    tapped = Tapped(net, ["features", "features.0", "classifier.1"])
    tapped(torch.randn(2, 3, 32, 32))
    assert hooks_left(net) == 0
    with pytest.raises(RuntimeError):
        tapped(torch.randn(2, 5, 32, 32))  # 5 channels: the first conv fails
    assert hooks_left(net) == 0
    assert set(tapped.state_dict()) == {f"net.{k}" for k in net.state_dict()}  # no extra state


def test_tapped_takes_each_layer_once_in_order():
    assert Tapped(models.LightNN(), ["features", "classifier", "features"]).layers == (
        "features",
        "classifier",
    )


def test_check_layers_names_the_key_and_lists_the_nearest_module_paths():
    net = models.LightNN()
    taps.check_layers(net, {"variants.cosine.student_layer": "features.3"}, "student.model LightNN")
    with pytest.raises(ModelError) as e:
        taps.check_layers(net, {"variants.cosine.student_layer": "feature.3"},
                          "student.model LightNN")  # fmt: skip
    message = str(e.value)
    assert message.startswith("variants.cosine.student_layer = 'feature.3': student.model LightNN "
                              "has no module of that path; nearest: features.3, ")  # fmt: skip
    assert "\n" not in message
    # Nothing close: its top-level modules, to start from.
    with pytest.raises(ModelError, match=r"'conv1': .* nearest: features, classifier$"):
        taps.check_layers(net, {"variants.x.student_layer": "conv1"}, "student.model LightNN")


def test_trace_gives_shapes_without_the_batch_and_leaves_the_random_stream_alone():
    net = models.LightNN()
    torch.manual_seed(3)
    shapes = taps.trace(net, ["features", "features.0"], (3, 32, 32), 10, "student.model LightNN")
    after = torch.rand(3)
    assert shapes == {"features": torch.Size([16, 8, 8]), "features.0": torch.Size([16, 32, 32])}
    assert net.training  # put back as it was
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(3))  # tracing drew nothing: initial weights unchanged
    assert hooks_left(net) == 0


def test_trace_refuses_logits_of_the_wrong_width_in_one_line():
    with pytest.raises(ModelError) as e:
        taps.trace(models.LightNN(), (), (3, 32, 32), 3, "student.model LightNN")
    assert str(e.value).startswith("student.model LightNN returns a tensor of shape (2, 10) where "
                                   "logits should be (N x 3, one column per class")  # fmt: skip
    assert "\n" not in str(e.value)


# --- adapters -------------------------------------------------------------------------------------


def test_flat_match_pools_non_divisible_lengths_adaptively():
    # 3 x 5 x 5 = 75 against 4 x 7 x 7 = 196: 196 is no multiple of 75.
    match = adapters.FlatMatch(torch.Size([3, 5, 5]), torch.Size([4, 7, 7]))
    s, t = torch.randn(2, 3, 5, 5), torch.randn(2, 4, 7, 7)
    ps, pt = match(s, t)
    assert ps.shape == pt.shape == (2, 75)
    assert torch.equal(ps, s.flatten(1))  # the shorter is only flattened
    torch.testing.assert_close(pt, F.adaptive_avg_pool1d(t.flatten(1).unsqueeze(1), 75).squeeze(1))
    # Either side may be the longer one; a constant map pools to the same constant.
    short = t[:, :3, :5, :5]
    ps, pt = adapters.FlatMatch(torch.Size([196]), torch.Size([3, 5, 5]))(torch.ones(2, 196), short)
    assert ps.shape == (2, 75) and torch.allclose(ps, torch.ones(2, 75))
    assert torch.equal(pt, short.flatten(1))
    assert list(match.parameters()) == []  # pooling only: nothing to train


def test_flat_match_pools_divisible_lengths_in_equal_groups():
    ps, pt = adapters.FlatMatch(torch.Size([16, 8, 8]), torch.Size([32, 8, 8]))(
        torch.randn(2, 16, 8, 8), torch.arange(2 * 2048.0).view(2, 32, 8, 8)
    )
    assert ps.shape == pt.shape == (2, 1024)
    assert torch.equal(pt[0, :3], torch.tensor([0.5, 2.5, 4.5]))  # adjacent pairs


@pytest.mark.parametrize(
    ("teacher", "resized_by"),
    [
        ((32, 4, 4), "adaptive_avg_pool2d"),
        ((32, 16, 16), "interpolate"),
        ((32, 4, 16), "interpolate"),
    ],
)
def test_hint_regressor_adds_a_resize_when_spatial_sizes_differ(teacher, resized_by):
    regressor = adapters.hint_regressor(torch.Size([16, 8, 8]), torch.Size(teacher), "variants.r")
    assert isinstance(regressor, nn.Sequential) and len(regressor) == 2
    conv, resize = regressor
    assert (conv.in_channels, conv.out_channels) == (16, 32)
    assert isinstance(resize, adapters.Resize) and resize.size == teacher[1:]
    x = torch.randn(2, 16, 8, 8)
    assert regressor(x).shape == (2, *teacher)
    if resized_by == "adaptive_avg_pool2d":  # smaller in both: averaged, as a pooling layer would
        torch.testing.assert_close(regressor(x), F.adaptive_avg_pool2d(conv(x), teacher[1:]))


def test_hint_regressor_needs_no_resize_for_the_tutorials_pair():
    regressor = adapters.hint_regressor(torch.Size([16, 8, 8]), torch.Size([32, 8, 8]), "v")
    assert isinstance(regressor, nn.Conv2d) and regressor.kernel_size == (3, 3)


@pytest.mark.parametrize(
    ("student", "teacher", "role", "shown"),
    [((64,), (32, 8, 8), "student", "64"), ((16, 8, 8), (512,), "teacher", "512"),
     ((), (32, 8, 8), "student", "a scalar")],
)  # fmt: skip
def test_hint_regressor_refuses_flat_features_in_one_line(student, teacher, role, shown):
    with pytest.raises(ModelError) as e:
        adapters.hint_regressor(torch.Size(student), torch.Size(teacher), "variants.regressor")
    assert str(e.value) == (
        f"variants.regressor: the {role} layer gives {shown} per image, and a regressor needs "
        "C x H x W feature maps; tap a convolutional layer"
    )
