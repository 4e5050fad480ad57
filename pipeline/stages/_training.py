"""The part of train_teacher and distill@<variant>-<seed> that is the same: train one model, record
it."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline import checkpoint, data, distributed, files, models, provenance, tracking
from pipeline.evaluate import accuracy, predict
from pipeline.losses import Terms
from pipeline.params import Params, RoleParams
from pipeline.stages import _inputs, _outputs
from pipeline.taps import Tapped
from pipeline.train import FitConfig, LoopState, Targets, fit, resolve_device

# Wall-clock figures go to MLflow only: DVC outputs must be the same on every rerun.
TIMING = ("epoch_seconds",)
TRAINING = "training/"  # MLflow's name for what a training ends with: apart from evaluated figures


@dataclass(frozen=True)
class Dataset:
    """What one seed trains on: the training split (validation held out), validation and test."""

    train: data.Split
    train_indices: torch.Tensor  # positions of `train` in the full training set (for caches)
    val: data.Split | None
    test: data.Split
    classes: tuple[str, ...]


def load_dataset(p: Params, seed: int, ds: data.Cifar10 | None = None) -> Dataset:
    """The sets of one seed: data.val_size training images held out, the split fixed by the seed.

    `ds` is the loaded data file, for callers that need several seeds' sets (else it is read)."""
    ds = ds or _inputs.dataset()
    train = data.subset(ds.train, p.data.train_size, "data.train_size")
    test = data.subset(ds.test, p.data.test_size, "data.test_size")
    if p.data.val_size == 0:
        return Dataset(train, torch.arange(len(train.labels)), None, test, ds.classes)
    kept, held_out = data.validation_indices(len(train.labels), p.data.val_size, seed)
    return Dataset(
        data.Split(train.images[kept], train.labels[kept]),
        kept,
        data.Split(train.images[held_out], train.labels[held_out]),
        test,
        ds.classes,
    )


@dataclass(frozen=True)
class Teaching:
    """What a student learns from besides the labels."""

    targets: Targets | None  # the teacher's outputs per batch; None for a method without teacher
    source: str | None  # how they are computed: "cached" or "live"
    weights: Path | None  # the teacher's weights file: part of the checkpoint's key
    parts: nn.Module | None  # the method's adapters or heads: trained with it, never deployed


NO_TEACHING = Teaching(None, None, None, None)


def common_params(p: Params, seed: int) -> dict[str, Any]:
    """What every model's run logs: the sections that define data and training, and its seed."""
    return {
        "data": {
            "source": p.data.source,
            "md5": p.data.md5,
            "image_size": p.data.image_size,
            "train_size": p.data.train_size,
            "test_size": p.data.test_size,
            "val_size": p.data.val_size,
        },
        "normalize": {"mean": p.normalize.mean, "std": p.normalize.std},
        "train": vars(p.train),
        "seed": seed,
    }


def training_device(p: Params) -> torch.device:
    """Where this process trains: train.device, or under torchrun on CUDA, this rank's GPU."""
    return distributed.rank_device(resolve_device(p.train.device))


def model_outputs(role: str) -> files.OutputSet:
    """What a training stage writes for `role`: the weights, the final metrics, the history."""
    return files.OutputSet(
        [_outputs.model(role), _outputs.train_metrics(role), _outputs.train_history(role)]
    )


