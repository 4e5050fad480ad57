"""What each distillation method costs per epoch on this machine, next to the CE student's.

    python bench/methods.py ARCHIVE [--images 10000] [--methods ce kd crd] [--device auto]
                            [--precision fp32] [--batch-size 128]

The tutorial's pair (DeepNN teaching LightNN at the layers params.py gives them), each method with
its registry defaults, the teacher's outputs cached once as the distill stage uses them (so the
teacher's forward pass is not counted, as in the pipeline). One epoch per method over the first
`--images` training images of a CIFAR-10 archive, timed by the training loop itself; a warm-up
epoch of the CE student first, so the first method does not pay for the allocator and the caches.
Prints seconds per epoch, the ratio to CE and the estimate for a 50,000-image epoch. Asserts
nothing. Needs only torch and torchvision.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import data, losses, models, taps
from pipeline.taps import Tapped
from pipeline.train import (
    FitConfig,
    cached_teacher,
    fit,
    resolve_device,
    teacher_outputs,
    tune_allocator,
)

NORMALIZE = data.Normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
LAYER = {"student": models.DEFAULT_LAYERS["LightNN"], "teacher": models.DEFAULT_LAYERS["DeepNN"]}
FULL_EPOCH = 50_000


def defaults(method: str) -> dict:
    """The method's registry defaults, with the tutorial pair's layers (one, or a list of one)."""
    given = {key: [LAYER[key.split("_")[0]]] if key.endswith("s") else LAYER[key.split("_")[0]]
             for key in losses.layers(method)}  # fmt: skip
    if method == "kd":
        given |= {"temperature": 2.0, "distill_weight": 0.25, "ce_weight": 0.75}  # params.yaml's
    return losses.resolve(method, given)


def epoch_seconds(method: str, train: data.Split, cache, teacher, config: FitConfig) -> float:
    bound = defaults(method)
    student = models.build("LightNN", {}, 10, config.seed, "student")
    shapes = {}
    for side, net in (("student", student), ("teacher", teacher)):
        shapes |= taps.layer_shapes(
            net, losses.side_layers(method, bound, side), (3, 32, 32), 10, side
        )
    parts = losses.make_parts(method, bound, shapes, len(train.labels), method)
    paths = losses.tapped_paths(method, bound, "student")
    seen = []
    needs_teacher = losses.get(method).needs_teacher
    fit(Tapped(student, paths), train, losses.bind(method, bound), config, NORMALIZE,
        num_classes=10, targets=cached_teacher(cache) if needs_teacher else None, parts=parts,
        on_epoch=lambda epoch, metrics: seen.append(metrics["epoch_seconds"]))  # fmt: skip
    return seen[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", type=Path)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--methods", nargs="+", default=list(losses.METHODS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    tune_allocator()  # as the pipeline's stages do
    device = resolve_device(args.device)
    train = data.subset(data.read_archive(args.archive).train, args.images, "--images")
    config = FitConfig(1, args.batch_size, 1e-3, 42, device, args.precision)
    teacher = models.build("DeepNN", {}, 10, 42, "teacher").to(device)
    cache = teacher_outputs(Tapped(teacher, [LAYER["teacher"]]), train.images.to(device), NORMALIZE,
                            args.precision)  # fmt: skip
    train = data.Split(train.images.to(device), train.labels.to(device))
    epoch_seconds("ce", train, cache, teacher, config)  # warm-up
    times = {m: epoch_seconds(m, train, cache, teacher, config) for m in ["ce", *args.methods]}
    print(f"{len(train.labels)} images, batch {args.batch_size}, {device}, {args.precision}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'method':<10} {'s/epoch':>8} {'x ce':>6} {'s per 50k':>10}")
    for method in args.methods:
        s = times[method]
        print(
            f"{method:<10} {s:8.2f} {s / times['ce']:6.2f} {s * FULL_EPOCH / len(train.labels):10.1f}"
        )


if __name__ == "__main__":
    main()
