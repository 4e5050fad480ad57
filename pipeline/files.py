"""Writing outputs so that a crash never leaves a half-written file under its final name."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_PART = ".part"  # what atomic_path's temporary files end with: .<name>.<random>.part


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`, else removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_PART)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the final file gets the usual mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_parts(path: Path) -> None:
    """Remove what atomic_path left beside `path` when its process was killed (SIGKILL, power
    cut). Only for paths that one process at a time writes."""
    for part in path.parent.glob(f".{path.name}.*{_PART}"):
        part.unlink(missing_ok=True)


def write_json(path: Path, obj: Any, compact: bool = False) -> None:
    """Indented for people to read (metrics); `compact` for long records (plot data)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=None if compact else 2) + "\n")


def md5(blob: bytes) -> str:
    """The MD5 of a file's bytes: what dvc.lock records for it, so MLflow can name the same file."""
    return hashlib.md5(blob, usedforsecurity=False).hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
