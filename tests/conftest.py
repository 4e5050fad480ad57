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

# pytest-xdist runs a worker per core, and each starts torch in its stages: with torch's default of
# a thread per core each, the threads outnumber the cores and OpenMP's spin-waiting makes them all
# crawl. One core's worth of threads per worker (set before anything imports torch).
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

sys.path.insert(0, str(Path(__file__).parent))

from cifar_archive import make_archive  # noqa: E402 (after the environment and sys.path above)

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


# The longest files first (minutes each, measured), so that no worker starts one when the others
# are done; then the rest in their usual order. xdist keeps this order with --no-loadscope-reorder
# (pyproject.toml's addopts); by default it puts the files with the most tests first instead.
LONGEST_FIRST = ("test_faults.py", "test_pipeline.py", "test_default_is_the_tutorial.py",
                 "test_workspace.py", "test_own_models.py", "test_interrupt.py", "test_data.py")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order
