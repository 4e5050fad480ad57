"""End to end: the real dvc.yaml, real DVC, a real MLflow store, real training on a tiny archive.

The project is copied into a fresh git repository under a temp folder; the tests in this module
run in order against that one copy (each builds on the state the previous one left).
"""

import base64
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import mlflow.artifacts
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT
from mlflow.tracking import MlflowClient
from PIL import Image
from project import Project, copy_project
from servers import free_port, wait_until_answers

from pipeline import data, export, files, images, models

pytestmark = pytest.mark.slow

STAGES = ["download", "train_teacher@42", "teacher_outputs@42", "distill@ce-42", "distill@kd-42",
          "distill@cosine-42", "distill@regressor-42", "evaluate", "export", "report"]  # fmt: skip
STUDENTS = ["ce", "kd", "cosine", "regressor"]
MODELS = ["teacher", *STUDENTS]
TEACHER_WEIGHTS = "models/teachers/teacher-42.safetensors"


def weights_of(name: str, seed: int = 42) -> str:
    return TEACHER_WEIGHTS if name == "teacher" else f"models/students/{name}-{seed}.safetensors"


def load_weights(arch: str, path) -> torch.nn.Module:
    net = models.build(arch, {}, 10, 0, "model")
    net.load_state_dict(models.load_state(path))
    return net


def metrics_of(tree: dict, name: str, seed: int = 42) -> dict:
    return tree["teacher"][str(seed)] if name == "teacher" else tree["students"][name][str(seed)]


# Outputs that hold measured latency/throughput, so they differ between runs of the same models.
# (DVC's metrics, metrics/*.json, hold the median latency.)
TIMED = {"reports/speed.json", "reports/comparison.md", "reports/tradeoff.png", "metrics",
         "reports/export_speed.json", "reports/pareto.png",
         *(f"metrics/{m}-42.json" for m in MODELS)}  # fmt: skip
TEST_IMAGES = 40  # make_archive(per_batch=40): one test batch


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    archive = tmp_path_factory.mktemp("mirror") / "cifar-10-python.tar.gz"
    return copy_project(tmp_path_factory.mktemp("project"), archive, teacher__epochs=1,
                        student__epochs=1, train__batch_size=32)  # fmt: skip


@pytest.fixture(scope="module")
def first_repro(project) -> list[str]:
    return project.repro()


def test_repro_runs_every_stage(project, first_repro):
    assert first_repro == STAGES
    for path in [TEACHER_WEIGHTS, "reports/evaluation.json", "reports/comparison.md",
                 *(weights_of(s) for s in STUDENTS)]:  # fmt: skip
        assert (project.path / path).is_file(), path


def invocations(project: Project) -> list:
    """The parent runs, one per pipeline invocation, newest first."""
    runs = project.runs(**{"pipeline.kind": "invocation"})
    return sorted(runs, key=lambda r: r.info.start_time, reverse=True)


def children(project: Project, parent) -> dict:
    """The runs under `parent`, by name (a model's run has its training stage's name)."""
    return {r.info.run_name: r for r in project.runs(**{"mlflow.parentRunId": parent.info.run_id})}


def test_one_finished_run_per_stage_grouped_under_one_parent(project, first_repro):
    (parent,) = invocations(project)
    by_name = children(project, parent)
    assert sorted(by_name) == sorted(STAGES) and len(project.runs()) == len(STAGES) + 1
    commit = project.run("git", "rev-parse", "HEAD").strip()
    # named after what the user ran: the commit and the time (a DVC experiment's name otherwise)
    assert re.fullmatch(rf"{commit[:7]} \d{{4}}-\d\d-\d\d \d\d:\d\d", parent.info.run_name)
    for stage in STAGES:
        run = by_name[stage]
        assert run.info.status == "FINISHED"
        assert run.data.tags["dvc.stage"] == stage
        assert run.data.tags["git.commit"] == commit
        assert run.data.tags["git.dirty"] == "false"
        assert (
            run.data.tags["data.md5"]
            == yaml.safe_load((project.path / "params.yaml").read_text())["data"]["md5"]
        )
    # it spans the invocation: from before the first stage to the end of the last
    assert parent.info.status == "FINISHED"
    assert parent.info.start_time <= by_name["download"].info.start_time
    assert parent.info.end_time >= by_name["report"].info.end_time
    # the report and each variant's figures sit on the parent, so its row in the UI shows them
    assert {"mean_test_accuracy/kd", "vs_ce/kd"} <= parent.data.metrics.keys()
    assert not [m for m in parent.data.metrics if m.startswith(("students.", "teacher."))]
    assert parent.data.tags["champion"].startswith("champion is cifar10-student v1")
    artifacts = [a.path for a in project.client.list_artifacts(parent.info.run_id)]
    assert artifacts == ["comparison.md", "curves.png", "pareto.png", "tradeoff.png"]
    assert (project.path / "mlartifacts").is_dir() and not (project.path / "mlruns").exists()


