"""The only module that talks to MLflow.

Embedded default store: `sqlite:///<project root>/mlflow.db` with artifacts in
`<project root>/mlartifacts`, both resolved to absolute paths of the original checkout, so runs from
`dvc repro`, `dvc exp run`, `--temp` and queued experiments land in one store. MLFLOW_TRACKING_URI
overrides it (a team server, say).

Every stage that does work opens one run named after its DVC stage. The runs of one pipeline
invocation hang under a parent run named "pipeline", found or created by the first of them from
provenance.invocation_key(), so the MLflow UI shows the teacher and the variants together.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import numpy as np
import psutil
import torch
import torchvision
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from pipeline import provenance
from pipeline.errors import UserError, one_line

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
INVOCATION_TAG = "pipeline.invocation"
PARENT_RUN = "pipeline"
MODEL_MD5_TAG = "model.md5"  # set by training stages: the MD5 of the saved weights file
MODEL_URI_TAG = "model.uri"  # the models:/ URI of the model the run logged
PACKAGE_DIR = Path(__file__).resolve().parent

# MLflow's logger is chatty about things the user did not do (e.g. store migrations) at INFO.
logging.getLogger("mlflow").setLevel(logging.WARNING)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or _embedded_uri()


class TrackingError(UserError):
    """The tracking store cannot be used; the message is one line meant for the user."""


SERVER_TIMEOUT_S = 10


def check_server(uri: str, timeout: float = SERVER_TIMEOUT_S) -> None:
    """Fail fast, before any work, when an http(s) tracking server does not answer.

    MLflow's own client retries with exponential back-off for minutes; a stage should instead say
    at once that the server is down. Asks the server's /health endpoint.
    """
    if urllib.parse.urlparse(uri).scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError as e:
        if e.code >= 500:
            raise TrackingError(f"MLflow tracking server {uri} answered {e.code}; "
                                "check the server, or unset MLFLOW_TRACKING_URI") from None  # fmt: skip
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(
            f"MLflow tracking server {uri} did not answer within {timeout:g} s ({reason}); start it, "
            "fix MLFLOW_TRACKING_URI, or unset it to use the embedded store"
        ) from None


def _embedded_uri() -> str:
    return f"sqlite:///{provenance.project_root() / DB_FILE}"


def check_store(uri: str, experiment: str) -> None:
    """Fail fast, before any work, when runs cannot be recorded in `experiment` of `uri`: a server
    that does not answer, a scheme MLflow does not know, a database file that cannot be opened or
    created, an experiment that was deleted."""
    check_server(uri)
    # Whatever MLflow or the store's driver (SQLAlchemy, sqlite3, ...) raises here means the same.
    with _store_errors(uri, Exception):
        found = _client(uri).get_experiment_by_name(experiment)
    if found is not None and found.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {experiment!r} in {uri} is deleted; restore it (`mlflow "
            f"experiments restore --experiment-id {found.experiment_id}`) or set mlflow.experiment "
            "to another name"
        )


def load_registered(uri: str) -> torch.nn.Module:
    """The model that a models:/ URI of the registry names (e.g. models:/cifar10-teacher/3 or
    models:/cifar10-teacher@champion), on the CPU; TrackingError when there is none."""
    store = tracking_uri()
    mlflow.set_tracking_uri(store)
    # MLflow puts the model's code (a copy of this package) first on sys.path and drops the
    # modules of that name, to import its copy: put ours back after, or every isinstance check on
    # our own classes (the guard's UserError among them) would fail from here on.
    modules, path = dict(sys.modules), list(sys.path)
    try:
        return mlflow.pytorch.load_model(uri, map_location="cpu")
    except MlflowException as e:
        raise TrackingError(f"teacher.weights = {uri!r}: {one_line(e.message, 200)} (in {store}); "
                            "register the teacher first, or fix the URI") from None  # fmt: skip
    finally:
        sys.modules.update(modules)
        sys.path[:] = path


@contextlib.contextmanager
def _store_errors(uri: str, kind: type[Exception] = MlflowException) -> Iterator[None]:
    """Errors of the store (MlflowException, or `kind`) as one TrackingError line naming it."""
    try:
        yield
    except kind as e:
        what = e.message if isinstance(e, MlflowException) else f"{type(e).__name__}: {e}"
        db = _sqlite_file(uri)
        fix = (f"check that {db} is on a writable disk with free space (move a damaged one away "
               "to start anew)" if db else "check the server, or fix MLFLOW_TRACKING_URI")  # fmt: skip
        raise TrackingError(
            f"the MLflow tracking store {uri} failed: {one_line(what, 300)}; {fix}, then rerun"
        ) from e


def _client(uri: str) -> MlflowClient:
    """A client of `uri`, its store created (or migrated) now, under a file lock for a SQLite file.

    MLflow creates and migrates a SQLite store's tables on first use; two stages doing that at once
    (`dvc queue start -j 2` on a fresh checkout) fail with "duplicate column" or alembic errors.
    Once the tables exist, MLflow's own busy timeout serialises the writers.
    """
    mlflow.set_tracking_uri(uri)
    db = _sqlite_file(uri)
    if db is None:
        return MlflowClient()
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, or the process dies
        client = MlflowClient()
        # The first request builds the store (cached per URI, so only once) inside the lock.
        client.search_experiments(max_results=1)
    return client


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///<path>` URI; None for anything else (in-memory too)."""
    prefix = "sqlite:///"
    path = uri[len(prefix) :].split("?")[0] if uri.startswith(prefix) else ""
    return Path(path) if path and path != ":memory:" else None


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # created meanwhile by a parallel stage
        return client.get_experiment_by_name(name).experiment_id


