"""A copy of this project in a fresh git repository, to run the real pipeline on in tests."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from cifar_archive import make_archive
from conftest import EXPERIMENT_FILES, ROOT, committed
from mlflow.tracking import MlflowClient

# Two of the four default variants (a student alone, one distilled), for tests whose cost grows
# with every model (each evaluate and export) and whose point does not.
TWO_VARIANTS = {"ce": {"method": "ce"},
                "kd": {"method": "kd", "temperature": 2.0, "distill_weight": 0.25,
                       "ce_weight": 0.75}}  # fmt: skip


class Project:
    def __init__(self, path: Path):
        self.path = path
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))},
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
        }  # fmt: skip
        self.client = MlflowClient(f"sqlite:///{path / 'mlflow.db'}")

    def run(self, *cmd: str, timeout: float = 600, check: bool = True, env=None) -> str:
        """stdout and stderr of `cmd` (with `env` added to the environment); with `check`, an
        AssertionError when it fails."""
        return self.call(*cmd, timeout=timeout, check=check, env=env)[1]

    def call(self, *cmd: str, timeout: float = 600, check: bool = False, env=None):
        """(exit status, stdout + stderr) of `cmd`."""
        done = subprocess.run(cmd, cwd=self.path, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
        return done.returncode, done.stdout + done.stderr

    def repro(self) -> list[str]:
        """Run `dvc repro`; return the names of the stages that ran."""
        return re.findall(r"Running stage '([^']+)'", self.run("dvc", "repro"))

    def set_params(self, **changes) -> None:
        """`section__key=value`, as keyword arguments cannot hold dots."""
        path = self.path / "params.yaml"
        write_params(path, {k.replace("__", "."): v for k, v in changes.items()}, source=path)

    def runs(self, **filters):
        exp = self.client.get_experiment_by_name("cifar10-distillation")
        runs = self.client.search_runs([exp.experiment_id], max_results=1000)
        return [r for r in runs if all(r.data.tags.get(k) == v for k, v in filters.items())]


def write_params(path: Path, changes: dict, source: Path | None = None) -> None:
    """`source` (by default the committed params.yaml) with `changes` (dotted key path -> value),
    to `path`."""
    doc = yaml.safe_load(source.read_text() if source else committed("params.yaml"))
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = doc
        for key in parents:
            node = node[key]
        node[last] = value
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def copy_project(
    path: Path, archive: Path, per_batch: int = 40, commit: str | None = None, **params
) -> Project:
    """The committed (and untracked, not ignored) files of this checkout copied to `path`, or the
    tree of `commit` of this repository, set to read a tiny archive made at `archive` (`per_batch`
    images per batch file), with `params` changed, committed in a new repository."""
    if commit is None:
        _copy_checkout(path)
    else:
        tree = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(path)], input=tree.stdout, check=True)
    md5 = make_archive(archive, per_batch=per_batch)
    p = Project(path)
    p.set_params(data__url=archive.as_uri(), data__md5=md5, **params)
    p.run("git", "init", "-q")
    p.run("git", "add", "-A")
    p.run("git", "commit", "-qm", "tiny pipeline")
    return p


# Where a developer's new files, not yet added to git, are part of the project. Elsewhere an
# untracked file is what the pipeline or DVC wrote (dvc.lock, metrics/*.json with cache: false).
CODE_FOLDERS = ("pipeline/", "tests/", "bench/", "scripts/", ".dvc/plots/")


def _copy_checkout(path: Path) -> None:
    """The checkout's code as it is now (committed or not), without the pipeline's outputs, and
    the experiment files (params.yaml) as committed."""
    tracked = _git_files("--cached")
    new = [name for name in _git_files("--others", "--exclude-standard")
           if name.startswith(CODE_FOLDERS)]  # fmt: skip
    for name in [*tracked, *new]:
        if (ROOT / name).is_file():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, path / name)
    for name in EXPERIMENT_FILES:
        (path / name).write_text(committed(name))


def _git_files(*args: str) -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z", *args], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    return [name for name in listed.split("\0") if name]