def test_the_experiment_opens_as_model_training_with_a_view_of_the_models(project, first_repro):
    exp = project.client.get_experiment_by_name("cifar10-distillation")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(exp.tags["mlflow.sharedViewState.models-by-accuracy"])
    assert view["orderByKey"] == "metrics.`test_accuracy`" and view["orderByAsc"] is False
    assert view["selectedColumns"][:2] == ["metrics.`test_accuracy`", "metrics.`teacher_agreement`"]
    assert view["columnOrder"] == view["selectedColumns"]
    assert "viewStateShareKey=models-by-accuracy" in exp.tags["mlflow.note.content"]
    # the chart (compare) view: its bars are metrics every model's run has
    charts = json.loads(exp.tags["mlflow.sharedViewState.models-compared"])
    charted = [c["metricKey"] for c in charts["compareRunCharts"]]
    assert charted[:2] == ["test_accuracy", "teacher_agreement"] and "latency_ms" in charted
    assert (
        "viewStateShareKey=models-compared&compareRunsMode=CHART" in exp.tags["mlflow.note.content"]
    )
    # the view's filter selects exactly one run per model (this project has one invocation yet)
    assert len(invocations(project)) == 1
    shown = project.client.search_runs([exp.experiment_id], filter_string=view["searchFilter"])
    assert sorted(r.info.run_name for r in shown) == sorted(
        ["train_teacher@42", *(f"distill@{s}-42" for s in STUDENTS)]
    )
    against_teacher = {"teacher_agreement", "teacher_kl"}  # a student's figures only
    for run in shown:
        expected = set(charted) - (
            against_teacher if run.info.run_name.startswith("train_teacher") else set()
        )
        assert expected <= set(run.data.metrics), run.info.run_name


def png_table(pixels: torch.Tensor) -> pd.DataFrame:
    """What the logged model takes: one encoded image file per row."""
    return pd.DataFrame({"image": [images.encode_png(i) for i in pixels]})


def test_training_runs_log_params_epochs_dataset_and_a_loadable_model(project, first_repro):
    md5 = yaml.safe_load((project.path / "params.yaml").read_text())["data"]["md5"]
    ds = data.load(project.path / "data/cifar10.safetensors")
    test_images = ds.test.images[:5]
    for stage, arch, weights in [("train_teacher@42", "DeepNN", TEACHER_WEIGHTS),
                                 *((f"distill@{s}-42", "LightNN", weights_of(s)) for s in STUDENTS)]:  # fmt: skip
        (run,) = project.runs(**{"dvc.stage": stage})
        assert run.data.params["train.lr"] == "0.001" and run.data.params["model"] == arch
        # per-epoch values under epoch/, apart from the evaluated figures
        for metric in ["epoch/train_loss", "epoch/train_accuracy", "epoch/test_accuracy"]:
            history = project.client.get_metric_history(run.info.run_id, metric)
            assert [m.step for m in history] == [1], (stage, metric)
        assert "train_loss" not in run.data.metrics and "training/seconds" in run.data.metrics
        (dataset,) = run.inputs.dataset_inputs
        assert dataset.dataset.digest == md5 and dataset.dataset.name == "cifar10"
        # The logged model: image files in, classes and probabilities out; inside, the network
        # of the DVC output's weights (raw uint8 pixels in, logits out).
        mlflow.set_tracking_uri(f"sqlite:///{project.path / 'mlflow.db'}")
        (logged,) = run.outputs.model_outputs
        pyfunc = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
        expected = models.Classifier(load_weights(arch, project.path / weights),
                                     data.Normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))).eval()  # fmt: skip
        with torch.no_grad():
            logits = expected(test_images)
            torch.testing.assert_close(pyfunc.unwrap_python_model().classifier(test_images), logits)
        answer = pyfunc.predict(png_table(test_images))
        assert list(answer.columns) == ["class", "probability", "probabilities", "logits"]
        assert list(answer["class"]) == [ds.classes[i] for i in logits.argmax(dim=1).tolist()]
        assert list(answer["probabilities"][0]) == list(ds.classes)
        torch.testing.assert_close(torch.tensor(list(answer["logits"])), logits)
        assert pyfunc.metadata.signature.inputs.input_names() == ["image"]
        artifacts = Path(mlflow.artifacts.download_artifacts(f"models:/{logged.model_id}"))
        assert (
            files.md5((artifacts / "artifacts" / "weights.safetensors").read_bytes())
            == (run.data.tags["model.md5"])
        )  # the logged weights are the DVC output's bytes
        assert run.data.tags["device"] == "cpu" and run.data.tags["precision"] == "bf16"
    (kd,) = project.runs(**{"dvc.stage": "distill@kd-42"})
    assert kd.data.tags["teacher_outputs"] == "cached"
    assert (
        kd.data.params["variant.temperature"] == "2.0" and kd.data.params["variant.method"] == "kd"
    )
    assert kd.data.metrics["epoch/train_kd"] > 0 and "epoch/train_hint" not in kd.data.metrics


def declared_outputs(stage: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o
            for key in ("outs", "metrics", "plots") for o in stage.get(key, [])]  # fmt: skip


def test_evaluation_writes_every_metric_for_every_model(project, first_repro):
    evaluation = json.loads((project.path / "reports/evaluation.json").read_text())
    speed = json.loads((project.path / "reports/speed.json").read_text())
    classes = data.load(project.path / "data/cifar10.safetensors").classes
    (parent,) = invocations(project)
    runs = children(project, parent)
    for name in MODELS:
        q, t = metrics_of(evaluation, name), metrics_of(speed, name)
        assert 0 <= q["test_accuracy"] <= 1 and 0 <= q["ece"] <= 1
        assert list(q["per_class_accuracy"]) == list(classes)
        weights = project.path / weights_of(name)
        assert q["weights_bytes"] == weights.stat().st_size
        assert q["parameters"] == (1_186_986 if name == "teacher" else 267_738)  # no hint head
        if name != "teacher":
            assert 0 <= q["teacher_agreement"] <= 1 and q["teacher_kl"] >= 0
        assert 0 < t["latency_ms_p50"] <= t["latency_ms_p95"] and t["throughput"] > 0
        # the confusion plot's rows are the predictions the accuracy was computed from
        role = "teacher-42" if name == "teacher" else f"{name}-42"
        rows = json.loads((project.path / f"plots/confusion/{role}.json").read_text())
        assert len(rows) == TEST_IMAGES
        hits = sum(r["actual"] == r["predicted"] for r in rows)
        assert hits / TEST_IMAGES == pytest.approx(q["test_accuracy"])
        # DVC's metrics: the headline figures, one small file per model
        headline = json.loads((project.path / f"metrics/{role}.json").read_text())
        expected = [
            "test_accuracy",
            "teacher_agreement",
            "teacher_kl",
            "ece",
            "latency_ms",
            "size_mb",
        ]
        assert list(headline) == [k for k in expected if name != "teacher" or "teacher_" not in k]
        assert headline["test_accuracy"] == q["test_accuracy"]
        assert headline["latency_ms"] == t["latency_ms_p50"]
        # the model's own run has the same figures, under the same names for every model
        run = runs["train_teacher@42" if name == "teacher" else f"distill@{role}"]
        assert run.data.metrics["test_accuracy"] == q["test_accuracy"]  # fp32, as the report
        assert run.data.metrics["per_class_accuracy/cat"] == q["per_class_accuracy"]["cat"]
        assert run.data.metrics["latency_ms_p95"] == t["latency_ms_p95"]
        assert {k for k in headline} <= run.data.metrics.keys()
        assert "confusion.png" in [a.path for a in project.client.list_artifacts(run.info.run_id)]
    # the evaluate run holds no flat copies of them (only MLflow's system metrics, under system/)
    assert not [m for m in runs["evaluate"].data.metrics if not m.startswith("system/")]


