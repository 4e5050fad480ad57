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

from pipeline import data, losses, models
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


def test_lightnn_one_epoch_beats_40_percent(converted):
    ds = data.load(converted)
    normalize = data.Normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    seen = {}
    started = time.perf_counter()
    fit(
        Tapped(models.build("LightNN", {}, len(ds.classes), 42, "student.model")),
        ds.train,
        losses.bind("ce", {}),
        FitConfig(epochs=1, batch_size=128, lr=1e-3, seed=42),
        normalize,
        num_classes=len(ds.classes),
        eval_sets={"test": ds.test},
        on_epoch=lambda _, metrics: seen.update(metrics),
    )
    print(
        f"LightNN, 1 epoch: test accuracy {seen['test_accuracy']:.4f} in {time.perf_counter() - started:.1f} s"
    )
    assert seen["test_accuracy"] > 0.40
