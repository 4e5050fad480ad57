"""Speed of our engine against the tutorial's loop, on the same data and machine, in one run.

    python bench/benchmark.py ARCHIVE MD5 [--epochs 1] [--device auto] [--precision bf16]

Trains, with each of the two, the teacher and the kd variant (the tutorial's settings: batch 128,
Adam 1e-3, seed 42, T=2, weights 0.25/0.75) and the plain CE student, and prints seconds per epoch,
the speed-up, the test accuracy of both after the same epochs, and what the whole default pipeline
(10 epochs of the teacher and of four students, three of them teacher-assisted) would take with each.
Prints numbers; asserts nothing. Needs only torch and torchvision (runs on a GPU machine as is).

Each loop runs in a fresh process of its own. The tutorial's loop runs as users run it, with glibc's
default allocator; `--reference-allocator tuned` gives it the allocator tuning our stages apply
(pipeline.train.tune_allocator), to show how much of the gap that setting alone explains.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference

from pipeline import data, losses, models
from pipeline.evaluate import accuracy, predict
from pipeline.taps import Tapped
from pipeline.train import (
    FitConfig,
    cached_teacher,
    fit,
    resolve_device,
    teacher_outputs,
    tune_allocator,
)

KD = {"temperature": 2.0, "distill_weight": 0.25, "ce_weight": 0.75}
PIPELINE_EPOCHS = 10


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    started = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - started


def in_fresh_process(fn, *args) -> dict:
    """fn(*args) in a new interpreter: mallopt settings and warm caches do not leak between loops."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def run_reference(root: Path, epochs: int, device: torch.device, tuned_allocator: bool) -> dict:
    if tuned_allocator:
        tune_allocator()
    train_loader, test_loader = reference.loaders(root)
    out = {}
    torch.manual_seed(42)
    teacher = models.DeepNN().to(device)
    _, out["teacher_s"] = timed(
        lambda: reference.train(teacher, train_loader, epochs, 1e-3, device), device
    )
    out["teacher_acc"] = reference.test(teacher, test_loader, device)
    torch.manual_seed(42)
    student = models.LightNN().to(device)
    _, out["kd_s"] = timed(
        lambda: reference.train_knowledge_distillation(
            teacher, student, train_loader, epochs, 1e-3, 2, 0.25, 0.75, device
        ),
        device,
    )
    out["kd_acc"] = reference.test(student, test_loader, device)
    torch.manual_seed(42)
    plain = models.LightNN().to(device)
    _, out["ce_s"] = timed(
        lambda: reference.train(plain, train_loader, epochs, 1e-3, device), device
    )
    out["ce_acc"] = reference.test(plain, test_loader, device)
    return out


def run_engine(archive: Path, epochs: int, device: torch.device, precision: str) -> dict:
    tune_allocator()  # as the pipeline's stages do
    ds = data.read_archive(archive)
    normalize = data.Normalizer(reference.MEAN, reference.STD).to(device)
    test_images, test_labels = ds.test.images.to(device), ds.test.labels.to(device)
    config = FitConfig(epochs, 128, 1e-3, 42, device, precision)
    out = {}

    def test(model) -> float:
        return accuracy(predict(model, test_images, normalize), test_labels)

    teacher, out["teacher_s"] = timed(
        lambda: fit(
            Tapped(models.build("DeepNN", {}, 10, 42, "teacher")),
            ds.train,
            losses.bind("ce", {}),
            config,
            normalize,
            num_classes=10,
        ),
        device,
    )
    out["teacher_acc"] = test(teacher)
    cache, out["cache_s"] = timed(
        lambda: teacher_outputs(teacher, ds.train.images.to(device), normalize, precision), device
    )
    student, out["kd_s"] = timed(
        lambda: fit(
            Tapped(models.build("LightNN", {}, 10, 42, "student")),
            ds.train,
            losses.bind("kd", KD),
            config,
            normalize,
            num_classes=10,
            targets=cached_teacher(cache),
        ),
        device,
    )
    out["kd_acc"] = test(student)
    plain, out["ce_s"] = timed(
        lambda: fit(
            Tapped(models.build("LightNN", {}, 10, 42, "student")),
            ds.train,
            losses.bind("ce", {}),
            config,
            normalize,
            num_classes=10,
        ),
        device,
    )
    out["ce_acc"] = test(plain)
    return out


def pipeline_seconds(r: dict, epochs: int) -> float:
    """10 teacher epochs + the cache (ours) + 10 epochs of the CE student and of 3 assisted ones.
    (cosine and regressor cost what kd costs: the teacher's forward pass dominates them all.)"""
    per_epoch = (r["teacher_s"] + r["ce_s"] + 3 * r["kd_s"]) / epochs
    return PIPELINE_EPOCHS * per_epoch + r.get("cache_s", 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("archive", type=Path)
    ap.add_argument("md5")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--skip-reference", action="store_true", help="time our engine only")
    ap.add_argument(
        "--reference-allocator",
        choices=["default", "tuned"],
        default="default",
        help="glibc's default (as users run the tutorial) or the stages' tuning",
    )
    args = ap.parse_args()
    device = resolve_device(args.device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"device: {name}; torch {torch.__version__}; epochs per model: {args.epochs}")

    with tempfile.TemporaryDirectory() as tmp:
        archive = data.fetch(str(args.archive), Path(tmp) / "cifar-10-python.tar.gz", args.md5)
        ours = in_fresh_process(run_engine, archive, args.epochs, device, args.precision)
        print_rows("ours", ours, args.epochs)
        if args.skip_reference:
            return
        with tarfile.open(archive) as tar:
            # the "data" filter (no links out, no devices) where this Python has it: 3.11.4 on
            tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        ref = in_fresh_process(
            run_reference, Path(tmp), args.epochs, device, args.reference_allocator == "tuned"
        )
    print_rows(f"tutorial ({args.reference_allocator} allocator)", ref, args.epochs)
    print()
    print(
        f"{'per epoch':<12}{'tutorial s':>12}{'ours s':>10}{'speed-up':>10}{'tutorial acc':>14}{'ours acc':>10}"
    )
    for key, label in (("teacher", "teacher"), ("kd", "kd student"), ("ce", "ce student")):
        r, o = ref[f"{key}_s"] / args.epochs, ours[f"{key}_s"] / args.epochs
        print(
            f"{label:<12}{r:>12.1f}{o:>10.1f}{r / o:>9.1f}x{ref[f'{key}_acc']:>14.2%}{ours[f'{key}_acc']:>10.2%}"
        )
    r, o = pipeline_seconds(ref, args.epochs), pipeline_seconds(ours, args.epochs)
    print(f"whole default pipeline (10 epochs x 5 models), projected: tutorial {r / 60:.1f} min, "
          f"ours {o / 60:.1f} min ({r / o:.1f}x; ours includes the teacher-output cache, {ours['cache_s']:.1f} s)")  # fmt: skip


def print_rows(label: str, r: dict, epochs: int) -> None:
    parts = [f"{k} {v:.1f}" if k.endswith("_s") else f"{k} {v:.2%}" for k, v in r.items()]
    print(f"{label}: " + ", ".join(parts) + f"  (seconds for {epochs} epoch(s))", flush=True)


if __name__ == "__main__":
    main()
