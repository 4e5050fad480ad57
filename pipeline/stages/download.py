"""Stage `download`: fetch and verify the CIFAR-10 archive, convert it once to a tensor file.

Reads params `data.url` and `data.md5`. Only the MD5 is declared to DVC: it pins the content, while
the URL is merely where to get it (declaring it would rerun the stage when a mirror moves and would
write one machine's mirror path into dvc.lock).
"""

from __future__ import annotations

from pathlib import Path

from pipeline import data, params
from pipeline.stages._cli import run

ARCHIVE = Path("data/download/cifar-10-python.tar.gz")  # kept between runs, not a DVC output
OUTPUT = Path("data/cifar10.safetensors")


def main() -> None:
    p = params.load("data", params.DataParams)
    archive = data.fetch(p.url, ARCHIVE, p.md5)
    dataset = data.read_archive(archive)
    data.save(dataset, OUTPUT)
    print(
        f"{OUTPUT}: {len(dataset.train.labels)} train and {len(dataset.test.labels)} test images, "
        f"classes {', '.join(dataset.classes)}"
    )


if __name__ == "__main__":
    run(main)
