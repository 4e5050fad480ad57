"""CIFAR-10: fetch and verify the official python archive, convert it once to uint8 tensors, batch it.

The archive is read member by member straight from the tarball (nothing is extracted to disk), and
every file this module writes appears under its final name only when complete, so an interrupted or
failed run leaves nothing half-written. Errors are DataError with a one-line message for the user.
"""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar

import numpy as np
import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import progress
from pipeline.errors import UserError
from pipeline.files import atomic_path, md5_of_file, writing
from pipeline.images import resize

ARCHIVE_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
IMAGES_PER_BATCH = 10_000
NUM_CLASSES = 10


class DataError(UserError):
    """A data problem the user can fix; the message says what happened and what to do."""


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8, N x 3 x H x W (32 x 32 for CIFAR-10 unless data.image_size)
    labels: torch.Tensor  # int64, N


@dataclass(frozen=True)
class Cifar10:
    train: Split
    test: Split
    classes: tuple[str, ...]


# --- fetching ----------------------------------------------------------------------------------


def fetch(url: str, dest: Path, md5: str, timeout: float = 60.0) -> Path:
    """Make `dest` a verified copy of the archive at `url` (http(s), file:// or a local path).

    A `dest` that already has the right MD5 is kept as it is. A download goes to a temporary file
    beside `dest` and is renamed only after its MD5 matched, so `dest` is never a bad or partial file.
    `timeout` bounds every wait for the server (connecting, and each read).
    """
    md5 = md5.lower()
    if dest.is_file():
        if md5_of_file(dest) == md5:
            return dest
        dest.unlink()  # stale: another archive than the one params ask for
    with atomic_path(dest) as tmp:
        with writing(dest), open(tmp, "wb") as out:
            _copy_from(url, out, timeout)
        actual = md5_of_file(tmp)
        if actual != md5:
            raise DataError(
                f"MD5 mismatch for {url}: expected {md5}, got {actual} ({_what_came(tmp)}; it was "
                "removed): fix data.url or data.md5 and rerun"
            )
    return dest


def _what_came(path: Path) -> str:
    """A guess at what a file with the wrong MD5 is, for the message."""
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    if not head:
        return "the copy is an empty file"
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "the server sent an HTML or XML page, e.g. an error or login page, not the archive"
    return "the copy is truncated, corrupt or another file"


def _copy_from(url: str, out: io.BufferedWriter, timeout: float) -> None:
    scheme = urllib.parse.urlparse(url).scheme
    if scheme in ("", "file"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path) if scheme else url)
        if not path.is_file():
            raise DataError(f"archive not found: {path} (from data.url={url!r}); fix data.url")
        with open(path, "rb") as src:
            _copy_with_progress(src, out, path.stat().st_size)
        return
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            _copy_with_progress(response, out, int(response.headers.get("Content-Length") or 0))
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(e, urllib.error.HTTPError):
            reason = f"HTTP {e.code} {e.reason}"
        elif isinstance(reason, TimeoutError):
            reason = f"no answer within {timeout:g} s (data.timeout_s)"
        raise DataError(
            f"cannot download {url}: {reason}; without network, get cifar-10-python.tar.gz "
            "elsewhere, set data.url to its local path or file:// URL and data.md5 to its MD5"
        ) from e


def _copy_with_progress(src: BinaryIO, out: io.BufferedWriter, total: int) -> None:
    started = time.perf_counter()
    with progress.bar(total=total or None, unit="B", unit_scale=True, desc="download") as bar:
        while chunk := src.read(1 << 20):
            out.write(chunk)
            bar.update(len(chunk))
    done = out.tell()
    print(f"download: {done / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s", flush=True)


# --- reading the archive -----------------------------------------------------------------------


class _ArraysOnly(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of bytes, lists and numpy arrays) and nothing else.

    pickle can run arbitrary code; a mirror's archive is checked by MD5 first, and this allow-list
    makes sure that even an archive someone vouched for with its own MD5 can only build arrays.
    """

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 carry bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_archive(path: Path) -> Cifar10:
    """Read the train and test splits and class names from a cifar-10-python.tar.gz."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}

            def batch(name: str) -> dict:
                member = members.get(f"{ARCHIVE_DIR}/{name}")
                if member is None:
                    raise DataError(
                        f"{path} has no {ARCHIVE_DIR}/{name}: not a complete CIFAR-10 python "
                        "archive; point data.url and data.md5 at the official one"
                    )
                return _unpickle(tar.extractfile(member).read(), f"{path}:{name}")

            train = _stack([_split(batch(n), f"{path}:{n}") for n in TRAIN_BATCHES])
            test = _split(batch(TEST_BATCH), f"{path}:{TEST_BATCH}")
            names = batch("batches.meta").get(b"label_names", [])
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(
            f"{path} is corrupt or truncated ({e}): not a CIFAR-10 python archive; point data.url "
            "and data.md5 at the official cifar-10-python.tar.gz"
        ) from e
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    if len(classes) != NUM_CLASSES:
        raise DataError(f"{path}:batches.meta has {len(classes)} label names, expected 10")
    return Cifar10(train=train, test=test, classes=classes)


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        obj = _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # any unpickling failure means the same thing: a malformed batch
        raise DataError(f"{where} is malformed ({e}); get a fresh copy of the archive") from e
    if not isinstance(obj, dict):
        raise DataError(f"{where} is malformed: expected a dict, got {type(obj).__name__}")
    return obj


