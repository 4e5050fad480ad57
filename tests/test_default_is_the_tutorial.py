"""The default params stay the tutorial, bit for bit: the same weight files as before models, data
and layers became references (commit 8a7c82d, and 9054a0c before it, gave exactly these).

A small run of the real pipeline (real DVC, MLflow and training): a 1,000/200-image archive,
2 epochs each, batch 64, every other param the committed default. The digests were recorded on
this machine kind (x86-64 CPU, 2 threads, bf16 autocast); a change here means the default pipeline learns
something else, which a refactor must not do.
"""

import pytest
import yaml
from project import copy_project

from pipeline import files

pytestmark = pytest.mark.slow

EXPECTED = {
    "models/teachers/teacher-42.safetensors": "f23b801b6b00a2c91afeb29b4d25c47d",
    "models/students/ce-42.safetensors": "21f3910871f411c42c6ea22e7a75df65",
    "models/students/kd-42.safetensors": "f5a8d89c2433f2056160a8a82f477cb2",
    "models/students/cosine-42.safetensors": "eab5f1946b3a6ad1c0cb8028734bf4e6",
    "models/students/regressor-42.safetensors": "4e83c587e91300be91006b37e0ec4e0b",
    "data/cifar10.safetensors": "93c7109970b21eef46e06e91f6338d8a",
}


def test_the_default_params_give_the_tutorials_weights_bit_for_bit(tmp_path_factory):
    archive = tmp_path_factory.mktemp("mirror") / "cifar-10-python.tar.gz"
    project = copy_project(tmp_path_factory.mktemp("default"), archive, per_batch=200,
                           teacher__epochs=2, student__epochs=2, train__batch_size=64)  # fmt: skip
    # Two threads, as the digests were recorded with (this machine's 2 cores): float sums are
    # split across threads, so another thread count rounds differently, and learns other bits.
    project.run("dvc", "repro", env={"OMP_NUM_THREADS": "2"})
    got = {name: files.md5((project.path / name).read_bytes()) for name in EXPECTED}
    assert got == EXPECTED
    lock = yaml.safe_load((project.path / "dvc.lock").read_text())["stages"]
    in_lock = {o["path"]: o["md5"] for stage in lock.values() for o in stage.get("outs", [])}
    assert {name: in_lock[name] for name in EXPECTED} == EXPECTED
