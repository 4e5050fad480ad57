"""Stage `teacher_outputs@<seed>`: a frozen teacher's logits, and the layers that the variants tap,
on the training set, once.

Without augmentation the teacher is in eval mode and sees the same images every epoch, so its
outputs never change: every distillation variant reads them from here instead of running the
teacher on every batch of every epoch. Computed for the whole training set (students select their
split's rows). Reads data.train_size, normalize, train.{device,precision}, teacher and variants (the
layers they tap).
"""

from __future__ import annotations

import safetensors.torch

from pipeline import data, files, params, tracking
from pipeline.stages import _inputs, _networks, _outputs
from pipeline.stages._cli import run, seed_argument
from pipeline.taps import Tapped, check_layers
from pipeline.train import resolve_device, teacher_outputs


def main(p: params.Params, args: list[str]) -> None:
    seed = seed_argument(args, p.teacher.seeds, "teacher.seeds")
    path = _outputs.teacher_outputs(seed)
    outputs = files.OutputSet([path])
    outputs.check()
    device = resolve_device(p.train.device)
    full = _inputs.dataset()
    train = data.subset(full.train, p.data.train_size, "data.train_size")
    teacher = _inputs.weights(p.teacher, _outputs.teacher_role(seed), len(full.classes))
    tapped = _networks.teacher_layers(p)
    check_layers(teacher, tapped, f"teacher.model {p.teacher.model}")
    layers = list(dict.fromkeys(tapped.values()))  # each once, however many variants tap it
    normalize = data.Normalizer(p.normalize.mean, p.normalize.std)
    used = {"data.train_size": p.data.train_size, "normalize": vars(p.normalize),
            "train.device": p.train.device, "train.precision": p.train.precision, "seed": seed,
            "teacher.model": p.teacher.model, "layers": layers}  # fmt: skip
    stage = f"teacher_outputs@{seed}"
    with tracking.stage_run(stage, p.mlflow.experiment, used, p.data.md5) as r:
        r.set_tags({"device": str(device), "precision": p.train.precision})
        out = teacher_outputs(Tapped(teacher.to(device), layers), train.images.to(device),
                              normalize, p.train.precision)  # fmt: skip
        tensors = {"logits": out.logits.cpu()}
        tensors |= {_outputs.LAYER_PREFIX + k: v.cpu() for k, v in out.features.items()}
        with outputs.commit() as staged:
            staged.write_bytes(path, safetensors.torch.save(tensors))
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items())
    print(f"{path}: {shapes}")


if __name__ == "__main__":
    run(main)
