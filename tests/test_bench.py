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


def test_the_methods_benchmark_prints_each_methods_cost_against_ce(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    make_archive(archive, per_batch=30)
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "methods.py"), str(archive), "--images", "64",
         "--methods", "kd", "vid", "crd"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line.strip()}
    assert {"kd", "vid", "crd"} <= rows.keys() and rows["method"] == [
        "s/epoch",
        "x",
        "ce",
        "s",
        "per",
        "50k",
    ]
    assert all(float(rows[m][0]) > 0 for m in ("kd", "vid", "crd"))
