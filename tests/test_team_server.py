"""A team tracking server: scripts/team-server (`mlflow server` on a real PostgreSQL, artifacts
served through it) on loopback, and the pipeline run against it through MLFLOW_TRACKING_URI alone:
the whole pipeline on a tiny archive, then two queued experiments at the same time.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import ROOT
from mlflow.tracking import MlflowClient
from project import TWO_VARIANTS, Project, copy_project
from servers import free_port, postgres_bin, postgres_cluster, wait_until_answers

pytestmark = pytest.mark.slow

EXPERIMENT = "cifar10-distillation"
TRAINING_STAGES = ["train_teacher@42", *(f"distill@{v}-42" for v in TWO_VARIANTS)]


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    bin_dir = postgres_bin()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs Debian's postgresql")
        pytest.skip("needs Debian's postgresql package (apt-get install postgresql)")
    with postgres_cluster(bin_dir) as uri:
        yield uri


@pytest.fixture(scope="module")
def server(database, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """scripts/team-server on a free port: its URL and the folder its artifacts go to."""
    artifacts = tmp_path_factory.mktemp("team-artifacts")
    port = free_port()
    process = subprocess.Popen([str(ROOT / "scripts/team-server"), "--db", database,
                                "--artifacts", str(artifacts), "--port", str(port),
                                "--", "--workers", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(f"{url}/health", process)
        yield url, artifacts
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its workers
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def project(server, tmp_path_factory) -> Project:
    archive = tmp_path_factory.mktemp("mirror") / "cifar-10-python.tar.gz"
    p = copy_project(tmp_path_factory.mktemp("project"), archive, teacher__epochs=1,
                     student__epochs=1, train__batch_size=32, variants=TWO_VARIANTS)  # fmt: skip
    p.env["MLFLOW_TRACKING_URI"] = server[0]
    p.client = MlflowClient(server[0])
    return p


@pytest.fixture(scope="module")
def ran(project) -> list[str]:
    """The whole pipeline, then two queued experiments (two DVC workers, both on the server)."""
    stages = project.repro()
    for temperature in (3.0, 5.0):
        project.run("dvc", "exp", "run", "--queue", "-S", f"variants.kd.temperature={temperature}")
    project.run("dvc", "queue", "start", "-j", "2")
    deadline = time.monotonic() + 900
    while re.search(r"\b(Queued|Running)\b", status := project.run("dvc", "queue", "status")):
        assert time.monotonic() < deadline, status
        time.sleep(3)
    assert status.count("Success") == 2, status
    return stages


def test_the_pipeline_and_two_queued_experiments_land_finished_in_postgresql(
    project, ran, database
):
    assert "train_teacher@42" in ran and ran[-1] == "report"
    with psycopg.connect(database) as db:
        statuses = dict(db.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
        invocations = db.execute("SELECT count(*) FROM tags WHERE key = 'pipeline.kind' "
                                 "AND value = 'invocation'").fetchone()[0]  # fmt: skip
    assert list(statuses) == ["FINISHED"], statuses
    assert invocations == 3  # the repro and both experiments
    kd_temperatures = {r.data.params["variant.temperature"]
                       for r in project.runs(**{"dvc.stage": "distill@kd-42"})}  # fmt: skip
    assert kd_temperatures == {"2.0", "3.0", "5.0"}
    # Nothing was recorded beside the project: runs in PostgreSQL, artifacts through the server.
    embedded = MlflowClient(f"sqlite:///{project.path / 'mlflow.db'}")
    assert embedded.get_experiment_by_name(EXPERIMENT) is None
    assert not (project.path / "mlartifacts").exists()


def test_artifacts_go_through_the_server(project, ran, server):
    runs = project.runs()
    assert runs and all(r.info.artifact_uri.startswith("mlflow-artifacts:/") for r in runs)
    stored = [path.name for path in server[1].rglob("*") if path.is_file()]
    assert "model.safetensors" in stored or any(name.endswith(".safetensors") for name in stored)
    assert "comparison.md" in stored


def test_training_runs_carry_system_metrics(project, ran):
    for stage in TRAINING_STAGES:
        (run, *_) = project.runs(**{"dvc.stage": stage})
        system = {name for name in run.data.metrics if name.startswith("system/")}
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= (
            system
        ), (stage, sorted(system))


def test_the_champion_is_registered_and_loads_back_through_the_server(project, ran, server):
    champion = project.client.get_model_version_by_alias("cifar10-student", "champion")
    assert project.client.get_model_version_by_alias("cifar10-student", "champion-int8")
    expected = project.client.get_run(champion.run_id).data.metrics["test_accuracy"]
    # A client with nothing but the server's URL: no store path, no artifact credentials.
    script = (
        "import json, sys, mlflow\n"
        "from pipeline import data\n"
        "from pipeline.tracking import served\n"
        "ds = data.load(sys.argv[1])\n"
        "model = mlflow.pyfunc.load_model('models:/cifar10-student@champion')\n"
        "classes = list(model.predict(served.examples(ds.test.images))['class'])\n"
        "print(json.dumps(sum(ds.classes[y] == c for y, c in zip(ds.test.labels, classes)) "
        "/ len(classes)))\n"
    )
    env = {k: v for k, v in project.env.items() if not k.startswith("MLFLOW_")}
    env |= {"MLFLOW_TRACKING_URI": server[0], "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run([sys.executable, "-c", script, str(project.path / "data/cifar10.safetensors")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=True)  # fmt: skip
    assert json.loads(done.stdout.splitlines()[-1]) == pytest.approx(expected)