def train_and_record(
    *,
    stage: str,
    role: str,
    seed: int,
    p: Params,
    ds: Dataset,
    net: Tapped,
    loss_fn: Callable[..., Terms],
    epochs: int,
    run_params: dict[str, Any],
    spec: RoleParams,
    teaching: Teaching = NO_TEACHING,
    augment: bool = False,
) -> None:
    """Fit `net`, log the run to MLflow, then write the DVC outputs of `role` (together and last,
    so a failure leaves none of them; their folders are checked writable before training).

    After every epoch the training is checkpointed (see pipeline/checkpoint.py); a rerun after an
    interruption resumes after the last complete epoch, copies the earlier epochs' metrics into its
    run and records which run it resumed from. The file of the teacher whose targets a student
    learns from is part of what a checkpoint must match (its cached outputs follow from it, the
    params and the code, which the checkpoint's key covers too). `spec` is the model's entry in
    params.yaml (teacher or student): the logged model is rebuilt from it, with the user's code.

    Without a validation split (the tutorial's protocol) the model is the last epoch's and the test
    accuracy is monitored every epoch. With one, only validation accuracy is monitored, the model is
    the best epoch's by it, and the test set is evaluated once at the end, for both the last and the
    best epoch (`last_epoch_test_accuracy`, `test_accuracy`).
    """
    outputs = model_outputs(role)
    device = training_device(p)
    normalize = data.Normalizer(p.normalize.mean, p.normalize.std)
    config = FitConfig(epochs, p.train.batch_size, p.train.lr, seed, device,
                       p.train.precision, augment)  # fmt: skip
    # How the training is spread (one process, or torchrun's ranks): params of the run, and part
    # of the checkpoint's key, since a checkpoint resumes only on as many ranks.
    run_params = run_params | {"distributed": distributed.describe(device, p.train.batch_size)}
    data_md5 = files.md5_of_file(_outputs.DATA)
    card = model_card(spec, p, ds)
    saved_to = _checkpoint(stage, role, run_params, data_md5, teaching.weights, card.code_paths)
    resumed = saved_to.load()
    training = functools.partial(
        fit, net, ds.train, loss_fn, config, normalize, num_classes=len(ds.classes),
        targets=teaching.targets, parts=teaching.parts,
        start=resumed["loop"] if resumed else None, desc=stage,
    )  # fmt: skip
    with distributed.process_group(device):
        if not distributed.is_main():  # rank 0 records; the others train their slices with it
            training()
            return
        outputs.check()  # a folder that cannot be written must not cost a training
        with tracking.stage_run(stage, p.mlflow.experiment, run_params, p.data.md5) as run:
            tags = {"device": str(device), "precision": p.train.precision,
                    "data.file_md5": data_md5}  # fmt: skip
            run.set_tags(tags | ({"teacher_outputs": teaching.source} if teaching.source else {}))
            history, summary = _train_recorded(run, training, p, ds, net, saved_to, resumed,
                                               normalize, device)  # fmt: skip
            deployable = models.Classifier(net.net, normalize)
            record_outputs(run, outputs, role, deployable, card, ds.test.images[:2], history,
                           summary)  # fmt: skip
    saved_to.remove()  # the outputs are written and the run is FINISHED: nothing left to resume


def _train_recorded(
    run: tracking.StageRun,
    training: Callable[..., nn.Module],
    p: Params,
    ds: Dataset,
    net: Tapped,
    saved_to: checkpoint.Checkpoint,
    resumed: dict | None,
    normalize: nn.Module,
    device: torch.device,
) -> tuple[list[dict], dict[str, float]]:
    """Rank 0's training inside its run: every epoch logged and checkpointed, then what the run
    adds after the last; returns the per-epoch history and that summary."""
    epochs_of = _Recorder(run, saved_to, net.net, ds.val is not None, resumed)
    _record_inputs(run, p, ds, resumed, epochs_of.history)
    started = time.perf_counter()
    monitored = {"val": ds.val} if ds.val is not None else {"test": ds.test}
    training(eval_sets=monitored, on_epoch=epochs_of.epoch, on_checkpoint=epochs_of.checkpoint)
    summary = _summary(net.net, ds, epochs_of.best, normalize, device)
    # The per-epoch metrics are in the run already; the evaluate stage adds the evaluated ones.
    run.log_metrics({**summary, "seconds": time.perf_counter() - started}, prefix=TRAINING)
    return epochs_of.history, summary


class _Recorder:
    """What each epoch leaves: its metrics in the run and the history, the best epoch's weights
    (with a validation split), and the checkpoint that lets a rerun resume after it."""

    def __init__(self, run: tracking.StageRun, saved_to: checkpoint.Checkpoint, net: nn.Module,
                 validated: bool, resumed: dict | None):  # fmt: skip
        self.run, self.saved_to, self.net, self.validated = run, saved_to, net, validated
        self.history: list[dict[str, float]] = resumed["history"] if resumed else []
        self.best: dict[str, Any] = resumed["best"] if resumed else {}

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.run.log_epoch(epoch, metrics)
        self.history.append(
            {"epoch": epoch, **{k: v for k, v in metrics.items() if k not in TIMING}}
        )
        if self.validated and metrics["val_accuracy"] > self.best.get("val_accuracy", -1.0):
            self.best.update(
                epoch=epoch, val_accuracy=metrics["val_accuracy"], state=_snapshot(self.net)
            )

    def checkpoint(self, loop: LoopState) -> None:
        self.saved_to.save({"loop": loop, "history": self.history, "best": self.best,
                            "run_id": self.run.run_id})  # fmt: skip


def record_dataset(run: tracking.StageRun, p: Params, ds: Dataset) -> None:
    """The dataset as the run's input, with the sizes of its splits."""
    sizes = {"train": len(ds.train.labels), "test": len(ds.test.labels)}
    sizes |= {"val": len(ds.val.labels)} if ds.val else {}
    data_md5 = p.data.md5 or files.md5_of_file(_outputs.DATA)  # an unpinned image folder
    run.log_dataset(p.data.location, data_md5, sizes, p.data.name)


