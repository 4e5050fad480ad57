"""End to end with a user's own models and images: a torchvision ResNet-18 teacher, a student from
the user's code by import path, an image-folder tree of JPEGs; a teacher given by file and by
models:/ URI; and bad references, each one line.

Real DVC, a real MLflow store, real training (one epoch on a tiny tree); the tests run in order
against one project copy.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import yaml
from PIL import Image
from project import Project, copy_project, write_params

from pipeline import data, files, images

pytestmark = pytest.mark.slow

CLASSES = ["circle", "square", "stripes"]  # folder names, sorted as the classes are
STAGES = ["download", "train_teacher@42", "teacher_outputs@42", "distill@ce-42", "distill@kd-42",
          "distill@cosine-42", "distill@regressor-42", "evaluate", "export", "report"]  # fmt: skip
STUDENT_CODE = '''
"""A user's student, in the user's own package: a class and a factory."""
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.head(self.body(x))


def no_logits(num_classes: int = 10):
    """A model whose output is a feature map, not logits."""
    return nn.Conv2d(3, 4, 3)
'''
LAYERS = {"student_layer": "body", "teacher_layer": "layer2"}


def write_tree(root: Path, per_class: dict[str, int], size: int = 20) -> None:
    """JPEGs whose class is visible: a disc, a square or stripes, in random colours."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    shapes = {
        "circle": (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2,
        "square": (abs(yy - size / 2) < size / 4) & (abs(xx - size / 2) < size / 4),
        "stripes": (xx // 3) % 2 == 0,
    }
    for split, n in per_class.items():
        for name, mask in shapes.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = np.zeros((size, size, 3), np.uint8) + rng.integers(
                    0, 60, 3, dtype=np.uint8
                )
                pixels[mask] = rng.integers(150, 256, 3, dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:03d}.jpg", quality=95)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    p = copy_project(tmp_path_factory.mktemp("own"), tmp_path_factory.mktemp("mirror") / "a.tar.gz")
    write_tree(p.path / "images", {"train": 24, "test": 8})
    (p.path / "usermodels").mkdir()
    (p.path / "usermodels" / "__init__.py").write_text("")
    (p.path / "usermodels" / "tiny.py").write_text(textwrap.dedent(STUDENT_CODE))
    p.set_params(
        data__source="images", data__md5=None, data__image_size=24,
        teacher__model="resnet18", teacher__epochs=1,
        student__model="usermodels.tiny:TinyNet", student__args={"width": 8},
        student__code="usermodels", student__epochs=1, train__batch_size=16,
        variants__cosine={"method": "cosine", "distill_weight": 0.25, "ce_weight": 0.75, **LAYERS},
        variants__regressor={"method": "regressor", "distill_weight": 0.25, "ce_weight": 0.75,
                             **LAYERS},
    )  # fmt: skip
    p.run("git", "add", "-A")
    p.run("git", "commit", "-qm", "own models and images")
    return p


@pytest.fixture(scope="module")
def first_repro(project) -> list[str]:
    return project.repro()


def test_every_variant_runs_on_a_resnet_teacher_a_user_student_and_an_image_folder(
    project, first_repro
):
    assert first_repro == STAGES
    ds = data.load(project.path / "data/cifar10.safetensors")
    assert ds.classes == tuple(CLASSES)
    assert ds.train.images.shape == (72, 3, 24, 24) and ds.test.images.shape == (24, 3, 24, 24)
    evaluation = json.loads((project.path / "reports/evaluation.json").read_text())
    for name in ("ce", "kd", "cosine", "regressor"):
        assert list(evaluation["students"][name]["42"]["per_class_accuracy"]) == CLASSES
    assert evaluation["teacher"]["42"]["parameters"] == 11_178_051  # resnet18, 3 classes
    rows = json.loads((project.path / "plots/confusion/kd-42.json").read_text())
    assert {r["actual"] for r in rows} == set(CLASSES) and len(rows) == 24


def test_the_users_code_is_a_dvc_dependency_of_every_stage_that_builds_the_student(
    project, first_repro
):
    lock = yaml.safe_load((project.path / "dvc.lock").read_text())["stages"]
    for stage in ("distill@kd-42", "evaluate"):
        assert "usermodels" in [d["path"] for d in lock[stage]["deps"]]
    tiny = project.path / "usermodels" / "tiny.py"
    tiny.write_text(tiny.read_text() + "\n# a comment\n")
    status = project.run("dvc", "status")
    assert "distill@kd-42" in status and "train_teacher@42" not in status
    project.run("git", "checkout", "usermodels/tiny.py")


def test_the_logged_student_loads_in_a_fresh_process_elsewhere_and_predicts_as_the_pipeline(
    project, first_repro, tmp_path
):
    ds = data.load(project.path / "data/cifar10.safetensors")
    (tmp_path / "images").mkdir()
    for i, pixels in enumerate(ds.test.images):
        (tmp_path / "images" / f"{i:03d}.png").write_bytes(images.encode_png(pixels))
    role = project.client.get_model_version_by_alias("cifar10-student", "champion").tags["role"]
    script = (
        "import sys, json, pathlib, pandas as pd, mlflow.pyfunc\n"
        "assert 'usermodels' not in sys.modules\n"
        "m = mlflow.pyfunc.load_model('models:/cifar10-student@champion')\n"
        "files = sorted(pathlib.Path('images').iterdir())\n"
        "answer = m.predict(pd.DataFrame({'image': [f.read_bytes() for f in files]}))\n"
        "print(json.dumps(list(answer['class'])))\n"
    )
    env = {k: v for k, v in project.env.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project.path / 'mlflow.db'}"
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    predicted = json.loads(done.stdout.strip().splitlines()[-1])
    rows = json.loads((project.path / f"plots/confusion/{role}.json").read_text())
    assert predicted == [r["predicted"] for r in rows]  # class names, as the pipeline's


def _teacher_run(project: Project):
    runs = [r for r in project.runs() if r.info.run_name == "train_teacher@42"]
    return max(runs, key=lambda r: r.info.start_time)


def test_a_teacher_given_by_models_uri_is_not_trained_and_the_students_learn_from_it(
    project, first_repro
):
    teacher = project.path / "models/teachers/teacher-42.safetensors"
    before = {p.name: files.md5(p.read_bytes()) for p in project.path.glob("models/*/*")}
    project.set_params(teacher__weights="models:/cifar10-teacher/1")
    ran = project.repro()
    assert "train_teacher@42" in ran
    run = _teacher_run(project)
    assert run.data.tags["teacher.weights_uri"] == "models:/cifar10-teacher/1"
    assert run.data.params["teacher.weights"] == "models:/cifar10-teacher/1"
    assert run.data.params["teacher.weights_uri"] == "models:/cifar10-teacher/1"
    # evaluated as a trained one is (its test accuracy), with no epochs
    assert "epoch/train_loss" not in run.data.metrics
    assert "training/test_accuracy" in run.data.metrics
    # The registered version is the teacher trained above: the same weights, so the same students.
    after = {p.name: files.md5(p.read_bytes()) for p in project.path.glob("models/*/*")}
    assert after == before and files.md5(teacher.read_bytes()) == before[teacher.name]


def test_a_teacher_given_by_file_is_not_trained_and_the_students_learn_from_it(
    project, first_repro
):
    state = safetensors.torch.load_file(project.path / "models/teachers/teacher-42.safetensors")
    state["fc.bias"] = state["fc.bias"] + torch.tensor([3.0, 0.0, 0.0])  # a different teacher
    (project.path / "pretrained").mkdir()
    torch.save(state, project.path / "pretrained/teacher.pt")  # a PyTorch state dict
    kd = project.path / "models/students/kd-42.safetensors"
    kd_before = files.md5(kd.read_bytes())
    project.set_params(teacher__weights="pretrained/teacher.pt")
    ran = project.repro()
    assert {"train_teacher@42", "teacher_outputs@42", "distill@kd-42"} <= set(ran)
    run = _teacher_run(project)
    md5 = files.md5((project.path / "pretrained/teacher.pt").read_bytes())
    assert run.data.tags["teacher.weights_md5"] == run.data.params["teacher.weights_md5"] == md5
    assert "epoch/train_loss" not in run.data.metrics
    loaded = safetensors.torch.load_file(project.path / "models/teachers/teacher-42.safetensors")
    assert torch.equal(loaded["fc.bias"], state["fc.bias"])
    cache = safetensors.torch.load_file(project.path / "data/teacher_outputs/42.safetensors")
    assert set(cache) == {"logits", "layer:layer2"}  # what the variants tap, nothing more
    assert files.md5(kd.read_bytes()) != kd_before  # kd learnt from the new teacher


BAD = {
    "an unknown torchvision name": (
        {"teacher.model": "resnet81"}, "not a built-in", "resnet18"),
    "an import path that does not import": (
        {"student.model": "usermodels.nope:TinyNet"}, "importing usermodels.nope failed", None),
    "a model whose output has no logits": (
        {"student.model": "usermodels.tiny:no_logits", "student.args": {}},
        "where logits should be", None),
    "a layer that is not in the model": (
        {"variants.cosine.teacher_layer": "layer9"}, "has no module of that path", "layer1"),
    "shapes that cannot be adapted": (
        {"variants.cosine.teacher_layer": "fc", "variants.cosine.method": "regressor"},
        "needs C x H x W feature maps", None),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_a_bad_reference_is_one_line_and_trains_nothing(project, first_repro, case, tmp_path):
    changes, message, nearest = BAD[case]
    params = project.path / "params.yaml"
    saved = params.read_text()
    try:
        write_params(params, {"teacher.weights": None, **changes}, source=params)
        status, out = project.call(sys.executable, "-m", "pipeline.stages.distill", "cosine", "42")
    finally:
        params.write_text(saved)
    lines = out.strip().splitlines()
    assert status == 1 and "Traceback" not in out, out
    assert lines[-1].startswith("error: distill@cosine-42: ") and message in lines[-1], out
    assert nearest is None or nearest in lines[-1]
