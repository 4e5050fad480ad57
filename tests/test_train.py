import copy
import io
import sys

import pytest
import torch
from cifar_archive import make_archive

from pipeline import data, losses, models, taps
from pipeline.taps import Tapped
from pipeline.train import FitConfig, NumericalError, fit, live_teacher

NORMALIZE = data.Normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CONFIG = FitConfig(epochs=2, batch_size=32, lr=1e-3, seed=42)
CLASSES = 10
# The tutorial's layers: each built-in's conv stack (what params.py fills in for them).
LAYERS = {"student_layer": "features", "teacher_layer": "features"}
# The methods' parameters in these tests: their defaults, but kd's temperature the tutorial's and
# fewer negatives for CRD (its 16384 cost seconds per step on a CPU).
EVERY = {"kd": {"temperature": 2.0}, "crd": {"negatives": 256}}


def build(name: str, seed: int, layers=()) -> Tapped:
    """A fresh built-in, tapped at `layers`, as the stages build and train it."""
    return Tapped(models.build(name, {}, CLASSES, seed, "model"), layers)


def train(model: Tapped, split: data.Split, loss_fn, config: FitConfig, **kwargs) -> Tapped:
    return fit(model, split, loss_fn, config, NORMALIZE, num_classes=CLASSES, **kwargs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> data.Cifar10:
    path = tmp_path_factory.mktemp("tiny") / "a.tar.gz"
    make_archive(path, per_batch=60)
    return data.read_archive(path)


@pytest.fixture(scope="module")
def teacher(tiny) -> torch.nn.Module:
    """The trained DeepNN (untapped, as its weights file holds it)."""
    return train(build("DeepNN", 42), tiny.train, losses.bind("ce", {}), CONFIG).net


def with_layers(method: str, params: dict, layers: dict = LAYERS) -> dict:
    """`params` and the layers the method taps (`layers` by side; a list where it takes lists)."""
    return params | {key: [layers[key.rstrip("s")]] if key.endswith("s") else layers[key]
                     for key in losses.layers(method)}  # fmt: skip


def side(method: str, role: str, layers: dict = LAYERS) -> list[str]:
    """The layers `method` taps on the student or the teacher."""
    return (
        [layers[f"{role}_layer"]] if any(k.startswith(role) for k in losses.layers(method)) else []
    )


def student_and_teaching(method: str, teacher: torch.nn.Module, seed: int = CONFIG.seed,
                         precision: str = "fp32", student: torch.nn.Module | None = None,
                         layers: dict = LAYERS, dataset_size: int = 300) -> tuple[Tapped, dict]:  # fmt: skip
    """A fresh student (LightNN by default) tapped for `method`, and fit()'s teacher and parts
    arguments for it: the parts made right after the student from the tapped layers' traced
    shapes, as distill does."""
    student = Tapped(student or models.build("LightNN", {}, CLASSES, seed, "model"),
                     side(method, "student", layers))  # fmt: skip
    spec, bound = losses.get(method), losses.resolve(method, with_layers(method, {}, layers))
    shapes = {}
    for role, net in (("student", student.net), ("teacher", teacher)):
        tapped = losses.side_layers(method, bound, role)
        shapes |= taps.layer_shapes(net, tapped, (3, 32, 32), CLASSES, role)
    parts = losses.make_parts(method, bound, shapes, dataset_size, method)
    tapped_teacher = Tapped(teacher, side(method, "teacher", layers))
    targets = live_teacher(tapped_teacher, precision) if spec.needs_teacher else None
    return student, {"targets": targets, "parts": parts}


def train_student(tiny, teacher, method: str, params: dict, **kwargs) -> Tapped:
    student, teaching = student_and_teaching(method, teacher)
    loss = losses.bind(method, with_layers(method, params))
    return train(student, tiny.train, loss, CONFIG, **teaching, **kwargs)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_gives_identical_weights_on_cpu(tiny, teacher):
    params = {"temperature": 2.0, "distill_weight": 0.25, "ce_weight": 0.75}
    a = train_student(tiny, teacher, "kd", params)
    b = train_student(tiny, teacher, "kd", params)
    assert same_weights(a, b)
    other = train(build("LightNN", 7), tiny.train, losses.bind("ce", {}), FitConfig(2, 32, 1e-3, 7))
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


def test_the_context_reaches_the_loss(tiny):
    """Every step's loss gets the epoch (from 1), the batch's rows in the training set, the number
    of classes and the training set's size."""
    ce = losses.bind("ce", {})
    seen = []

    def recording(out, teacher_out, y, parts, ctx):
        seen.append(ctx)
        assert torch.equal(tiny.train.labels[ctx.indices], y)  # the rows of this very batch
        return ce(out, teacher_out, y, parts, ctx)

    rows = len(tiny.train.labels)  # 300: 10 batches of 32 (the last of 12) per epoch
    train(build("LightNN", 1), tiny.train, recording, CONFIG)
    assert [c.epoch for c in seen] == [1] * 10 + [2] * 10
    assert {(c.num_classes, c.dataset_size) for c in seen} == {(CLASSES, rows)}
    assert [len(c.indices) for c in seen[:10]] == [32] * 9 + [12]
    for epoch in (seen[:10], seen[10:]):  # each epoch sees every row once, in its own order
        assert torch.equal(torch.cat([c.indices for c in epoch]).sort().values, torch.arange(rows))
    assert not torch.equal(seen[0].indices, seen[10].indices)


def test_training_learns_the_tiny_task(tiny, teacher):
    from pipeline.evaluate import accuracy, predict

    # Class colours make the tiny task easy; a model that learned nothing sits near 10 %.
    assert accuracy(predict(teacher, tiny.test.images, NORMALIZE), tiny.test.labels) > 0.5


def test_plain_epoch_lines_when_not_a_terminal(tiny, capsys):
    train(build("LightNN", 1), tiny.train, losses.bind("ce", {}), FitConfig(1, 64, 1e-3, 1),
          desc="student")  # fmt: skip
    captured = capsys.readouterr()
    assert "student epoch 1/1: train_ce " in captured.out
    assert "\r" not in captured.out + captured.err  # no progress bar redraws in logs


def test_cached_teacher_outputs_equal_live_ones(tiny, teacher):
    from pipeline.train import cached_teacher, teacher_outputs

    tapped = Tapped(teacher, ["features"])
    cache = teacher_outputs(tapped, tiny.train.images, NORMALIZE, "fp32", batch_size=64)
    live = live_teacher(tapped, "fp32")
    idx = torch.tensor([5, 0, 17, 3])
    x = NORMALIZE(tiny.train.images[idx]).contiguous(memory_format=torch.channels_last)
    expected, got = live(idx, x), cached_teacher(cache)(idx, x)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-5)
    assert list(got.features) == list(expected.features) == ["features"]
    torch.testing.assert_close(got.features, expected.features, rtol=1e-4, atol=1e-5)
    assert cache.features["features"].shape == (len(tiny.train.labels), 32, 8, 8)
    assert cache.logits.shape == (len(tiny.train.labels), CLASSES)


