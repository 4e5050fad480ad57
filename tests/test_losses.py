import math

import pytest
import torch
from torch import nn

from pipeline import adapters, losses, taps
from pipeline.losses import Context
from pipeline.models import DeepNN, LightNN, Outputs
from pipeline.taps import Tapped

KD = {"temperature": 2.0, "distill_weight": 0.25, "ce_weight": 0.75}
# The tutorial's layers: each built-in's conv stack (what params.py fills in for them).
LAYERS = {"student_layer": "features", "teacher_layer": "features"}
FEATURE = {"distill_weight": 0.25, "ce_weight": 0.75, **LAYERS}
PARAMS = {"ce": {}, "kd": KD, "cosine": FEATURE, "regressor": FEATURE}
# Distinct names in the hand-made outputs, so each side must read its own layer.
BY_HAND = {"distill_weight": 0.25, "ce_weight": 0.75, "student_layer": "s", "teacher_layer": "t"}


def out(logits, features=None, layer="s") -> Outputs:
    logits = torch.tensor(logits, dtype=torch.float32)
    features = {} if features is None else {layer: torch.tensor(features).float()}
    return Outputs(logits, features)


def ctx(rows: int = 1, num_classes: int = 2) -> Context:
    return Context(epoch=1, indices=torch.arange(rows), num_classes=num_classes, dataset_size=rows)


def test_registry_covers_the_tutorials_methods():
    assert set(losses.METHODS) == {"ce", "kd", "cosine", "regressor"}
    assert set(PARAMS) == set(losses.METHODS)


def test_ce_by_hand():
    terms = losses.bind("ce", {})(out([[2.0, 0.0]]), None, torch.tensor([0]), None, ctx())
    expected = math.log(1 + math.exp(-2))  # -log(e^2 / (e^2 + e^0))
    assert terms["ce"].item() == pytest.approx(expected)
    assert terms["loss"].item() == pytest.approx(expected)


