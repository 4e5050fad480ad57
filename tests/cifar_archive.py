"""Builds small archives in the exact layout of the official cifar-10-python.tar.gz, for tests
(pickled the way the official Python 2 files are, so torchvision's reader takes them too).

Images of class k are noise around a class-specific colour, so a model can learn them in one epoch
and a test can tell learning from chance.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def make_batch(n: int, rng: np.random.Generator) -> dict:
    labels = rng.integers(0, 10, size=n)
    palette = np.random.default_rng(1234).integers(0, 256, size=(10, 3))  # fixed class colours
    base = np.repeat(palette[labels][:, :, None], 1024, axis=2).reshape(n, 3072)
    data = np.clip(base + rng.normal(0, 40, size=(n, 3072)), 0, 255).astype(np.uint8)
    return {b"batch_label": b"test", b"labels": labels.tolist(), b"data": data}


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` opcodes, as the official (Python 2) files have them, so they
    load as bytes with encoding="bytes" (our reader) and as str with encoding="latin1" (torchvision)."""

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)  # noqa: RUF012 -- the stdlib pickler's own table
    dispatch[bytes] = save_bytes


def dumps(obj) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    # numpy 2 pickles arrays under numpy._core; the official files name numpy.core
    return buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def make_archive(
    path: Path,
    per_batch: int = 40,
    seed: int = 0,
    members: dict[str, bytes | None] | None = None,
) -> str:
    """Write an archive with `per_batch` images in each of the 6 batches; returns its MD5.

    `members` overrides the raw bytes of named members (None drops the member), to build broken
    archives.
    """
    rng = np.random.default_rng(seed)
    payloads = {"batches.meta": dumps({b"label_names": [c.encode() for c in CLASSES]})}
    for name in BATCHES:
        payloads[name] = dumps(make_batch(per_batch, rng))
    payloads.update(members or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime 0 in the gzip header as in the tar members: the same images give the same MD5.
    with gzip.GzipFile(path, "wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, payload in payloads.items():
            if payload is None:
                continue
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size, info.mtime = len(payload), 0
            tar.addfile(info, io.BytesIO(payload))
    return md5_of(path)


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


if __name__ == "__main__":  # python tests/cifar_archive.py OUT.tar.gz [images per batch]
    import sys

    out = Path(sys.argv[1])
    print(make_archive(out, per_batch=int(sys.argv[2]) if len(sys.argv) > 2 else 40))
