"""Writing outputs so that a failure never leaves a half-written file, or half of a stage's files.

Every file is written beside its final name and renamed into place only when complete. A stage's
outputs go through one OutputSet: their folders are proven writable before any work starts, and the
files appear together at the end, or (when writing any of them fails) none of them does. A failed
write is a WriteError naming the file and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

_PART = ".part"  # what temporary files end with: .<name>.<random>.part


class WriteError(UserError):
    """An output could not be written (disk full, read-only, no permission); nothing partial was
    kept. The message names the file and what to do."""


@contextlib.contextmanager
def writing(path: Path, what: str | None = None) -> Iterator[None]:
    """Turn an OSError raised while writing `path` into a one-line WriteError (`what` names the
    target in the message, when that is not the file itself)."""
    try:
        yield
    except OSError as e:
        raise WriteError(
            f"cannot write {what or path}: {e.strerror or e}; {_remedy(e, path.parent)}, then "
            "rerun (nothing partial was kept)"
        ) from e


def _remedy(e: OSError, folder: Path) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"free space on the disk that holds {folder}"
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"make {folder} writable"
    return f"check the disk that holds {folder}"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`, else removed."""
    with writing(path):
        tmp = _temp_beside(path)
    try:
        yield tmp  # the caller's own writes: wrap them in writing(path) where they may fail
        with writing(path):
            _publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _temp_beside(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_PART)
    os.close(fd)
    return Path(name)


def _publish(tmp: Path, path: Path) -> None:
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the final file gets the usual mode
    os.replace(tmp, path)


def remove_stale_parts(path: Path) -> None:
    """Remove what atomic_path left beside `path` when its process was killed (SIGKILL, power
    cut). Only for paths that one process at a time writes."""
    for part in path.parent.glob(f".{path.name}.*{_PART}"):
        part.unlink(missing_ok=True)


class OutputSet:
    """The files one stage writes: checked writable before work starts, published all together."""

    def __init__(self, paths: Iterable[Path]):
        self.paths = tuple(paths)

    def check(self) -> None:
        """Fail now, before any work, if a folder of these outputs cannot be written; clear what
        a killed earlier run of the stage left."""
        for path in self.paths:
            remove_stale_parts(path)
        for folder in dict.fromkeys(p.parent for p in self.paths):
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent  # where it would be created; nothing is created yet
            with writing(folder / "_", what=f"into {folder}/"):
                _temp_beside(folder / "_").unlink()

    @contextlib.contextmanager
    def commit(self) -> Iterator[Staging]:
        """Stage the outputs in the block; after it, rename them all into place. If the block or
        any rename fails, every output is put back as it was (the files it replaced included)
        and the error propagates."""
        staging = Staging(self.paths)
        try:
            yield staging
            _publish_all(staging.staged)
        finally:
            for tmp in staging.staged.values():
                tmp.unlink(missing_ok=True)


def _publish_all(staged: dict[Path, Path]) -> None:
    """Rename each temporary file onto its output; all of them, or (on failure) none."""
    replaced: dict[Path, Path] = {}  # output -> where the file it replaces was moved
    published: list[Path] = []
    try:
        for path, tmp in staged.items():
            with writing(path):
                if path.is_file():
                    replaced[path] = _temp_beside(path)
                    os.replace(path, replaced[path])
                _publish(tmp, path)
            published.append(path)
    except BaseException:
        for path in published:
            path.unlink(missing_ok=True)
        for path, old in replaced.items():
            os.replace(old, path)
        raise
    for old in replaced.values():
        old.unlink()


class Staging:
    """Writes each declared output to a temporary file beside it (see OutputSet.commit)."""

    def __init__(self, declared: tuple[Path, ...]):
        self.declared = declared
        self.staged: dict[Path, Path] = {}

    def write_bytes(self, path: Path, blob: bytes) -> None:
        if path not in self.declared:
            raise ValueError(f"{path} is not one of this stage's declared outputs")
        with writing(path):
            tmp = self.staged[path] = _temp_beside(path)
            tmp.write_bytes(blob)

    def write_json(self, path: Path, obj: Any, compact: bool = False) -> None:
        self.write_bytes(path, json_bytes(obj, compact))


def json_bytes(obj: Any, compact: bool = False) -> bytes:
    """Indented for people to read (metrics); `compact` for long records (plot data)."""
    return (json.dumps(obj, indent=None if compact else 2) + "\n").encode()


def md5(blob: bytes) -> str:
    """The MD5 of a file's bytes: what dvc.lock records for it, so MLflow can name the same file."""
    return hashlib.md5(blob, usedforsecurity=False).hexdigest()


def md5_of_file(path: Path) -> str:
    """The MD5 of a file, read in chunks (archives are larger than memory should hold)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