def _record_inputs(
    run: tracking.StageRun, p: Params, ds: Dataset, resumed: dict | None, history: list[dict]
) -> None:
    """The dataset as the run's input; when resuming, where from and the earlier epochs' curves."""
    record_dataset(run, p, ds)
    if resumed:
        run.record_resume(resumed["run_id"], resumed["loop"]["epoch"])
        for row in history:  # the curves of this run start at epoch 1 too
            run.log_epoch(row["epoch"], {k: v for k, v in row.items() if k != "epoch"})


def _summary(
    net: nn.Module, ds: Dataset, best: dict[str, Any], normalize: nn.Module, device: torch.device
) -> dict[str, float]:
    """What the run adds to the per-epoch metrics. With a validation split, `net` becomes the best
    epoch's, and the test accuracy of the last epoch is kept beside that of the best."""
    summary: dict[str, float] = {"parameters": models.count_parameters(net)}
    if ds.val is not None:
        summary["last_epoch_test_accuracy"] = _test_accuracy(net, ds.test, normalize, device)
        net.load_state_dict(best["state"])
        summary |= {"best_epoch": best["epoch"], "val_accuracy": best["val_accuracy"],
                    "test_accuracy": _test_accuracy(net, ds.test, normalize, device)}  # fmt: skip
    return summary


def model_card(spec: RoleParams, p: Params, ds: Dataset) -> models.ModelCard:
    """What the logged model is rebuilt from: `spec` (p.teacher or p.student), the data's classes
    and the normalisation."""
    return models.ModelCard(spec.model, spec.args, ds.classes, p.normalize.mean, p.normalize.std)


def record_outputs(
    run: tracking.StageRun,
    outputs: files.OutputSet,
    role: str,
    deployable: models.Classifier,
    card: models.ModelCard,
    example: torch.Tensor,
    history: list[dict],
    summary: dict[str, float],
) -> None:
    """Log the model (with uint8 `example` images), then write the DVC outputs of `role`, together."""
    weights = models.weights_bytes(deployable.net)
    # The weights' MD5 is the hash dvc.lock records for the model file: it links each DVC
    # output to the run (and logged model) that produced it; the logged model holds these bytes.
    run.tag_weights(files.md5(weights))
    run.log_model(deployable, weights, card, example)
    last = history[-1] if history else {}  # no epochs: a teacher given by teacher.weights
    final = {**{k: v for k, v in last.items() if k != "epoch"}, **summary}
    with outputs.commit() as staged:
        staged.write_bytes(_outputs.model(role), weights)
        staged.write_json(_outputs.train_metrics(role), final)
        staged.write_json(_outputs.train_history(role), history)


def evaluated(net: nn.Module, p: Params, ds: Dataset) -> tuple[models.Classifier, dict]:
    """A network that was not trained here (a given teacher): its deployable form, and what a
    training run records after its last epoch (fp32 test and validation accuracy, parameters)."""
    device = resolve_device(p.train.device)
    normalize = data.Normalizer(p.normalize.mean, p.normalize.std)
    summary = {"parameters": models.count_parameters(net),
               "test_accuracy": _test_accuracy(net, ds.test, normalize, device)}  # fmt: skip
    if ds.val is not None:
        summary["val_accuracy"] = _test_accuracy(net, ds.val, normalize, device)
    return models.Classifier(net.cpu(), normalize.cpu()), summary


def _checkpoint(
    stage: str,
    role: str,
    run_params: dict[str, Any],
    data_md5: str,
    teacher_weights: Path | None,
    code_paths: list[Path],
) -> checkpoint.Checkpoint:
    """The checkpoint of this training: keyed by its params, its input files and the code (ours,
    and the user's model code).

    Kept in checkpoints/ of the original checkout, also when DVC runs the stage in a temporary
    experiment copy (deleted afterwards), so a stopped queued experiment resumes when rerun."""
    key = provenance.digest(
        stage,
        json.dumps(run_params, sort_keys=True, default=str),
        data_md5,
        files.md5_of_file(teacher_weights) if teacher_weights else "",
        provenance.content_digest(("pipeline", *map(str, code_paths))),
    )
    return checkpoint.Checkpoint(provenance.project_root() / "checkpoints", role, key)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _test_accuracy(net: nn.Module, test: data.Split, normalize: nn.Module, device) -> float:
    """Test accuracy in fp32, as the evaluate stage measures it."""
    logits = predict(net.to(device), test.images.to(device), normalize.to(device))
    return accuracy(logits, test.labels.to(device))