def test_report_writes_what_it_declares(project, first_repro):
    stages = yaml.safe_load((project.path / "dvc.yaml").read_text())["stages"]
    for stage in ("evaluate", "export", "report"):
        for out in declared_outputs(stages[stage]):
            path = project.path / out
            assert path.is_file() or any(path.iterdir()), out
    for png in ("reports/tradeoff.png", "reports/curves.png", "reports/pareto.png"):
        assert (project.path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    table = (project.path / "reports/comparison.md").read_text()
    for name in MODELS:
        assert re.search(rf"^\| (\*\*)?{name}\b", table, re.MULTILINE), name
    compression = table.split("## Compression")[1]
    for name in MODELS:
        formats = ["PyTorch fp32", "ONNX fp32"] + (["ONNX int8"] if name != "teacher" else [])
        found = re.findall(rf"^\| {name} \| ([^|]+) \|", compression, re.MULTILINE)
        assert found == formats, name
    # `dvc plots show` renders the report's images, the confusion matrices and the curves
    rendered = json.loads(project.run("dvc", "plots", "show", "--json"))
    assert "errors" not in rendered, rendered.get("errors")
    names = set(rendered["data"])
    assert {"reports/tradeoff.png", "reports/curves.png"} <= names
    curves = {
        f"plots/curves/{q}.json" for q in ("train_ce", "train_accuracy", "monitored_accuracy")
    }
    assert curves <= names
    assert {f"plots/confusion/{m}-42.json" for m in MODELS} <= names
    # each curve overlays every model on one quantity
    rows = json.loads((project.path / "plots/curves/train_ce.json").read_text())
    assert {r["model"] for r in rows} == set(MODELS) and {r["epoch"] for r in rows} == {1}


def test_champion_and_teacher_are_registered_with_their_lineage(project, first_repro):
    evaluation = json.loads((project.path / "reports/evaluation.json").read_text())
    students = evaluation["students"]
    best = max(students, key=lambda s: students[s]["42"]["test_accuracy"])
    lock = yaml.safe_load((project.path / "dvc.lock").read_text())["stages"]

    def lock_md5(stage, path):
        return next(o["md5"] for o in lock[stage]["outs"] if o["path"] == path)

    champion = project.client.get_model_version_by_alias("cifar10-student", "champion")
    challenger = project.client.get_model_version_by_alias("cifar10-student", "challenger")
    assert str(champion.version) == str(challenger.version) == "1"  # the first: the champion
    weights = weights_of(best)
    assert champion.tags["role"] == f"{best}-42"
    assert float(champion.tags["test_accuracy"]) == students[best]["42"]["test_accuracy"]
    assert "test_size all" in champion.tags["evaluated_on"]
    # dvc.lock and MLflow name the same file: the registered version is that run's model
    assert champion.tags["model.md5"] == lock_md5(f"distill@{best}-42", weights)
    teachers = project.client.search_model_versions("name = 'cifar10-teacher'")
    assert sorted(v.tags["format"] for v in teachers) == ["onnx", "pytorch"]
    for teacher in teachers:  # the PyTorch model and its ONNX export: the same weights
        assert teacher.tags["model.md5"] == lock_md5("train_teacher@42", TEACHER_WEIGHTS)
    mlflow.set_tracking_uri(f"sqlite:///{project.path / 'mlflow.db'}")
    loaded = mlflow.pyfunc.load_model("models:/cifar10-student@champion")
    images = data.load(project.path / "data/cifar10.safetensors").test.images[:5]
    expected = models.Classifier(load_weights("LightNN", project.path / weights),
                                 data.Normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))).eval()  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.unwrap_python_model().classifier(images), expected(images)
        )
    # the report again (same models): no new version, and it says the champion stays
    out = project.run(sys.executable, "-m", "pipeline.stages.report")
    assert len(project.client.search_model_versions("name = 'cifar10-student'")) == 3  # 3 formats
    assert "champion stays cifar10-student v1" in out and "this report's best student too" in out


