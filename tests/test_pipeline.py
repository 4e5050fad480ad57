"""End to end: the real dvc.yaml, real DVC, a real MLflow store, real training on a tiny archive.

The project is copied into a fresh git repository under a temp folder; the tests in this module
run in order against that one copy (each builds on the state the previous one left).
"""

import json
import re
import signal
import subprocess
import sys
import time

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from project import Project, copy_project

from pipeline import data, models

pytestmark = pytest.mark.slow

STAGES = ["download", "train_teacher@42", "teacher_outputs@42", "distill@ce-42", "distill@kd-42",
          "distill@cosine-42", "distill@regressor-42", "evaluate", "report"]  # fmt: skip
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
TIMED = {"metrics/speed.json", "reports/comparison.md", "reports/tradeoff.png"}
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
    for path in [TEACHER_WEIGHTS, "metrics/evaluation.json", "reports/comparison.md",
                 *(weights_of(s) for s in STUDENTS)]:  # fmt: skip
        assert (project.path / path).is_file(), path


def test_one_finished_run_per_stage_grouped_under_one_parent(project, first_repro):
    runs = project.runs()
    by_name = {r.info.run_name: r for r in runs}
    assert sorted(by_name) == sorted([*STAGES, "pipeline"]) and len(runs) == len(STAGES) + 1
    parent = by_name["pipeline"].info.run_id
    commit = project.run("git", "rev-parse", "HEAD").strip()
    for stage in STAGES:
        run = by_name[stage]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.tags["dvc.stage"] == stage
        assert run.data.tags["git.commit"] == commit
        assert run.data.tags["git.dirty"] == "false"
        assert (
            run.data.tags["data.md5"]
            == yaml.safe_load((project.path / "params.yaml").read_text())["data"]["md5"]
        )
    assert by_name["pipeline"].info.status == "FINISHED"
    # the report and the headline numbers sit on the parent, so its row in the UI shows them
    assert "students.kd.42.test_accuracy" in by_name["pipeline"].data.metrics
    artifacts = [a.path for a in project.client.list_artifacts(parent)]
    assert artifacts == ["comparison.md", "curves.png", "tradeoff.png"]
    assert (project.path / "mlartifacts").is_dir() and not (project.path / "mlruns").exists()


def test_training_runs_log_params_epochs_dataset_and_a_loadable_model(project, first_repro):
    md5 = yaml.safe_load((project.path / "params.yaml").read_text())["data"]["md5"]
    test_images = data.load(project.path / "data/cifar10.safetensors").test.images[:5]
    for stage, arch, weights in [("train_teacher@42", "DeepNN", TEACHER_WEIGHTS),
                                 *((f"distill@{s}-42", "LightNN", weights_of(s)) for s in STUDENTS)]:  # fmt: skip
        (run,) = project.runs(**{"dvc.stage": stage})
        assert run.data.params["train.lr"] == "0.001" and run.data.params["model"] == arch
        for metric in ["train_loss", "train_accuracy", "test_accuracy"]:
            history = project.client.get_metric_history(run.info.run_id, metric)
            assert [m.step for m in history] == [1], (stage, metric)
        (dataset,) = run.inputs.dataset_inputs
        assert dataset.dataset.digest == md5 and dataset.dataset.name == "cifar10"
        # The logged model: raw uint8 pixels in, logits out, equal to the DVC output's weights.
        mlflow.set_tracking_uri(f"sqlite:///{project.path / 'mlflow.db'}")
        (logged,) = run.outputs.model_outputs
        loaded = mlflow.pytorch.load_model(f"models:/{logged.model_id}")
        expected = models.Classifier(load_weights(arch, project.path / weights),
                                     data.Normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))).eval()  # fmt: skip
        with torch.no_grad():
            torch.testing.assert_close(loaded(test_images), expected(test_images))
        pyfunc = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
        assert pyfunc.predict(test_images.numpy()).shape == (5, 10)
        # the signature speaks uint8 images, so a serving client knows what to send
        assert pyfunc.metadata.signature.inputs.numpy_types()[0] == np.uint8
        assert run.data.tags["device"] == "cpu" and run.data.tags["precision"] == "bf16"
    (kd,) = project.runs(**{"dvc.stage": "distill@kd-42"})
    assert kd.data.tags["teacher_outputs"] == "cached"
    assert (
        kd.data.params["variant.temperature"] == "2.0" and kd.data.params["variant.method"] == "kd"
    )
    assert kd.data.metrics["train_kd"] > 0 and "train_hint" not in kd.data.metrics


