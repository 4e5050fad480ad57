import pytest
import torch

from pipeline import adapters, losses, models
from pipeline.taps import Tapped

STUDENT_SHAPE, TEACHER_SHAPE = torch.Size([16, 8, 8]), torch.Size([32, 8, 8])


def test_parameter_counts_match_the_tutorial():
    assert models.count_parameters(models.DeepNN()) == 1_186_986
    assert models.count_parameters(models.LightNN()) == 267_738


def test_forward_returns_logits_and_the_conv_feature_map():
    x = torch.randn(4, 3, 32, 32)
    assert models.DeepNN()(x).shape == (4, 10) and models.LightNN()(x).shape == (4, 10)  # logits
    # The conv feature maps, tapped by module path: the built-ins' default layer.
    assert models.DEFAULT_LAYERS == {"DeepNN": "features", "LightNN": "features"}
    teacher = Tapped(models.DeepNN(), [models.DEFAULT_LAYERS["DeepNN"]])(x)
    student = Tapped(models.LightNN(), [models.DEFAULT_LAYERS["LightNN"]])(x)
    assert teacher.logits.shape == (4, 10) and teacher.features["features"].shape == (4, 32, 8, 8)
    assert student.logits.shape == (4, 10) and student.features["features"].shape == (4, 16, 8, 8)


def test_regressor_maps_student_features_to_teacher_shape_and_is_not_in_the_student():
    regressor = adapters.hint_regressor(STUDENT_SHAPE, TEACHER_SHAPE, "variants.regressor")
    assert isinstance(regressor, torch.nn.Conv2d)  # same 8 x 8: no resize
    assert (regressor.in_channels, regressor.out_channels) == (16, 32)
    assert regressor(torch.randn(2, 16, 8, 8)).shape == (2, 32, 8, 8)
    shapes = {"student_layer": STUDENT_SHAPE, "teacher_layer": TEACHER_SHAPE}
    parts = losses.get("regressor").make_parts(
        losses.PartsInput(shapes, {}, 2, "variants.regressor")
    )
    assert parts(torch.randn(2, 16, 8, 8)).shape == (2, 32, 8, 8)
    student = models.LightNN()
    assert models.count_parameters(student) == 267_738  # deployable student has no regressor
    assert models.count_parameters(Tapped(student, ["features"])) == 267_738  # nor has a tap


def build(name: str, seed: int, num_classes: int = 10, **args) -> torch.nn.Module:
    return models.build(name, args, num_classes, seed, "student.model")


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_build_is_seeded():
    a, b = build("LightNN", 7), build("LightNN", 7)
    c = build("LightNN", 8)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.features[0].weight, c.features[0].weight)


def test_build_passes_num_classes_and_seeds_a_torchvision_model():
    assert build("LightNN", 0, num_classes=3).classifier[-1].out_features == 3
    a, b = build("resnet18", 5, num_classes=4), build("resnet18", 5, num_classes=4)
    assert same(a, b)  # random weights, no hub: the same seed gives the same ones
    assert a.fc.out_features == 4 and a.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
    assert not torch.equal(a.conv1.weight, build("resnet18", 6, num_classes=4).conv1.weight)
    args_win = models.build("resnet18", {"num_classes": 7}, 4, 5, "teacher.model")
    assert args_win.fc.out_features == 7  # num_classes in args is what the user asked for


def test_bad_model_args_are_one_line():
    with pytest.raises(models.ModelError) as e:
        build("LightNN", 0, width=3)
    assert str(e.value).startswith(
        "student.model: LightNN(width=3, num_classes=10) failed (TypeError: "
    )
    assert str(e.value).endswith("fix the model's args") and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("name", "suggested"),
    [
        ("resnet19", "did you mean resnet18, "),
        ("LightNet", "did you mean LightNN? "),
        ("mobilenetv3_small", "did you mean mobilenet_v3_small, "),
    ],
)
def test_an_unknown_model_name_suggests_close_ones(name, suggested):
    with pytest.raises(models.ModelError) as e:
        models.resolve(name, "teacher.model")
    message = str(e.value)
    assert message.startswith(f"teacher.model = {name!r}: not a built-in (DeepNN, LightNN), a ")
    assert suggested in message and "\n" not in message


def test_import_path_errors_name_the_module_and_its_close_names():
    with pytest.raises(models.ModelError, match=r"importing no_such_module failed \("):
        models.resolve("no_such_module:Net", "student.model")
    with pytest.raises(models.ModelError) as e:
        models.resolve("pipeline.models:LightNM", "student.model")
    assert "pipeline.models has no class or function 'LightNM'; it has LightNN" in str(e.value)
    assert models.resolve("pipeline.models:LightNN", "student.model") is models.LightNN


def test_logits_of_reads_the_usual_output_types():
    logits = torch.randn(2, 3)
    for out in (logits, (logits, "aux"), {"logits": logits}, models.Outputs(logits, {})):
        assert models.logits_of(out) is logits
    assert models.logits_of({"features": logits}) is None and models.logits_of(()) is None