def test_the_champion_moves_only_up_on_the_same_data(project, first_repro):
    """The real report stage and registry, on evaluation figures edited so that one chosen student
    is the report's best, with a chosen accuracy."""
    evaluation_file = project.path / "reports/evaluation.json"
    report_outputs = [evaluation_file, *(project.path / "reports").glob("*.*"),
                      *(project.path / "plots/curves").glob("*.json")]  # fmt: skip
    saved = {path: path.read_bytes() for path in report_outputs}
    evaluation = json.loads(saved[evaluation_file])
    champion = project.client.get_model_version_by_alias("cifar10-student", "champion")
    first, top = str(champion.version), float(champion.tags["test_accuracy"])
    assert top < 1, "the champion must leave room above it for this test"
    other = next(s for s in STUDENTS if f"{s}-42" != champion.tags["role"])

    def report_with(accuracy: float, **params) -> str:
        edited = json.loads(saved[evaluation_file])
        for s in STUDENTS:
            edited["students"][s]["42"]["test_accuracy"] = accuracy if s == other else 0.0
        evaluation_file.write_text(json.dumps(edited))
        if params:
            project.set_params(**params)
        try:
            return project.run(sys.executable, "-m", "pipeline.stages.report")
        finally:
            project.run("git", "checkout", "params.yaml")

    def alias(name: str) -> str:
        return str(project.client.get_model_version_by_alias("cifar10-student", name).version)

    def int8_of(version: str) -> str:
        md5 = project.client.get_model_version("cifar10-student", version).tags["model.md5"]
        (found,) = [v for v in project.client.search_model_versions("name = 'cifar10-student'")
                    if v.tags["model.md5"] == md5 and v.tags["format"] == "int8"]  # fmt: skip
        return str(found.version)

    try:
        worse = report_with(top / 2)
        challenger = alias("challenger")  # after the first report's three formats
        assert alias("champion") == first and challenger != first
        assert (f"champion stays cifar10-student v{first} (test_accuracy "
                f"{100 * top:.2f} %); challenger v{challenger} has {100 * top / 2:.2f} %") in worse  # fmt: skip
        assert alias("champion-int8") == int8_of(first)  # it follows the champion, not the report
        elsewhere = report_with(1.0, data__test_size=20)  # measured on other data: no comparison
        assert alias("champion") == first
        assert (
            "it was measured on other data" in elsewhere
            and f"python -m pipeline.promote {challenger}" in elsewhere
        )
        better = report_with((1 + top) / 2)
        assert alias("champion") == alias("challenger") == challenger
        assert (
            f"champion moves to cifar10-student v{challenger} (test_accuracy "
            f"{100 * (1 + top) / 2:.2f} %)" in better
        )
        assert alias("champion-int8") == int8_of(challenger) != int8_of(first)
        # and by hand, back to the first
        promoted = project.run(sys.executable, "-m", "pipeline.promote", first)
        assert alias("champion") == first and alias("champion-int8") == int8_of(first)
        assert f"champion is cifar10-student v{first}" in promoted and "by hand" in promoted
        # an ONNX form cannot be the champion: it is served from image files, as the PyTorch one
        code, refused = project.call(sys.executable, "-m", "pipeline.promote", int8_of(first))
        assert code == 1 and "is the int8 ONNX form of a model" in refused, refused
        assert alias("champion") == first
    finally:
        for path, blob in saved.items():
            path.write_bytes(blob)
    assert evaluation == json.loads(evaluation_file.read_text())


def test_predict_classifies_image_files_with_the_champion_or_any_model(
    project, first_repro, tmp_path
):
    ds = data.load(project.path / "data/cifar10.safetensors")
    png, jpg = tmp_path / "first.png", tmp_path / "second.jpg"
    png.write_bytes(images.encode_png(ds.test.images[0]))
    # another size and format: resized to the model's input size
    Image.fromarray(ds.test.images[1].permute(1, 2, 0).numpy()).resize((64, 48)).save(jpg)
    role = project.client.get_model_version_by_alias("cifar10-student", "champion").tags["role"]
    expected = json.loads((project.path / f"plots/confusion/{role}.json").read_text())[0]
    out = project.run(sys.executable, "-m", "pipeline.predict", str(png), str(jpg))
    first, second = out.strip().splitlines()[-2:]
    assert re.fullmatch(
        rf"{png}: {expected['predicted']} \d+\.\d %  \(\w+ \d+\.\d %, \w+ \d+\.\d %\)", first
    )
    assert second.split()[1] in ds.classes
    # any weights file of the project, and JSON out
    kd = json.loads((project.path / "plots/confusion/kd-42.json").read_text())[0]["predicted"]
    out = project.run(sys.executable, "-m", "pipeline.predict", "--json", "--model",
                      weights_of("kd"), str(png))  # fmt: skip
    answer = json.loads(out.strip().splitlines()[-1])
    assert answer["class"] == kd and sum(answer["probabilities"].values()) == pytest.approx(1)
    # a file that is no image: one line, and no model loaded
    status, out = project.call(sys.executable, "-m", "pipeline.predict", str(png), __file__)
    lines = out.strip().splitlines()
    assert status == 1 and len(lines) == 1, out
    assert lines[0].startswith(f"error: predict: {__file__}: not an image Pillow can read"), out
    # the console script of the same
    script = Path(sys.executable).parent / "pipeline-predict"
    assert project.run(str(script), "--help").startswith("usage: python -m pipeline.predict")


