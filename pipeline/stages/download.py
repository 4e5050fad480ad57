"""Stage `download`: read the data once, verified, into a tensor file: the CIFAR-10 archive
(`data.source: cifar10`) or an image folder or .tar.gz of one (any other `data.source`).

Reads params `data.source`, `data.url`, `data.md5`, `data.timeout_s` and `data.image_size`. The URL
and the timeout are not declared to DVC: the MD5 pins the archive's content, and they are merely how
to get it (declaring the URL would rerun the stage when a mirror moves and would write one machine's
mirror path into dvc.lock). An image folder's path is declared, as its MD5 is optional.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import data, files, image_folder, params, provenance, tracking
from pipeline.stages import _outputs
from pipeline.stages._cli import no_arguments, run

ARCHIVE = Path("data/download/cifar-10-python.tar.gz")  # kept between runs, not a DVC output


def main(p: params.Params, args: list[str]) -> None:
    no_arguments(args)
    files.OutputSet([ARCHIVE, _outputs.DATA]).check()  # DVC runs one stage at a time here
    read = SOURCES.get(p.data.source, from_image_folder)
    with tracking.stage_run(
        "download", p.mlflow.experiment, {"data": vars(p.data)}, p.data.md5
    ) as r:
        dataset, origin, md5 = read(p.data)
        sizes = {"train": len(dataset.train.labels), "test": len(dataset.test.labels)}
        r.set_tags({"data.md5": md5})  # the content's MD5, also when params gave none
        r.log_dataset(origin, md5, sizes, p.data.name)
        r.log_metrics({f"{split}_images": n for split, n in sizes.items()})
        data.save(dataset, _outputs.DATA)
    print(f"{_outputs.DATA}: {sizes['train']} train and {sizes['test']} test images")


def from_cifar10_archive(d: params.DataParams) -> tuple[data.Cifar10, str, str]:
    """The CIFAR-10 python archive fetched from data.url, checked against data.md5; with where it
    came from and its MD5."""
    archive = data.fetch(d.url, ARCHIVE, d.md5, d.timeout_s)
    try:
        dataset = data.read_archive(archive)
    except data.DataError:
        archive.unlink()  # its MD5 matched, but it is unusable: the next run fetches again
        raise
    return data.resized(dataset, d.image_size), d.url, d.md5.lower()


def from_image_folder(d: params.DataParams) -> tuple[data.Cifar10, str, str]:
    """The image folder or .tar.gz at data.source, checked against data.md5 when that is given."""
    path = provenance.project_root() / d.source  # an absolute source stays as it is
    if not path.exists():
        raise data.DataError(f"data.source = {d.source!r}: {path} does not exist; give an image "
                             "folder or a .tar.gz of one, or cifar10")  # fmt: skip
    md5 = image_folder.md5_of(path)
    if d.md5 is not None and md5 != d.md5.lower():
        raise data.DataError(f"MD5 mismatch for {path}: expected {d.md5.lower()}, got {md5}: fix "
                             "data.md5 or set it to null")  # fmt: skip
    return image_folder.read(path, d.image_size), str(path), md5


SOURCES = {
    params.CIFAR10: from_cifar10_archive
}  # data.source -> reader; any other is an image folder


if __name__ == "__main__":
    run(main)
