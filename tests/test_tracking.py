"""A tracking server that does not answer fails a stage fast, in bounded time, in one line."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from mlflow.tracking import MlflowClient
from project import write_params
from servers import free_port

from pipeline.tracking import TrackingError, check_server


def test_a_refused_connection_is_named():
    with pytest.raises(TrackingError, match=r"did not answer within 2 s .*Connection refused"):
        check_server(f"http://127.0.0.1:{free_port()}", timeout=2)


def test_a_server_that_never_answers_is_bounded_by_the_timeout():
    with socket.socket() as silent:  # accepts connections (the backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        with pytest.raises(TrackingError, match=r"did not answer within 0\.5 s"):
            check_server(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
        assert time.monotonic() - started < 5


def test_the_embedded_store_needs_no_server():
    check_server("sqlite:///somewhere/mlflow.db")  # nothing to ask, nothing raised


def test_a_stage_fails_before_any_work_with_one_line(tmp_path):
    write_params(tmp_path / "params.yaml", {})  # the committed params, not the workspace's
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "pipeline.stages.report"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: report: MLflow tracking server http://127.0.0.1"
    )


# One stage's whole use of the store: open a run, log to it, close it.
STAGE = """
import sys
from pipeline import tracking
with tracking.stage_run(f"stage-{sys.argv[1]}", "concurrent", {"seed": sys.argv[1]}, "0" * 32) as r:
    r.log_metrics({"accuracy": 0.5})
    r.set_tags({"device": "cpu"})
"""


def test_parallel_stages_on_a_fresh_sqlite_store_all_finish(tmp_path):
    """What `dvc queue start -j 2` does on a fresh checkout: the first stages of both experiments
    create the store at once (MLflow migrates a new SQLite file on first use)."""
    db = tmp_path / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}

    def stage(i: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", STAGE, str(i)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip

    procs = [stage(i) for i in range(4)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(outputs)
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("concurrent")
    runs = client.search_runs(
        [exp.experiment_id], filter_string="attributes.run_name LIKE 'stage-%'"
    )
    assert sorted(r.info.run_name for r in runs) == [f"stage-{i}" for i in range(4)]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_an_earlier_store_gets_the_views_it_lacks_and_keeps_the_users_choices(tmp_path):
    from pipeline.tracking import store

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = store.client(uri)
    # as an earlier version or the user left it: the kind and the user's own note, no saved views
    exp_id = client.create_experiment("cifar10-distillation")
    client.set_experiment_tag(exp_id, store.KIND_TAG, store.KIND)
    client.set_experiment_tag(exp_id, "mlflow.note.content", "my own notes")
    assert store.experiment_id(client, "cifar10-distillation", uri) == exp_id
    tags = client.get_experiment(exp_id).tags
    assert tags["mlflow.note.content"] == "my own notes"
    charts = json.loads(tags[store.CHARTS_TAG])
    assert [c["metricKey"] for c in charts["compareRunCharts"]] == list(store.CHART_METRICS)
    (section,) = charts["compareRunSections"]
    assert {c["metricSectionId"] for c in charts["compareRunCharts"]} == {section["uuid"]}
    assert charts["searchFilter"] == json.loads(tags[store.VIEW_TAG])["searchFilter"]
    # the view is the same on every store: a link saved from one opens the same charts on another
    assert charts == store._charts_view()


def test_champion_int8_follows_the_champion_to_its_own_weights_int8_form(tmp_path, monkeypatch):
    """A real SQLite registry: versions of several formats of the same weights, told apart by
    their format tag (a version without one is PyTorch, as earlier versions registered them)."""
    import mlflow

    from pipeline import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    client = MlflowClient()
    client.create_registered_model("student")

    def version(md5: str, fmt: str | None) -> str:
        tags = {"model.md5": md5} | ({"format": fmt} if fmt else {})
        return str(
            client.create_model_version("student", f"file://{tmp_path}/m", tags=tags).version
        )

    old, other_onnx = version("aaa", None), version("bbb", "onnx")
    tracking.set_alias("student", "champion", old)
    line = tracking.follow_alias("student", "champion", "int8", "champion-int8")
    assert line.startswith("champion-int8 left as it was: student v1 (the champion) has no int8")
    assert tracking.by_alias("student", "champion-int8") is None
    onnx, int8 = version("aaa", "onnx"), version("aaa", "int8")
    assert tracking.find_version("student", "aaa", "pytorch").version == old  # untagged: PyTorch
    assert tracking.find_version("student", "aaa", "onnx").version == onnx != other_onnx
    line = tracking.follow_alias("student", "champion", "int8", "champion-int8")
    assert line == f"champion-int8 is student v{int8}, the int8 form of v{old}"
    assert tracking.by_alias("student", "champion-int8").version == int8
