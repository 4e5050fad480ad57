"""Image-folder datasets: real PNG and JPEG files written with Pillow, as a directory and as a
.tar.gz, read by pipeline.image_folder and by the download stage."""

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from mlflow.tracking import MlflowClient
from PIL import Image
from test_data import leftovers, run_download_stage

from pipeline import data, image_folder
from pipeline.data import DataError

CLASSES = ("cat", "dog", "frog")
COUNTS = {"train": 4, "test": 2}
SIZE = (12, 10)  # width x height, as Pillow has it
REAL = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")  # fmt: skip


def colour(label: int, index: int, split: str) -> tuple[int, int, int]:
    """Each image is one flat colour that says which image it is, so pixels can be traced to files."""
    return (40 * label + 5, 10 * index, 0 if split == "train" else 255)


def write_image(path: Path, rgb=(0, 0, 0), size=SIZE, mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).convert(mode).save(path)


def make_tree(root: Path) -> Path:
    """train/ and test/ with 3 classes of lossless PNGs (one with an upper-case .PNG, one greyscale
    JPEG), plus what a real folder also holds and must not count: hidden files, a hidden folder, a
    text file, an image beside the class folders."""
    for split, count in COUNTS.items():
        for label, name in enumerate(CLASSES):
            for i in range(count):
                suffix = ".PNG" if (label, i) == (1, 0) else ".png"
                write_image(root / split / name / f"{i:04d}{suffix}", colour(label, i, split))
    write_image(root / "train" / "frog" / "9999.jpg", (128, 128, 128), mode="L")
    (root / "train" / "cat" / "._0000.png").write_bytes(b"macOS resource fork, not an image")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    write_image(root / "train" / ".ipynb_checkpoints" / "x.png")
    write_image(root / "test" / "stray.png")
    return root


def make_tarball(tree: Path, dest: Path, top: str | None = None) -> Path:
    """`tree` as a .tar.gz: with train/ and test/ at the top (top=None), under './' (as `tar -C
    tree .` writes it), or inside one folder `top`."""
    with tarfile.open(dest, "w:gz") as tar:
        if top is None:
            for split in ("train", "test"):
                tar.add(tree / split, arcname=split)
        else:
            tar.add(tree, arcname=top)
    return dest


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "images")


def test_directory_gives_sorted_classes_labels_and_uint8_images(tree):
    ds = image_folder.read(tree, None)
    assert ds.classes == CLASSES
    assert ds.train.images.shape == (13, 3, 10, 12) and ds.train.images.dtype == torch.uint8
    assert ds.test.images.shape == (6, 3, 10, 12) and ds.test.labels.dtype == torch.int64
    assert torch.bincount(ds.train.labels).tolist() == [4, 4, 5]  # + the greyscale JPEG
    png = ds.train.images[:, 0, 0, 0] != 128
    assert torch.equal(ds.train.images[png, 0, 0, 0].long(), 40 * ds.train.labels[png] + 5)
    assert torch.equal(ds.test.images[:, 2, 0, 0], torch.full((6,), 255, dtype=torch.uint8))
    grey = ds.train.images[~png]
    assert len(grey) == 1 and torch.equal(grey[0, 0], grey[0, 2])  # greyscale became RGB


def test_each_split_is_shuffled_by_one_fixed_permutation(tree):
    ds = image_folder.read(tree, None)
    in_file_order = torch.tensor([0] * 4 + [1] * 4 + [2] * 5)  # the JPEG sorts after 0003.png
    order = torch.randperm(13, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ds.train.labels, in_file_order[order])


