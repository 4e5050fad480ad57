"""The ONNX export library against real ONNX Runtime: parity, a perturbed model, int8, FLOPs."""

import pytest
import torch

from pipeline import export, models
from pipeline.data import Normalizer

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def deployable(seed: int = 0) -> models.Classifier:
    net = models.build("LightNN", {}, 10, seed, "student")
    return models.Classifier(net, Normalizer(MEAN, STD)).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(0, 256, (300, 3, 32, 32), generator=torch.Generator().manual_seed(1),
                         dtype=torch.uint8)  # fmt: skip


@pytest.fixture(scope="module")
def exported(images) -> tuple[models.Classifier, bytes]:
    model = deployable()
    return model, export.to_onnx(model, images[:2])


def test_the_export_computes_what_pytorch_computes_on_every_image(exported, images):
    model, onnx_bytes = exported
    result = export.parity(export.logits(model, images),
                           export.logits(export.OnnxClassifier(onnx_bytes), images), 1e-3)  # fmt: skip
    assert result.passed and result.agreement == 1.0 and result.disagreements == 0
    assert 0 < result.max_abs_diff < 1e-4  # float rounding, not zero: the check is not vacuous
    export.check_parity("ce-42", result, 1e-3)  # passes: no exception


def test_a_perturbed_model_fails_parity_with_one_line_naming_it(exported, images):
    _, onnx_bytes = exported
    perturbed = deployable()
    with torch.no_grad():  # one weight of the last layer, as a wrong translation would
        perturbed.net.classifier[-1].weight[3, 0] += 0.5
    result = export.parity(export.logits(perturbed, images),
                           export.logits(export.OnnxClassifier(onnx_bytes), images), 1e-3)  # fmt: skip
    assert not result.passed and result.max_abs_diff > 1e-3
    with pytest.raises(export.ParityError) as caught:
        export.check_parity("kd-42", result, 1e-3)
    message = str(caught.value)
    assert "\n" not in message and "kd-42" in message
    assert f"{result.max_abs_diff:.3g}" in message and "tolerance 0.001" in message


def test_a_disagreement_is_explained_only_by_a_near_tie():
    reference = torch.tensor([[1.0, 1.0005, 0.0], [2.0, 0.0, 0.0]])
    flipped_tie = torch.tensor([[1.0005, 1.0, 0.0], [2.0, 0.0, 0.0]])
    assert export.parity(reference, flipped_tie, 1e-3).passed  # within rounding of a tie
    flipped_far = torch.tensor([[1.0, 1.0005, 0.0], [0.0, 2.0, 0.0]])
    result = export.parity(reference, flipped_far, 1e-3)
    assert not result.passed and result.unexplained == 1


def test_the_export_is_deterministic_and_takes_any_batch_size(exported, images):
    _, onnx_bytes = exported
    assert export.to_onnx(deployable(), images[:2]) == onnx_bytes  # a stable DVC hash
    session = export.OnnxClassifier(onnx_bytes)
    for n in (1, 7, 256):
        assert session(images[:n]).shape == (n, 10)


def test_int8_is_smaller_and_keeps_the_random_models_predictions_mostly(exported, images):
    model, onnx_bytes = exported
    int8 = export.quantize_int8(onnx_bytes, images[:128])
    assert len(int8) < len(onnx_bytes) / 3  # int8 weights: a quarter, plus scales and graph
    fp32_logits = export.logits(model, images)
    int8_logits = export.logits(export.OnnxClassifier(int8), images)
    # An untrained net's logits are close together, the hardest case for int8; a trained model's
    # accuracy is checked on real images in tests/test_real_data.py.
    assert (int8_logits.argmax(1) == fp32_logits.argmax(1)).float().mean() > 0.8
    assert not torch.equal(int8_logits, fp32_logits)  # it really is another model


def test_flops_per_image_are_lightnns_convolutions_and_products():
    convs = 2 * 3 * 16 * 9 * 32 * 32 + 2 * 16 * 16 * 9 * 16 * 16  # two 3x3 convolutions
    linears = 2 * 1024 * 256 + 2 * 256 * 10
    assert export.flops_per_image(deployable(), torch.zeros(1, 3, 32, 32, dtype=torch.uint8)) == (
        convs + linears
    )


def test_int8_fails_the_stage_only_when_its_whole_interval_is_past_the_limit():
    from pipeline.stages.export import QuantisationError, _accuracy_drop, _check_drop

    labels = torch.zeros(1000, dtype=torch.long)
    right, wrong = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    fp32 = right.repeat(1000, 1)

    def quality(lost: int) -> dict:
        int8 = torch.cat([wrong.repeat(lost, 1), right.repeat(1000 - lost, 1)])
        return {"pytorch": {"test_accuracy": 1.0},
                "int8": {"test_accuracy": 1 - lost / 1000, **_accuracy_drop(fp32, int8, labels)}}  # fmt: skip

    _check_drop("kd-42", quality(25), 0.02)  # 2.5 points lost, but 2 lies inside its interval
    _check_drop("kd-42", quality(60), None)  # no limit
    with pytest.raises(QuantisationError) as caught:
        _check_drop("kd-42", quality(60), 0.02)  # 6 points, the interval about [4.5, 7.5]
    assert "\n" not in str(caught.value) and "int8 kd-42 loses 6.00% of test accuracy" in str(
        caught.value
    )
