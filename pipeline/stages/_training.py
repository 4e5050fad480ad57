"""The part of train_teacher and distill@<variant> that is the same: train one model, record it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from torch import nn

from pipeline import data, files, models, tracking
from pipeline.losses import Terms
from pipeline.params import Params
from pipeline.stages import _outputs
from pipeline.train import FitConfig, Targets, fit, resolve_device

# Wall-clock figures go to MLflow only: DVC outputs must be the same on every rerun.
TIMING = ("epoch_seconds",)


def load_dataset(p: Params) -> data.Cifar10:
    ds = data.load(_outputs.DATA)
    return data.Cifar10(
        train=data.subset(ds.train, p.data.train_size),
        test=data.subset(ds.test, p.data.test_size),
        classes=ds.classes,
    )


def common_params(p: Params) -> dict[str, Any]:
    """What every model's run logs: the sections that define data and training."""
    return {
        "data": {"md5": p.data.md5, "train_size": p.data.train_size, "test_size": p.data.test_size},
        "normalize": {"mean": p.normalize.mean, "std": p.normalize.std},
        "train": vars(p.train),
    }


def train_and_record(
    *,
    stage: str,
    role: str,
    p: Params,
    ds: data.Cifar10,
    net: nn.Module,
    loss_fn: Callable[..., Terms],
    epochs: int,
    run_params: dict[str, Any],
    targets: Targets | None = None,
    teacher_source: str | None = None,
    head: nn.Module | None = None,
    augment: bool = False,
) -> None:
    """Fit `net`, log the run to MLflow, then write the DVC outputs of `role` (last, so a failure
    leaves none of them)."""
    device = resolve_device(p.train.device)
    normalize = data.Normalizer(p.normalize.mean, p.normalize.std)
    config = FitConfig(epochs, p.train.batch_size, p.train.lr, p.train.seed, device,
                       p.train.precision, augment)  # fmt: skip
    history: list[dict[str, float]] = []
    with tracking.stage_run(stage, p.mlflow.experiment, run_params, p.data.md5) as run:
        tags = {"device": str(device), "precision": p.train.precision}
        run.set_tags(tags | ({"teacher_outputs": teacher_source} if teacher_source else {}))
        run.log_dataset(
            p.data.url, p.data.md5, {"train": len(ds.train.labels), "test": len(ds.test.labels)}
        )

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            run.log_epoch(epoch, metrics)
            history.append(
                {"epoch": epoch, **{k: v for k, v in metrics.items() if k not in TIMING}}
            )

        started = time.perf_counter()
        fit(net, ds.train, loss_fn, config, normalize, targets=targets, head=head,
            eval_sets={"test": ds.test}, on_epoch=on_epoch, desc=stage)  # fmt: skip
        # The per-epoch metrics are already in the run (MLflow shows their last value); add the rest.
        summary = {"parameters": models.count_parameters(net)}
        run.log_metrics({**summary, "train_seconds": time.perf_counter() - started})
        final = {**{k: v for k, v in history[-1].items() if k != "epoch"}, **summary}
        weights = models.weights_bytes(net)
        # The weights' MD5 is the hash dvc.lock records for the model file: it links each DVC
        # output to the run (and logged model) that produced it.
        run.tag_weights(files.md5(weights))
        run.log_model(models.Classifier(net, normalize), ds.test.images[:2])
        with files.atomic_path(_outputs.model(role)) as tmp:
            tmp.write_bytes(weights)
        files.write_json(_outputs.train_metrics(role), final)
        files.write_json(_outputs.train_history(role), history)
