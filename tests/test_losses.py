import math
import re

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
MANY = {"student_layers": ["features"], "teacher_layers": ["features"]}
FEATURE = {"distill_weight": 0.25, "ce_weight": 0.75, **LAYERS}
# Every method on the tutorial's pair, with its defaults (CRD with fewer negatives, for speed).
PARAMS = {
    "ce": {}, "kd": KD, "dkd": {}, "dist": {}, "cosine": FEATURE, "regressor": FEATURE,
    "fitnets": FEATURE, "at": MANY, "nst": MANY, "vid": MANY, "sp": LAYERS, "pkt": LAYERS,
    "rkd": LAYERS, "crd": {**LAYERS, "negatives": 64},
}  # fmt: skip
# Distinct names in the hand-made outputs, so each side must read its own layer.
BY_HAND = {"distill_weight": 0.25, "ce_weight": 0.75, "student_layer": "s", "teacher_layer": "t"}


def out(logits, features=None, layer="s") -> Outputs:
    logits = torch.tensor(logits, dtype=torch.float32)
    features = {} if features is None else {layer: torch.tensor(features).float()}
    return Outputs(logits, features)


def ctx(rows: int = 1, num_classes: int = 2) -> Context:
    return Context(epoch=1, indices=torch.arange(rows), num_classes=num_classes, dataset_size=rows)


def test_registry_covers_the_tutorials_methods_and_the_fields():
    assert set(losses.METHODS) == {"ce", "kd", "cosine", "regressor", "fitnets", "dkd", "dist",
                                   "at", "nst", "vid", "sp", "pkt", "rkd", "crd"}  # fmt: skip
    assert set(PARAMS) == set(losses.METHODS)


@pytest.mark.parametrize(
    "name", sorted(set(losses.METHODS) - {"ce", "cosine"})
)  # the tutorial's own
def test_every_method_cites_its_paper_with_its_year(name):
    assert re.search(r"\b(19|20)\d\d\)", losses.get(name).loss.__doc__)


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
    parts = parts_of("cosine", {"student_layer": torch.Size([16, 8, 8]),
                                "teacher_layer": torch.Size([32, 8, 8])})  # fmt: skip
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


def tapped_pair(name: str, params: dict) -> tuple[Tapped, Tapped, nn.Module | None]:
    """The tutorial's student and teacher, tapped where the method's params say, and its parts
    built from the traced shapes, as the distill stage does."""
    bound = losses.resolve(name, params)
    tapped, shapes = {}, {}
    for side, net in (("student", LightNN()), ("teacher", DeepNN())):
        layers = losses.side_layers(name, bound, side)
        shapes |= taps.layer_shapes(net, layers, (3, 32, 32), 10, side)
        tapped[side] = Tapped(net, losses.tapped_paths(name, bound, side))
    return tapped["student"], tapped["teacher"], losses.make_parts(name, bound, shapes, 6, name)


@pytest.mark.parametrize("name", list(losses.METHODS))
def test_gradients_reach_only_the_student_and_its_parts(name):
    torch.manual_seed(0)
    x, labels = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    student, teacher, parts = tapped_pair(name, PARAMS[name])
    with torch.no_grad():  # as fit() runs the teacher
        teacher_out = teacher(x) if losses.get(name).needs_teacher else None
    terms = losses.bind(name, PARAMS[name])(student(x), teacher_out, labels, parts, ctx(6, 10))
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
        match="unknown distillation method 'fitnet'; valid methods: ce, kd, dkd, dist, cosine, regr",
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
            "at",
            {"student_layers": ["a"], "teacher_layers": []},
            r"at\.teacher_layers = \[\]: expected a list of module paths, e\.g\. \[layer2, layer3\]",
        ),
        ("at", {**MANY, "p": 0}, r"at\.p = 0: must be > 0"),
        ("crd", {**LAYERS, "negatives": 2.5}, r"crd\.negatives = 2\.5: expected an integer"),
        ("crd", {**LAYERS, "momentum": 1.5}, r"crd\.momentum = 1\.5: must be >= 0 and <= 1"),
        ("kd", {**KD, "standardize": "yes"}, r"kd\.standardize = 'yes': expected true or false"),
        ("dkd", {"alpha": 0, "beta": 0, "ce_weight": 0}, r"dkd\.alpha = 0, dkd\.beta = 0, dkd"),
        (
            "ce",
            {"temperature": 2},
            "ce.temperature: method 'ce' takes no such parameter; it takes: none",
        ),
        ("kd", {**KD, "temperature": 0}, r"kd\.temperature = 0: must be > 0"),
        ("cosine", {**FEATURE, "ce_weight": -1}, r"cosine\.ce_weight = -1: must be >= 0"),
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


def parts_of(name: str, shapes: dict) -> nn.Module | None:
    make = losses.get(name).make_parts
    return (
        make(losses.PartsInput(shapes, losses.resolve(name, {**LAYERS}), 6, name)) if make else None
    )


def test_parts_live_only_in_the_registry():
    shapes = {"student_layer": torch.Size([16, 8, 8]), "teacher_layer": torch.Size([32, 8, 8])}
    regressor = parts_of("regressor", shapes)
    assert isinstance(regressor, nn.Conv2d)  # the tutorial's regressor: 16 -> 32 channels
    assert (regressor.in_channels, regressor.out_channels) == (16, 32)
    cosine = parts_of("cosine", shapes)
    assert isinstance(cosine, adapters.FlatMatch) and list(cosine.parameters()) == []
    assert all(losses.get(n).make_parts is None for n in ("ce", "kd", "dkd", "dist", "at", "nst"))


def test_the_layers_a_method_taps_are_its_layer_parameters():
    assert (
        losses.layers("cosine") == losses.layers("regressor") == ("student_layer", "teacher_layer")
    )
    assert losses.layers("at") == losses.layers("vid") == ("student_layers", "teacher_layers")
    assert losses.layers("ce") == losses.layers("kd") == losses.layers("dkd") == ()
