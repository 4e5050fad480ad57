"""Stage `download`: fetch and verify the CIFAR-10 archive, convert it once to a tensor file.

Reads params `data.url`, `data.md5` and `data.timeout_s`. Only the MD5 is declared to DVC: it pins
the content, while the URL and the timeout are merely how to get it (declaring the URL would rerun
the stage when a mirror moves and would write one machine's mirror path into dvc.lock).
"""

from __future__ import annotations

from pathlib import Path

from pipeline import data, files, params, tracking
from pipeline.stages import _outputs
from pipeline.stages._cli import no_arguments, run

ARCHIVE = Path("data/download/cifar-10-python.tar.gz")  # kept between runs, not a DVC output


def main(p: params.Params, args: list[str]) -> None:
    no_arguments(args)
    files.OutputSet([ARCHIVE, _outputs.DATA]).check()  # DVC runs one stage at a time here
    with tracking.stage_run(
        "download", p.mlflow.experiment, {"data": vars(p.data)}, p.data.md5
    ) as r:
        archive = data.fetch(p.data.url, ARCHIVE, p.data.md5, p.data.timeout_s)
        try:
            dataset = data.read_archive(archive)
        except data.DataError:
            archive.unlink()  # its MD5 matched, but it is unusable: the next run fetches again
            raise
        sizes = {"train": len(dataset.train.labels), "test": len(dataset.test.labels)}
        r.log_dataset(p.data.url, p.data.md5, sizes)
        r.log_metrics({f"{split}_images": n for split, n in sizes.items()})
        data.save(dataset, _outputs.DATA)
    print(f"{_outputs.DATA}: {sizes['train']} train and {sizes['test']} test images")


if __name__ == "__main__":
    run(main)
