"""Stage `teacher_outputs@<seed>`: a frozen teacher's logits and feature maps on the training set,
once.

Without augmentation the teacher is in eval mode and sees the same images every epoch, so its
outputs never change: every distillation variant reads them from here instead of running the
teacher on every batch of every epoch. Computed for the whole training set (students select their
split's rows). Reads data.train_size, normalize and train.{device,precision}.
"""

from __future__ import annotations

import sys

import safetensors.torch

from pipeline import data, models, params, tracking
from pipeline.files import atomic_path
from pipeline.stages import _outputs
from pipeline.stages._cli import run, seed_argument
from pipeline.stages.train_teacher import ARCH
from pipeline.train import resolve_device, teacher_outputs


def main() -> None:
    p = params.load_all()
    seed = seed_argument(sys.argv[1:], p.teacher.seeds, "teacher.seeds", "teacher_outputs")
    device = resolve_device(p.train.device)
    images = data.subset(
        data.load(_outputs.DATA).train, p.data.train_size, "data.train_size"
    ).images.to(device)
    teacher = models.load_weights(ARCH, _outputs.model(_outputs.teacher_role(seed))).to(device)
    normalize = data.Normalizer(p.normalize.mean, p.normalize.std)
    used = {"data.train_size": p.data.train_size, "normalize": vars(p.normalize),
            "train.device": p.train.device, "train.precision": p.train.precision, "seed": seed}  # fmt: skip
    path = _outputs.teacher_outputs(seed)
    with tracking.stage_run(f"teacher_outputs@{seed}", p.mlflow.experiment, used, p.data.md5) as r:
        r.set_tags({"device": str(device), "precision": p.train.precision})
        out = teacher_outputs(teacher, images, normalize, p.train.precision)
        tensors = {"logits": out.logits.cpu(), "features": out.features.cpu()}
        with atomic_path(path) as tmp:
            safetensors.torch.save_file(tensors, tmp)
    print(f"{path}: logits {tuple(out.logits.shape)}, features {tuple(out.features.shape)}")


if __name__ == "__main__":
    run(main)
