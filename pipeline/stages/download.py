"""Stage `download`: fetch and verify the CIFAR-10 archive, convert it once to a tensor file.

Reads params `data.url` and `data.md5`. Only the MD5 is declared to DVC: it pins the content, while
the URL is merely where to get it (declaring it would rerun the stage when a mirror moves and would
write one machine's mirror path into dvc.lock).
"""

from __future__ import annotations

from pathlib import Path

from pipeline import data, params, tracking
from pipeline.stages import _outputs
from pipeline.stages._cli import run

ARCHIVE = Path("data/download/cifar-10-python.tar.gz")  # kept between runs, not a DVC output


def main() -> None:
    p = params.load_all()
    with tracking.stage_run(
        "download", p.mlflow.experiment, {"data": vars(p.data)}, p.data.md5
    ) as r:
        archive = data.fetch(p.data.url, ARCHIVE, p.data.md5)
        dataset = data.read_archive(archive)
        sizes = {"train": len(dataset.train.labels), "test": len(dataset.test.labels)}
        r.log_dataset(p.data.url, p.data.md5, sizes)
        r.log_metrics({f"{split}_images": n for split, n in sizes.items()})
        data.save(dataset, _outputs.DATA)
    print(f"{_outputs.DATA}: {sizes['train']} train and {sizes['test']} test images")


if __name__ == "__main__":
    run(main)
