"""The tracking store: where it is, that it answers, its errors as one line, and the experiment.

Embedded default: `sqlite:///<project root>/mlflow.db` with artifacts in `<project root>/mlartifacts`,
both resolved to absolute paths of the original checkout, so runs from `dvc repro`, `dvc exp run`,
`--temp` and queued experiments land in one store. MLFLOW_TRACKING_URI overrides it (a team
server, say).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import provenance
from pipeline.errors import UserError, one_line
from pipeline.evaluate import HEADLINE

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
SERVER_TIMEOUT_S = 10
# The experiment opens in MLflow's model-training view, not the GenAI one (MLflow's own tag).
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
# A saved view of the runs table (MLflow's "share view" tag): the models ranked by test accuracy,
# with their evaluated metrics as the first columns. Opened by ?viewStateShareKey=<VIEW_KEY>.
VIEW_KEY = "models-by-accuracy"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_PARAMS = ("variant.method", "seed", "model")
VIEW_METRICS = ("val_accuracy", "parameters", "throughput")
# The same runs in the runs page's chart (compare) mode, opened by charts_link(): a bar chart per
# evaluated figure, in a section of its own that comes first. MLflow's classic compare page cannot
# be set up this way: it lists every metric alphabetically in a box about seven rows high.
CHARTS_KEY = "models-compared"
CHARTS_TAG = f"mlflow.sharedViewState.{CHARTS_KEY}"
CHARTS_SECTION = "Evaluated (fp32, test set)"
CHART_METRICS = (*HEADLINE, "throughput", "parameters")

# MLflow's logger is chatty about things the user did not do (store migrations, "Created version")
# at INFO.
logging.getLogger("mlflow").setLevel(logging.WARNING)


class TrackingError(UserError):
    """The tracking store cannot be used; the message is one line meant for the user."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_uri()


def embedded_uri() -> str:
    return f"sqlite:///{provenance.project_root() / DB_FILE}"


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside the embedded store; a server decides."""
    if uri == embedded_uri():
        return (provenance.project_root() / ARTIFACTS_DIR).as_uri()
    return None


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


def check_store(uri: str, experiment: str) -> None:
    """Fail fast, before any work, when runs cannot be recorded in `experiment` of `uri`: a server
    that does not answer, a scheme MLflow does not know, a database file that cannot be opened or
    created, an experiment that was deleted."""
    check_server(uri)
    # Whatever MLflow or the store's driver (SQLAlchemy, sqlite3, ...) raises here means the same.
    with store_errors(uri, Exception):
        found = client(uri).get_experiment_by_name(experiment)
    if found is not None and found.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {experiment!r} in {uri} is deleted; restore it (`mlflow "
            f"experiments restore --experiment-id {found.experiment_id}`) or set mlflow.experiment "
            "to another name"
        )


@contextlib.contextmanager
def store_errors(uri: str, kind: type[Exception] = MlflowException) -> Iterator[None]:
    """Errors of the store (MlflowException, or `kind`) as one TrackingError line naming it."""
    try:
        yield
    except kind as e:
        what = e.message if isinstance(e, MlflowException) else f"{type(e).__name__}: {e}"
        db = sqlite_file(uri)
        fix = (f"check that {db} is on a writable disk with free space (move a damaged one away "
               "to start anew)" if db else "check the server, or fix MLFLOW_TRACKING_URI")  # fmt: skip
        raise TrackingError(
            f"the MLflow tracking store {uri} failed: {one_line(what, 300)}; {fix}, then rerun"
        ) from e


def client(uri: str) -> MlflowClient:
    """A client of `uri`, its store created (or migrated) now, under a file lock for a SQLite file.

    MLflow creates and migrates a SQLite store's tables on first use; two stages doing that at once
    (`dvc queue start -j 2` on a fresh checkout) fail with "duplicate column" or alembic errors.
    Once the tables exist, MLflow's own busy timeout serialises the writers.
    """
    mlflow.set_tracking_uri(uri)
    db = sqlite_file(uri)
    if db is None:
        return MlflowClient()
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, or the process dies
        found = MlflowClient()
        # The first request builds the store (cached per URI, so only once) inside the lock.
        found.search_experiments(max_results=1)
    return found


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///<path>` URI; None for anything else (in-memory too)."""
    prefix = "sqlite:///"
    path = uri[len(prefix) :].split("?")[0] if uri.startswith(prefix) else ""
    return Path(path) if path and path != ":memory:" else None


