"""The real images: the archive built from ../shared/datasets (a public JPEG re-encoding of CIFAR-10
in the official layout) goes through the download stage and trains LightNN for one epoch."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from test_data import leftovers, run_download_stage

from pipeline import data, export, losses, models
from pipeline.taps import Tapped
from pipeline.train import FitConfig, fit

DATASETS = Path(os.environ.get("CIFAR10_MIRROR_SOURCE", ROOT.parent / "shared" / "datasets"))
MD5 = "5edef10b282949459ee39a95b8686a78"  # printed by make_cifar10_archive.py, see its README

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (DATASETS / "make_cifar10_archive.py").exists(), reason=f"no {DATASETS}"
    ),
]


@pytest.fixture(scope="module")
def real_archive(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mirror") / "cifar-10-python.tar.gz"
    script = DATASETS / "make_cifar10_archive.py"
    subprocess.run([sys.executable, str(script), str(path)], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def converted(real_archive, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("work")
    done = run_download_stage(workdir, real_archive.as_uri(), MD5)
    assert done.returncode == 0, done.stderr
    return workdir / "data" / "cifar10.safetensors"


def test_download_stage_verifies_and_converts_the_real_archive(converted):
    ds = data.load(converted)
    assert ds.train.images.shape == (50_000, 3, 32, 32)
    assert ds.test.images.shape == (10_000, 3, 32, 32)
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10


@pytest.mark.parametrize("fault", ["wrong md5", "truncated copy"])
def test_download_stage_rejects_a_bad_real_archive(real_archive, tmp_path, fault):
    source, md5 = real_archive, MD5
    if fault == "wrong md5":
        md5 = MD5[::-1]
    else:
        source = tmp_path / "truncated.tar.gz"
        with open(real_archive, "rb") as f:
            source.write_bytes(f.read(real_archive.stat().st_size - 4096))
    workdir = tmp_path / "work"
    workdir.mkdir()
    done = run_download_stage(workdir, str(source), md5)
    assert done.returncode == 1
    message = done.stderr.strip()
    assert message.count("\n") == 0 and message.startswith("error: download: MD5 mismatch"), message
    assert md5 in message
    assert leftovers(workdir / "data") == []


NORMALIZE = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
INT8_TOLERANCE = 0.02  # export.int8_max_accuracy_drop's default: the README says why


@pytest.fixture(scope="module")
def one_epoch(converted) -> tuple[models.Classifier, dict]:
    """LightNN trained for one epoch on the 50,000 real images: the deployable model, and the
    metrics of its epoch."""
    ds = data.load(converted)
    normalize = data.Normalizer(*NORMALIZE)
    net = Tapped(models.build("LightNN", {}, len(ds.classes), 42, "student.model"))
    seen = {}
    started = time.perf_counter()
    fit(
        net,
        ds.train,
        losses.bind("ce", {}),
        FitConfig(epochs=1, batch_size=128, lr=1e-3, seed=42),
        normalize,
        num_classes=len(ds.classes),
        eval_sets={"test": ds.test},
        on_epoch=lambda _, metrics: seen.update(metrics),
    )
    seen["seconds"] = time.perf_counter() - started
    return models.Classifier(net.net, normalize).eval(), seen


def test_lightnn_one_epoch_beats_40_percent(one_epoch):
    _, seen = one_epoch
    print(f"LightNN, 1 epoch: test accuracy {seen['test_accuracy']:.4f} in {seen['seconds']:.1f} s")
    assert seen["test_accuracy"] > 0.40


def test_int8_keeps_the_real_models_accuracy_within_the_tolerance(one_epoch, converted):
    """The export and int8 path of the export stage, on the 10,000 real test images, calibrated
    on training images as the stage does (its default count)."""
    model, _ = one_epoch
    ds = data.load(converted)
    fp32_onnx = export.to_onnx(model, ds.test.images[:2])
    reference = export.logits(model, ds.test.images)
    parity = export.parity(reference, export.logits(export.OnnxClassifier(fp32_onnx),
                                                    ds.test.images), 1e-3)  # fmt: skip
    assert parity.passed and parity.agreement == 1.0
    calibration = ds.train.images[
        torch.randperm(50_000, generator=torch.Generator().manual_seed(42))[:1024]
    ]
    int8 = export.logits(export.OnnxClassifier(export.quantize_int8(fp32_onnx, calibration)),
                         ds.test.images)  # fmt: skip
    fp32_accuracy = (reference.argmax(1) == ds.test.labels).float().mean().item()
    int8_accuracy = (int8.argmax(1) == ds.test.labels).float().mean().item()
    agreement = (int8.argmax(1) == reference.argmax(1)).float().mean().item()
    print(
        f"int8: accuracy {int8_accuracy:.4f} (fp32 {fp32_accuracy:.4f}), agreement {agreement:.4f}"
    )
    assert abs(fp32_accuracy - int8_accuracy) <= INT8_TOLERANCE
    assert agreement >= 0.95  # int8 changes a few near-ties, not the model
