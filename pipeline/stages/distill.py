"""Stage `distill@<variant>`: train LightNN with the variant's method from params.yaml `variants`.

Reads data.{train,test}_size, normalize, train, student, variants.<variant>, and, when the method
needs a teacher, its cached outputs (or, with augmentation, its weights, to run it live). Every
variant starts from the same initial weights (the seed) and sees the same batches, so the comparison
between variants is paired.
"""

from __future__ import annotations

import sys

import safetensors.torch

from pipeline import losses, models, params
from pipeline.stages import _outputs
from pipeline.stages._cli import run
from pipeline.stages._training import common_params, load_dataset, train_and_record
from pipeline.stages.train_teacher import ARCH as TEACHER_ARCH
from pipeline.train import Targets, cached_teacher, live_teacher, resolve_device

ARCH = "LightNN"


def main() -> None:
    if len(sys.argv) != 2:
        raise ValueError("usage: python -m pipeline.stages.distill <variant name from params.yaml>")
    p = params.load_all()
    variant = p.variant(sys.argv[1])
    method = losses.get(variant.method)
    stage = f"distill@{variant.name}"
    targets, source = None, None
    if method.needs_teacher:
        targets, source = teacher_targets(p, variant, stage)
    student = models.build(ARCH, p.train.seed)
    train_and_record(
        stage=stage,
        role=variant.name,
        p=p,
        ds=load_dataset(p),
        net=student,
        loss_fn=losses.bind(variant.method, variant.kwargs),
        epochs=p.student.epochs,
        run_params={
            **common_params(p),
            "student": vars(p.student),
            "model": ARCH,
            "variant": {
                "name": variant.name,
                "method": variant.method,
                "augment": variant.augment,
                **variant.kwargs,
            },
        },
        targets=targets,
        teacher_source=source,
        head=method.make_head() if method.make_head else None,
        augment=variant.augment,
    )


def teacher_targets(p: params.Params, variant: params.Variant, stage: str) -> tuple[Targets, str]:
    """The cached teacher outputs; the live teacher when augmentation changes the images."""
    device = resolve_device(p.train.device)
    if variant.augment:
        print(f"{stage}: augmentation is on, so the teacher runs live on every batch (not cached)")
        teacher = models.load_weights(TEACHER_ARCH, _outputs.TEACHER_MODEL).to(device)
        return live_teacher(teacher, p.train.precision), "live"
    cache = safetensors.torch.load_file(_outputs.TEACHER_OUTPUTS, device=str(device))
    return cached_teacher(models.Outputs(cache["logits"], cache["features"])), "cached"


if __name__ == "__main__":
    run(main)