def test_training_from_the_cache_matches_training_from_the_live_teacher(tiny, teacher):
    from pipeline.train import cached_teacher, teacher_outputs

    params = {"temperature": 2.0, "distill_weight": 0.25, "ce_weight": 0.75}
    live = train_student(tiny, teacher, "kd", params)
    cache = teacher_outputs(Tapped(teacher), tiny.train.images, NORMALIZE, "fp32")
    cached = train(build("LightNN", CONFIG.seed), tiny.train, losses.bind("kd", params), CONFIG,
                   targets=cached_teacher(cache))  # fmt: skip
    for (name, a), b in zip(live.state_dict().items(), cached.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("method", list(losses.METHODS))
def test_bf16_trains_every_method(tiny, teacher, method):
    params = EVERY.get(method, {})
    config = FitConfig(2, 32, 1e-3, 42, precision="bf16")
    seen = []
    student, teaching = student_and_teaching(method, teacher, 42, precision="bf16")
    student = train(student, tiny.train, losses.bind(method, with_layers(method, params)), config,
                    **teaching, on_epoch=lambda e, m: seen.append(m))  # fmt: skip
    assert all(p.dtype == torch.float32 for p in student.parameters())  # master weights stay fp32
    # The labels' CE falls; a method's own term may not (CRD's rises as its banks fill with the
    # real embeddings in place of their random start).
    assert seen[1]["train_ce"] < seen[0]["train_ce"] and all(
        torch.isfinite(torch.tensor(v)) for v in seen[1].values()
    )


def test_augmentation_crops_and_flips_reproducibly():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    a = data.augment(images, torch.Generator().manual_seed(3))
    b = data.augment(images, torch.Generator().manual_seed(3))
    assert a.shape == images.shape and a.dtype == torch.uint8 and torch.equal(a, b)
    assert not torch.equal(a, images)
    # every output is a shifted (and maybe mirrored) window of the zero-padded input
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(8):
        windows = [padded[i, :, y : y + 32, x : x + 32] for y in range(9) for x in range(9)]
        assert any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(-1)) for w in windows)


