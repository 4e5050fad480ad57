"""Stage `teacher_outputs@<seed>`: a frozen teacher's logits and feature maps on the training set,
once.

Without augmentation the teacher is in eval mode and sees the same images every epoch, so its
outputs never change: every distillation variant reads them from here instead of running the
teacher on every batch of every epoch. Computed for the whole training set (students select their
split's rows). Reads data.train_size, normalize and train.{device,precision}.
"""

from __future__ import annotations

import safetensors.torch

from pipeline import data, files, params, tracking
from pipeline.stages import _inputs, _outputs
from pipeline.stages._cli import run, seed_argument
from pipeline.stages.train_teacher import ARCH
from pipeline.train import resolve_device, teacher_outputs


def main(p: params.Params, args: list[str]) -> None:
    seed = seed_argument(args, p.teacher.seeds, "teacher.seeds")
    path = _outputs.teacher_outputs(seed)
    outputs = files.OutputSet([path])
    outputs.check()
    device = resolve_device(p.train.device)
    train = data.subset(_inputs.dataset().train, p.data.train_size, "data.train_size")
    teacher = _inputs.weights(ARCH, _outputs.teacher_role(seed)).to(device)
    normalize = data.Normalizer(p.normalize.mean, p.normalize.std)
    used = {"data.train_size": p.data.train_size, "normalize": vars(p.normalize),
            "train.device": p.train.device, "train.precision": p.train.precision, "seed": seed}  # fmt: skip
    with tracking.stage_run(f"teacher_outputs@{seed}", p.mlflow.experiment, used, p.data.md5) as r:
        r.set_tags({"device": str(device), "precision": p.train.precision})
        out = teacher_outputs(teacher, train.images.to(device), normalize, p.train.precision)
        tensors = {"logits": out.logits.cpu(), "features": out.features.cpu()}
        with outputs.commit() as staged:
            staged.write_bytes(path, safetensors.torch.save(tensors))
    print(f"{path}: logits {tuple(out.logits.shape)}, features {tuple(out.features.shape)}")


if __name__ == "__main__":
    run(main)