def _invocation_run(client: MlflowClient, experiment_id: str, tags: Mapping[str, str]) -> str:
    """The parent run of this pipeline invocation: found by its key, else created, FINISHED at once
    so that it can never be left RUNNING whatever happens to the stages."""
    key = tags[INVOCATION_TAG]
    query = f"tags.`{INVOCATION_TAG}` = '{key}' and attributes.run_name = '{PARENT_RUN}'"
    found = client.search_runs([experiment_id], filter_string=query, max_results=1)
    if found:
        return found[0].info.run_id
    parent = client.create_run(experiment_id, run_name=PARENT_RUN, tags=dict(tags))
    client.set_terminated(parent.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
    return parent.info.run_id


def _invocation_tags(data_md5: str | None) -> dict[str, str]:
    """Tags shared by the parent run and every stage run of one invocation."""
    tags = {
        "git.commit": provenance.git_commit(),
        "git.dirty": str(provenance.git_dirty()).lower(),
        "data.md5": data_md5 or "none",  # none: an image folder given without an MD5
        INVOCATION_TAG: provenance.invocation_key(),
        "torch.version": torch.__version__,
        "torchvision.version": torchvision.__version__,
        "cuda.version": torch.version.cuda or "none",  # the CUDA torch was built with
        "python.version": platform.python_version(),
    }
    if exp := provenance.dvc_experiment():
        tags["dvc.experiment"] = exp
    return tags


@contextlib.contextmanager
def stage_run(
    stage: str, experiment: str, params: Mapping[str, Any], data_md5: str | None
) -> Iterator[StageRun]:
    """One MLflow run for one stage: FINISHED, FAILED if the block raises, KILLED if interrupted.

    A failure of MLflow itself, here or in the block's StageRun calls, is a TrackingError."""
    uri = tracking_uri()
    # Only the embedded store needs an artifact location: a server has its own. (Decided before
    # set_tracking_uri, which exports MLFLOW_TRACKING_URI itself.)
    artifacts = None
    if uri == _embedded_uri():
        artifacts = (provenance.project_root() / ARTIFACTS_DIR).as_uri()
    with _store_errors(uri):
        client = _client(uri)
        experiment_id = _experiment_id(client, experiment, artifacts)
        tags = _invocation_tags(data_md5)
        parent_id = _invocation_run(client, experiment_id, tags)
        flat = _flatten(params)
        tags |= {"dvc.stage": stage, "mlflow.parentRunId": parent_id,
                 "params.hash": params_hash(flat)}  # fmt: skip
        tags |= _process_tags()
        _close_dead_runs(client, experiment_id)
        run = mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=tags)
    try:
        with _store_errors(uri):
            mlflow.log_params(flat)
            yield StageRun(run.info.run_id, parent_id, experiment_id)
    except KeyboardInterrupt:  # SIGINT, or SIGTERM as stages/_cli.py maps it
        _end_run(RunStatus.KILLED)
        raise
    except BaseException:
        _end_run(RunStatus.FAILED)
        raise
    with _store_errors(uri):
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def _end_run(status: int) -> None:
    """End the active run as `status`, on the way out of a failure: if the store fails now too,
    the run stays RUNNING until the next stage closes it as its process's (see _close_dead_runs),
    and the failure that brought us here is the one reported."""
    with contextlib.suppress(Exception):
        mlflow.end_run(RunStatus.to_string(status))


