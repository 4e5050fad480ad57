"""The default params stay the tutorial, bit for bit: the same weight files, metrics and MLflow
content as before models, data and layers became references.

"Before" is the last commit of the tutorial-only pipeline (BASELINE), run here, on this machine,
beside the checkout: bf16 and fp32 kernels differ between CPU generations (AMX, AVX-512, AVX2), so
the weights' bits are a property of the machine as well as of the code, and only a run of both on
one machine can tell that the code learns the same. Both are real pipelines (real DVC, MLflow and
training) on one 1,000/200-image archive, 2 epochs each, batch 64, every other param the committed
default. For the record, the teacher's weights MD5 was f23b801b... on the machine kind that first
pinned it and is 238c5304... on a Sapphire Rapids Xeon (AMX), for both commits on each.
"""

import json

import pytest
import yaml
from conftest import ROOT
from project import Project, copy_project

from pipeline import files

pytestmark = pytest.mark.slow

BASELINE = "8a7c82d0954d6c22841a94c43c03d46a674a33c9"
SMALL_RUN = {"per_batch": 200, "teacher__epochs": 2, "student__epochs": 2, "train__batch_size": 64}
WEIGHTS = [
    "models/teachers/teacher-42.safetensors",
    *(f"models/students/{v}-42.safetensors" for v in ("ce", "kd", "cosine", "regressor")),
]
# Reproducible outputs: the same models give the same files (speed is measured, so it is not), by
# their path now and, where a later change moved them, before.
SAME_FILES = {**{w: w for w in WEIGHTS}, "data/cifar10.safetensors": "data/cifar10.safetensors",
              "reports/evaluation.json": "metrics/evaluation.json",
              "reports/train/kd-42.json": "metrics/train/kd-42.json",
              "plots/train/kd-42.json": "plots/train/kd-42.json",
              "plots/confusion/kd-42.json": "plots/confusion/kd-42.json"}  # fmt: skip
MEASURED = ("seconds", "latency", "throughput")  # wall-clock metrics: they differ run to run
# Params this change added to the runs (the model, image and layer references), with the value each
# has under the defaults.
ADDED_PARAMS = {"data.source": "cifar10", "data.image_size": "None", "teacher.model": "DeepNN",
                "student.model": "LightNN", "teacher_model": "DeepNN", "teacher.weights": "None",
                "variant.student_layer": "features", "variant.teacher_layer": "features",
                "layers": "['features']", "variant.standardize": "False",
                "train.processes": "1", "distributed.world_size": "1",
                "distributed.per_rank_batch_size": "64", "distributed.effective_batch_size": "64",
                "distributed.backend": "none", "distributed.devices": "cpu"}  # fmt: skip
# What later changes added to reports/statistics.json: Holm's adjusted p-value per comparison.
ADDED_STATISTICS = ("p_holm",)


@pytest.fixture(scope="module")
def before_and_after(tmp_path_factory) -> tuple[Project, Project]:
    known = ["git", "cat-file", "-e", f"{BASELINE}^{{commit}}"]
    if Project(ROOT).call(*known)[0] != 0:
        pytest.fail(f"commit {BASELINE[:8]} is not in this clone; fetch the full history "
                    "(git fetch --unshallow) to compare with it")  # fmt: skip
    archive = tmp_path_factory.mktemp("mirror") / "cifar-10-python.tar.gz"
    before = copy_project(tmp_path_factory.mktemp("before"), archive, commit=BASELINE, **SMALL_RUN)
    after = copy_project(tmp_path_factory.mktemp("after"), archive, **SMALL_RUN)
    for project in (before, after):
        # Two threads for both: float sums are split across threads, so another thread count
        # rounds differently, and learns other bits.
        project.run("dvc", "repro", env={"OMP_NUM_THREADS": "2"})
    return before, after


def _md5s(project: Project, names) -> dict[str, str]:
    return {name: files.md5((project.path / name).read_bytes()) for name in names}


