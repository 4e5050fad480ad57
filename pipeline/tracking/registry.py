"""The MLflow model registry: versions found by their weights' MD5, aliases, and loading by URI."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import mlflow
import mlflow.pyfunc
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.errors import one_line
from pipeline.tracking import exported, served, store
from pipeline.tracking.runs import MODEL_MD5_TAG, MODEL_URI_TAG


@dataclass(frozen=True)
class Version:
    """A registered version, with the tags the pipeline gave it (metrics, data, role)."""

    name: str
    version: str
    tags: Mapping[str, str]


def register(
    experiment_id: str,
    weights_md5: str,
    name: str,
    tags: Mapping[str, str],
    fmt: str = exported.DEFAULT_FORMAT,
) -> Version | None:
    """The version of `name` that holds the model of format `fmt` logged from the weights with
    this MD5 (the hash dvc.lock records for the file): the training run's model (pytorch) or the
    export stage's (onnx, int8). Registered now unless a version of these weights and format
    exists; `tags` set on it. None when no finished run logged such a model."""
    client = MlflowClient()
    uri = _logged_uri(client, experiment_id, weights_md5, fmt)
    if uri is None:
        return None
    existing = find_version(name, weights_md5, fmt)
    if existing is not None:
        number = existing.version
    else:
        lineage = {MODEL_MD5_TAG: weights_md5, exported.FORMAT_TAG: fmt}
        number = mlflow.register_model(uri, name, tags=lineage).version
    for key, value in tags.items():
        client.set_model_version_tag(name, number, key, value)
    return Version(name, str(number), {**client.get_model_version(name, number).tags})


def _logged_uri(client: MlflowClient, experiment_id: str, weights_md5: str, fmt: str) -> str | None:
    if fmt != exported.DEFAULT_FORMAT:
        return exported.find_logged(experiment_id, weights_md5, fmt)
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{MODEL_MD5_TAG}` = '{weights_md5}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].data.tags.get(MODEL_URI_TAG) if runs else None


def find_version(name: str, weights_md5: str, fmt: str) -> Version | None:
    """The version of `name` that holds these weights in format `fmt`; None when none does."""
    for v in MlflowClient().search_model_versions(f"name = '{name}'"):
        if (v.tags.get(MODEL_MD5_TAG) == weights_md5
                and v.tags.get(exported.FORMAT_TAG, exported.DEFAULT_FORMAT) == fmt):  # fmt: skip
            return Version(name, str(v.version), dict(v.tags))
    return None


def by_alias(name: str, alias: str) -> Version | None:
    """The version of `name` that `alias` points to; None when there is none (yet)."""
    try:
        found = MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:  # no such model or alias
        return None
    return Version(name, str(found.version), dict(found.tags))


def set_alias(name: str, alias: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, alias, version)


def follow_alias(name: str, alias: str, fmt: str, follower: str) -> str:
    """Point `follower` (champion-int8) at the version of format `fmt` of the weights that
    `alias` (champion) holds; returns the line that says what happened. Left as it was when there
    is no such version (the weights were registered before they were exported)."""
    leader = by_alias(name, alias)
    if leader is None:
        return f"{follower}: none yet ({name} has no {alias})"
    found = find_version(name, leader.tags.get(MODEL_MD5_TAG, ""), fmt)
    if found is None:
        return (f"{follower} left as it was: {name} v{leader.version} (the {alias}) has no {fmt} "
                "version (it was registered before its export was, or by hand); a report that "
                "picks these weights again registers it")  # fmt: skip
    set_alias(name, follower, found.version)
    return f"{follower} is {name} v{found.version}, the {fmt} form of v{leader.version}"


def get_version(name: str, version: str) -> Version:
    """TrackingError (one line) when `name` has no such version."""
    try:
        found = MlflowClient().get_model_version(name, version)
    except MlflowException as e:
        raise store.TrackingError(f"{name} version {version}: {one_line(e.message, 200)} (in "
                                  f"{store.tracking_uri()}); list the versions with `mlflow "
                                  "models` in the MLflow UI, or fix the number") from None  # fmt: skip
    return Version(name, str(found.version), dict(found.tags))


def load_registered(uri: str, key: str = "teacher.weights") -> torch.nn.Module:
    """The network that a models:/ URI names (models:/cifar10-teacher/3, @champion), on the CPU;
    TrackingError naming `key` when there is none."""
    with _loading(uri, key):
        return served.load_network(uri)


def load_pyfunc(uri: str, key: str) -> mlflow.pyfunc.PyFuncModel:
    """The logged model that a models:/ or runs:/ URI names, ready to predict; TrackingError
    naming `key` when there is none."""
    with _loading(uri, key):
        return mlflow.pyfunc.load_model(uri)


@contextlib.contextmanager
def _loading(uri: str, key: str) -> Iterator[None]:
    uri_store = store.tracking_uri()
    mlflow.set_tracking_uri(uri_store)
    # MLflow puts the model's code (a copy of this package) first on sys.path and drops the
    # modules of that name, to import its copy: put ours back after, or every isinstance check on
    # our own classes (the guard's UserError among them) would fail from here on.
    modules, path = dict(sys.modules), list(sys.path)
    try:
        yield
    except MlflowException as e:
        raise store.TrackingError(f"{key} = {uri!r}: {one_line(e.message, 200)} (in {uri_store}); "
                                  "register the model first, or fix the URI") from None  # fmt: skip
    finally:
        sys.modules.update(modules)
        sys.path[:] = path
