"""The benchmark runs end to end (on a tiny archive) and prints its table; its numbers are not
checked here: speed is measured by running it, not by a timed test."""

import subprocess
import sys

import pytest
from cifar_archive import make_archive
from conftest import ROOT


@pytest.mark.slow
def test_benchmark_runs_and_prints_the_comparison(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = make_archive(archive, per_batch=30)
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "benchmark.py"), str(archive), md5],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for row in ("teacher", "kd student", "ce student", "whole default pipeline"):
        assert any(line.startswith(row) for line in done.stdout.splitlines()), done.stdout