def test_kd_by_hand():
    # At T = 2 the teacher's logits [2 ln 3, 0] soften to [ln 3, 0]: probabilities 3/4 and 1/4.
    # The student's [0, 0] is uniform. KL(t || s) = 3/4 ln(3/2) + 1/4 ln(1/2), times T^2 = 4.
    student, teacher = out([[0.0, 0.0]]), out([[2 * math.log(3), 0.0]])
    terms = losses.bind("kd", KD)(student, teacher, torch.tensor([1]), None, ctx())
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert terms["kd"].item() == pytest.approx(4 * kl, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(math.log(2))
    assert terms["loss"].item() == pytest.approx(0.75 * math.log(2) + 0.25 * 4 * kl, rel=1e-5)


def test_kd_term_is_zero_when_student_equals_teacher():
    logits = torch.randn(8, 10) * 5
    same = Outputs(logits, {})
    terms = losses.bind("kd", KD)(same, same, torch.zeros(8, dtype=torch.long), None, ctx(8, 10))
    assert terms["kd"].item() == pytest.approx(0.0, abs=1e-6)


def test_kd_is_finite_where_softmax_underflows():
    student, teacher = out([[0.0, 0.0]]), out([[1000.0, -1000.0]])  # teacher prob of class 1 is 0
    terms = losses.bind("kd", KD)(student, teacher, torch.tensor([0]), None, ctx())
    assert torch.isfinite(terms["loss"])


def test_cosine_by_hand():
    # Student [1, 0]; teacher [1, 1, 1, 1] pools in pairs to [1, 1]: cosine 1/sqrt(2).
    student = out([[0.0, 0.0]], [[[[1.0]], [[0.0]]]], "s")  # 1 x 2 x 1 x 1
    teacher = out([[0.0, 0.0]], [[[[1.0]], [[1.0]], [[1.0]], [[1.0]]]], "t")  # 1 x 4 x 1 x 1
    parts = adapters.FlatMatch(torch.Size([2, 1, 1]), torch.Size([4, 1, 1]))
    terms = losses.bind("cosine", BY_HAND)(student, teacher, torch.tensor([0]), parts, ctx())
    assert terms["cosine"].item() == pytest.approx(1 - 1 / math.sqrt(2))
    assert terms["loss"].item() == pytest.approx(0.75 * math.log(2) + 0.25 * (1 - 1 / math.sqrt(2)))


def test_cosine_pools_the_teachers_flattened_2048_to_1024_in_adjacent_pairs():
    teacher_map = torch.randn(2, 32, 8, 8)
    pooled = teacher_map.flatten(1).view(2, 1024, 2).mean(dim=2)
    student = Outputs(torch.zeros(2, 10), {"features": pooled.view(2, 16, 8, 8)})  # aligned
    teacher = Outputs(torch.zeros(2, 10), {"features": teacher_map})
    parts = losses.get("cosine").make_parts(
        {"student_layer": torch.Size([16, 8, 8]), "teacher_layer": torch.Size([32, 8, 8])}, "cosine"
    )
    terms = losses.bind("cosine", FEATURE)(
        student, teacher, torch.zeros(2, dtype=torch.long), parts, ctx(2, 10)
    )
    assert terms["cosine"].item() == pytest.approx(0.0, abs=1e-6)


def test_regressor_by_hand():
    student = out([[0.0, 0.0]], [1.0, 2.0], "s")
    teacher = out([[0.0, 0.0]], [3.0, 3.0], "t")
    double = lambda f: 2 * f  # noqa: E731 -- parts whose output is known: [2, 4] against [3, 3]
    terms = losses.bind("regressor", BY_HAND)(student, teacher, torch.tensor([0]), double, ctx())
    assert terms["hint"].item() == pytest.approx(1.0)  # ((2-3)^2 + (4-3)^2) / 2
    assert terms["loss"].item() == pytest.approx(0.75 * math.log(2) + 0.25)


@pytest.mark.parametrize("name", list(losses.METHODS))
def test_gradients_reach_only_the_student_and_its_parts(name):
    torch.manual_seed(0)
    x, labels = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    params, method = PARAMS[name], losses.get(name)
    tapped = {key: params[key] for key in losses.layers(name)}
    student = Tapped(LightNN(), [v for k, v in tapped.items() if k == "student_layer"])
    teacher = Tapped(DeepNN(), [v for k, v in tapped.items() if k == "teacher_layer"])
    # The parts, built from the traced shapes of the tapped layers, as the distill stage does.
    shapes = {}
    for key, net in (("student_layer", student.net), ("teacher_layer", teacher.net)):
        if key in tapped:
            shapes[key] = taps.trace(net, [tapped[key]], (3, 32, 32), 10, key)[tapped[key]]
    parts = method.make_parts(shapes, f"variants.{name}") if method.make_parts else None
    with torch.no_grad():  # as fit() runs the teacher
        teacher_out = teacher(x) if method.needs_teacher else None
    terms = losses.bind(name, params)(student(x), teacher_out, labels, parts, ctx(6, 10))
    assert terms["loss"].dim() == 0 and torch.isfinite(terms["loss"])
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    terms["loss"].backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    if parts is not None:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in parts.parameters())


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(
        ValueError,
        match="unknown distillation method 'fitnet'; valid methods: ce, kd, cosine, regressor",
    ):
        losses.get("fitnet")


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        (
            "kd",
            {**KD, "alpha": 1},
            r"kd\.alpha: method 'kd' takes no such parameter; it takes: temp",
        ),
        (
            "kd",
            {"temperature": 2, "ce_weight": 1},
            r"kd\.distill_weight: missing; method 'kd' takes",
        ),
        (
            "ce",
            {"temperature": 2},
            "ce.temperature: method 'ce' takes no such parameter; it takes: none",
        ),
        ("kd", {**KD, "temperature": 0}, r"kd\.temperature = 0: must be > 0"),
        ("cosine", {**FEATURE, "ce_weight": -1}, r"cosine\.ce_weight = -1: weights must be >= 0"),
        (
            "regressor",
            {"distill_weight": 0, "ce_weight": 0.0, **LAYERS},
            r"regressor\.distill_weight = 0, regressor\.ce_weight = 0\.0: at least one weight",
        ),
        ("kd", {**KD, "temperature": "2"}, r"kd\.temperature = '2': expected a number"),
        (
            "cosine",
            {"distill_weight": 0.25, "ce_weight": 0.75, "teacher_layer": "features"},
            r"cosine\.student_layer: missing; method 'cosine' takes: student_layer, teacher_layer",
        ),
        (
            "regressor",
            {**FEATURE, "student_layer": 3},
            r"regressor\.student_layer = 3: expected a module path, e\.g\. layer3",
        ),
        ("cosine", {**FEATURE, "teacher_layer": " "}, r"cosine\.teacher_layer = ' ': expected a"),
        ("kd", {**KD, **LAYERS}, r"kd\.student_layer: method 'kd' takes no such parameter"),
    ],
)
def test_bad_method_parameters_are_named(name, params, message):
    with pytest.raises(ValueError, match=message):
        losses.bind(name, params)


def test_layers_are_bound_as_module_paths():
    loss = losses.bind("cosine", {**FEATURE, "student_layer": "layer3.1"})
    assert loss.keywords["student_layer"] == "layer3.1" and loss.keywords["ce_weight"] == 0.75


def test_parts_live_only_in_the_registry():
    shapes = {"student_layer": torch.Size([16, 8, 8]), "teacher_layer": torch.Size([32, 8, 8])}
    regressor = losses.get("regressor").make_parts(shapes, "variants.regressor")
    assert isinstance(regressor, nn.Conv2d)  # the tutorial's regressor: 16 -> 32 channels
    assert (regressor.in_channels, regressor.out_channels) == (16, 32)
    cosine = losses.get("cosine").make_parts(shapes, "variants.cosine")
    assert isinstance(cosine, adapters.FlatMatch) and list(cosine.parameters()) == []
    assert all(losses.get(n).make_parts is None for n in ("ce", "kd"))


def test_the_layers_a_method_taps_are_its_layer_parameters():
    assert losses.layers("cosine") == losses.layers("regressor") == losses.LAYER_KEYS
    assert losses.layers("ce") == losses.layers("kd") == ()
