"""Image-folder datasets, the way people keep their own images: `train/<class>/<image>` and
`test/<class>/<image>`, in a directory or in a .tar.gz of one, read once into the same uint8 tensors
as the CIFAR-10 archive (data.Cifar10), so that every later stage works on either.

The conventions are torchvision ImageFolder's: classes are the sorted folder names under train/,
labels their indices; image files are those with one of its extensions (any case), anywhere under a
class folder; hidden files and folders (a leading '.', such as macOS's `._x.jpg`) are skipped. A
tarball is read member by member, nothing extracted to disk. Bad data is a DataError naming the
file or folder and what to do about it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import posixpath
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from pipeline import progress
from pipeline.data import Cifar10, DataError, Split
from pipeline.errors import one_line
from pipeline.files import md5_of_file
from pipeline.images import decode, resize

SPLITS = ("train", "test")
SHUFFLE_SEED = 0
LAYOUT = "an image folder holds train/<class>/<images> and test/<class>/<images>"

# Yields (name, bytes) for the named files, in whatever order the storage reads fastest.
Reader = Callable[[list[str]], Iterator[tuple[str, bytes]]]


def read(path: Path, image_size: int | None) -> Cifar10:
    """The train and test splits and the classes of the image folder (a directory or a .tar.gz) at
    `path`. With `image_size` S every image is resized to S x S; without, all must share one size."""
    if path.is_dir():
        return _build(path, _walk(path), _directory_reader(path), image_size)
    try:
        with tarfile.open(path, "r:*") as tar:  # any compression tarfile knows, .tar.gz included
            members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
            entries = [_entry(m) for m in members]
            return _build(path, entries, _tarball_reader(tar, members), image_size)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{path} is corrupt or truncated, or not a .tar.gz ({one_line(e, 200)}); "
                        "recreate it, or point data.source at the folder itself") from e  # fmt: skip


def md5_of(path: Path) -> str:
    """A file's MD5; for a directory, the MD5 of its `md5sum` listing: the lines
    '<MD5 of the file>  <path relative to the directory>\\n' of every file under it, sorted by path."""
    if not path.is_dir():
        return md5_of_file(path)
    files = [name for name in _walk(path) if not name.endswith("/")]
    listing = "".join(f"{md5_of_file(path / name)}  {name}\n" for name in files)
    return hashlib.md5(listing.encode(), usedforsecurity=False).hexdigest()


# --- what is where -----------------------------------------------------------------------------


def _walk(root: Path) -> list[str]:
    """Every file and folder under `root`: relative, '/'-separated, sorted; folders end in '/'."""
    entries = []
    for folder, dirs, files in os.walk(root, onerror=_unreadable):
        prefix = Path(folder).relative_to(root).as_posix() + "/"
        prefix = "" if prefix == "./" else prefix
        entries += [f"{prefix}{d}/" for d in dirs] + [prefix + f for f in files]
    return sorted(entries)


def _unreadable(error: OSError) -> None:
    raise DataError(f"{error.filename} cannot be listed ({error.strerror}); fix its permissions")


def _entry(member: tarfile.TarInfo) -> str:
    """A member's name as _walk writes names ('./train/cat' -> 'train/cat/' for a folder)."""
    name = posixpath.normpath(member.name).lstrip("/")
    return f"{name}/" if member.isdir() else name


def _root(entries: list[str]) -> str:
    """'' when train/ and test/ are at the top; 'X/' when everything is inside one folder X, as in
    a tarball made with `tar czf data.tar.gz X`."""
    tops = {e.split("/", 1)[0] for e in entries if e not in ("./", ".")}
    only = next(iter(tops)) if len(tops) == 1 else None
    return f"{only}/" if only and only not in SPLITS else ""


def _class_files(entries: list[str], split: str) -> dict[str, list[str]]:
    """Class name -> its image files (sorted), for the class folders under `split`/."""
    classes: dict[str, list[str]] = {}
    for entry in entries:
        if not entry.startswith(f"{split}/"):
            continue
        name, slash, inner = entry.removeprefix(f"{split}/").partition("/")
        if not slash or name.startswith("."):  # a file beside the class folders, or hidden
            continue
        files = classes.setdefault(name, [])
        if _is_image(inner):
            files.append(entry)
    return classes