def declared_outputs(stage: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o
            for key in ("outs", "metrics", "plots") for o in stage.get(key, [])]  # fmt: skip


def test_evaluation_writes_every_metric_for_every_model(project, first_repro):
    evaluation = json.loads((project.path / "metrics/evaluation.json").read_text())
    speed = json.loads((project.path / "metrics/speed.json").read_text())
    classes = data.load(project.path / "data/cifar10.safetensors").classes
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
    # MLflow has the same numbers under the same names as `dvc metrics show`, and the images
    (run,) = project.runs(**{"dvc.stage": "evaluate"})
    assert (
        run.data.metrics["students.kd.42.test_accuracy"]
        == evaluation["students"]["kd"]["42"]["test_accuracy"]
    )
    assert (
        run.data.metrics["teacher.42.per_class_accuracy.cat"]
        == evaluation["teacher"]["42"]["per_class_accuracy"]["cat"]
    )
    assert (
        run.data.metrics["students.ce.42.latency_ms_p95"]
        == speed["students"]["ce"]["42"]["latency_ms_p95"]
    )
    images = [a.path for a in project.client.list_artifacts(run.info.run_id, "confusion")]
    assert images == sorted(f"confusion/{m}-42.png" for m in MODELS)


def test_report_writes_what_it_declares(project, first_repro):
    stages = yaml.safe_load((project.path / "dvc.yaml").read_text())["stages"]
    for stage in ("evaluate", "report"):
        for out in declared_outputs(stages[stage]):
            path = project.path / out
            assert path.is_file() or any(path.iterdir()), out
    for png in ("reports/tradeoff.png", "reports/curves.png"):
        assert (project.path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    table = (project.path / "reports/comparison.md").read_text()
    for name in MODELS:
        assert re.search(rf"^\| (\*\*)?{name}\b", table, re.MULTILINE), name
    # `dvc plots show` renders the report's images, the confusion matrices and the curves
    rendered = json.loads(project.run("dvc", "plots", "show", "--json"))
    assert "errors" not in rendered, rendered.get("errors")
    names = set(rendered["data"])
    assert {"reports/tradeoff.png", "reports/curves.png"} <= names
    assert {f"plots/train/{m}-42.json" for m in MODELS} <= names
    assert {f"plots/confusion/{m}-42.json" for m in MODELS} <= names


def test_champion_and_teacher_are_registered_with_their_lineage(project, first_repro):
    evaluation = json.loads((project.path / "metrics/evaluation.json").read_text())
    students = evaluation["students"]
    best = max(students, key=lambda s: students[s]["42"]["test_accuracy"])
    lock = yaml.safe_load((project.path / "dvc.lock").read_text())["stages"]

    def lock_md5(stage, path):
        return next(o["md5"] for o in lock[stage]["outs"] if o["path"] == path)

    champion = project.client.get_model_version_by_alias("cifar10-student", "champion")
    weights = weights_of(best)
    assert champion.tags["role"] == f"{best}-42"
    # dvc.lock and MLflow name the same file: the registered version is that run's model
    assert champion.tags["model.md5"] == lock_md5(f"distill@{best}-42", weights)
    (teacher,) = project.client.search_model_versions("name = 'cifar10-teacher'")
    assert teacher.tags["model.md5"] == lock_md5("train_teacher@42", TEACHER_WEIGHTS)
    mlflow.set_tracking_uri(f"sqlite:///{project.path / 'mlflow.db'}")
    loaded = mlflow.pytorch.load_model("models:/cifar10-student@champion")
    images = data.load(project.path / "data/cifar10.safetensors").test.images[:5]
    expected = models.Classifier(load_weights("LightNN", project.path / weights),
                                 data.Normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))).eval()  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), expected(images))
    # the report again (same models): no new version
    project.run(sys.executable, "-m", "pipeline.stages.report")
    assert len(project.client.search_model_versions("name = 'cifar10-student'")) == 1


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


