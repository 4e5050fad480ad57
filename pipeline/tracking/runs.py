"""Runs: one per stage that does work, grouped under one parent run per pipeline invocation.

The parent is named after what the user ran (the DVC experiment's name, else the commit and the
time), spans the invocation (RUNNING while a stage runs, then the status of the last stage: FAILED
when a stage failed) and holds one run per model of the invocation with that model's evaluated
metrics: the model's training run when it was trained in this invocation, else a run that links to
the one that trained it (DVC took the model from its cache). The invocation is found by
provenance.invocation_key(), so a rerun after a failure continues the same parent.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import platform
import socket
import time
import warnings
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
import psutil
import torch
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import models, provenance
from pipeline.tracking import served, store

INVOCATION_TAG = "pipeline.invocation"
KIND_TAG = "pipeline.kind"  # invocation, stage or model: what a run stands for
MODEL_MD5_TAG = "model.md5"  # set by training stages: the MD5 of the saved weights file
MODEL_URI_TAG = "model.uri"  # the models:/ URI of the model the run logged
TRAINED_BY_TAG = "trained_by.run_id"
# On a model's linked run (DVC took the model from its cache): the weights it stands for. Not
# model.md5, which names the runs that wrote the weights (the registry registers their models).
CACHED_MD5_TAG = "dvc.cached.md5"
EPOCH_PREFIX = "epoch/"  # per-epoch curves: a section of their own in MLflow's charts
TRAINING_PREFIX = "training/"  # what a training run adds after its last epoch (time, best epoch)
SYSTEM_METRICS_INTERVAL_S = 2


def stage_run(
    stage: str, experiment: str, params: Mapping[str, Any], data_md5: str | None
) -> contextlib.AbstractContextManager[StageRun]:
    """One MLflow run for one stage: FINISHED, FAILED if the block raises, KILLED if interrupted;
    its invocation's parent takes the same status. A failure of MLflow itself, here or in the
    block's StageRun calls, is a TrackingError."""
    return _stage_run(stage, experiment, params, data_md5)


@contextlib.contextmanager
def _stage_run(stage, experiment, params, data_md5) -> Iterator[StageRun]:
    uri = store.tracking_uri()
    with store.store_errors(uri):
        client = store.client(uri)
        experiment_id = store.experiment_id(client, experiment, uri)
        tags = _invocation_tags(data_md5)
        _close_dead_runs(client, experiment_id)
        parent_id = _invocation_run(client, experiment_id, tags)
        flat = flatten(params)
        tags |= {"dvc.stage": stage, "mlflow.parentRunId": parent_id, KIND_TAG: "stage",
                 "params.hash": params_hash(flat)}  # fmt: skip
        _sample_system_metrics()
        run = mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=tags,
                               log_system_metrics=True)  # fmt: skip
    try:
        with store.store_errors(uri):
            mlflow.log_params(flat)
            yield StageRun(run.info.run_id, parent_id, experiment_id, tags[INVOCATION_TAG])
    except KeyboardInterrupt:  # SIGINT, or SIGTERM as stages/_cli.py maps it
        _end(client, RunStatus.KILLED, parent_id)
        raise
    except BaseException:
        _end(client, RunStatus.FAILED, parent_id)
        raise
    with store.store_errors(uri):
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))
        client.set_terminated(parent_id, RunStatus.to_string(RunStatus.FINISHED))


def _sample_system_metrics() -> None:
    """MLflow's system metrics (CPU, memory, disk, network; GPU where NVML finds one) under system/
    of every stage run, sampled every 2 s: MLflow's 10 s default leaves a short stage without any.
    Its INFO lines (started, no GPU found) would repeat in every stage's output, so only its
    warnings are shown."""
    mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
    mlflow.set_system_metrics_samples_before_logging(1)
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)


def _end(client: MlflowClient, status: int, parent_id: str) -> None:
    """End the active run and its parent as `status`, on the way out of a failure: if the store
    fails now too, they stay RUNNING until the next stage closes them as its process's (see
    _close_dead_runs), and the failure that brought us here is the one reported."""
    with contextlib.suppress(Exception):
        mlflow.end_run(RunStatus.to_string(status))
        client.set_terminated(parent_id, RunStatus.to_string(status))


def _invocation_tags(data_md5: str | None) -> dict[str, str]:
    """Tags shared by the parent run and every stage run of one invocation."""
    tags = {
        "git.commit": provenance.git_commit(),
        "git.dirty": str(provenance.git_dirty()).lower(),
        "data.md5": data_md5 or "none",  # none: an image folder given without an MD5
        INVOCATION_TAG: provenance.invocation_key(),
        "torch.version": torch.__version__,
        "torchvision.version": importlib.metadata.version("torchvision"),
        "cuda.version": torch.version.cuda or "none",  # the CUDA torch was built with
        "python.version": platform.python_version(),
        **_process_tags(),
    }
    if exp := provenance.dvc_experiment():
        tags["dvc.experiment"] = exp
    return tags


