"""Model evaluation as plain values: no I/O, no tracking.

Quality (accuracy, per-class accuracy, confusion matrix, agreement and KL divergence to the teacher,
calibration) is a pure function of the logits. Deployment figures (latency, throughput) are
measured on the deployable model; they vary from run to run, so callers keep them apart from the
quality figures, which are reproducible.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models import logits_of

ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. (2017)
# A model's figures at a glance, in this order: DVC's metrics table and MLflow's runs table show
# these (the teacher has no agreement or KL). Short names, so that `dvc metrics show` fits a
# terminal: latency_ms is the median batch-1 CPU latency, size_mb the size of the weights file.
HEADLINE = ("test_accuracy", "teacher_agreement", "teacher_kl", "ece", "latency_ms", "size_mb")


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 256,
) -> torch.Tensor:
    """Logits for uint8 `images` (on the model's device), in eval mode, batch by batch.

    Inputs go in channels_last, the faster layout for these convolutions on CPU and GPU."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat(
            [
                logits_of(model(normalize(chunk).contiguous(memory_format=torch.channels_last)))
                for chunk in images.split(batch_size)
            ]
        )
    finally:
        model.train(was_training)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose arg-max is the label (0.0 to 1.0)."""
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return (logits.argmax(dim=1) == labels).float().mean().item()


def agreement(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of rows where both sets of logits pick the same class (top-1 agreement)."""
    return (logits.argmax(dim=1) == reference.argmax(dim=1)).float().mean().item()


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """counts[true class, predicted class], int64."""
    flat = labels.long() * num_classes + logits.argmax(dim=1)
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes).cpu()


def per_class_accuracy(confusion: torch.Tensor) -> list[float | None]:
    """Recall of each true class (None for a class absent from the labels)."""
    totals = confusion.sum(dim=1)
    return [
        (confusion[c, c] / totals[c]).item() if totals[c] > 0 else None
        for c in range(len(confusion))
    ]


def kl_to_reference(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over rows of KL(reference's softmax || logits' softmax), in nats.

    The direction distillation minimises: how much of the teacher's distribution the student loses.
    """
    return F.kl_div(
        F.log_softmax(logits.float(), dim=1),
        F.log_softmax(reference.float(), dim=1),
        log_target=True,
        reduction="batchmean",
    ).item()


def expected_calibration_error(
    logits: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS
) -> float:
    """Weighted mean gap between confidence (max softmax) and accuracy over equal-width bins."""
    confidence, predicted = F.softmax(logits.float(), dim=1).max(dim=1)
    correct = (predicted == labels).float()
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 cannot occur.
    which = (confidence * bins).ceil().long().clamp(1, bins) - 1
    conf_sum = torch.bincount(which, weights=confidence, minlength=bins)
    acc_sum = torch.bincount(which, weights=correct, minlength=bins)
    return ((conf_sum - acc_sum).abs().sum() / len(labels)).item()


def quality(
    logits: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str],
    teacher_logits: torch.Tensor | None = None,
) -> tuple[dict, torch.Tensor]:
    """Every quality metric of one model, and its confusion matrix (kept apart: it is a plot)."""
    confusion = confusion_matrix(logits, labels, len(classes))
    metrics = {
        "test_accuracy": accuracy(logits, labels),
        "per_class_accuracy": dict(zip(classes, per_class_accuracy(confusion), strict=True)),
        "ece": expected_calibration_error(logits, labels),
    }
    if teacher_logits is not None:
        metrics["teacher_agreement"] = agreement(logits, teacher_logits)
        metrics["teacher_kl"] = kl_to_reference(logits, teacher_logits)
    return metrics, confusion


def headline(quality: dict, timing: dict) -> dict:
    """The HEADLINE figures of one model, from its quality and timing metrics."""
    merged = {**quality, "latency_ms": timing["latency_ms_p50"],
              "size_mb": quality["weights_bytes"] / 1e6}  # fmt: skip
    return {key: merged[key] for key in HEADLINE if key in merged}


@torch.inference_mode()
def latency_ms(model: nn.Module, example: torch.Tensor, warmup: int, iters: int) -> dict:
    """Median and 95th percentile of single calls on `example`, in milliseconds, after warm-up."""
    model.eval()
    for _ in range(warmup):
        model(example)
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        model(example)
        times.append(1000 * (time.perf_counter() - started))
    p95 = statistics.quantiles(times, n=20, method="inclusive")[-1]
    return {"latency_ms_p50": statistics.median(times), "latency_ms_p95": p95}


@torch.inference_mode()
def throughput(model: nn.Module, batch: torch.Tensor, warmup: int, iters: int) -> float:
    """Images per second over `iters` calls on `batch`, after warm-up."""
    model.eval()
    for _ in range(warmup):
        model(batch)
    started = time.perf_counter()
    for _ in range(iters):
        model(batch)
    return iters * len(batch) / (time.perf_counter() - started)
