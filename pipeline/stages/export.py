"""Stage `export`: every model as ONNX, every student also as int8, each checked on the test set.

Writes:
- exports/<role>.onnx: the deployable model (uint8 images in, logits out, the normalisation
  inside, any batch size) in fp32, for the teacher and every student;
- exports/<role>.int8.onnx: every student, quantised to int8 (ONNX Runtime's static
  quantisation), calibrated on export.calibration_images training images of its own seed;
- reports/export.json: per model and format (pytorch, onnx, int8): test accuracy, agreement with
  the teacher, agreement with the fp32 PyTorch model, the largest logit difference to it, size,
  FLOPs per image and parameters. Reproducible: the same models give the same file;
- reports/export_speed.json: per model and format, batch-1 latency (median, p95) and batch-256
  throughput on the CPU, measured as the evaluate stage measures, all formats in this one process.
The stage fails, writing none of them, when an ONNX model's logits differ from PyTorch's by more
than export.logit_tolerance, or when int8 loses more than export.int8_max_accuracy_drop of test
accuracy. The ONNX models are logged on the stage's MLflow run (ONNX flavour), each model's figures
on the run that stands for it. Reads data.{train,test,val}_size, normalize, evaluate, export,
seeds, teacher.seeds and the models.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from pipeline import data, export, files, models, params, stats, tracking
from pipeline.errors import UserError
from pipeline.evaluate import accuracy, agreement
from pipeline.stages import _inputs, _models, _outputs
from pipeline.stages._cli import no_arguments, run
from pipeline.stages._models import ModelRef, every_model, place, speed
from pipeline.stages._training import Dataset, load_dataset

EXAMPLE_IMAGES = 2  # the logged models' input example


class QuantisationError(UserError):
    """int8 loses more accuracy than params.yaml allows."""


class Exported(NamedTuple):
    """One model in every format: the files, the figures, the timing, the fp32 test logits."""

    onnx_files: dict[str, bytes]  # by format: onnx, int8
    quality: dict[str, dict]  # by format: pytorch, onnx, int8
    timing: dict[str, dict]
    reference: torch.Tensor  # the PyTorch fp32 logits on the test set


def main(p: params.Params, args: list[str]) -> None:
    no_arguments(args)
    refs = every_model(p)
    onnx_files = [_outputs.onnx_model(m.role, f) for m in refs for f in _formats(m)]
    outputs = files.OutputSet([_outputs.EXPORT, _outputs.EXPORT_SPEED, *onnx_files])
    outputs.check()
    full = _inputs.dataset()
    datasets = {seed: load_dataset(p, seed, full) for seed in {*p.seeds, *p.teacher.seeds}}
    nets = {m.role: _inputs.weights(m.spec, m.role, len(full.classes)) for m in refs}
    md5s = {m.role: _inputs.md5(_outputs.model(m.role), _outputs.stage_of(m.role)) for m in refs}
    done: dict[str, Exported] = {}
    for m in refs:  # a student's teacher comes first: its logits are what agreement is against
        teacher = done[m.teacher_role].reference if m.teacher_role else None
        done[m.role] = _export(p, m, nets[m.role], datasets[m.seed], teacher)
        print(_summary_line(m.role, done[m.role]))
    with tracking.stage_run("export", p.mlflow.experiment, _used(p), p.data.md5) as r:
        r.set_tags(
            {"export.threads": str(torch.get_num_threads()), "export.opset": str(export.OPSET)}
        )
        example = full.test.images[:EXAMPLE_IMAGES]
        for m in refs:
            _record(r, m, md5s[m.role], done[m.role], example)
        with outputs.commit() as staged:  # last, and together: a failure leaves none of them
            _write(staged, refs, done)


def _formats(m: ModelRef) -> tuple[str, ...]:
    """The ONNX formats of a model: fp32 for every model, int8 for students."""
    return ("onnx", "int8") if m.teacher_role else ("onnx",)


def _export(
    p: params.Params, m: ModelRef, net: torch.nn.Module, ds: Dataset,
    teacher_logits: torch.Tensor | None,
) -> Exported:  # fmt: skip
    """Export `net`, check each ONNX form against PyTorch, measure every form."""
    deployable = models.Classifier(net.cpu(), data.Normalizer(p.normalize.mean, p.normalize.std))
    deployable.eval()
    test = ds.test
    reference = export.logits(deployable, test.images)
    onnx_files = {"onnx": export.to_onnx(deployable, test.images[:EXAMPLE_IMAGES])}
    runnable: dict[str, torch.nn.Module] = {"pytorch": deployable,
                                            "onnx": export.OnnxClassifier(onnx_files["onnx"])}  # fmt: skip
    outputs = {"pytorch": reference, "onnx": export.logits(runnable["onnx"], test.images)}
    checked = export.parity(reference, outputs["onnx"], p.export.logit_tolerance)
    export.check_parity(m.role, checked, p.export.logit_tolerance)
    if "int8" in _formats(m):
        calibration = _calibration_images(ds, p.export.calibration_images, m.seed)
        onnx_files["int8"] = export.quantize_int8(onnx_files["onnx"], calibration)
        runnable["int8"] = export.OnnxClassifier(onnx_files["int8"])
        outputs["int8"] = export.logits(runnable["int8"], test.images)
    common = {"parameters": models.count_parameters(net),
              "flops": export.flops_per_image(deployable, test.images[:1])}  # fmt: skip
    sizes = {"pytorch": _outputs.model(m.role).stat().st_size,
             **{f: len(blob) for f, blob in onnx_files.items()}}  # fmt: skip
    quality = {
        fmt: {
            **common,
            **_figures(logits, reference, test.labels, teacher_logits),
            "size_bytes": sizes[fmt],
        }
        for fmt, logits in outputs.items()
    }
    quality["onnx"]["near_ties"] = checked.disagreements  # each explained, or parity failed
    if "int8" in quality:
        quality["int8"] |= {"calibration_images": len(calibration),
                            **_accuracy_drop(reference, outputs["int8"], test.labels)}  # fmt: skip
        _check_drop(m.role, quality, p.export.int8_max_accuracy_drop)
    timing = {fmt: speed(model, test.images, p.evaluate) for fmt, model in runnable.items()}
    return Exported(onnx_files, quality, timing, reference)


def _figures(
    logits: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
) -> dict[str, float]:  # fmt: skip
    """How one format's test logits compare with the labels, the fp32 model and the teacher."""
    figures = {
        "test_accuracy": accuracy(logits, labels),
        "fp32_agreement": agreement(logits, reference),
        "max_abs_logit_diff": (logits - reference).abs().max().item(),
    }
    if teacher_logits is not None:
        figures["teacher_agreement"] = agreement(logits, teacher_logits)
    return figures


