"""Every evaluation metric on inputs whose answer is known by hand."""

import math
import time

import pytest
import torch
from torch import nn

from pipeline.evaluate import (
    agreement,
    confusion_matrix,
    expected_calibration_error,
    kl_to_reference,
    latency_ms,
    per_class_accuracy,
    quality,
    throughput,
)

CLASSES = ("a", "b", "c")
LABELS = torch.tensor([0, 0, 0, 1, 1, 2])  # 3 of class a, 2 of b, 1 of c


def confident(predicted: list[int], margin: float = 50.0) -> torch.Tensor:
    """Logits that pick `predicted` with a softmax confidence of 1.0 (to float precision)."""
    return nn.functional.one_hot(torch.tensor(predicted), len(CLASSES)).float() * margin


def test_a_perfect_classifier():
    logits = confident(LABELS.tolist())
    metrics, confusion = quality(logits, LABELS, CLASSES, teacher_logits=logits)
    assert metrics["test_accuracy"] == 1.0
    assert metrics["per_class_accuracy"] == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert confusion.tolist() == [[3, 0, 0], [0, 2, 0], [0, 0, 1]]
    assert metrics["ece"] == pytest.approx(0.0, abs=1e-6)  # confidence 1, always right
    assert metrics["teacher_agreement"] == 1.0
    assert metrics["teacher_kl"] == pytest.approx(0.0, abs=1e-6)


def test_a_constant_classifier():
    logits = confident([0] * len(LABELS))  # always "a", with full confidence
    metrics, confusion = quality(logits, LABELS, CLASSES)
    assert metrics["test_accuracy"] == pytest.approx(3 / 6)
    assert metrics["per_class_accuracy"] == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert confusion.tolist() == [[3, 0, 0], [2, 0, 0], [1, 0, 0]]
    assert metrics["ece"] == pytest.approx(1 - 3 / 6, abs=1e-6)  # confidence 1, right half the time
    assert "teacher_agreement" not in metrics  # no teacher given (the teacher's own row)


def test_uniform_outputs_are_calibrated_only_at_chance():
    # Softmax of equal logits is 1/3 everywhere; argmax picks class 0: right for 3 of 6.
    ece = expected_calibration_error(torch.zeros(6, 3), LABELS)
    assert ece == pytest.approx(abs(1 / 3 - 1 / 2))


def test_ece_weights_each_bin_by_its_share():
    # Two bins: 2 samples at confidence 0.9 (one right), 2 at ~0.6 (both right).
    p_hi, p_lo = 0.9, 0.6
    probs = torch.tensor([[p_hi, 1 - p_hi], [p_hi, 1 - p_hi], [p_lo, 1 - p_lo], [p_lo, 1 - p_lo]])
    labels = torch.tensor([0, 1, 0, 0])
    expected = 0.5 * abs(p_hi - 0.5) + 0.5 * abs(p_lo - 1.0)
    assert expected_calibration_error(probs.log(), labels) == pytest.approx(expected, abs=1e-6)


def test_kl_is_the_teachers_distribution_against_the_students():
    teacher, student = torch.tensor([[0.8, 0.2]]), torch.tensor([[0.5, 0.5]])
    expected = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    assert kl_to_reference(student.log(), teacher.log()) == pytest.approx(expected, rel=1e-5)
    # not symmetric: the direction matters, and it is the one distillation minimises
    assert kl_to_reference(teacher.log(), student.log()) != pytest.approx(expected, rel=1e-3)


def test_agreement_and_per_class_with_an_absent_class():
    a, b = confident([0, 1, 2, 2]), confident([0, 1, 1, 2])
    assert agreement(a, b) == 0.75
    confusion = confusion_matrix(a, torch.tensor([0, 1, 1, 1]), 3)  # no true class 2
    assert per_class_accuracy(confusion) == [1.0, pytest.approx(1 / 3), None]


class Sleeper(nn.Module):
    """A 'model' whose every call takes at least `seconds`."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return x


def test_latency_and_throughput_measure_the_calls():
    lat = latency_ms(Sleeper(0.002), torch.zeros(1), warmup=2, iters=20)
    assert 2.0 <= lat["latency_ms_p50"] <= lat["latency_ms_p95"]
    rate = throughput(Sleeper(0.005), torch.zeros(16), warmup=1, iters=4)
    assert 0 < rate <= 16 / 0.005  # cannot beat one batch per sleep