@pytest.mark.parametrize("top", [None, ".", "my-images"])
def test_a_tarball_reads_exactly_as_its_directory(tree, tmp_path, top):
    tarball = make_tarball(tree, tmp_path / "images.tar.gz", top)
    from_dir, from_tar = image_folder.read(tree, None), image_folder.read(tarball, None)
    assert from_tar.classes == from_dir.classes
    for a, b in [(from_dir.train, from_tar.train), (from_dir.test, from_tar.test)]:
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_the_tensor_file_is_byte_reproducible(tree, tmp_path):
    for name in ("a", "b"):
        data.save(image_folder.read(tree, None), tmp_path / f"{name}.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    loaded = data.load(tmp_path / "a.safetensors")
    assert loaded.classes == CLASSES and len(loaded.train.labels) == 13


def test_image_size_resizes_images_of_any_size(tree):
    write_image(tree / "train" / "dog" / "0004.png", colour(1, 4, "train"), size=(20, 16))
    ds = image_folder.read(tree, 8)
    assert ds.train.images.shape == (14, 3, 8, 8) and ds.test.images.shape == (6, 3, 8, 8)
    with Image.open(tree / "train" / "dog" / "0004.png") as im:
        original = torch.from_numpy(np.array(im)).permute(2, 0, 1)
    resized = data.resize(original, 8)
    assert any(torch.equal(image, resized) for image in ds.train.images)


def test_cifar_path_resizes_only_when_asked(tree):
    ds = image_folder.read(tree, None)
    assert data.resized(ds, None) is ds
    assert data.resized(ds, 16).train.images.shape == (13, 3, 16, 16)
    assert torch.equal(data.resized(ds, 16).train.labels, ds.train.labels)


def test_md5_of_a_tarball_is_the_file_s_md5(tree, tmp_path):
    tarball = make_tarball(tree, tmp_path / "images.tar.gz")
    assert image_folder.md5_of(tarball) == hashlib.md5(tarball.read_bytes()).hexdigest()


def test_md5_of_a_directory_is_the_md5_of_its_sorted_md5sum_listing(tree):
    files = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())
    listing = "".join(f"{hashlib.md5((tree / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
    md5 = image_folder.md5_of(tree)
    assert md5 == hashlib.md5(listing.encode()).hexdigest()
    if shutil.which("md5sum"):  # the shell command the README gives computes the same
        shell = "find . -type f | cut -c3- | LC_ALL=C sort | xargs -d '\\n' md5sum | md5sum"
        out = subprocess.run(shell, shell=True, cwd=tree, capture_output=True, text=True).stdout
        assert out.split()[0] == md5
    (tree / "test" / "cat" / "0000.png").write_bytes(b"changed")
    assert image_folder.md5_of(tree) != md5


def damage(tree: Path, fault: str) -> None:
    if fault == "no train":
        shutil.rmtree(tree / "train")
    elif fault == "no test":
        shutil.rmtree(tree / "test")
    elif fault == "empty class":
        (tree / "train" / "emu").mkdir()
        write_image(tree / "test" / "emu" / "0000.png")
    elif fault == "class without images":
        (tree / "train" / "emu").mkdir()
        (tree / "train" / "emu" / "readme.txt").write_text("images to come")
    elif fault == "not an image":
        (tree / "train" / "cat" / "0003.png").write_bytes(b"\x89PNG but not really")
    elif fault == "truncated image":
        path = tree / "test" / "dog" / "0001.png"  # noise, so that half the file is half the pixels
        Image.frombytes("RGB", SIZE, os.urandom(3 * SIZE[0] * SIZE[1])).save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif fault == "different classes":
        shutil.rmtree(tree / "test" / "frog")
        write_image(tree / "test" / "emu" / "0000.png")
    elif fault == "mixed sizes":
        write_image(tree / "train" / "dog" / "0001.png", size=(20, 16))


BAD = [
    ("no train", r"has no class folders under (\./)?train/; an image folder holds"),
    ("no test", r"has no class folders under (\./)?test/"),
    ("empty class", r": (\./)?train/emu has no image files \(\.jpg, .*\); add images or remove"),
    ("class without images", r": (\./)?train/emu has no image files"),
    (
        "not an image",
        r": (\./)?train/cat/0003\.png cannot be read as an image \(.+\); remove or "
        "replace it$",
    ),
    ("truncated image", r": (\./)?test/dog/0001\.png cannot be read as an image"),
    (
        "different classes",
        r"train/ and test/ have different class folders \(test/ lacks frog; "
        r"train/ lacks emu\)",
    ),
    (
        "mixed sizes",
        r": (\./)?train/dog/0001\.png is 20x16 pixels but (\./)?train/cat/0000\.png "
        r"is 12x10; set data\.image_size",
    ),
]


@pytest.mark.parametrize("form", ["directory", "tarball"])
@pytest.mark.parametrize(("fault", "message"), BAD, ids=[fault for fault, _ in BAD])
def test_bad_data_is_one_line_naming_the_file_or_folder(tree, tmp_path, form, fault, message):
    damage(tree, fault)
    path = tree if form == "directory" else make_tarball(tree, tmp_path / "images.tar.gz", ".")
    with pytest.raises(DataError) as e:
        image_folder.read(path, None)
    text = str(e.value)
    assert "\n" not in text and text.startswith(str(path)), text
    assert re.search(message, text), text


@pytest.mark.parametrize("how", ["truncated", "not a tarball"])
def test_a_corrupt_tarball_is_reported(tree, tmp_path, how):
    tarball = make_tarball(tree, tmp_path / "images.tar.gz")
    blob = tarball.read_bytes()
    tarball.write_bytes(blob[: len(blob) // 2] if how == "truncated" else b"PK\x03\x04 a zip")
    with pytest.raises(DataError, match=r"images\.tar\.gz is corrupt or truncated, or not a "
                                        r"\.tar\.gz \(.+\); recreate it"):  # fmt: skip
        image_folder.read(tarball, None)


def test_download_stage_converts_an_image_folder(tree, tmp_path):
    """A tarball given relative to the project root, pinned by its MD5, resized: the stage writes
    the tensor file and records the MD5 and the source in MLflow."""
    work = tmp_path / "work"
    work.mkdir()
    tarball = make_tarball(tree, tmp_path / "images.tar.gz")
    md5 = image_folder.md5_of(tarball)
    done = run_download_stage(work, "unused", md5, source="../images.tar.gz", image_size=8)
    assert done.returncode == 0, done.stderr
    ds = data.load(work / "data" / "cifar10.safetensors")
    assert ds.classes == CLASSES and ds.train.images.shape == (13, 3, 8, 8)
    assert leftovers(work / "data") == ["cifar10.safetensors"]  # nothing fetched
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    (run,) = [r for r in client.search_runs(["1"]) if r.info.run_name == "download"]
    assert run.data.tags["data.md5"] == md5 and run.data.params["data.source"] == "../images.tar.gz"
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.digest == md5 and str(tarball) in dataset.dataset.source


@pytest.mark.parametrize(
    ("source", "md5", "message"),
    [
        (
            "../images",
            "0" * 32,
            r"MD5 mismatch for .*images: expected 0{32}, got [0-9a-f]{32}: "
            "fix data.md5 or set it to null$",
        ),
        ("../nowhere", None, r"data\.source = '\.\./nowhere': .*nowhere does not exist"),
    ],
)
def test_download_stage_refuses_a_wrong_md5_or_a_missing_folder(
    tree, tmp_path, source, md5, message
):
    work = tmp_path / "work"
    work.mkdir()
    done = run_download_stage(work, "unused", md5, source=source)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: download: "), done.stderr
    assert re.search(message, lines[0]), lines[0]
    assert leftovers(work / "data") == []


@pytest.mark.slow
@pytest.mark.skipif(not REAL.exists(), reason=f"no {REAL}")
def test_the_real_cifar10_jpeg_tarball():
    started = time.perf_counter()
    ds = image_folder.read(REAL, None)
    print(f"{REAL.name}: read in {time.perf_counter() - started:.1f} s")
    assert ds.classes == CIFAR10_CLASSES
    assert ds.train.images.shape == (50_000, 3, 32, 32) and ds.test.images.shape == (
        10_000,
        3,
        32,
        32,
    )
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10
    assert (
        len(set(ds.train.labels[:100].tolist())) == 10
    )  # shuffled: the first 100 hold every class