def _invocation_run(client: MlflowClient, experiment_id: str, tags: Mapping[str, str]) -> str:
    """The parent run of this pipeline invocation, found by its key or created, and marked
    RUNNING by this stage's process (so that if the process dies, the next stage closes it)."""
    query = (f"tags.`{INVOCATION_TAG}` = '{tags[INVOCATION_TAG]}' and "
             f"tags.`{KIND_TAG}` = 'invocation'")  # fmt: skip
    found = client.search_runs([experiment_id], filter_string=query, max_results=1)
    if not found:
        parent = client.create_run(experiment_id, run_name=_invocation_name(),
                                   tags={**tags, KIND_TAG: "invocation"})  # fmt: skip
        return parent.info.run_id
    parent_id = found[0].info.run_id
    client.update_run(parent_id, status=RunStatus.to_string(RunStatus.RUNNING))
    client.log_batch(parent_id, tags=[RunTag(k, v) for k, v in _process_tags().items()])
    return parent_id


def _invocation_name() -> str:
    """What the user ran: the DVC experiment, else the commit (+ when the inputs differ from it)
    and the time of the invocation's first stage."""
    if exp := provenance.dvc_experiment():
        return exp
    dirty = "+" if provenance.git_dirty() else ""
    return f"{provenance.git_commit()[:7]}{dirty} {datetime.now():%Y-%m-%d %H:%M}"


def _process_tags() -> dict[str, str]:
    """Which process holds the run: lets a later stage tell that it died without closing it."""
    me = psutil.Process()
    return {"process.host": socket.gethostname(), "process.pid": str(me.pid),
            "process.started": repr(me.create_time())}  # fmt: skip


def _close_dead_runs(client: MlflowClient, experiment_id: str) -> None:
    """End as KILLED the RUNNING runs (parents too) of this machine whose process is gone.

    A process killed by SIGKILL, the OOM killer or a power cut cannot close its run; the next stage
    that starts here does, so no run stays RUNNING for ever. A process is identified by its PID and
    start time, so a recycled PID is not taken for the original process.
    """
    host = socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.`process.host` = '{host}'"
    for run in client.search_runs([experiment_id], filter_string=query, max_results=1000):
        pid, started = run.data.tags.get("process.pid"), run.data.tags.get("process.started")
        if pid is None or started is None or _alive(int(pid), float(started)):
            continue
        client.set_tag(run.info.run_id, "killed.reason",
                       f"process {pid} ended without closing the run (SIGKILL, out of memory or a "
                       "power cut); closed by the next stage that started on this machine")  # fmt: skip
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))


def _alive(pid: int, started: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False


def params_hash(flat: Mapping[str, Any]) -> str:
    """SHA-256 of the run's params (sorted keys, JSON): equal hashes, equal params."""
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def numbers(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested mappings as dotted names; only numbers are metrics (text and None are left out)."""
    return {
        f"{prefix}{k}": v
        for k, v in flatten(metrics).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


class StageRun:
    """What a stage logs into its run."""

    def __init__(self, run_id: str, parent_id: str, experiment_id: str, invocation: str):
        self.run_id = run_id
        self.parent_id = parent_id
        self.experiment_id = experiment_id
        self.invocation = invocation

    def set_tags(self, tags: Mapping[str, str], to_parent: bool = False) -> None:
        run_id = self.parent_id if to_parent else self.run_id
        MlflowClient().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def tag_weights(self, weights_md5: str) -> None:
        """The MD5 of the saved weights file: what links the DVC output to this run's model."""
        mlflow.set_tags({MODEL_MD5_TAG: weights_md5, KIND_TAG: "model"})

    def record_resume(self, previous_run_id: str, epoch: int) -> None:
        """Tag this run as resumed after `epoch` from the checkpoint of `previous_run_id`, and
        that run as resumed by this one (when it is still in this store)."""
        self.set_tags({"resumed_from.run_id": previous_run_id, "resumed_from.epoch": str(epoch)})
        with contextlib.suppress(MlflowException):  # deleted, or recorded in another store
            MlflowClient().set_tag(previous_run_id, "resumed_by.run_id", self.run_id)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """One epoch's values, under epoch/ so they are not taken for the evaluated figures."""
        mlflow.log_metrics({f"{EPOCH_PREFIX}{k}": v for k, v in metrics.items()}, step=epoch)

    def log_metrics(
        self, metrics: Mapping[str, Any], to_parent: bool = False, prefix: str = ""
    ) -> None:
        """Nested mappings become dotted names; text (a verdict) and None are left out."""
        run_id = self.parent_id if to_parent else self.run_id
        mlflow.log_metrics(numbers(metrics, prefix), run_id=run_id)

    def log_dataset(self, url: str, md5: str, sizes: Mapping[str, int], name: str) -> None:
        """The data as the run's input, under `name`: MLflow's dataset digest is its MD5."""
        uri = url if "://" in url else Path(url).resolve().as_uri()
        with warnings.catch_warnings():
            # MLflow registers its local-file source twice and warns that a file:// URI is
            # ambiguous between the two identical classes.
            warnings.filterwarnings("ignore", message="The specified dataset source")
            source = resolve_dataset_source(uri)
        dataset = MetaDataset(source, name=name, digest=md5)
        tags = {f"{split}_size": str(n) for split, n in sizes.items()}
        mlflow.log_input(dataset, context="training", tags=tags)

    def log_model(
        self,
        classifier: torch.nn.Module,
        weights: bytes,
        card: models.ModelCard,
        example: torch.Tensor,
    ) -> str:
        """Log the deployable model (see served.py); returns its models:/ URI, also kept as a tag."""
        uri = served.log_model(classifier, weights, card, example)
        mlflow.set_tag(MODEL_URI_TAG, uri)
        return uri

    def log_artifact(self, path: Path, to_parent: bool = False) -> None:
        mlflow.log_artifact(str(path), run_id=self.parent_id if to_parent else self.run_id)

    def log_figure(self, figure: Any, artifact_file: str, run_id: str | None = None) -> None:
        MlflowClient().log_figure(run_id or self.run_id, figure, artifact_file)

    def model_run(self, stage: str, weights_md5: str) -> str:
        """The run of this invocation that stands for the model with these weights: its training
        run when it was trained in this invocation, else a new run under the parent that links to
        the run that trained it (found by the weights' MD5; DVC took the model from its cache)."""
        client = MlflowClient()
        # This invocation's run of this stage first: the same weights may have been trained
        # before (a teacher adopted from the registry; a rerun after `dvc exp apply`).
        here = _training_run(client, self.experiment_id, weights_md5, stage, self.invocation)
        if here is not None:
            return here.info.run_id
        linked = _linked_here(client, self, stage, weights_md5)  # by an earlier stage (evaluate)
        if linked is not None:
            return linked
        trained = _training_run(client, self.experiment_id, weights_md5, stage) or _training_run(
            client, self.experiment_id, weights_md5, None
        )  # by another stage (a variant renamed since), when none of this one wrote them
        return _linked_run(client, self, stage, trained, weights_md5)

    def log_model_metrics(self, run_id: str, metrics: Mapping[str, Any]) -> None:
        """A model's evaluated metrics on its run (see model_run), and who evaluated it."""
        now = int(time.time() * 1000)
        MlflowClient().log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in numbers(metrics).items()],
            tags=[RunTag("evaluated_by.run_id", self.run_id)],
        )