@functools.cache
def extensions() -> tuple[str, ...]:
    """ImageFolder's image extensions, lower case (torchvision imported only when a folder is read:
    it takes seconds, and the CIFAR-10 stages never need it)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(e.lower() for e in IMG_EXTENSIONS)


def _is_image(name: str) -> bool:
    hidden = any(part.startswith(".") for part in name.split("/"))
    return bool(name) and not hidden and name.lower().endswith(extensions())


def _layout(path: Path, entries: list[str]) -> tuple[tuple[str, ...], list[list[tuple[str, int]]]]:
    """The classes, and per split its (file, label) in sorted order; checked before any decoding,
    so that a folder laid out wrong fails at once."""
    root = _root(entries)
    relative = sorted({e.removeprefix(root) for e in entries if e.startswith(root)})
    found = {split: _class_files(relative, split) for split in SPLITS}
    for split, classes in found.items():
        if not classes:
            raise DataError(f"{path} has no class folders under {root}{split}/; {LAYOUT}: fix "
                            "data.source or the folder")  # fmt: skip
        for name, files in classes.items():
            if not files:
                raise DataError(f"{path}: {root}{split}/{name} has no image files "
                                f"({', '.join(extensions())}); add images or remove the folder")  # fmt: skip
    _check_same_classes(path, *found.values())
    classes = tuple(sorted(found["train"]))
    splits = [
        [(root + f, label) for label, c in enumerate(classes) for f in found[s][c]] for s in SPLITS
    ]
    return classes, splits


def _check_same_classes(path: Path, train: Iterable[str], test: Iterable[str]) -> None:
    missing = {"test": sorted(set(train) - set(test)), "train": sorted(set(test) - set(train))}
    if any(missing.values()):
        lacks = "; ".join(
            f"{side}/ lacks {', '.join(names)}" for side, names in missing.items() if names
        )
        raise DataError(f"{path}: train/ and test/ have different class folders ({lacks}); give "
                        "both the same classes")  # fmt: skip


# --- decoding ----------------------------------------------------------------------------------


def _build(path: Path, entries: list[str], reader: Reader, image_size: int | None) -> Cifar10:
    classes, splits = _layout(path, entries)
    names = [name for split in splits for name, _ in split]
    images = _decode_all(path, names, reader, image_size)
    if image_size is None:
        _check_one_size(path, names, images)
    train, test = (_shuffled(split, images) for split in splits)
    return Cifar10(train=train, test=test, classes=classes)


def _directory_reader(root: Path) -> Reader:
    def read(names: list[str]) -> Iterator[tuple[str, bytes]]:
        for name in names:
            try:
                blob = (root / name).read_bytes()
            except OSError as e:
                raise DataError(f"{root}: {name} cannot be read ({e.strerror or e}); fix its "
                                "permissions or remove it") from e  # fmt: skip
            yield name, blob

    return read


def _tarball_reader(tar: tarfile.TarFile, members: list[tarfile.TarInfo]) -> Reader:
    def read(names: list[str]) -> Iterator[tuple[str, bytes]]:
        wanted = set(names)
        for member in members:  # in archive order: a gzip stream cannot seek back cheaply
            if (name := _entry(member)) in wanted:
                yield name, tar.extractfile(member).read()

    return read


def _decode_all(
    path: Path, names: list[str], reader: Reader, image_size: int | None
) -> dict[str, torch.Tensor]:
    started, images = time.perf_counter(), {}
    with progress.bar(total=len(names), unit="img", desc="decode") as bar:
        for name, blob in reader(names):
            images[name] = _decode(path, name, blob, image_size)
            bar.update()
    print(f"decode: {len(images)} images in {time.perf_counter() - started:.1f} s", flush=True)
    return images


def _decode(path: Path, name: str, blob: bytes, image_size: int | None) -> torch.Tensor:
    """uint8 3 x H x W RGB pixels of one image file (resized to image_size x image_size if given)."""
    try:
        tensor = decode(blob)
    except ValueError as e:
        raise DataError(f"{path}: {name} cannot be read as an image ({e}); remove or replace "
                        "it") from e  # fmt: skip
    return tensor if image_size is None else resize(tensor, image_size)


def _check_one_size(path: Path, names: list[str], images: dict[str, torch.Tensor]) -> None:
    first = images[names[0]].shape
    for name in names:
        if (shape := images[name].shape) != first:
            raise DataError(f"{path}: {name} is {shape[2]}x{shape[1]} pixels but {names[0]} is "
                            f"{first[2]}x{first[1]}; set data.image_size to resize every image to "
                            "one size")  # fmt: skip


def _shuffled(split: list[tuple[str, int]], images: dict[str, torch.Tensor]) -> Split:
    """The split in a fixed random order. Sorted files come grouped by class; one fixed permutation
    makes the tensor file reproducible and lets the first N images (data.train_size, test_size)
    hold every class, as the CIFAR-10 archive's pre-shuffled batches do."""
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(SHUFFLE_SEED))
    stacked = torch.stack([images[name] for name, _ in split])
    labels = torch.tensor([label for _, label in split], dtype=torch.int64)
    return Split(images=stacked[order], labels=labels[order])
