"""Stage `evaluate`: every model (the teacher and each variant) on the test set.

Writes, as DVC metrics and as MLflow metrics under the same dotted names:
- metrics/evaluation.json: accuracy, per-class accuracy, agreement and KL divergence to the teacher,
  calibration error, parameters of the deployable model and size of its saved weights. These are
  reproducible: the same models give the same file.
- metrics/speed.json: CPU latency at batch 1 (median, p95) and throughput at batch 256, measured on
  the deployable model (uint8 in, logits out) in fp32, after warm-up, in this one process. These vary
  from run to run, hence their own file.
and plots/confusion/<model>.json (one row per test image, DVC's confusion-matrix format), which
MLflow receives as images. Reads data.test_size, normalize, train.device, evaluate and the variant
names.
"""

from __future__ import annotations

import torch

from pipeline import data, figures, files, models, params, tracking
from pipeline.evaluate import latency_ms, predict, quality, throughput
from pipeline.stages import _outputs
from pipeline.stages._cli import run
from pipeline.stages.distill import ARCH as STUDENT_ARCH
from pipeline.stages.train_teacher import ARCH as TEACHER_ARCH
from pipeline.train import resolve_device

LATENCY_WARMUP, THROUGHPUT_WARMUP, THROUGHPUT_BATCH = 20, 2, 256


def main() -> None:
    p = params.load_all()
    device = resolve_device(p.train.device)
    ds = data.load(_outputs.DATA)
    test = data.subset(ds.test, p.data.test_size)
    images, labels = test.images.to(device), test.labels.to(device)
    normalize = data.Normalizer(p.normalize.mean, p.normalize.std)
    archs = {"teacher": TEACHER_ARCH, **{name: STUDENT_ARCH for name in p.variants}}
    nets = {role: models.load_weights(arch, _outputs.model(role)) for role, arch in archs.items()}

    logits = {
        role: predict(net.to(device), images, normalize.to(device)) for role, net in nets.items()
    }
    evaluation = {"teacher": {}, "students": {}}
    speed = {"teacher": {}, "students": {}}
    confusions = {}
    for role, net in nets.items():
        teacher_logits = None if role == "teacher" else logits["teacher"]
        metrics, confusions[role] = quality(logits[role], labels, ds.classes, teacher_logits)
        metrics["parameters"] = models.count_parameters(net)  # the deployable net: no training head
        metrics["weights_bytes"] = _outputs.model(role).stat().st_size
        deployable = models.Classifier(net.cpu(), normalize.cpu())
        speed_of = _speed(deployable, test.images, p.evaluate)
        _place(evaluation, role, metrics)
        _place(speed, role, speed_of)
        print(f"evaluate {role}: accuracy {metrics['test_accuracy']:.2%}, "
              f"latency {speed_of['latency_ms_p50']:.2f} ms, {speed_of['throughput']:.0f} images/s")  # fmt: skip

    used = {
        "data": {"md5": p.data.md5, "test_size": p.data.test_size},
        "normalize": {"mean": p.normalize.mean, "std": p.normalize.std},
        "train": {"device": p.train.device},
        "evaluate": vars(p.evaluate),
        "variants": list(p.variants),
    }
    with tracking.stage_run("evaluate", p.mlflow.experiment, used, p.data.md5) as r:
        r.set_tags({"evaluate.threads": str(torch.get_num_threads())})
        r.log_metrics(evaluation)
        r.log_metrics(speed)
        for role, matrix in confusions.items():
            fig = figures.confusion(matrix.tolist(), ds.classes, f"{role}: test set")
            r.log_figure(fig, f"confusion/{role}.png")
            figures.close(fig)
    # DVC outputs last: a failure above leaves none of them.
    files.write_json(_outputs.EVALUATION, evaluation)
    files.write_json(_outputs.SPEED, speed)
    for role in nets:
        predicted = logits[role].argmax(dim=1).tolist()
        rows = [{"actual": ds.classes[t], "predicted": ds.classes[q]}
                for t, q in zip(labels.tolist(), predicted, strict=True)]  # fmt: skip
        files.write_json(_outputs.confusion(role), rows, compact=True)


def _speed(deployable: torch.nn.Module, images: torch.Tensor, e: params.EvaluateParams) -> dict:
    batch = images[:THROUGHPUT_BATCH].cpu()
    return {
        **latency_ms(deployable, batch[:1], LATENCY_WARMUP, e.latency_iters),
        "throughput": throughput(deployable, batch, THROUGHPUT_WARMUP, e.throughput_iters),
    }


def _place(tree: dict, role: str, metrics: dict) -> None:
    """The teacher's metrics at the top, each student's under students.<name> (DVC/MLflow names)."""
    if role == "teacher":
        tree["teacher"] = metrics
    else:
        tree["students"][role] = metrics


if __name__ == "__main__":
    run(main)