def _process_tags() -> dict[str, str]:
    """Which process holds the run: lets a later stage tell that it died without closing it."""
    me = psutil.Process()
    return {"process.host": socket.gethostname(), "process.pid": str(me.pid),
            "process.started": repr(me.create_time())}  # fmt: skip


def _close_dead_runs(client: MlflowClient, experiment_id: str) -> None:
    """End as KILLED the RUNNING runs of this machine whose process is gone.

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


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


class StageRun:
    """What a stage logs into its run."""

    def __init__(self, run_id: str, parent_id: str, experiment_id: str):
        self.run_id = run_id
        self.parent_id = parent_id
        self.experiment_id = experiment_id

    def set_tags(self, tags: Mapping[str, str], to_parent: bool = False) -> None:
        run_id = self.parent_id if to_parent else self.run_id
        MlflowClient().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def tag_weights(self, weights_md5: str) -> None:
        """The MD5 of the saved weights file: what links the DVC output to this run's model."""
        mlflow.set_tag(MODEL_MD5_TAG, weights_md5)

    def record_resume(self, previous_run_id: str, epoch: int) -> None:
        """Tag this run as resumed after `epoch` from the checkpoint of `previous_run_id`, and
        that run as resumed by this one (when it is still in this store)."""
        self.set_tags({"resumed_from.run_id": previous_run_id, "resumed_from.epoch": str(epoch)})
        with contextlib.suppress(MlflowException):  # deleted, or recorded in another store
            MlflowClient().set_tag(previous_run_id, "resumed_by.run_id", self.run_id)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        mlflow.log_metrics(dict(metrics), step=epoch)

    def log_metrics(self, metrics: Mapping[str, Any], to_parent: bool = False) -> None:
        """Nested mappings become dotted names, as `dvc metrics show` prints them. Only numbers
        are metrics: text (a verdict) and None (undefined for one seed) are left out."""
        numbers = {
            k: v
            for k, v in _flatten(metrics).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        mlflow.log_metrics(numbers, run_id=self.parent_id if to_parent else self.run_id)

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
        self, model: torch.nn.Module, example: torch.Tensor, code_paths: Sequence[Path] = ()
    ) -> str:
        """Log the deployable model (uint8 pixels in, logits out); returns its models:/ URI.
        `code_paths`: the user's model code, which must travel with it to unpickle elsewhere."""
        model = model.cpu().eval()
        example_np = example.cpu().numpy()
        with torch.no_grad():
            logits = model(torch.from_numpy(example_np)).numpy()
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=infer_signature(example_np, logits),
            input_example=example_np,
            # The package travels with the model, so it loads where `pipeline` is not installed.
            code_paths=[str(PACKAGE_DIR), *map(str, code_paths)],
            # Pinned explicitly: MLflow's inference of requirements re-imports the model in a
            # subprocess, which costs seconds per stage and guesses.
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"numpy=={np.__version__}",
                f"torchvision=={torchvision.__version__.split('+')[0]}",  # its models unpickle
            ],
        )
        mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
        return info.model_uri

    def log_artifact(self, path: Path, to_parent: bool = False) -> None:
        mlflow.log_artifact(str(path), run_id=self.parent_id if to_parent else self.run_id)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        MlflowClient().log_figure(self.run_id, figure, artifact_file)

    def register_model(
        self,
        weights_md5: str,
        name: str,
        alias: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str | None:
        """Register, as a version of `name`, the model logged by the training run whose weights
        have this MD5 (the hash dvc.lock records for the file); None when no run holds it.

        A version with these weights is reused rather than registered again, so rerunning the
        report does not multiply versions. `alias` (e.g. "champion") is moved to that version.
        """
        client = MlflowClient()
        runs = client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{MODEL_MD5_TAG}` = '{weights_md5}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs or MODEL_URI_TAG not in runs[0].data.tags:
            return None
        existing = [
            v
            for v in client.search_model_versions(f"name = '{name}'")
            if v.tags.get(MODEL_MD5_TAG) == weights_md5
        ]
        if existing:
            version = existing[0].version
        else:
            uri = runs[0].data.tags[MODEL_URI_TAG]
            version = mlflow.register_model(uri, name, tags={MODEL_MD5_TAG: weights_md5}).version
        for key, value in (tags or {}).items():
            client.set_model_version_tag(name, version, key, value)
        if alias:
            client.set_registered_model_alias(name, alias, version)
        return str(version)