@contextlib.contextmanager
def serving(project: Project, uri: str) -> Iterator[str]:
    """`mlflow models serve -m uri` on a free loopback port, as the README runs it: its URL once
    it answers /ping."""
    port = free_port()
    env = {**project.env, "MLFLOW_TRACKING_URI": f"sqlite:///{project.path / 'mlflow.db'}"}
    server = subprocess.Popen(["mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port)],
                              cwd=project.path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_answers(f"{url}/ping", server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def post_json(url: str, body: dict):
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.loads(reply.read())["predictions"]


def test_mlflow_models_serve_answers_with_class_names(project, first_repro):
    ds = data.load(project.path / "data/cifar10.safetensors")
    role = project.client.get_model_version_by_alias("cifar10-student", "champion").tags["role"]
    expected = json.loads((project.path / f"plots/confusion/{role}.json").read_text())[:2]
    rows = [[base64.b64encode(images.encode_png(i)).decode()] for i in ds.test.images[:2]]
    with serving(project, "models:/cifar10-student@champion") as url:
        predictions = post_json(url, {"dataframe_split": {"columns": ["image"], "data": rows}})
    assert [p["class"] for p in predictions] == [e["predicted"] for e in expected]
    assert list(predictions[0]["probabilities"]) == list(ds.classes)
    assert len(predictions[0]["logits"]) == len(ds.classes)


def test_the_export_logs_every_onnx_model_and_registers_the_champions_int8(project, first_repro):
    run = max(project.runs(**{"dvc.stage": "export"}), key=lambda r: r.info.start_time)
    logged = project.client.search_logged_models([run.info.experiment_id])
    onnx_models = {m.name: m for m in logged if m.source_run_id == run.info.run_id}
    expected = {f"{m}-42-{f}" for m in STUDENTS for f in ("onnx", "int8")} | {"teacher-42-onnx"}
    assert set(onnx_models) == expected
    lock = yaml.safe_load((project.path / "dvc.lock").read_text())["stages"]
    for name, m in onnx_models.items():
        assert m.tags["format"] == name.rsplit("-", 1)[1], name
        role = m.tags["role"]
        stage = "train_teacher@42" if role == "teacher-42" else f"distill@{role}"
        assert m.tags["model.md5"] == next(o["md5"] for o in lock[stage]["outs"]
                                           if o["path"].endswith(".safetensors")), name  # fmt: skip
    champion = project.client.get_model_version_by_alias("cifar10-student", "champion")
    int8 = project.client.get_model_version_by_alias("cifar10-student", "champion-int8")
    assert int8.tags["format"] == "int8" and int8.tags["model.md5"] == champion.tags["model.md5"]
    exported = json.loads((project.path / "reports/export.json").read_text())
    role = champion.tags["role"]
    figures = exported["students"][role.rsplit("-", 1)[0]]["42"]
    assert float(int8.tags["test_accuracy"]) == figures["int8"]["test_accuracy"]
    # what the registry serves is the DVC output, byte for byte, and it loads with its signature
    mlflow.set_tracking_uri(f"sqlite:///{project.path / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model("models:/cifar10-student@champion-int8")
    (spec,) = served.metadata.get_input_schema().inputs
    assert spec.type == np.dtype("uint8") and spec.shape == (-1, 3, 32, 32)
    assert served.metadata.get_output_schema().inputs[0].shape == (-1, 10)
    model_dir = Path(mlflow.artifacts.download_artifacts(int8.source))
    assert (model_dir / "model.onnx").read_bytes() == (
        project.path / f"exports/{role}.int8.onnx"
    ).read_bytes()
    # agreement with fp32 is measured on the whole test set, and parity held for every model
    for name in MODELS:
        onnx_figures = metrics_of(exported, name)["onnx"]
        assert onnx_figures["fp32_agreement"] == 1.0, name
        assert 0 < onnx_figures["max_abs_logit_diff"] <= 1e-3, name


def test_mlflow_models_serve_answers_with_the_champions_int8_logits(project, first_repro):
    ds = data.load(project.path / "data/cifar10.safetensors")
    role = project.client.get_model_version_by_alias("cifar10-student", "champion").tags["role"]
    session = export.OnnxClassifier((project.path / f"exports/{role}.int8.onnx").read_bytes())
    pixels = ds.test.images[:TEST_IMAGES]
    with serving(project, "models:/cifar10-student@champion-int8") as url:
        predictions = post_json(url, {"inputs": pixels.tolist()})
    served = torch.tensor(predictions["logits"])  # the ONNX graph's output, by its name
    assert served.shape == (TEST_IMAGES, 10)
    torch.testing.assert_close(served, session(pixels), rtol=0, atol=1e-5)
    # ...and its classes are the ones the export stage measured the int8 accuracy from
    accuracy = (served.argmax(1) == ds.test.labels[:TEST_IMAGES]).float().mean().item()
    exported = json.loads((project.path / "reports/export.json").read_text())
    assert accuracy == exported["students"][role.rsplit("-", 1)[0]]["42"]["int8"]["test_accuracy"]


def test_a_wrong_export_fails_the_stage_with_one_line_and_writes_nothing(project, first_repro):
    exports = {f: f.read_bytes() for f in (project.path / "exports").iterdir()}
    report = (project.path / "reports/export.json").read_bytes()
    before = {r.info.run_id for r in project.runs(**{"dvc.stage": "export"})}
    # No real export differs from PyTorch by more than float rounding (about 1e-5 here), so a
    # tolerance far below it stands for a wrong one; a perturbed model is in tests/test_export.py.
    project.set_params(export__logit_tolerance=1e-9)
    try:
        done = subprocess.run([sys.executable, "-m", "pipeline.stages.export"], cwd=project.path,
                              env=project.env, capture_output=True, text=True)  # fmt: skip
    finally:
        project.run("git", "checkout", "params.yaml")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert re.match(r"error: export: the ONNX export of teacher-42 differs from the PyTorch model: "
                    r"max \|logit difference\| [0-9.e-]+ \(tolerance 1e-09\)", lines[0]), lines[0]  # fmt: skip
    assert {f: f.read_bytes() for f in (project.path / "exports").iterdir()} == exports
    assert (project.path / "reports/export.json").read_bytes() == report
    assert not [r for r in project.runs(**{"dvc.stage": "export"}) if r.info.run_id not in before]
    assert project.repro() == []  # the workspace is as DVC left it


def test_outputs_hold_no_machine_paths_or_run_ids(project, first_repro):
    run_ids = [r.info.run_id for r in project.runs()]
    for path in [
        project.path / "dvc.lock",
        *(project.path / d for d in ("metrics", "plots", "reports")),
    ]:
        for f in [path] if path.is_file() else path.rglob("*"):
            if f.is_file():
                text = f.read_bytes().decode("utf-8", "replace")  # PNGs too
                assert str(project.path) not in text and "mirror" not in text, f
                assert not any(i in text for i in run_ids), f


def test_dvc_metrics_show_one_row_per_model_that_fits_a_terminal(project, first_repro):
    shown = project.run("dvc", "metrics", "show").splitlines()
    header, rows = shown[0].split(), [line.split()[0] for line in shown[1:] if line.strip()]
    assert header == ["Path", "ece", "latency_ms", "size_mb", "teacher_agreement", "teacher_kl",
                      "test_accuracy"]  # fmt: skip
    assert sorted(rows) == sorted(f"metrics/{m}-42.json" for m in MODELS)
    assert max(map(len, shown)) <= 120, "\n".join(shown)
    project.run("dvc", "plots", "show", "-o", "dvc_plots")
    assert (project.path / "dvc_plots" / "index.html").is_file()


def test_dvc_plots_show_renders_with_no_internet(project, first_repro, tmp_path):
    """scripts/setup installs Vega from the npm registry and inlines it into DVC's HTML template;
    the page then loads nothing from outside. .ci/run installs Chromium, which renders it here
    with no network (elsewhere, without Chromium, the page's content is checked alone)."""
    template = ROOT / ".venv" / "vega" / "dvc-plots.html"
    assert template.is_file(), "scripts/setup writes it when npm is on PATH: run scripts/setup"
    project.run("dvc", "plots", "show", "--html-template", str(template), "-o", str(tmp_path))
    page = tmp_path / "index.html"
    html = page.read_text()
    assert not re.search(r"<(script|link)[^>]*(src|href)=", html) and "cdn." not in html
    assert html.count("vegaEmbed(") == 3 + len(MODELS)  # the three curves, a confusion matrix each
    chromium = shutil.which("chromium")
    if chromium is None:
        return
    done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-background-networking", "--no-first-run",
                           "--proxy-server=127.0.0.1:9",  # nothing outside can be reached
                           f"--user-data-dir={tmp_path / 'chromium'}",
                           "--virtual-time-budget=15000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.stdout.count("<canvas") == 3 + len(MODELS), done.stderr[-2000:]


def test_second_repro_runs_nothing_and_logs_nothing(project, first_repro):
    before = len(project.runs())
    assert project.repro() == []
    assert len(project.runs()) == before


def test_changing_kd_temperature_reruns_only_kd_and_its_readers(project, first_repro):
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "first results")
    before = {r.info.run_id for r in project.runs()}
    cache = project.path / "data/teacher_outputs/42.safetensors"
    cached = cache.read_bytes()
    project.set_params(variants__kd__temperature=4.0)
    # teacher_outputs reads `variants` (the layers they tap) so it reruns, to the same bytes: no
    # other student reruns.
    assert project.repro() == ["teacher_outputs@42", "distill@kd-42", "evaluate", "export",
                               "report"]  # fmt: skip
    assert cache.read_bytes() == cached
    new = [r for r in project.runs() if r.info.run_id not in before]
    parent = invocations(project)[0]
    assert re.fullmatch(r"[0-9a-f]{7}\+ .+", parent.info.run_name)  # +: params differ from HEAD
    assert sorted(r.info.run_name for r in new if r.info.run_id != parent.info.run_id) == sorted([
        "distill@kd-42", "evaluate", "export", "report", "teacher_outputs@42",
        # every model of the report is in the invocation: the ones DVC did not retrain link to the
        # run that trained them, with its params and these evaluated figures
        "train_teacher@42", "distill@ce-42", "distill@cosine-42", "distill@regressor-42",
    ])  # fmt: skip
    assert all(r.data.tags["git.dirty"] == "true" for r in new)
    by_name = children(project, parent)
    cached = by_name["distill@ce-42"]
    trained = project.client.get_run(cached.data.tags["trained_by.run_id"])
    assert cached.data.tags["dvc.cached"] == "true" and trained.info.run_id in before
    assert cached.data.params == trained.data.params and "test_accuracy" in cached.data.metrics
    assert trained.info.run_id in cached.data.tags["mlflow.note.content"]
    assert "dvc.cached" not in by_name["distill@kd-42"].data.tags  # trained in this invocation
    diff = project.run("dvc", "metrics", "diff")
    assert "metrics/kd-42.json" in diff
    project.run("git", "checkout", "params.yaml")
    # back to the committed params: those stages rerun or come back from DVC's run cache
    assert set(project.repro()) <= {"teacher_outputs@42", "distill@kd-42", "evaluate", "export",
                                    "report"}  # fmt: skip
    # ...and the outputs are byte for byte the committed ones: the pipeline is deterministic,
    # except for what holds measured latency and throughput
    changed = {line[3:] for line in project.run("git", "status", "--porcelain").splitlines()}
    assert changed <= {"dvc.lock", *TIMED}
    committed = yaml.safe_load(project.run("git", "show", "HEAD:dvc.lock"))["stages"]
    current = yaml.safe_load((project.path / "dvc.lock").read_text())["stages"]
    for stage, lock in current.items():
        for out in lock.get("outs", []):
            if out["path"] not in TIMED:
                assert out in committed[stage]["outs"], (stage, out["path"])


def test_queued_and_temp_experiments_land_in_the_same_store(project, first_repro):
    for t in (3.0, 5.0):
        project.run("dvc", "exp", "run", "--queue", "-S", f"variants.kd.temperature={t}")
    # Two workers: both experiments write to the one embedded SQLite store at the same time.
    project.run("dvc", "queue", "start", "-j", "2")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = project.run("dvc", "queue", "status")
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(3)
    assert status.count("Success") == 2, status
    project.run("dvc", "exp", "run", "--temp", "-S", "variants.kd.temperature=7.0")
    kd_runs = project.runs(**{"dvc.stage": "distill@kd-42"})
    temps = {r.data.params["variant.temperature"]: r for r in kd_runs}
    assert {"3.0", "5.0", "7.0"} <= set(temps)
    names = {temps[t].data.tags.get("dvc.experiment") for t in ("3.0", "5.0", "7.0")}
    assert None not in names and len(names) == 3
    assert all(r.info.status == "FINISHED" for r in kd_runs)
    # The two queued experiments really ran at the same time (their stages' runs overlap).
    spans = []
    for t in ("3.0", "5.0"):
        runs = project.runs(**{"dvc.experiment": temps[t].data.tags["dvc.experiment"]})
        spans.append((min(r.info.start_time for r in runs), max(r.info.end_time for r in runs)))
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans
    assert not list((project.path / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))


def test_tracking_uri_override(project, first_repro, tmp_path):
    other = MlflowClient(f"sqlite:///{tmp_path / 'team.db'}")
    before = len(project.runs())
    env = {**project.env, "MLFLOW_TRACKING_URI": other.tracking_uri}
    timed = {name: (project.path / name).read_bytes() for name in TIMED
             if (project.path / name).is_file()}  # re-measured below  # fmt: skip
    try:
        subprocess.run([sys.executable, "-m", "pipeline.stages.evaluate"], cwd=project.path,
                       env=env, check=True, capture_output=True)  # fmt: skip
    finally:
        for name, blob in timed.items():
            (project.path / name).write_bytes(blob)
    exp = other.get_experiment_by_name("cifar10-distillation")
    runs = {r.info.run_name: r for r in other.search_runs([exp.experiment_id])}
    # run outside DVC: the invocation is named after the commit and the time
    (invocation,) = [name for name, r in runs.items()
                     if r.data.tags["pipeline.kind"] == "invocation"]  # fmt: skip
    assert re.fullmatch(r"[0-9a-f]{7}\+? \d{4}-\d\d-\d\d \d\d:\d\d", invocation), invocation
    models_there = ["train_teacher@42", *(f"distill@{s}-42" for s in STUDENTS)]
    assert sorted(runs) == sorted(["evaluate", *models_there, invocation])
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    # no run there trained these models: their runs say so, and hold the evaluated figures
    assert "another tracking store" in runs["distill@kd-42"].data.tags["mlflow.note.content"]
    assert "test_accuracy" in runs["distill@kd-42"].data.metrics
    assert len(project.runs()) == before  # nothing went to the embedded store


def test_a_stopped_stage_leaves_its_run_killed_not_running(project, first_repro):
    project.set_params(student__epochs=100000)  # long enough to be stopped mid-training
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.stages.distill", "ce", "42"], cwd=project.path,
                            env=project.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not [
            r for r in project.runs(**{"dvc.stage": "distill@ce-42"}) if r.info.status == "RUNNING"
        ]:
            time.sleep(0.5)
        time.sleep(2)  # into the training loop
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        project.run("git", "checkout", "params.yaml")
    assert proc.returncode == 130 and "interrupted" in err, err
    statuses = [r.info.status for r in project.runs(**{"dvc.stage": "distill@ce-42"})]
    assert "RUNNING" not in statuses and "KILLED" in statuses


def test_a_failing_stage_leaves_its_run_failed(project, first_repro):
    # Fail inside the run, after training: the metrics file cannot be written (a folder is there).
    target = project.path / "reports/train/ce-42.json"
    saved = target.read_bytes()
    target.unlink()
    target.mkdir()
    before = {r.info.run_id for r in project.runs(**{"dvc.stage": "distill@ce-42"})}
    try:
        done = subprocess.run([sys.executable, "-m", "pipeline.stages.distill", "ce", "42"], cwd=project.path,
                              env=project.env, capture_output=True, text=True)  # fmt: skip
    finally:
        target.rmdir()
        target.write_bytes(saved)
    assert done.returncode != 0
    runs = project.runs(**{"dvc.stage": "distill@ce-42"})
    assert "RUNNING" not in [r.info.status for r in runs]
    # this call's run: the module's other runs of the stage are earlier tests'
    (failed,) = [r for r in runs if r.info.run_id not in before]
    assert failed.info.status == "FAILED"
    # its invocation shows it failed too
    parent = project.client.get_run(failed.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED"
    assert project.repro() == []  # the workspace is as DVC left it


def test_a_diverging_training_fails_its_run_and_writes_no_model(project, first_repro):
    model = project.path / weights_of("ce")
    before = model.read_bytes()
    project.set_params(train__lr=1e12)  # Adam's steps are about lr: the logits overflow at once
    try:
        done = subprocess.run([sys.executable, "-m", "pipeline.stages.distill", "ce", "42"], cwd=project.path,
                              env=project.env, capture_output=True, text=True)  # fmt: skip
    finally:
        project.run("git", "checkout", "params.yaml")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert re.match(r"error: distill@ce-42: the training loss became NaN or infinite at epoch 1, "
                    r"batch \d+ of 7; lower train\.lr", lines[0]), lines[0]  # fmt: skip
    assert model.read_bytes() == before  # the diverged weights were written nowhere
    assert not [p for p in model.parent.iterdir() if p.name.endswith(".part")]
    latest = max(project.runs(**{"dvc.stage": "distill@ce-42"}), key=lambda r: r.info.start_time)
    assert latest.info.status == "FAILED"
    assert project.repro() == []  # the workspace is as DVC left it


def test_an_augmenting_variant_is_one_params_entry_and_runs_its_teacher_live(project, first_repro):
    doc = yaml.safe_load((project.path / "params.yaml").read_text())
    doc["variants"]["kd_aug"] = {**doc["variants"]["kd"], "augment": True}
    (project.path / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        out = project.run("dvc", "repro")
    finally:
        project.run("git", "checkout", "params.yaml")
    assert re.findall(r"Running stage '([^']+)'", out) == [
        "teacher_outputs@42",  # reads `variants`; it caches no more for one that runs live
        "distill@kd_aug-42",
        "evaluate",
        "export",
        "report",
    ]
    assert "augmentation is on, so the teacher runs live" in out
    (run,) = project.runs(**{"dvc.stage": "distill@kd_aug-42"})
    assert (
        run.data.tags["teacher_outputs"] == "live" and run.data.params["variant.augment"] == "True"
    )


def test_same_params_and_seed_give_bit_identical_weights_and_metrics(project, first_repro):
    outputs = [weights_of("kd"), "reports/train/kd-42.json", "plots/train/kd-42.json"]
    before = {path: (project.path / path).read_bytes() for path in outputs}
    project.run("dvc", "repro", "--force", "--single-item", "distill@kd-42")
    for path in outputs:
        assert (project.path / path).read_bytes() == before[path], path


def test_dvc_lock_and_mlflow_agree_on_data_params_and_model(project, first_repro):
    lock = yaml.safe_load((project.path / "dvc.lock").read_text())["stages"]
    for stage, weights in [
        ("train_teacher@42", TEACHER_WEIGHTS),
        ("distill@kd-42", weights_of("kd")),
    ]:
        entry = lock[stage]
        trained = [r for r in project.runs(**{"dvc.stage": stage}) if "model.md5" in r.data.tags]
        run = max(trained, key=lambda r: r.info.start_time)  # not a cached model's linked run
        tags, logged = run.data.tags, run.data.params
        assert tags["model.md5"] == next(o["md5"] for o in entry["outs"] if o["path"] == weights)
        data_dep = next(d for d in entry["deps"] if d["path"] == "data/cifar10.safetensors")
        assert tags["data.file_md5"] == data_dep["md5"]
        locked = entry["params"]["params.yaml"]
        for key, value in locked["train"].items():
            assert logged[f"train.{key}"] == str(value), key
        assert logged["data.val_size"] == str(locked["data.val_size"])
        assert logged["seed"] == "42"
        for key in ("torch.version", "torchvision.version", "cuda.version", "params.hash",
                    "device", "precision", "git.commit", "git.dirty", "data.md5"):  # fmt: skip
            assert tags.get(key), key
    kd_run = max(project.runs(**{"dvc.stage": "distill@kd-42"}), key=lambda r: r.info.start_time)
    kd_locked = lock["distill@kd-42"]["params"]["params.yaml"]["variants.kd"]
    assert kd_run.data.params["variant.temperature"] == str(kd_locked["temperature"])


def test_several_seeds_and_a_validation_split_give_paired_statistics(project, first_repro):
    project.set_params(seeds=[42, 7], data__val_size=40)
    try:
        ran = project.repro()
        stats = json.loads((project.path / "reports/statistics.json").read_text())
        evaluation = json.loads((project.path / "reports/evaluation.json").read_text())
        report = (project.path / "reports/comparison.md").read_text()
        kd7 = json.loads((project.path / "reports/train/kd-7.json").read_text())
        challenger = project.client.get_model_version_by_alias("cifar10-student", "challenger")
    finally:
        project.run("git", "checkout", "params.yaml")
    # every variant, the CE student included, once per seed; one teacher (teacher.seeds)
    assert {f"distill@{s}-7" for s in STUDENTS} <= set(ran) and "train_teacher@7" not in ran
    assert stats["kd"]["test_accuracy"]["n"] == 2 and stats["kd"]["vs_ce"]["n"] == 2
    kd = [evaluation["students"]["kd"][s]["test_accuracy"] for s in ("42", "7")]
    ce = [evaluation["students"]["ce"][s]["test_accuracy"] for s in ("42", "7")]
    assert stats["kd"]["vs_ce"]["mean_diff"] == pytest.approx((kd[0] - ce[0] + kd[1] - ce[1]) / 2)
    assert stats["kd"]["vs_ce"]["verdict"] in ("gain", "loss", "no detectable difference")
    assert "vs_ce" not in stats["ce"]
    # validation: the best epoch is chosen on it, the test set is scored once at the end
    assert {"val_accuracy", "best_epoch", "last_epoch_test_accuracy"} <= kd7.keys()
    assert (
        "test_accuracy" not in json.loads((project.path / "plots/train/kd-7.json").read_text())[0]
    )
    assert "last-epoch test accuracy" in report and "p-value" in report
    # Holm over the three comparisons with ce: never below the raw p-value, the smallest times 3
    raw = sorted((stats[v]["vs_ce"]["p_value"], v) for v in STUDENTS if v != "ce")
    assert stats[raw[0][1]]["vs_ce"]["p_holm"] == pytest.approx(min(1.0, 3 * raw[0][0]))
    assert all(stats[v]["vs_ce"]["p_holm"] >= p for p, v in raw)
    assert "| Holm p | verdict |" in report and "over the 3 comparisons with ce" in report
    # the challenger is chosen on validation accuracy
    best = max(((v, s) for v in STUDENTS for s in ("42", "7")),
               key=lambda vs: evaluation["students"][vs[0]][vs[1]]["val_accuracy"])  # fmt: skip
    assert challenger.tags["role"] == f"{best[0]}-{best[1]}"
    assert "val_size 40" in challenger.tags["evaluated_on"] and "val_accuracy" in challenger.tags