def test_the_default_params_give_the_same_weights_and_metrics_as_before(before_and_after):
    before, after = before_and_after
    assert _md5s(after, SAME_FILES) == {now: md5 for now, md5 in zip(
        SAME_FILES, _md5s(before, SAME_FILES.values()).values(), strict=True)}  # fmt: skip
    statistics = [json.loads((p.path / name).read_text()) for p, name in
                  zip(before_and_after, ("metrics/statistics.json", "reports/statistics.json"), strict=True)]  # fmt: skip
    for variant in statistics[1].values():
        for added in ADDED_STATISTICS:
            assert variant.get("vs_ce", {}).pop(added, None) is None  # one seed: no p-values
    assert statistics[1] == statistics[0]
    locks = [yaml.safe_load((p.path / "dvc.lock").read_text())["stages"] for p in before_and_after]
    outs = [
        {o["path"]: o["md5"] for s in lock.values() for o in s.get("outs", [])} for lock in locks
    ]
    assert (
        {w: outs[1][w] for w in WEIGHTS}
        == {w: outs[0][w] for w in WEIGHTS}
        == _md5s(after, WEIGHTS)
    )


def _runs(project: Project) -> dict[str, tuple[dict, dict]]:
    """Each run by name (the invocation's as "pipeline"): its params and reproducible metrics."""
    return {
        ("pipeline" if r.data.tags.get("pipeline.kind") == "invocation" else r.info.run_name): (
            r.data.params,
            {k: v for k, v in r.data.metrics.items() if not any(m in k for m in MEASURED)},
        )
        for r in project.runs()
    }


def _now_at(run: str, metric: str) -> tuple[str, str] | None:
    """Where the MLflow views of later changes put a metric of the tutorial-only pipeline's `run`:
    per-epoch values under epoch/, evaluated figures on each model's own run, the invocation's own
    figures per variant. None: no longer logged (the weights' size in bytes is now size_mb)."""
    if run.startswith(("train_teacher@", "distill@")):
        return run, ("training/parameters" if metric == "parameters" else f"epoch/{metric}")
    if run not in ("evaluate", "pipeline"):
        return run, metric
    kind, *path = metric.split(".")
    if kind == "statistics":
        variant, *figure = path
        names = {("test_accuracy", "mean"): "mean_test_accuracy", ("vs_ce", "mean_diff"): "vs_ce",
                 ("vs_ce", "p_value"): "p_value"}  # fmt: skip
        name = names.get(tuple(figure))
        return (run, f"{name}/{variant}") if name else None
    model = f"train_teacher@{path[0]}" if kind == "teacher" else f"distill@{path[0]}-{path[1]}"
    figure = path[1:] if kind == "teacher" else path[2:]
    if figure == ["weights_bytes"]:
        return None
    return model, "/".join(figure)


def test_the_default_params_give_the_same_mlflow_runs_as_before(before_and_after):
    before, after = (_runs(p) for p in before_and_after)
    # the stages added since the baseline: their runs are new, every other run is as it was
    added = {"export"}
    assert sorted(after.keys() - added) == sorted(before) and added <= after.keys()
    moved = 0
    for name, (old_params, old_metrics) in before.items():
        params = after[name][0]
        paths = ("data.url",)  # each project's own mirror file
        assert {k: v for k, v in params.items() if k in old_params and k not in paths} == {
            k: v for k, v in old_params.items() if k not in paths
        }, name
        assert {k: params[k] for k in params.keys() - old_params.keys()} == {
            k: ADDED_PARAMS[k] for k in params.keys() - old_params.keys() if k in ADDED_PARAMS
        }, name
        for metric, value in old_metrics.items():
            if (where := _now_at(name, metric)) is not None:
                assert after[where[0]][1][where[1]] == value, (name, metric, where)
                moved += 1
    assert moved > 100  # every figure of every model, each one compared
