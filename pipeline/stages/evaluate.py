"""Stage `evaluate`: every model (each teacher, and each variant with each seed) on the test set.

Writes, as DVC metrics and as MLflow metrics under the same dotted names (`teacher.<seed>.<metric>`,
`students.<variant>.<seed>.<metric>`):
- metrics/evaluation.json: accuracy, per-class accuracy, agreement and KL divergence to the model's
  teacher, calibration error, parameters of the deployable model and size of its saved weights,
  and, with a validation split, validation accuracy. These are reproducible: the same models give
  the same file.
- metrics/speed.json: CPU latency at batch 1 (median, p95) and throughput at batch 256, measured on
  the deployable model (uint8 in, logits out) in fp32, after warm-up, in this one process. These vary
  from run to run, hence their own file.
and plots/confusion/<model>.json (one row per test image, DVC's confusion-matrix format), which
MLflow receives as images. Reads data.{test,val}_size, normalize, train.device, evaluate, seeds,
teacher.seeds and the variant names.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from pipeline import data, figures, files, models, params, tracking
from pipeline.evaluate import accuracy, latency_ms, predict, quality, throughput
from pipeline.stages import _inputs, _outputs
from pipeline.stages._cli import no_arguments, run
from pipeline.stages._training import Dataset, load_dataset
from pipeline.train import resolve_device

LATENCY_WARMUP, THROUGHPUT_WARMUP, THROUGHPUT_BATCH = 20, 2, 256


class ModelRef(NamedTuple):
    role: str
    where: tuple[str, ...]  # where its metrics go: ("teacher", seed) or ("students", variant, seed)
    spec: params.RoleParams  # the model it is: p.teacher or p.student
    seed: int
    teacher_role: str | None  # whose predictions its agreement is measured against


def main(p: params.Params, args: list[str]) -> None:
    no_arguments(args)
    refs = models_to_evaluate(p)
    outputs = files.OutputSet(
        [_outputs.EVALUATION, _outputs.SPEED, *(_outputs.confusion(m.role) for m in refs)]
    )
    outputs.check()
    full = _inputs.dataset()  # read once; each seed only selects its split of it
    datasets = {seed: load_dataset(p, seed, full) for seed in {*p.seeds, *p.teacher.seeds}}
    num_classes = len(full.classes)
    nets = {m.role: _inputs.weights(m.spec, m.role, num_classes) for m in refs}  # all, before work
    evaluation: dict = {"teacher": {}, "students": {name: {} for name in p.variants}}
    speed: dict = {"teacher": {}, "students": {name: {} for name in p.variants}}
    logits: dict[str, torch.Tensor] = {}
    confusions, predictions = {}, {}
    for m in refs:
        metrics, timing, logits[m.role], confusions[m.role] = _evaluate(
            p, m, nets[m.role], datasets[m.seed], logits.get(m.teacher_role)
        )
        _place(evaluation, m.where, metrics)
        _place(speed, m.where, timing)
        labels, classes = datasets[m.seed].test.labels, datasets[m.seed].classes
        predictions[m.role] = (labels.tolist(), logits[m.role].argmax(dim=1).tolist(), classes)
        print(f"evaluate {m.role}: accuracy {metrics['test_accuracy']:.2%}, "
              f"latency {timing['latency_ms_p50']:.2f} ms, {timing['throughput']:.0f} images/s")  # fmt: skip
    with tracking.stage_run("evaluate", p.mlflow.experiment, _used(p), p.data.md5) as r:
        r.set_tags({"evaluate.threads": str(torch.get_num_threads())})
        r.log_metrics(evaluation)
        r.log_metrics(speed)
        for role, matrix in confusions.items():
            fig = figures.confusion(matrix.tolist(), predictions[role][2], f"{role}: test set")
            r.log_figure(fig, f"confusion/{role}.png")
            figures.close(fig)
        with outputs.commit() as staged:  # last, and together: a failure leaves none of them
            staged.write_json(_outputs.EVALUATION, evaluation)
            staged.write_json(_outputs.SPEED, speed)
            for role, (actual, predicted, classes) in predictions.items():
                rows = [{"actual": classes[t], "predicted": classes[q]}
                        for t, q in zip(actual, predicted, strict=True)]  # fmt: skip
                staged.write_json(_outputs.confusion(role), rows, compact=True)


def models_to_evaluate(p: params.Params) -> list[ModelRef]:
    """Every teacher, then every student; a student's teacher comes before it."""
    teachers = [
        ModelRef(_outputs.teacher_role(s), ("teacher", str(s)), p.teacher, s, None)
        for s in p.teacher.seeds
    ]
    students = [
        ModelRef(_outputs.student_role(v, s), ("students", v, str(s)), p.student, s,
                 _outputs.teacher_role(p.teacher_seed(s)))
        for v in p.variants for s in p.seeds
    ]  # fmt: skip
    return teachers + students


def _evaluate(
    p: params.Params,
    m: ModelRef,
    net: torch.nn.Module,
    ds: Dataset,
    teacher_logits: torch.Tensor | None,
) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    """Quality metrics, speed, test logits and confusion matrix of one model."""
    device = resolve_device(p.train.device)
    normalize = data.Normalizer(p.normalize.mean, p.normalize.std)
    net, norm = net.to(device), normalize.to(device)
    logits = predict(net, ds.test.images.to(device), norm)
    metrics, confusion = quality(logits, ds.test.labels.to(device), ds.classes, teacher_logits)
    if ds.val is not None:
        val_logits = predict(net, ds.val.images.to(device), norm)
        metrics["val_accuracy"] = accuracy(val_logits, ds.val.labels.to(device))
    metrics["parameters"] = models.count_parameters(net)  # the deployable net: no training head
    metrics["weights_bytes"] = _outputs.model(m.role).stat().st_size
    timing = _speed(models.Classifier(net.cpu(), norm.cpu()), ds.test.images, p.evaluate)
    return metrics, timing, logits, confusion


def _used(p: params.Params) -> dict:
    """The params this stage reads, as its run records them."""
    return {
        "data": {
            "source": p.data.source,
            "md5": p.data.md5,
            "image_size": p.data.image_size,
            "test_size": p.data.test_size,
            "val_size": p.data.val_size,
        },
        "normalize": {"mean": p.normalize.mean, "std": p.normalize.std},
        "train": {"device": p.train.device},
        "evaluate": vars(p.evaluate),
        "seeds": list(p.seeds),
        "teacher": {
            "seeds": list(p.teacher.seeds),
            "model": p.teacher.model,
            "model_args": p.teacher.args,
        },
        "student": {"model": p.student.model, "model_args": p.student.args},
        "variants": list(p.variants),
    }


def _speed(deployable: torch.nn.Module, images: torch.Tensor, e: params.EvaluateParams) -> dict:
    batch = images[:THROUGHPUT_BATCH].cpu()
    return {
        **latency_ms(deployable, batch[:1], LATENCY_WARMUP, e.latency_iters),
        "throughput": throughput(deployable, batch, THROUGHPUT_WARMUP, e.throughput_iters),
    }


def _place(tree: dict, where: tuple[str, ...], metrics: dict) -> None:
    """tree["teacher"][seed] or tree["students"][variant][seed]: the DVC/MLflow metric names."""
    node = tree
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = metrics


if __name__ == "__main__":
    run(main)
