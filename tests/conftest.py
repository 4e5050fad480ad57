import os
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


@pytest.fixture
def tiny_archive(tmp_path: Path) -> tuple[Path, str]:
    """A valid CIFAR-format archive of 6 x 40 images and its MD5."""
    path = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    return path, make_archive(path)
