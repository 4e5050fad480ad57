"""Stage `evaluate`: every model on the test set. Reads data.test_size, normalize, train.device and
the variant names; writes metrics/evaluation.json, which MLflow receives under the same names."""

from __future__ import annotations

import torch

from pipeline import data, files, models, params, tracking
from pipeline.evaluate import accuracy, agreement, predict
from pipeline.stages import _outputs
from pipeline.stages._cli import run
from pipeline.stages.distill import ARCH as STUDENT_ARCH
from pipeline.stages.train_teacher import ARCH as TEACHER_ARCH
from pipeline.train import resolve_device


def main() -> None:
    p = params.load_all()
    device = resolve_device(p.train.device)
    test = data.subset(data.load(_outputs.DATA).test, p.data.test_size)
    images, labels = test.images.to(device), test.labels.to(device)
    normalize = data.Normalizer(p.normalize.mean, p.normalize.std).to(device)

    def logits_of(arch: str, role: str) -> tuple[torch.Tensor, int]:
        net = models.load_weights(arch, _outputs.model(role)).to(device)
        return predict(net, images, normalize), models.count_parameters(net)

    teacher_logits, teacher_params = logits_of(TEACHER_ARCH, "teacher")
    results = {
        "teacher": {
            "test_accuracy": accuracy(teacher_logits, labels),
            "parameters": teacher_params,
        },
        "students": {},
    }
    for name in p.variants:
        logits, n_params = logits_of(STUDENT_ARCH, name)
        results["students"][name] = {
            "test_accuracy": accuracy(logits, labels),
            "parameters": n_params,
            "teacher_agreement": agreement(logits, teacher_logits),
        }
    used = {
        "data": {"md5": p.data.md5, "test_size": p.data.test_size},
        "normalize": {"mean": p.normalize.mean, "std": p.normalize.std},
        "train": {"device": p.train.device},
        "variants": list(p.variants),
    }
    with tracking.stage_run("evaluate", p.mlflow.experiment, used, p.data.md5) as r:
        r.log_metrics(results)
    files.write_json(_outputs.EVALUATION, results)


if __name__ == "__main__":
    run(main)
