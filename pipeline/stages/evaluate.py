"""Stage `evaluate`: every model (each teacher, and each variant with each seed) on the test set.

Writes:
- metrics/<model>.json, DVC's metrics: the headline figures (test accuracy, agreement and KL
  divergence to the model's teacher, calibration error, median batch-1 CPU latency, size of the
  weights file), one small file per model so that `dvc metrics show` prints one row per model;
- reports/evaluation.json: every quality figure (per-class accuracy too), by model. Reproducible:
  the same models give the same file;
- reports/speed.json: CPU latency at batch 1 (median, p95) and throughput at batch 256, measured on
  the deployable model (uint8 in, logits out) in fp32, after warm-up, in this one process. These
  vary from run to run, hence their own file;
- plots/confusion/<model>.json: one row per test image (DVC's confusion-matrix format).
Each model's figures and confusion matrix also go to the model's own MLflow run in this pipeline
invocation, under the same names for every model (see tracking/runs.py). Reads data.{test,val}_size,
normalize, train.device, evaluate, seeds, teacher.seeds and the variant names.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from pipeline import data, figures, files, models, params, tracking
from pipeline.evaluate import accuracy, headline, predict, quality
from pipeline.stages import _inputs, _models, _outputs
from pipeline.stages._cli import no_arguments, run
from pipeline.stages._models import ModelRef, every_model, place, speed
from pipeline.stages._training import Dataset, load_dataset
from pipeline.train import resolve_device


class Result(NamedTuple):
    """One model's evaluation."""

    quality: dict  # reproducible figures
    timing: dict  # measured figures
    logits: torch.Tensor  # on the test set
    confusion: torch.Tensor
    labels: torch.Tensor  # of the test set


def main(p: params.Params, args: list[str]) -> None:
    no_arguments(args)
    refs = every_model(p)
    roles = [m.role for m in refs]
    outputs = files.OutputSet([_outputs.EVALUATION, _outputs.SPEED,
                               *map(_outputs.headline, roles), *map(_outputs.confusion, roles)])  # fmt: skip
    outputs.check()
    full = _inputs.dataset()  # read once; each seed only selects its split of it
    datasets = {seed: load_dataset(p, seed, full) for seed in {*p.seeds, *p.teacher.seeds}}
    nets = {m.role: _inputs.weights(m.spec, m.role, len(full.classes)) for m in refs}  # all first
    md5s = {m.role: _inputs.md5(_outputs.model(m.role), _outputs.stage_of(m.role)) for m in refs}
    results: dict[str, Result] = {}
    for m in refs:
        teacher = results[m.teacher_role].logits if m.teacher_role else None
        results[m.role] = _evaluate(p, m, nets[m.role], datasets[m.seed], teacher)
        q, t = results[m.role].quality, results[m.role].timing
        print(f"evaluate {m.role}: accuracy {q['test_accuracy']:.2%}, "
              f"latency {t['latency_ms_p50']:.2f} ms, {t['throughput']:.0f} images/s")  # fmt: skip
    with tracking.stage_run("evaluate", p.mlflow.experiment, _used(p), p.data.md5) as r:
        r.set_tags({"evaluate.threads": str(torch.get_num_threads())})
        for m in refs:
            _record(r, _outputs.stage_of(m.role), md5s[m.role], results[m.role], full.classes)
        with outputs.commit() as staged:  # last, and together: a failure leaves none of them
            _write(staged, refs, results, full.classes)


def _write(staged: files.Staging, refs: list[ModelRef], results: dict[str, Result],
           classes: tuple[str, ...]) -> None:  # fmt: skip
    evaluation: dict = {"teacher": {}, "students": {}}
    speed: dict = {"teacher": {}, "students": {}}
    for m in refs:
        result = results[m.role]
        place(evaluation, m.where, result.quality)
        place(speed, m.where, result.timing)
        staged.write_json(_outputs.headline(m.role), headline(result.quality, result.timing))
        rows = [{"actual": classes[t], "predicted": classes[q]}
                for t, q in zip(result.labels.tolist(), result.logits.argmax(dim=1).tolist(),
                                strict=True)]  # fmt: skip
        staged.write_json(_outputs.confusion(m.role), rows, compact=True)
    staged.write_json(_outputs.EVALUATION, evaluation)
    staged.write_json(_outputs.SPEED, speed)


def _record(r: tracking.StageRun, stage: str, weights_md5: str, result: Result,
            classes: tuple[str, ...]) -> None:  # fmt: skip
    """One model's figures and confusion matrix on the run that stands for it in this invocation."""
    run_id = r.model_run(stage, weights_md5)
    per_class = {f"per_class_accuracy/{c}": a
                 for c, a in result.quality["per_class_accuracy"].items()}  # fmt: skip
    details = {key: result.quality[key] for key in ("parameters", "val_accuracy")
               if key in result.quality}  # fmt: skip
    details |= {key: result.timing[key] for key in ("latency_ms_p95", "throughput")}
    r.log_model_metrics(run_id, {**headline(result.quality, result.timing), **details,
                                 **per_class})  # fmt: skip
    fig = figures.confusion(result.confusion.tolist(), classes, f"{stage}: test set")
    r.log_figure(fig, "confusion.png", run_id=run_id)
    figures.close(fig)


def _evaluate(
    p: params.Params,
    m: ModelRef,
    net: torch.nn.Module,
    ds: Dataset,
    teacher_logits: torch.Tensor | None,
) -> Result:
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
    timing = speed(models.Classifier(net.cpu(), norm.cpu()), ds.test.images, p.evaluate)
    return Result(metrics, timing, logits, confusion, ds.test.labels)


def _used(p: params.Params) -> dict:
    """The params this stage reads, as its run records them."""
    used = _models.measured_params(p)
    return used | {"train": {"device": p.train.device}}


if __name__ == "__main__":
    run(main)