def _split(batch: dict, where: str) -> Split:
    data, labels = batch.get(b"data"), batch.get(b"labels")
    shape_ok = isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
    if not shape_ok or data.shape[1] != 3 * 32 * 32:
        got = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{where} is malformed: b'data' must be N x 3072 uint8, got {got}")
    if labels is None or len(labels) != len(data):
        raise DataError(f"{where} is malformed: b'labels' must hold one label per image")
    labels_t = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if labels_t.numel() and not (int(labels_t.min()) >= 0 and int(labels_t.max()) < NUM_CLASSES):
        raise DataError(f"{where} is malformed: labels must lie in 0..9")
    # Rows are planar RGB (1024 red, 1024 green, 1024 blue), i.e. already C x H x W.
    images = torch.from_numpy(data.copy()).reshape(-1, 3, 32, 32)
    return Split(images=images, labels=labels_t)


def _stack(splits: list[Split]) -> Split:
    return Split(
        images=torch.cat([s.images for s in splits]), labels=torch.cat([s.labels for s in splits])
    )


def resized(dataset: Cifar10, size: int | None) -> Cifar10:
    """`dataset` with every image resized to size x size; `dataset` itself when size is None."""
    if size is None:
        return dataset
    train, test = (Split(resize(s.images, size), s.labels) for s in (dataset.train, dataset.test))
    return Cifar10(train=train, test=test, classes=dataset.classes)


# --- the converted tensor file -----------------------------------------------------------------


def save(dataset: Cifar10, path: Path) -> None:
    """Write the dataset as one safetensors file, atomically (temporary file, then rename).

    safetensors rather than torch.save: its bytes depend only on the tensors (torch.save embeds a
    random serialization id), so the file's hash, and DVC's cache of it, is reproducible.
    """
    tensors = {
        "train_images": dataset.train.images.contiguous(),
        "train_labels": dataset.train.labels.contiguous(),
        "test_images": dataset.test.images.contiguous(),
        "test_labels": dataset.test.labels.contiguous(),
    }
    blob = safetensors.torch.save(tensors, metadata={"classes": json.dumps(dataset.classes)})
    with atomic_path(path) as tmp, writing(path):
        tmp.write_bytes(blob)  # from Python, not the Rust writer, so a full disk is an OSError


def load(path: Path) -> Cifar10:
    """Load the file written by `save`; DataError when it does not hold what `save` writes."""
    with safetensors.safe_open(path, framework="pt") as f:
        classes = json.loads((f.metadata() or {}).get("classes", "null"))
    t = safetensors.torch.load_file(path)
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DataError("its metadata has no list of class names")
    splits = [_loaded_split(t, name, len(classes)) for name in ("train", "test")]
    return Cifar10(train=splits[0], test=splits[1], classes=tuple(classes))


def _loaded_split(tensors: dict[str, torch.Tensor], name: str, num_classes: int) -> Split:
    images, labels = tensors.get(f"{name}_images"), tensors.get(f"{name}_labels")
    if images is None or images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"{name}_images is missing or not N x 3 x H x W uint8")
    if labels is None or labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
        raise DataError(f"{name}_labels is missing or not one int64 label per image")
    if labels.numel() and not (int(labels.min()) >= 0 and int(labels.max()) < num_classes):
        raise DataError(f"{name}_labels has labels outside 0..{num_classes - 1}")
    return Split(images, labels)


# --- on the training device --------------------------------------------------------------------


class Normalizer(nn.Module):
    """uint8 images -> normalised float on the images' device: (x / 255 - mean) / std as one FMA.

    A module, so the deployed classifier carries its own normalisation (see models.Classifier).
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        std_t = torch.tensor(std).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", -torch.tensor(mean).view(1, 3, 1, 1) / std_t)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, images.float(), self.scale)


def subset(split: Split, size: int | None, key: str) -> Split:
    """The first `size` examples (all when None); the archive's batches are already shuffled.
    `key` names the param that asked for `size`, for the message when there are fewer."""
    if size is None:
        return split
    if size > len(split.labels):
        raise DataError(f"{key} = {size}: larger than the {len(split.labels)} images there are; "
                        "lower it, or set it to null for all")  # fmt: skip
    return Split(split.images[:size], split.labels[:size])


def validation_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, validation indices) of a set of `n`, the split fixed by `seed`.

    Each part is in the original order; the same seed gives the same split in every stage.
    """
    if val_size >= n:
        raise DataError(
            f"data.val_size = {val_size} leaves no training images out of {n}; lower it"
        )
    held_out = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:val_size]
    keep = torch.ones(n, dtype=torch.bool)
    keep[held_out] = False
    return keep.nonzero().flatten(), held_out.sort().values


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random H x W crop of the image padded by 4 px, and a horizontal flip half of the time, for a
    uint8 batch on any device, drawn from `generator` so it is reproducible."""
    n, (height, width) = len(images), images.shape[-2:]
    offsets = torch.randint(0, 9, (2, n), generator=generator).to(images.device)
    flips = torch.rand(n, generator=generator).to(images.device) < 0.5
    padded = F.pad(images, (4, 4, 4, 4))
    rows = (offsets[0, :, None] + torch.arange(height, device=images.device))[
        :, :, None
    ]  # n x H x 1
    cols = (offsets[1, :, None] + torch.arange(width, device=images.device))[
        :, None, :
    ]  # n x 1 x W
    cols = torch.where(flips[:, None, None], cols.flip(-1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def batch_indices(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device
) -> list[torch.Tensor]:
    """One epoch of shuffled index batches (the last may be short, as with a DataLoader)."""
    order = torch.randperm(n, generator=generator).to(device)
    return list(order.split(batch_size))