def _training_run(
    client: MlflowClient,
    experiment_id: str,
    weights_md5: str,
    stage: str | None,
    invocation: str = "",
):
    """The latest FINISHED run that wrote these weights, of `stage` and in `invocation` when they
    are given; by stage, since two variants can learn the same weights (a teacher term at 0)."""
    conditions = [f"tags.`{MODEL_MD5_TAG}` = '{weights_md5}'", "attributes.status = 'FINISHED'"]
    if stage:
        conditions.append(f"tags.`dvc.stage` = '{stage}'")
    if invocation:
        conditions.append(f"tags.`{INVOCATION_TAG}` = '{invocation}'")
    runs = client.search_runs([experiment_id], filter_string=" and ".join(conditions),
                              order_by=["attributes.start_time DESC"], max_results=1)  # fmt: skip
    return runs[0] if runs else None


def _linked_here(
    client: MlflowClient, current: StageRun, stage: str, weights_md5: str
) -> str | None:
    """The linked run that an earlier stage of this invocation made for these weights, if any."""
    conditions = (f"tags.`{CACHED_MD5_TAG}` = '{weights_md5}'", f"tags.`dvc.stage` = '{stage}'",
                  f"tags.`{INVOCATION_TAG}` = '{current.invocation}'")  # fmt: skip
    runs = client.search_runs([current.experiment_id], filter_string=" and ".join(conditions),
                              max_results=1)  # fmt: skip
    return runs[0].info.run_id if runs else None


def _linked_run(client: MlflowClient, current: StageRun, stage: str, trained,
                weights_md5: str) -> str:  # fmt: skip
    """A FINISHED run under the current parent for a model trained in an earlier invocation, with
    the params of the run that trained it and a link to it."""
    if trained is None:
        note, link = "Trained in another tracking store: no run here logged these weights.", {}
    else:
        note = (f"Taken from DVC's cache: trained by [{trained.info.run_name}]"
                f"(#/experiments/{current.experiment_id}/runs/{trained.info.run_id}) in an "
                "earlier invocation.")  # fmt: skip
        link = {TRAINED_BY_TAG: trained.info.run_id,
                MODEL_URI_TAG: trained.data.tags.get(MODEL_URI_TAG, "")}  # fmt: skip
    parent = client.get_run(current.parent_id).data.tags
    tags = {k: v for k, v in parent.items() if not k.startswith(("mlflow.", "process."))}
    tags |= {"mlflow.parentRunId": current.parent_id, KIND_TAG: "model", "dvc.stage": stage,
             "dvc.cached": "true", CACHED_MD5_TAG: weights_md5, "mlflow.note.content": note,
             **link}  # fmt: skip
    run = client.create_run(current.experiment_id, run_name=stage, tags=tags)
    if trained is not None:
        params = [Param(k, v) for k, v in trained.data.params.items()]
        for start in range(0, len(params), 100):  # MLflow's limit per batch
            client.log_batch(run.info.run_id, params=params[start : start + 100])
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run.info.run_id
