"""Stage `teacher_outputs`: the frozen teacher's logits and feature maps on the training set, once.

Without augmentation the teacher is in eval mode and sees the same images every epoch, so its
outputs never change: every distillation variant reads them from here instead of running the
teacher on every batch of every epoch. Reads data.train_size, normalize and train.{device,precision}.
"""

from __future__ import annotations

import safetensors.torch

from pipeline import models, params, tracking
from pipeline.data import Normalizer
from pipeline.files import atomic_path
from pipeline.stages import _outputs
from pipeline.stages._cli import run
from pipeline.stages._training import load_dataset
from pipeline.stages.train_teacher import ARCH
from pipeline.train import resolve_device, teacher_outputs


def main() -> None:
    p = params.load_all()
    device = resolve_device(p.train.device)
    teacher = models.load_weights(ARCH, _outputs.TEACHER_MODEL).to(device)
    images = load_dataset(p).train.images.to(device)
    normalize = Normalizer(p.normalize.mean, p.normalize.std)
    used = {"data.train_size": p.data.train_size, "normalize": vars(p.normalize),
            "train.device": p.train.device, "train.precision": p.train.precision}  # fmt: skip
    with tracking.stage_run("teacher_outputs", p.mlflow.experiment, used, p.data.md5) as r:
        r.set_tags({"device": str(device), "precision": p.train.precision})
        out = teacher_outputs(teacher, images, normalize, p.train.precision)
        tensors = {"logits": out.logits.cpu(), "features": out.features.cpu()}
        with atomic_path(_outputs.TEACHER_OUTPUTS) as tmp:
            safetensors.torch.save_file(tensors, tmp)
    print(
        f"{_outputs.TEACHER_OUTPUTS}: logits {tuple(out.logits.shape)}, features {tuple(out.features.shape)}"
    )


if __name__ == "__main__":
    run(main)
