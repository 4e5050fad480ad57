import copy

import pytest
import torch
from cifar_archive import make_archive

from pipeline import data, losses, models
from pipeline.train import FitConfig, fit

NORMALIZE = data.Normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CONFIG = FitConfig(epochs=2, batch_size=32, lr=1e-3, seed=42)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> data.Cifar10:
    path = tmp_path_factory.mktemp("tiny") / "a.tar.gz"
    make_archive(path, per_batch=60)
    return data.read_archive(path)


@pytest.fixture(scope="module")
def teacher(tiny) -> torch.nn.Module:
    return fit(models.build("DeepNN", 42), tiny.train, losses.bind("ce", {}), CONFIG, NORMALIZE)


def train_student(tiny, teacher, method: str, params: dict, **kwargs) -> torch.nn.Module:
    student = models.build("LightNN", CONFIG.seed)
    spec = losses.get(method)
    head = spec.make_head() if spec.make_head else None
    return fit(
        student,
        tiny.train,
        losses.bind(method, params),
        CONFIG,
        NORMALIZE,
        teacher=teacher if spec.needs_teacher else None,
        head=head,
        **kwargs,
    )


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_gives_identical_weights_on_cpu(tiny, teacher):
    params = {"temperature": 2.0, "distill_weight": 0.25, "ce_weight": 0.75}
    a = train_student(tiny, teacher, "kd", params)
    b = train_student(tiny, teacher, "kd", params)
    assert same_weights(a, b)
    other = fit(
        models.build("LightNN", 7),
        tiny.train,
        losses.bind("ce", {}),
        FitConfig(2, 32, 1e-3, 7),
        NORMALIZE,
    )
    assert not same_weights(a, other)


@pytest.mark.parametrize("method", ["kd", "cosine", "regressor"])
def test_variants_are_paired_with_the_ce_student(tiny, teacher, method):
    # With the teacher's term weighted 0, a variant must train exactly the CE-only student: same
    # initial weights, same batches in the same order, same dropout masks.
    params = {"distill_weight": 0.0, "ce_weight": 1.0} | (
        {"temperature": 2.0} if method == "kd" else {}
    )
    assert same_weights(
        train_student(tiny, teacher, method, params), train_student(tiny, teacher, "ce", {})
    )


def test_teacher_is_frozen(tiny, teacher):
    before = copy.deepcopy(teacher.state_dict())
    teacher.train()  # fit must put it in eval mode itself
    teacher.requires_grad_(True)
    train_student(
        tiny, teacher, "kd", {"temperature": 4.0, "distill_weight": 0.9, "ce_weight": 0.1}
    )
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_epoch_callback_gets_every_component_and_accuracies(tiny, teacher):
    seen = []
    student = train_student(
        tiny,
        teacher,
        "regressor",
        {"distill_weight": 0.25, "ce_weight": 0.75},
        eval_sets={"test": tiny.test},
        on_epoch=lambda epoch, metrics: seen.append((epoch, metrics)),
    )
    assert [e for e, _ in seen] == [1, 2]
    for _, m in seen:
        assert {
            "train_loss",
            "train_ce",
            "train_hint",
            "train_accuracy",
            "test_accuracy",
            "epoch_seconds",
        } <= m.keys()
        assert m["train_loss"] == pytest.approx(
            0.75 * m["train_ce"] + 0.25 * m["train_hint"], rel=1e-4
        )
        assert 0.0 <= m["train_accuracy"] <= 1.0 and 0.0 <= m["test_accuracy"] <= 1.0
    assert seen[1][1]["train_loss"] < seen[0][1]["train_loss"]
    assert models.count_parameters(student) == 267_738


def test_training_learns_the_tiny_task(tiny, teacher):
    from pipeline.evaluate import accuracy, predict

    # Class colours make the tiny task easy; a model that learned nothing sits near 10 %.
    assert accuracy(predict(teacher, tiny.test.images, NORMALIZE), tiny.test.labels) > 0.5


def test_plain_epoch_lines_when_not_a_terminal(tiny, capsys):
    fit(
        models.build("LightNN", 1),
        tiny.train,
        losses.bind("ce", {}),
        FitConfig(1, 64, 1e-3, 1),
        NORMALIZE,
        desc="student",
    )
    captured = capsys.readouterr()
    assert "student epoch 1/1: train_ce " in captured.out
    assert "\r" not in captured.out + captured.err  # no progress bar redraws in logs