def test_augmented_training_with_a_live_teacher_is_seeded(tiny, teacher):
    config = FitConfig(1, 32, 1e-3, 42, augment=True)
    params = {"temperature": 2.0, "distill_weight": 0.25, "ce_weight": 0.75}
    a, b = (
        train(
            build("LightNN", 42),
            tiny.train,
            losses.bind("kd", params),
            config,
            targets=live_teacher(Tapped(teacher), "fp32"),
        )
        for _ in range(2)
    )
    assert same_weights(a, b)
    assert not same_weights(a, train_student(tiny, teacher, "kd", params))


def test_a_non_finite_loss_stops_training_naming_epoch_and_batch(tiny):
    ce = losses.bind("ce", {})
    calls = []

    def diverging(out, teacher_out, y, parts, ctx):
        terms = ce(out, teacher_out, y, parts, ctx)
        calls.append(1)
        if len(calls) == 12:  # epoch 2 (300 images / 32 = 10 batches per epoch), batch 2
            terms = {k: v * float("inf") for k, v in terms.items()}
        return terms

    epochs = []
    with pytest.raises(NumericalError, match=r"at epoch 2, batch 2 of 10; lower train\.lr") as e:
        train(build("LightNN", 1), tiny.train, diverging, CONFIG,
              on_epoch=lambda epoch, m: epochs.append(epoch))  # fmt: skip
    assert "\n" not in str(e.value)
    assert epochs == [1]  # the diverged epoch is never reported as trained


@pytest.mark.parametrize(
    ("method", "config"),
    [
        ("ce", FitConfig(3, 32, 1e-3, 42)),  # weights, Adam's moments, batch order, dropout
        ("regressor", FitConfig(3, 32, 1e-3, 42, augment=True)),  # + parts, augmentation draws
        ("ce", FitConfig(3, 32, 1e-3, 42, precision="bf16")),  # as the pipeline trains
    ],
)
def test_resuming_after_any_epoch_gives_the_weights_of_an_unbroken_run(
    tiny, teacher, method, config
):
    params = {"distill_weight": 0.25, "ce_weight": 0.75} if method == "regressor" else {}

    def run(**kwargs) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        student, teaching = student_and_teaching(method, teacher, 42)
        train(student, tiny.train, losses.bind(method, with_layers(method, params)), config,
              **teaching, **kwargs)  # fmt: skip
        return student, teaching["parts"]

    saved = []  # each epoch's state as the stage writes it: serialised at once

    def keep(state):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        saved.append(buffer.getvalue())

    unbroken, unbroken_parts = run(on_checkpoint=keep)
    assert [torch.load(io.BytesIO(b))["epoch"] for b in saved] == [1, 2, 3]
    # Dropout draws from the global stream: whatever happened in between must not matter.
    torch.manual_seed(12345)
    for blob in saved:
        resumed, resumed_parts = run(start=torch.load(io.BytesIO(blob)))
        assert same_weights(resumed, unbroken)
        if unbroken_parts is not None:
            assert same_weights(resumed_parts, unbroken_parts)