def test_dvc_metrics_and_plots_commands_work(project, first_repro):
    shown = project.run("dvc", "metrics", "show")
    assert "metrics/evaluation.json" in shown and "students.kd.42.test_accuracy" in shown
    project.run("dvc", "plots", "show", "-o", "dvc_plots")
    assert (project.path / "dvc_plots" / "index.html").is_file()


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
    assert project.repro() == ["teacher_outputs@42", "distill@kd-42", "evaluate", "report"]
    assert cache.read_bytes() == cached
    new = [r for r in project.runs() if r.info.run_id not in before]
    assert sorted(r.info.run_name for r in new) == [
        "distill@kd-42",
        "evaluate",
        "pipeline",
        "report",
        "teacher_outputs@42",
    ]
    assert all(r.data.tags["git.dirty"] == "true" for r in new)
    diff = project.run("dvc", "metrics", "diff")
    assert "students.kd.42.test_accuracy" in diff or "train_kd" in diff
    project.run("git", "checkout", "params.yaml")
    # back to the committed params: those stages rerun or come back from DVC's run cache
    assert set(project.repro()) <= {"teacher_outputs@42", "distill@kd-42", "evaluate", "report"}
    # ...and the outputs are byte for byte the committed ones: the pipeline is deterministic,
    # except for what holds measured latency and throughput
    changed = {line[3:] for line in project.run("git", "status", "--porcelain").splitlines()}
    assert changed <= {"dvc.lock", "metrics/speed.json", "reports/comparison.md"}
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
    speed = (project.path / "metrics/speed.json").read_bytes()  # re-measured by the run below
    try:
        subprocess.run([sys.executable, "-m", "pipeline.stages.evaluate"], cwd=project.path,
                       env=env, check=True, capture_output=True)  # fmt: skip
    finally:
        (project.path / "metrics/speed.json").write_bytes(speed)
    exp = other.get_experiment_by_name("cifar10-distillation")
    runs = {r.info.run_name: r.info.status for r in other.search_runs([exp.experiment_id])}
    assert runs == {"evaluate": "FINISHED", "pipeline": "FINISHED"}
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
    target = project.path / "metrics/train/ce-42.json"
    target.unlink()
    target.mkdir()
    try:
        done = subprocess.run([sys.executable, "-m", "pipeline.stages.distill", "ce", "42"], cwd=project.path,
                              env=project.env, capture_output=True, text=True)  # fmt: skip
    finally:
        target.rmdir()
        project.run("git", "checkout", "metrics/train/ce-42.json")
    assert done.returncode != 0
    statuses = [r.info.status for r in project.runs(**{"dvc.stage": "distill@ce-42"})]
    assert statuses.count("FAILED") == 1 and "RUNNING" not in statuses
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
        "report",
    ]
    assert "augmentation is on, so the teacher runs live" in out
    (run,) = project.runs(**{"dvc.stage": "distill@kd_aug-42"})
    assert (
        run.data.tags["teacher_outputs"] == "live" and run.data.params["variant.augment"] == "True"
    )


def test_same_params_and_seed_give_bit_identical_weights_and_metrics(project, first_repro):
    outputs = [weights_of("kd"), "metrics/train/kd-42.json", "plots/train/kd-42.json"]
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
        run = max(project.runs(**{"dvc.stage": stage}), key=lambda r: r.info.start_time)
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
        stats = json.loads((project.path / "metrics/statistics.json").read_text())
        evaluation = json.loads((project.path / "metrics/evaluation.json").read_text())
        report = (project.path / "reports/comparison.md").read_text()
        kd7 = json.loads((project.path / "metrics/train/kd-7.json").read_text())
        champion = project.client.get_model_version_by_alias("cifar10-student", "champion")
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
    # the champion is chosen on validation accuracy
    best = max(((v, s) for v in STUDENTS for s in ("42", "7")),
               key=lambda vs: evaluation["students"][vs[0]][vs[1]]["val_accuracy"])  # fmt: skip
    assert champion.tags["role"] == f"{best[0]}-{best[1]}"
