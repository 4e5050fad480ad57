import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

# No phoning home from tests: MLflow and DVC telemetry off, wherever pytest is started from.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

sys.path.insert(0, str(Path(__file__).parent))

from cifar_archive import make_archive

ROOT = Path(__file__).resolve().parents[1]
# What a user's experiments rewrite in the workspace (`dvc exp run -S` edits params.yaml): the
# tests take these from the last commit, so that they test the project, not the last experiment.
EXPERIMENT_FILES = ("params.yaml",)


@functools.cache
def committed(name: str) -> str:
    """The text of `name` at HEAD; the working tree's where there is no commit (a bare copy)."""
    done = subprocess.run(["git", "-C", str(ROOT), "show", f"HEAD:{name}"], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    return done.stdout if done.returncode == 0 else (ROOT / name).read_text()


@pytest.fixture
def tiny_archive(tmp_path: Path) -> tuple[Path, str]:
    """A valid CIFAR-format archive of 6 x 40 images and its MD5."""
    path = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    return path, make_archive(path)