def test_a_failure_mid_epoch_leaves_the_terminal_on_a_new_line(monkeypatch):
    """The progress bar is closed on any way out of fit, so the error line that follows starts on a
    line of its own (not glued to the end of the bar)."""

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(sys, "stderr", terminal)

    def broken_loss(*args):
        raise RuntimeError("boom")

    train = data.Split(
        torch.zeros(8, 3, 32, 32, dtype=torch.uint8), torch.zeros(8, dtype=torch.long)
    )
    with pytest.raises(RuntimeError, match="boom"):
        fit(build("LightNN", 0), train, broken_loss, FitConfig(1, 4, 1e-3, 0),
            data.Normalizer((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), num_classes=CLASSES)  # fmt: skip
    assert "0/2" in terminal.getvalue() and terminal.getvalue().endswith("\n")


# Every method trains, live and from the cached teacher outputs, and leaves the student as it is
# deployed: its parts (adapters, heads, memory banks) are fit()'s, never the network's.
TEACHERS = [m for m in losses.METHODS if losses.get(m).needs_teacher]
TORCHVISION = {"student_layer": "features.8", "teacher_layer": "layer3"}  # 48 x 2 x 2, 256 x 2 x 2


@pytest.mark.parametrize("method", TEACHERS)
def test_every_method_trains_live_and_from_the_cache_alike(tiny, teacher, method):
    from pipeline.train import cached_teacher, teacher_outputs

    loss = losses.bind(method, with_layers(method, EVERY.get(method, {})))
    config = FitConfig(1, 32, 1e-3, 42)
    images = data.subset(tiny.train, 128, "size")  # 4 steps, each reading the teacher's outputs
    student, teaching = student_and_teaching(method, teacher, dataset_size=128)
    live = train(student, images, loss, config, **teaching)
    student, teaching = student_and_teaching(method, teacher, dataset_size=128)
    cache = teacher_outputs(Tapped(teacher, side(method, "teacher")), images.images, NORMALIZE,
                            "fp32")  # fmt: skip
    cached = train(student, images, loss, config, targets=cached_teacher(cache),
                   parts=teaching["parts"])  # fmt: skip
    plain = models.build("LightNN", {}, CLASSES, 42, "model").state_dict()
    assert live.net.state_dict().keys() == cached.net.state_dict().keys() == plain.keys()
    for (name, a), b in zip(live.state_dict().items(), cached.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=name)
    assert not same_weights(live.net, models.build("LightNN", {}, CLASSES, 42, "model"))


@pytest.mark.parametrize("method", TEACHERS)
def test_every_method_trains_a_torchvision_pair(tiny, method):
    """resnet18 teaching mobilenet_v3_small, tapped mid-network, for a few steps."""
    teacher = models.build("resnet18", {}, CLASSES, 1, "teacher.model")
    net = models.build("mobilenet_v3_small", {}, CLASSES, 2, "student.model")
    student, teaching = student_and_teaching(method, teacher, student=net, layers=TORCHVISION,
                                             dataset_size=64)  # fmt: skip
    loss = losses.bind(method, with_layers(method, EVERY.get(method, {}), TORCHVISION))
    seen = []
    trained = train(student, data.subset(tiny.train, 64, "size"), loss, FitConfig(1, 32, 1e-3, 42),
                    **teaching, on_epoch=lambda e, m: seen.append(m))  # fmt: skip
    assert all(torch.isfinite(torch.tensor(v)) for v in seen[0].values())
    assert trained.net.state_dict().keys() == net.state_dict().keys()
