import math

import pytest
import torch
from torch import nn

from pipeline import losses
from pipeline.models import DeepNN, LightNN, Outputs

KD = {"temperature": 2.0, "distill_weight": 0.25, "ce_weight": 0.75}
FEATURE = {"distill_weight": 0.25, "ce_weight": 0.75}
PARAMS = {"ce": {}, "kd": KD, "cosine": FEATURE, "regressor": FEATURE}


def out(logits, features=None) -> Outputs:
    logits = torch.tensor(logits, dtype=torch.float32)
    features = torch.zeros(len(logits), 1) if features is None else torch.tensor(features)
    return Outputs(logits, features.float())


def test_registry_covers_the_tutorials_methods():
    assert set(losses.METHODS) == {"ce", "kd", "cosine", "regressor"}
    assert set(PARAMS) == set(losses.METHODS)


def test_ce_by_hand():
    terms = losses.bind("ce", {})(out([[2.0, 0.0]]), None, torch.tensor([0]), None)
    expected = math.log(1 + math.exp(-2))  # -log(e^2 / (e^2 + e^0))
    assert terms["ce"].item() == pytest.approx(expected)
    assert terms["loss"].item() == pytest.approx(expected)


def test_kd_by_hand():
    # At T = 2 the teacher's logits [2 ln 3, 0] soften to [ln 3, 0]: probabilities 3/4 and 1/4.
    # The student's [0, 0] is uniform. KL(t || s) = 3/4 ln(3/2) + 1/4 ln(1/2), times T^2 = 4.
    student, teacher = out([[0.0, 0.0]]), out([[2 * math.log(3), 0.0]])
    terms = losses.bind("kd", KD)(student, teacher, torch.tensor([1]), None)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert terms["kd"].item() == pytest.approx(4 * kl, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(math.log(2))
    assert terms["loss"].item() == pytest.approx(0.75 * math.log(2) + 0.25 * 4 * kl, rel=1e-5)


def test_kd_term_is_zero_when_student_equals_teacher():
    logits = torch.randn(8, 10) * 5
    same = Outputs(logits, torch.zeros(8, 1))
    terms = losses.bind("kd", KD)(same, same, torch.zeros(8, dtype=torch.long), None)
    assert terms["kd"].item() == pytest.approx(0.0, abs=1e-6)


def test_kd_is_finite_where_softmax_underflows():
    student, teacher = out([[0.0, 0.0]]), out([[1000.0, -1000.0]])  # teacher prob of class 1 is 0
    terms = losses.bind("kd", KD)(student, teacher, torch.tensor([0]), None)
    assert torch.isfinite(terms["loss"])


def test_cosine_by_hand():
    # Student [1, 0]; teacher [1, 1, 1, 1] pools in pairs to [1, 1]: cosine 1/sqrt(2).
    student = out([[0.0, 0.0]], [[[[1.0]], [[0.0]]]])  # 1 x 2 x 1 x 1
    teacher = out([[0.0, 0.0]], [[[[1.0]], [[1.0]], [[1.0]], [[1.0]]]])  # 1 x 4 x 1 x 1
    terms = losses.bind("cosine", FEATURE)(student, teacher, torch.tensor([0]), None)
    assert terms["cosine"].item() == pytest.approx(1 - 1 / math.sqrt(2))
    assert terms["loss"].item() == pytest.approx(0.75 * math.log(2) + 0.25 * (1 - 1 / math.sqrt(2)))


def test_cosine_pools_the_teachers_flattened_2048_to_1024_in_adjacent_pairs():
    teacher_map = torch.randn(2, 32, 8, 8)
    pooled = teacher_map.flatten(1).view(2, 1024, 2).mean(dim=2)
    student = Outputs(torch.zeros(2, 10), pooled.view(2, 16, 8, 8))  # exactly aligned
    terms = losses.bind("cosine", FEATURE)(
        student, Outputs(torch.zeros(2, 10), teacher_map), torch.zeros(2, dtype=torch.long), None
    )
    assert terms["cosine"].item() == pytest.approx(0.0, abs=1e-6)


def test_regressor_by_hand():
    student = out([[0.0, 0.0]], [1.0, 2.0])
    teacher = out([[0.0, 0.0]], [3.0, 3.0])
    double = lambda f: 2 * f  # noqa: E731 -- a head whose output is known: [2, 4] against [3, 3]
    terms = losses.bind("regressor", FEATURE)(student, teacher, torch.tensor([0]), double)
    assert terms["hint"].item() == pytest.approx(1.0)  # ((2-3)^2 + (4-3)^2) / 2
    assert terms["loss"].item() == pytest.approx(0.75 * math.log(2) + 0.25)


@pytest.mark.parametrize("name", list(losses.METHODS))
def test_gradients_reach_only_the_student_and_its_head(name):
    torch.manual_seed(0)
    x, labels = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    student, teacher = LightNN(), DeepNN()
    method = losses.get(name)
    head = method.make_head() if method.make_head else None
    with torch.no_grad():  # as fit() runs the teacher
        teacher_out = teacher(x) if method.needs_teacher else None
    terms = losses.bind(name, PARAMS[name])(student(x), teacher_out, labels, head)
    assert terms["loss"].dim() == 0 and torch.isfinite(terms["loss"])
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    terms["loss"].backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    if head is not None:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


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
            {"distill_weight": 0, "ce_weight": 0.0},
            r"regressor\.distill_weight = 0, regressor\.ce_weight = 0\.0: at least one weight",
        ),
        ("kd", {**KD, "temperature": "2"}, r"kd\.temperature = '2': expected a number"),
    ],
)
def test_bad_method_parameters_are_named(name, params, message):
    with pytest.raises(ValueError, match=message):
        losses.bind(name, params)


def test_head_lives_only_in_the_registry():
    assert isinstance(losses.get("regressor").make_head(), nn.Module)
    assert all(losses.get(n).make_head is None for n in ("ce", "kd", "cosine"))