def _calibration_images(ds: Dataset, count: int, seed: int) -> torch.Tensor:
    """`count` training images (all, when there are fewer) drawn by the model's seed."""
    order = torch.randperm(len(ds.train.labels), generator=torch.Generator().manual_seed(seed))
    return ds.train.images[order[:count]]


def _accuracy_drop(fp32: torch.Tensor, int8: torch.Tensor, labels: torch.Tensor) -> dict:
    """What int8 loses of test accuracy, paired image by image with fp32: mean and 95 % interval."""
    lost = (fp32.argmax(dim=1) == labels).float() - (int8.argmax(dim=1) == labels).float()
    s = stats.summary(lost.tolist())
    return {"accuracy_drop": s["mean"], "accuracy_drop_ci": [s["ci_low"], s["ci_high"]]}


def _check_drop(role: str, quality: dict[str, dict], limit: float | None) -> None:
    """QuantisationError when int8 loses more than `limit` with 95 % confidence: the whole
    interval of its drop lies above it. A few images of a small test set cannot fail it."""
    drop = quality["int8"]["accuracy_drop"]
    low = quality["int8"]["accuracy_drop_ci"][0]
    if limit is not None and (drop if low is None else low) > limit:
        fp32, int8 = quality["pytorch"]["test_accuracy"], quality["int8"]["test_accuracy"]
        raise QuantisationError(
            f"int8 {role} loses {drop:.2%} of test accuracy ({fp32:.2%} -> {int8:.2%}; 95 % "
            f"interval from {low:.2%}), more than export.int8_max_accuracy_drop = {limit:g}; "
            "calibrate on more training images (export.calibration_images) or allow more "
            "(null: no limit)"
        )


def _summary_line(role: str, e: Exported) -> str:
    parts = [f"{fmt} {q['test_accuracy']:.2%}, {e.timing[fmt]['latency_ms_p50']:.2f} ms, "
             f"{q['size_bytes'] / 1e6:.2f} MB" for fmt, q in e.quality.items()]  # fmt: skip
    return f"export {role}: " + "; ".join(parts)


def _record(r: tracking.StageRun, m: ModelRef, weights_md5: str, e: Exported,
            example: torch.Tensor) -> None:  # fmt: skip
    """Log the model's ONNX forms on the stage's run, its figures on the model's run."""
    for fmt, blob in e.onnx_files.items():
        answer = export.logits(export.OnnxClassifier(blob), example).numpy()
        tags = {tracking.MODEL_MD5_TAG: weights_md5, tracking.FORMAT_TAG: fmt, "role": m.role}
        tracking.log_onnx(blob, f"{m.role}-{fmt}", example.numpy(), answer, tags)
    figures = {}
    for fmt in e.onnx_files:
        q, t = e.quality[fmt], e.timing[fmt]
        figures |= {f"{fmt}/test_accuracy": q["test_accuracy"],
                    f"{fmt}/fp32_agreement": q["fp32_agreement"],
                    f"{fmt}/max_abs_logit_diff": q["max_abs_logit_diff"],
                    f"{fmt}/size_mb": q["size_bytes"] / 1e6,
                    f"{fmt}/latency_ms": t["latency_ms_p50"], f"{fmt}/throughput": t["throughput"]}  # fmt: skip
    figures["flops"] = e.quality["pytorch"]["flops"]
    r.log_model_metrics(r.model_run(_outputs.stage_of(m.role), weights_md5), figures)


def _write(staged: files.Staging, refs: list[ModelRef], done: dict[str, Exported]) -> None:
    quality: dict = {"teacher": {}, "students": {}}
    timing: dict = {"teacher": {}, "students": {}}
    for m in refs:
        place(quality, m.where, done[m.role].quality)
        place(timing, m.where, done[m.role].timing)
        for fmt, blob in done[m.role].onnx_files.items():
            staged.write_bytes(_outputs.onnx_model(m.role, fmt), blob)
    staged.write_json(_outputs.EXPORT, quality)
    staged.write_json(_outputs.EXPORT_SPEED, timing)


def _used(p: params.Params) -> dict:
    """The params this stage reads, as its run records them."""
    used = _models.measured_params(p)
    used["data"]["train_size"] = p.data.train_size  # int8 is calibrated on training images
    return used | {"export": vars(p.export)}


if __name__ == "__main__":
    run(main)
