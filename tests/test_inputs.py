"""A missing, damaged or out-of-date input is named with the way to get it back; a bug in the code
that reads it is not taken for damage."""

import json
import re
from pathlib import Path

import pytest
import safetensors.torch
import torch

from pipeline import models
from pipeline.params import RoleParams
from pipeline.stages import _inputs
from pipeline.stages._inputs import InputError

STUDENT = RoleParams(epochs=1, model="LightNN")  # as params.yaml's student section reads


def weights_of(name: str) -> bytes:
    return models.weights_bytes(models.build(name, {}, 10, 0, "model"))


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "students").mkdir(parents=True)
    return tmp_path


def test_a_missing_input_names_the_stage_that_makes_it(project):
    with pytest.raises(InputError) as e:
        _inputs.weights(STUDENT, "kd-42", 10)
    assert str(e.value) == (
        "models/students/kd-42.safetensors is missing; make it with `dvc repro distill@kd-42`"
    )


def test_a_truncated_model_is_damaged_and_restorable(project):
    path = project / "models/students/kd-42.safetensors"
    path.write_bytes(weights_of("LightNN")[:1000])
    with pytest.raises(InputError) as e:
        _inputs.weights(STUDENT, "kd-42", 10)
    assert str(e.value).startswith(
        "models/students/kd-42.safetensors is damaged (SafetensorError: "
    )
    assert str(e.value).endswith(
        "restore it with `dvc checkout models/students/kd-42.safetensors`, or make it again with "
        "`dvc repro -f distill@kd-42`"
    )


def test_weights_of_another_network_are_damaged(project):
    path = project / "models/students/kd-42.safetensors"
    path.write_bytes(weights_of("DeepNN"))
    with pytest.raises(InputError, match=r"is damaged \(RuntimeError: Error\(s\) in loading"):
        _inputs.weights(STUDENT, "kd-42", 10)
    # The same file is read as the network it is for, with as many classes as the data has.
    path.write_bytes(weights_of("LightNN"))
    net = _inputs.weights(STUDENT, "kd-42", 10)
    assert isinstance(net, models.LightNN) and models.count_parameters(net) == 267_738
    with pytest.raises(InputError, match=r"is damaged \(RuntimeError: Error\(s\) in loading"):
        _inputs.weights(STUDENT, "kd-42", 3)  # a student of 3 classes


def test_a_bug_while_reading_is_not_called_damage(project, monkeypatch):
    path = project / "models/students/kd-42.safetensors"
    path.write_bytes(weights_of("LightNN"))

    def buggy(*args, **kwargs):
        raise TypeError("load_file() got an unexpected keyword argument")

    monkeypatch.setattr(safetensors.torch, "load_file", buggy)
    with pytest.raises(TypeError):  # left to the guard, which reports it as a bug
        _inputs.weights(STUDENT, "kd-42", 10)


def write_teacher_outputs(project: Path) -> None:
    """Five rows of cached outputs: logits and DeepNN's `features` layer."""
    path = project / "data/teacher_outputs/42.safetensors"
    path.parent.mkdir(parents=True)
    safetensors.torch.save_file(
        {"logits": torch.zeros(5, 10), "layer:features": torch.zeros(5, 32, 8, 8)}, path
    )


def test_teacher_outputs_for_another_training_set_are_out_of_date(project):
    write_teacher_outputs(project)
    with pytest.raises(InputError) as e:
        _inputs.teacher_outputs(42, rows=200, layers=["features"])
    assert str(e.value) == (
        "data/teacher_outputs/42.safetensors is out of date (5 rows for 200 training images: made "
        "with other params); make it again with `dvc repro -f teacher_outputs@42`"
    )
    out = _inputs.teacher_outputs(42, rows=5, layers=["features"])
    assert out.logits.shape == (5, 10) and out.features["features"].shape == (5, 32, 8, 8)
    assert _inputs.teacher_outputs(42, rows=5, layers=[]).features == {}  # kd reads the logits


def test_teacher_outputs_without_a_layer_a_variant_taps_are_out_of_date(project):
    write_teacher_outputs(project)
    with pytest.raises(InputError) as e:
        _inputs.teacher_outputs(42, rows=5, layers=["features", "layer3"])
    assert str(e.value) == (
        "data/teacher_outputs/42.safetensors is out of date (no layer layer3: made for other "
        "variants); make it again with `dvc repro -f teacher_outputs@42`"
    )


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{", "is damaged (JSONDecodeError: "),
        ("[1, 2]", "is damaged (not a JSON object)"),
        ('{"teacher": {"42": {}}}', "is out of date (no teacher.42.test_accuracy)"),
        (
            '{"teacher": {"42": {"test_accuracy": "high"}}}',
            "is damaged (teacher.42.test_accuracy = 'high', not",
        ),
    ],
)
def test_metrics_must_hold_the_numbers_the_report_reads(project, content, says):
    path = Path("evaluation.json")  # relative, as stages name their files
    path.write_text(content)
    with pytest.raises(InputError, match="^" + re.escape(f"evaluation.json {says}")):
        _inputs.json_file(path, "evaluate", (("teacher", "42", "test_accuracy"),))


@pytest.mark.parametrize(
    "rows",
    [[{"epoch": 1, "train_loss": "nan"}], [{"epoch": 2, "train_loss": 1.0}], {"epoch": 1}, None],
)
def test_a_history_is_one_object_of_numbers_per_epoch(project, rows):
    path = Path("kd-42.json")
    path.write_text(json.dumps(rows))
    with pytest.raises(InputError, match="is damaged \\(not one object of numbers per epoch\\)"):
        _inputs.history(path, "distill@kd-42")
    path.write_text(json.dumps([{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.5}]))
    assert len(_inputs.history(path, "distill@kd-42")) == 2
    path.write_text("[]")  # a teacher given by teacher.weights: no epochs
    assert _inputs.history(path, "train_teacher@42") == []