def experiment_id(mlflow_client: MlflowClient, name: str, uri: str) -> str:
    """The experiment `name`, created when missing, set to open as a model-training experiment
    with the saved views of its models (each tag set once, so a user's own choice later stays;
    a store made by an earlier version gets the tags it lacks)."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is None:
        try:
            return _created(mlflow_client, name, artifact_location(uri))
        except MlflowException:  # created meanwhile by a parallel stage
            found = mlflow_client.get_experiment_by_name(name)
    _describe(mlflow_client, found.experiment_id, found.tags)
    return found.experiment_id


def _created(mlflow_client: MlflowClient, name: str, artifacts: str | None) -> str:
    created = mlflow_client.create_experiment(name, artifact_location=artifacts)
    _describe(mlflow_client, created, {})
    return created


def _describe(mlflow_client: MlflowClient, exp_id: str, present: dict[str, str]) -> None:
    for key, value in ((KIND_TAG, KIND), (VIEW_TAG, json.dumps(_view())),
                       (CHARTS_TAG, json.dumps(_charts_view())),
                       ("mlflow.note.content", _note(exp_id))):  # fmt: skip
        if key not in present:
            mlflow_client.set_experiment_tag(exp_id, key, value)


def _view() -> dict:
    """The saved view: every model's run (one per model and pipeline invocation), best first."""
    metric = [f"metrics.`{name}`" for name in (*HEADLINE, *VIEW_METRICS)]
    columns = [*metric, *(f"params.`{name}`" for name in VIEW_PARAMS)]
    return {
        "searchFilter": "tags.`pipeline.kind` = 'model'",
        "orderByKey": "metrics.`test_accuracy`",
        "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": columns,  # without it the UI puts the selected columns alphabetically
    }


def _charts_view() -> dict:
    """The saved view in chart mode: one bar chart per evaluated figure, a bar per model run.
    The fields are those of the MLflow UI's own chart and section cards; ids are fixed (uuid5) so
    the view is the same on every store."""
    section = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{CHARTS_KEY}/{CHARTS_SECTION}"))
    charts = [{"uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{CHARTS_KEY}/{name}")), "type": "BAR",
               "metricKey": name, "displayName": name, "metricSectionId": section,
               "runsCountToCompare": 10, "deleted": False, "isGenerated": False}
              for name in CHART_METRICS]  # fmt: skip
    sections = [{"uuid": section, "name": CHARTS_SECTION, "display": True, "isReordered": False,
                 "deleted": False, "isGenerated": False}]  # fmt: skip
    # isAccordionReordered keeps our section first; the UI adds the other metrics' after it
    return {
        **_view(),
        "compareRunCharts": charts,
        "compareRunSections": sections,
        "isAccordionReordered": True,
    }


def charts_link(exp_id: str) -> str:
    """The UI route (after the server's address and #) of the models compared in charts."""
    return f"/experiments/{exp_id}/runs?viewStateShareKey={CHARTS_KEY}&compareRunsMode=CHART"


def _note(exp_id: str) -> str:
    return (
        "Knowledge distillation, tracked. Each `dvc repro` or `dvc exp run` is one parent run "
        "(named after the experiment, or the commit and time) holding one run per model with its "
        "evaluated metrics (fp32 test accuracy, agreement and KL to the teacher, ECE, latency, "
        "size), whether DVC trained it in that invocation or took it from its cache. "
        f"[The models, best first](#/experiments/{exp_id}/runs?viewStateShareKey={VIEW_KEY}); "
        f"[the models compared, a chart per figure](#{charts_link(exp_id)}). "
        "Per-epoch training curves are under `epoch/`."
    )
