"""The field's methods through the real pipeline: `dvc repro` with real DVC and a real MLflow
store, on a tiny archive, one method of each kind beside the CE student: logits with a warm-up
over epochs (dkd), lists of layers with trainable heads (vid), a memory bank over the training set
addressed by the batches' indices (crd). (The report's Holm correction over several seeds is
tested in test_pipeline.py; every method's training, live and cached, in test_train.py.)"""

import json

import pytest
from project import copy_project

pytestmark = pytest.mark.slow

VARIANTS = {
    "ce": {"method": "ce"},
    "dkd": {"method": "dkd", "warmup": 2},
    "vid": {"method": "vid"},
    "crd": {"method": "crd", "negatives": 64},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("project"),
                           tmp_path_factory.mktemp("mirror") / "cifar-10-python.tar.gz",
                           teacher__epochs=1, student__epochs=2, train__batch_size=32,
                           variants=VARIANTS)  # fmt: skip
    project.ran = project.repro()
    return project


def test_every_method_trains_from_the_cached_teacher_and_is_evaluated(project):
    distilled = sorted(s for s in project.ran if s.startswith("distill@"))
    assert distilled == sorted(f"distill@{v}-42" for v in VARIANTS)
    assert "teacher_outputs@42" in project.ran
    report = (project.path / "reports/comparison.md").read_text()
    for variant in VARIANTS:
        metrics = json.loads((project.path / f"metrics/{variant}-42.json").read_text())
        assert 0 <= metrics["test_accuracy"] <= 1
        assert f"| {variant} | 1 |" in report


def test_a_methods_defaults_and_terms_are_logged_with_its_run(project):
    (crd,) = project.runs(**{"dvc.stage": "distill@crd-42"})
    logged = crd.data.params
    assert logged["variant.negatives"] == "64"  # given
    assert (logged["variant.dim"], logged["variant.temperature"]) == ("128", "0.07")  # defaults
    assert logged["variant.student_layer"] == logged["variant.teacher_layer"] == "features"
    (vid,) = project.runs(**{"dvc.stage": "distill@vid-42"})
    assert vid.data.params["variant.student_layers"] == "['features']"
    (dkd,) = project.runs(**{"dvc.stage": "distill@dkd-42"})
    for run, terms in ((crd, ("crd", "ce")), (vid, ("vid", "ce")), (dkd, ("tckd", "nckd", "ce"))):
        for term in terms:  # each of the method's terms, once per epoch
            history = project.client.get_metric_history(run.info.run_id, f"epoch/train_{term}")
            assert len(history) == 2, (run.info.run_name, term)
