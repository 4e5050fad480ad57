"""The suite tests the project, not the last experiment: after a user's `dvc exp run -S` has
changed the workspace's params.yaml, data, dvc.lock, metrics and mlflow.db, the tests that copy the
project or read its params still pass (they take params.yaml from the last commit and leave the
pipeline's outputs behind).

Real DVC and a real experiment in a copy of the project, then pytest run inside that copy.
"""

import sys

import pytest
import yaml
from project import copy_project

pytestmark = pytest.mark.slow

# Tests that run stages on the project's params: these failed when the workspace held an
# experiment with more training images than the tests' tiny archives have.
SUBSET = [
    "tests/test_tracking.py::test_a_stage_fails_before_any_work_with_one_line",
    "tests/test_params.py::test_a_bad_param_stops_the_stage_before_any_run",
    "tests/test_pipeline.py::test_repro_runs_every_stage",
]
# One case of the parametrised test is enough (the others read params the same way), and the
# pipeline's own run in a copy of the copy.
CASES = "fails_before_any_work or test_size or repro_runs_every_stage"


def test_the_tests_pass_right_after_an_experiment_changed_the_workspace(tmp_path_factory):
    archive = tmp_path_factory.mktemp("mirror") / "cifar-10-python.tar.gz"
    workspace = copy_project(tmp_path_factory.mktemp("workspace"), archive, per_batch=100)
    # More training images than the tests' archives hold (200), as the README's example does;
    # through scripts/dvc's DVC, which on this first experiment of a clone warns of nothing.
    out = workspace.run(sys.executable, "scripts/dvc_cli.py", "exp", "run", "-S",
                        "data.train_size=400", "-S", "data.test_size=50", "-S", "teacher.epochs=1",
                        "-S", "student.epochs=1", timeout=900)  # fmt: skip
    assert "Running stage 'report'" in out and "WARNING" not in out, out
    changed = yaml.safe_load((workspace.path / "params.yaml").read_text())
    assert changed["data"]["train_size"] == 400
    for output in ("mlflow.db", "dvc.lock", "data/cifar10.safetensors", "reports/evaluation.json"):
        assert (workspace.path / output).exists(), output
    status, out = workspace.call(sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                                 *SUBSET, "-k", CASES, timeout=1200)  # fmt: skip
    assert status == 0 and " passed" in out, out
